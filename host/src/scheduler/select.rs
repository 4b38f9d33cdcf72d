//! Which pending deliveries start now: the ordering rules, as a function of the backlog, the
//! time, the free permits and the rate bucket; and which of the store's pending deliveries
//! the backlog holds. No I/O and no clock of its own, so that every rule is tested here with
//! the time given.
//!
//! # Rules
//!
//! - At most `free_permits` deliveries start (the handler's concurrency, less what runs).
//! - Deliveries with an ordering key run one at a time per key, in the order they were
//!   appended (ids grow in append order): a key is held by a delivery that runs and by the
//!   earliest waiting delivery of that key, due or not, so a delivery waiting for its retry
//!   holds back later deliveries of its key while other keys flow. `serial` is one key for
//!   every delivery.
//! - A delivery whose retry is not due yet waits; the selection says when the earliest is due.
//! - With a rate, each start takes a token; without one, the rest waits for the next token.
//!
//! # The window
//!
//! The backlog is a window on what the store holds, bounded in rows and in bytes
//! ([`Window`]), and holds no events (a [`QueuedDelivery`] is its id, key and due time).
//! Only a key's earliest delivery can start, so the window keeps at most [`KEY_LOOKAHEAD`]
//! deliveries of one key and reads past the rest: a key that fails and waits for its retry,
//! followed by thousands more of its deliveries, takes a few rows of the window, and the
//! deliveries of every other key behind them are read and run. The keys it read past are
//! remembered, and once a key's deliveries in the window are all done, its next ones are read
//! by key. Invariants, for every key `k`:
//!
//! - The window's deliveries of `k` are the earliest pending deliveries of `k` (so per-key
//!   FIFO holds whatever was read past).
//! - Every pending delivery with an id up to `read_up_to` is in the window, or its key is
//!   one the window read past (so nothing is forgotten; after a restart or a rescan the
//!   window is read again from the start).
//!
//! The window still has its size: when each of its rows holds a different key waiting for
//! its retry, what follows them waits in the store until one settles.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::config::Rate;
use crate::router::OrderingKey;
use crate::store::{Queued, QueuedDelivery};

/// Deliveries of one key the window holds at most; it reads past the key's later ones and
/// reads them by key when these are done. Only the first can start, so more would only save
/// reads: one read by key per this many deliveries of a busy (or `serial`) key.
pub const KEY_LOOKAHEAD: usize = 8;

/// How much of its pending work a worker holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Deliveries waiting or running. A read stops when the window is full and goes on when
    /// deliveries leave it.
    pub rows: usize,
    /// Their [`QueuedDelivery::footprint`]s in all. Reading stops once they reach it, having
    /// taken the delivery that did ([`Queued::take`]), so the window goes past it by less
    /// than one delivery.
    pub bytes: usize,
}

/// A read of the store the backlog asks for, to fill its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The next pending deliveries of `key` with an id up to `up_to_id`, oldest first: a key
    /// the window read past, whose deliveries in the window are all done.
    Key {
        key: OrderingKey,
        up_to_id: i64,
        rows: u32,
        bytes: usize,
    },
    /// The pending deliveries with an id above `after_id`, oldest first.
    After {
        after_id: i64,
        rows: u32,
        bytes: usize,
    },
}

/// What the worker knows of its handler's pending deliveries: a window of what the store
/// holds, read incrementally, and the deliveries it started (module docs, "The window").
#[derive(Debug, Default)]
pub struct Backlog {
    /// Pending and not running, by id (= append order).
    waiting: BTreeMap<i64, QueuedDelivery>,
    /// Running, by id.
    running: HashMap<i64, QueuedDelivery>,
    /// Deliveries of each key in the window, waiting or running.
    per_key: HashMap<OrderingKey, usize>,
    /// Keys with pending deliveries up to `read_up_to` that the window read past.
    read_past: HashSet<OrderingKey>,
    /// Keys of `read_past` with no delivery left in the window: to read by key, oldest first.
    to_read: VecDeque<OrderingKey>,
    /// The footprints of the window's deliveries, in all.
    bytes: usize,
    /// The highest id read from the store in id order.
    read_up_to: i64,
}

impl Backlog {
    /// Deliveries held, waiting or running.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The footprints of the deliveries held, in all.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The next read that could add to the window, if any: keys whose deliveries in the
    /// window are done come first (their next delivery is the oldest work), then what was
    /// appended. A key is read even into a full window, one delivery at least: the one that
    /// left made room, unless the window shrank.
    pub fn next_read(&self, window: Window) -> Option<Read> {
        let rows_left = window.rows.saturating_sub(self.len());
        let bytes_left = window.bytes.saturating_sub(self.bytes);
        if let Some(key) = self.to_read.front() {
            return Some(Read::Key {
                key: key.clone(),
                up_to_id: self.read_up_to,
                rows: rows_left.clamp(1, KEY_LOOKAHEAD) as u32,
                bytes: bytes_left,
            });
        }
        // Rows the window reads past do not take room, so a read asks for a whole window's
        // worth whatever is left: a long run of one key's deliveries is passed in few reads.
        (rows_left > 0 && bytes_left > 0).then(|| Read::After {
            after_id: self.read_up_to,
            rows: u32::try_from(window.rows).unwrap_or(u32::MAX),
            bytes: bytes_left,
        })
    }

    /// Take what `read` found into the window, within `window`. Returns whether reading on
    /// ([`Backlog::next_read`]) may find more now.
    pub fn took(&mut self, read: Read, found: Queued, window: Window) -> bool {
        match read {
            Read::Key { key, .. } => {
                debug_assert_eq!(self.to_read.front(), Some(&key));
                self.to_read.pop_front();
                for delivery in found.rows {
                    self.hold(delivery);
                }
                if found.complete {
                    // Every pending delivery of the key up to `read_up_to` is in the window.
                    self.read_past.remove(&key);
                }
                true
            }
            Read::After { after_id, .. } => {
                for delivery in found.rows {
                    if self.running.contains_key(&delivery.id)
                        || self.waiting.contains_key(&delivery.id)
                    {
                        // Read again after a rescan, while it ran or since it ran and waits
                        // for its retry: it is held already.
                        self.read_up_to = self.read_up_to.max(delivery.id);
                        continue;
                    }
                    if let Some(key) = &delivery.ordering_key
                        && (self.read_past.contains(key)
                            || self.per_key.get(key).copied().unwrap_or(0) >= KEY_LOOKAHEAD)
                    {
                        // An earlier delivery of its key is in the store or in the window:
                        // this one cannot start before those, so it stays in the store.
                        self.read_past.insert(key.clone());
                        self.read_up_to = self.read_up_to.max(delivery.id);
                        continue;
                    }
                    if self.len() >= window.rows {
                        // No room: it is read again next time, and so is what follows.
                        return false;
                    }
                    self.read_up_to = self.read_up_to.max(delivery.id);
                    self.hold(delivery);
                }
                // A read takes at least one row when there is one, so an empty one is at the end.
                !found.complete && self.read_up_to > after_id
            }
        }
    }

    fn hold(&mut self, delivery: QueuedDelivery) {
        if let Some(key) = &delivery.ordering_key {
            *self.per_key.entry(key.clone()).or_default() += 1;
        }
        self.bytes += delivery.footprint();
        self.waiting.insert(delivery.id, delivery);
    }

    /// A delivery left the window for good.
    fn release(&mut self, delivery: &QueuedDelivery) {
        self.bytes = self.bytes.saturating_sub(delivery.footprint());
        let Some(key) = &delivery.ordering_key else {
            return;
        };
        let Some(count) = self.per_key.get_mut(key) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.per_key.remove(key);
            if self.read_past.contains(key) {
                self.to_read.push_back(key.clone());
            }
        }
    }

    /// Forget what waits and read everything again (old ids became pending: a redrive).
    /// What runs stays, holding its key.
    pub fn rescan(&mut self) {
        self.waiting.clear();
        self.read_past.clear();
        self.to_read.clear();
        self.read_up_to = 0;
        self.per_key.clear();
        self.bytes = 0;
        for delivery in self.running.values() {
            if let Some(key) = &delivery.ordering_key {
                *self.per_key.entry(key.clone()).or_default() += 1;
            }
            self.bytes += delivery.footprint();
        }
    }

    /// Take `id` from the waiting deliveries to run it; `false` if it is not waiting.
    pub fn start(&mut self, id: i64) -> bool {
        let Some(delivery) = self.waiting.remove(&id) else {
            return false;
        };
        self.running.insert(id, delivery);
        true
    }

    /// A delivery that could not start after all: it waits again, first in its key.
    pub fn unstart(&mut self, id: i64) {
        if let Some(delivery) = self.running.remove(&id) {
            self.waiting.insert(id, delivery);
        }
    }

    /// A delivery that ran is settled: it leaves the backlog.
    pub fn settled(&mut self, id: i64) {
        if let Some(delivery) = self.running.remove(&id) {
            self.release(&delivery);
        }
    }

    /// A delivery that ran is pending again, not before `not_before_ms`, holding its key.
    pub fn again(&mut self, id: i64, not_before_ms: i64) {
        if let Some(mut delivery) = self.running.remove(&id) {
            delivery.not_before_ms = not_before_ms;
            self.waiting.insert(id, delivery);
        }
    }
}

/// What [`select`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// Deliveries to start now, in append order.
    pub start: Vec<i64>,
    /// When to look again at the latest, if nothing else happens first: the earliest retry
    /// due, or the next rate token (unix ms).
    pub wake_at: Option<i64>,
}

/// The deliveries of `backlog` that may start at `now_ms` under the rules (module docs).
pub fn select(
    backlog: &Backlog,
    now_ms: i64,
    free_permits: usize,
    mut bucket: Option<&mut TokenBucket>,
) -> Selection {
    let mut held: HashSet<&OrderingKey> = backlog
        .running
        .values()
        .filter_map(|d| d.ordering_key.as_ref())
        .collect();
    let mut selection = Selection::default();
    let wake_at = |at: i64, selection: &mut Selection| {
        selection.wake_at = Some(selection.wake_at.map_or(at, |t| t.min(at)));
    };
    for delivery in backlog.waiting.values() {
        if let Some(key) = &delivery.ordering_key
            && !held.insert(key)
        {
            continue; // an earlier delivery of this key runs or waits for its retry
        }
        if delivery.not_before_ms > now_ms {
            wake_at(delivery.not_before_ms, &mut selection);
            continue;
        }
        if selection.start.len() >= free_permits {
            break; // a finishing invocation wakes the worker
        }
        if let Some(bucket) = bucket.as_deref_mut()
            && let Err(next_token_ms) = bucket.try_take(now_ms)
        {
            wake_at(next_token_ms, &mut selection);
            break;
        }
        selection.start.push(delivery.id);
    }
    selection
}

/// A token bucket for a handler's `rate`: holds up to one second of tokens (at least one),
/// so a burst never exceeds a second's worth and slow rates are spread evenly.
///
/// It counts in credits, integers: every millisecond adds `tokens` credits (the rate's
/// numerator) and a token costs the period in milliseconds, so that `10/s` gives a token
/// exactly every 100 ms with no floating-point drift.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    credits_per_ms: u64,
    token_cost: u64,
    capacity: u64,
    credits: u64,
    last_ms: i64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate: Rate, now_ms: i64) -> TokenBucket {
        let credits_per_ms = u64::from(rate.tokens.max(1));
        let token_cost = u64::try_from(rate.period.duration().as_millis()).unwrap_or(u64::MAX);
        let capacity = (credits_per_ms * 1000).max(token_cost);
        TokenBucket {
            credits_per_ms,
            token_cost,
            capacity,
            credits: capacity,
            last_ms: now_ms,
        }
    }

    /// Take a token, or say when (unix ms) the next one is there.
    pub fn try_take(&mut self, now_ms: i64) -> Result<(), i64> {
        let elapsed_ms = u64::try_from(now_ms - self.last_ms).unwrap_or(0);
        self.credits = self
            .credits
            .saturating_add(elapsed_ms.saturating_mul(self.credits_per_ms))
            .min(self.capacity);
        self.last_ms = now_ms.max(self.last_ms);
        if self.credits >= self.token_cost {
            self.credits -= self.token_cost;
            Ok(())
        } else {
            let missing = self.token_cost - self.credits;
            let wait_ms = missing.div_ceil(self.credits_per_ms);
            Err(self.last_ms + i64::try_from(wait_ms).unwrap_or(i64::MAX / 2))
        }
    }

    /// Return a token taken for an invocation that did not start.
    pub fn give_back(&mut self) {
        self.credits = (self.credits + self.token_cost).min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    //! The rules, over time: a small simulation steps a backlog through [`select`] under
    //! tokio's paused clock, filling its window from a model of the store the way the worker
    //! does, running each started delivery for a fixed time and failing the ones a test says
    //! fail, and records who started when.

    use std::collections::BTreeSet;
    use std::convert::Infallible;
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::config::RatePeriod;

    fn delivery(id: i64, key: Option<OrderingKey>) -> QueuedDelivery {
        QueuedDelivery {
            id,
            ordering_key: key,
            not_before_ms: 0,
        }
    }

    fn key(k: &str) -> Option<OrderingKey> {
        Some(OrderingKey::Key(k.to_owned()))
    }

    const WIDE: Window = Window {
        rows: 256,
        bytes: 1 << 20,
    };

    /// The store's pending deliveries, by id, read as the store reads them.
    #[derive(Default)]
    struct Pending(BTreeMap<i64, QueuedDelivery>);

    impl Pending {
        fn of(deliveries: impl IntoIterator<Item = QueuedDelivery>) -> Pending {
            Pending(deliveries.into_iter().map(|d| (d.id, d)).collect())
        }

        fn read(&self, read: &Read) -> Queued {
            let rows: Box<dyn Iterator<Item = &QueuedDelivery>> = match read {
                Read::After { after_id, .. } => Box::new(self.0.range(after_id + 1..).map(|e| e.1)),
                Read::Key { key, up_to_id, .. } => Box::new(
                    self.0
                        .range(..=up_to_id)
                        .map(|e| e.1)
                        .filter(move |d| d.ordering_key.as_ref() == Some(key)),
                ),
            };
            let (Read::After {
                rows: limit, bytes, ..
            }
            | Read::Key {
                rows: limit, bytes, ..
            }) = read;
            Queued::take(rows.cloned().map(Ok::<_, Infallible>), *limit, *bytes).unwrap()
        }

        /// Fill `backlog`'s window the way the worker does, counting the reads.
        fn fill(&self, backlog: &mut Backlog, window: Window) -> usize {
            let mut reads = 0;
            while let Some(read) = backlog.next_read(window) {
                reads += 1;
                let found = self.read(&read);
                if !backlog.took(read, found, window) {
                    break;
                }
            }
            reads
        }
    }

    /// A worker without I/O: starts what [`select`] says, each run takes `run_ms`, and a
    /// run of a delivery in `fail_once` fails the first time and is retried `retry_ms` later.
    struct Sim {
        clock: Clock,
        start_ms: i64,
        store: Pending,
        backlog: Backlog,
        window: Window,
        permits: usize,
        bucket: Option<TokenBucket>,
        run_ms: i64,
        fail_once: BTreeSet<i64>,
        retry_ms: i64,
        /// (delivery, ms after the start) of each start, in order.
        started: Vec<(i64, i64)>,
        /// The most the window held at once: rows, bytes.
        peak: (usize, usize),
    }

    impl Sim {
        fn new(deliveries: Vec<QueuedDelivery>, permits: usize) -> Sim {
            Sim::on(Clock::new(), deliveries, permits)
        }

        /// On `clock`: a test that sets due times from a clock of its own must run the
        /// simulation on that one (two clocks read the wall clock at different moments).
        fn on(clock: Clock, deliveries: Vec<QueuedDelivery>, permits: usize) -> Sim {
            Sim {
                start_ms: clock.now_ms(),
                clock,
                store: Pending::of(deliveries),
                backlog: Backlog::default(),
                window: WIDE,
                permits,
                bucket: None,
                run_ms: 10,
                fail_once: BTreeSet::new(),
                retry_ms: 100,
                started: Vec::new(),
                peak: (0, 0),
            }
        }

        /// Run until the store holds nothing pending, at most `limit_ms` of simulated time.
        async fn run(&mut self, limit_ms: i64) {
            let mut running: Vec<(i64, i64)> = Vec::new(); // (ends at, delivery)
            loop {
                let now = self.clock.now_ms();
                assert!(
                    now - self.start_ms <= limit_ms,
                    "still running after {limit_ms} ms"
                );
                // Finish what ends now: the outcome reaches the store, then the backlog.
                running.sort();
                while running.first().is_some_and(|(end, _)| *end <= now) {
                    let (_, id) = running.remove(0);
                    if self.fail_once.remove(&id) {
                        let retry_at = now + self.retry_ms;
                        self.store.0.get_mut(&id).unwrap().not_before_ms = retry_at;
                        self.backlog.again(id, retry_at);
                    } else {
                        self.store.0.remove(&id);
                        self.backlog.settled(id);
                    }
                }
                if self.store.0.is_empty() {
                    assert!(
                        self.backlog.is_empty(),
                        "the window holds settled deliveries"
                    );
                    return;
                }
                self.store.fill(&mut self.backlog, self.window);
                self.peak.0 = self.peak.0.max(self.backlog.len());
                self.peak.1 = self.peak.1.max(self.backlog.bytes());
                let free = self.permits - running.len();
                let selection = select(&self.backlog, now, free, self.bucket.as_mut());
                for id in selection.start {
                    assert!(self.backlog.start(id), "selected from the backlog");
                    self.started.push((id, now - self.start_ms));
                    running.push((now + self.run_ms, id));
                }
                let next_end = running.iter().map(|(end, _)| *end).min();
                match [next_end, selection.wake_at].into_iter().flatten().min() {
                    Some(at) => {
                        tokio::time::sleep(self.clock.until(at).max(Duration::from_millis(1))).await
                    }
                    None => panic!("stuck: nothing runs and nothing is due"),
                }
            }
        }

        fn order(&self) -> Vec<i64> {
            self.started.iter().map(|(id, _)| *id).collect()
        }

        fn started_at(&self, id: i64) -> Vec<i64> {
            self.started
                .iter()
                .filter(|(d, _)| *d == id)
                .map(|(_, at)| *at)
                .collect()
        }
    }

    /// A backlog filled from the store `deliveries`.
    fn backlog_of(deliveries: impl IntoIterator<Item = QueuedDelivery>) -> Backlog {
        let mut backlog = Backlog::default();
        Pending::of(deliveries).fill(&mut backlog, WIDE);
        backlog
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_runs_in_append_order_while_other_keys_run_beside_it() {
        let deliveries = vec![
            delivery(1, key("a")),
            delivery(2, key("b")),
            delivery(3, key("a")),
            delivery(4, key("b")),
            delivery(5, key("a")),
        ];
        let mut sim = Sim::new(deliveries, 8);
        sim.run(1000).await;
        // `a` and `b` each one at a time, in order; the two keys side by side.
        assert_eq!(sim.started, [(1, 0), (2, 0), (3, 10), (4, 10), (5, 20)]);
    }

    #[tokio::test(start_paused = true)]
    async fn serial_is_one_line_whatever_the_permits() {
        let deliveries = (1..=20)
            .map(|id| delivery(id, Some(OrderingKey::Serial)))
            .collect();
        let mut sim = Sim::new(deliveries, 16);
        sim.run(1000).await;
        // Past the first [`KEY_LOOKAHEAD`], the window reads them by key as it goes.
        let expected: Vec<(i64, i64)> = (1..=20).map(|id| (id, (id - 1) * 10)).collect();
        assert_eq!(sim.started, expected);
        assert!(sim.peak.0 <= KEY_LOOKAHEAD, "held {} at once", sim.peak.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_holds_back_only_its_own_key() {
        let deliveries = vec![
            delivery(1, key("k")),
            delivery(2, key("k")),
            delivery(3, key("l")),
            delivery(4, key("l")),
        ];
        let mut sim = Sim::new(deliveries, 8);
        sim.fail_once.insert(1);
        sim.run(1000).await;
        // 1 fails at 10 ms and is due again at 110 ms; 2 waits behind it, `l` does not.
        assert_eq!(sim.started_at(1), [0, 110]);
        assert_eq!(sim.started_at(2), [120]);
        assert_eq!(sim.started_at(3), [0]);
        assert_eq!(sim.started_at(4), [10]);
    }

    /// One key's failing delivery with a long backoff and 300 more of that key appended after
    /// it: they take a few rows of a small window, the other key behind them runs at once,
    /// and the blocked key's deliveries run in order once its first one settles.
    #[tokio::test(start_paused = true)]
    async fn a_blocked_key_with_hundreds_behind_it_holds_back_only_itself() {
        let mut deliveries: Vec<_> = (1..=301).map(|id| delivery(id, key("k"))).collect();
        deliveries.push(delivery(302, key("l")));
        deliveries.push(delivery(303, None));
        let mut sim = Sim::new(deliveries, 4);
        sim.window = Window {
            rows: 16,
            bytes: 1 << 20,
        };
        sim.fail_once.insert(1);
        sim.retry_ms = 60_000;
        sim.run(120_000).await;
        assert_eq!(sim.started_at(302), [0], "`l` is not held back by `k`");
        assert_eq!(sim.started_at(303), [0]);
        // `k` in append order, 2 only after 1 finally succeeded (at 60 010 + 10 ms).
        let k: Vec<i64> = sim.order().into_iter().filter(|id| *id <= 301).collect();
        let expected: Vec<i64> = [1].into_iter().chain(1..=301).collect();
        assert_eq!(k, expected);
        assert_eq!(sim.started_at(2), [60_020]);
        assert!(sim.peak.0 <= 16, "held {} rows at once", sim.peak.0);
    }

    /// A restart forgets the window; the store still says which delivery of the key waits
    /// for its retry, so the window read afresh holds back that key, and that key alone.
    #[tokio::test(start_paused = true)]
    async fn a_window_read_afresh_after_a_restart_holds_back_only_the_blocked_key() {
        let clock = Clock::new();
        let mut first = delivery(1, key("k"));
        first.not_before_ms = clock.now_ms() + 30_000; // failed before the restart
        let mut deliveries = vec![first];
        deliveries.extend((2..=300).map(|id| delivery(id, key("k"))));
        deliveries.push(delivery(301, key("l")));
        let mut sim = Sim::on(clock, deliveries, 4);
        sim.window = Window {
            rows: 16,
            bytes: 1 << 20,
        };
        sim.run(60_000).await;
        assert_eq!(sim.started_at(301), [0]);
        assert_eq!(sim.started_at(1), [30_000]);
        let k: Vec<i64> = sim.order().into_iter().filter(|id| *id <= 300).collect();
        assert_eq!(k, (1..=300).collect::<Vec<_>>());
    }

    /// Many keys interleaved, some failing, through a window smaller than the backlog and
    /// one that redrives mid-way: every delivery runs, each key in append order.
    #[tokio::test(start_paused = true)]
    async fn reading_past_keys_loses_and_reorders_nothing() {
        // A fixed pseudo-random mix of 7 keys and unkeyed deliveries.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let deliveries: Vec<_> = (1..=400)
            .map(|id| match next() % 8 {
                7 => delivery(id, None),
                k => delivery(id, key(&format!("k{k}"))),
            })
            .collect();
        let keys: HashMap<i64, Option<OrderingKey>> = deliveries
            .iter()
            .map(|d| (d.id, d.ordering_key.clone()))
            .collect();
        let mut sim = Sim::new(deliveries, 3);
        sim.window = Window {
            rows: 12,
            bytes: 1 << 20,
        };
        sim.fail_once = (1..=400).filter(|_| next() % 5 == 0).collect();
        sim.run(100_000).await;

        let mut firsts = Vec::new();
        for id in sim.order() {
            if !firsts.contains(&id) {
                firsts.push(id);
            }
        }
        assert_eq!(firsts.len(), 400, "every delivery ran");
        for k in (0..7).map(|k| key(&format!("k{k}"))) {
            let of_key: Vec<i64> = firsts.iter().copied().filter(|id| keys[id] == k).collect();
            assert!(of_key.is_sorted(), "{k:?} out of order: {of_key:?}");
        }
        assert!(sim.peak.0 <= 12, "held {} rows at once", sim.peak.0);
    }

    /// A rescan whose read stops short of a running delivery, which then fails and waits
    /// again: read once more, it is still one delivery, and its key moves on once it is done.
    #[test]
    fn a_delivery_read_again_after_a_rescan_is_held_once() {
        let mut deliveries = vec![delivery(1, None), delivery(2, None)];
        deliveries.extend((3..=20).map(|id| delivery(id, key("k"))));
        let store = Pending::of(deliveries);
        let mut backlog = Backlog::default();
        store.fill(&mut backlog, WIDE);
        assert!(backlog.start(3));
        backlog.rescan();
        let narrow = Window {
            rows: 2,
            bytes: 1 << 20,
        };
        store.fill(&mut backlog, narrow); // 1 beside the running 3, and no further
        backlog.again(3, 0);
        assert!(backlog.start(1));
        backlog.settled(1);
        store.fill(&mut backlog, WIDE);
        // 2, and the first deliveries of `k` (3 among them once).
        assert_eq!(backlog.len(), 1 + KEY_LOOKAHEAD);
        let footprints =
            delivery(2, None).footprint() + KEY_LOOKAHEAD * delivery(3, key("k")).footprint();
        assert_eq!(backlog.bytes(), footprints);
        // `k` runs to its end, read by key past the lookahead.
        let mut store = store;
        let mut order = Vec::new();
        while let Some(&id) = select(&backlog, 0, 8, None).start.last() {
            assert!(backlog.start(id));
            backlog.settled(id);
            store.0.remove(&id);
            order.push(id);
            store.fill(&mut backlog, WIDE);
        }
        order.retain(|id| *id != 2);
        assert_eq!(order, (3..=20).collect::<Vec<_>>());
        assert!(backlog.is_empty());
    }

    #[test]
    fn a_rescan_reads_again_what_waits_and_keeps_what_runs() {
        let store = Pending::of([
            delivery(1, key("a")),
            delivery(2, key("a")),
            delivery(3, None),
        ]);
        let mut backlog = Backlog::default();
        store.fill(&mut backlog, WIDE);
        assert!(backlog.start(1));
        backlog.rescan();
        store.fill(&mut backlog, WIDE);
        // 1 is held once (it runs), 2 waits behind it, 3 is free.
        assert_eq!(backlog.len(), 3);
        assert_eq!(select(&backlog, 0, 8, None).start, [3]);
        backlog.settled(1);
        assert_eq!(select(&backlog, 0, 8, None).start, [2, 3]);
    }

    /// The window's bytes are what its deliveries' keys cost: with long keys it holds what
    /// fits in its budget (and one more at most), and reads on once some have run.
    #[test]
    fn the_window_stops_reading_at_its_byte_budget() {
        let long = |id: i64| delivery(id, key(&format!("{id:0>10000}")));
        let footprint = long(1).footprint();
        let store = Pending::of((1..=100).map(long));
        let window = Window {
            rows: 256,
            bytes: 10 * footprint + footprint / 2,
        };
        let mut backlog = Backlog::default();
        store.fill(&mut backlog, window);
        // Ten fit; the eleventh reaches the budget and is the last read.
        assert_eq!(backlog.len(), 11);
        assert!(backlog.bytes() < window.bytes + footprint);
        assert!(backlog.next_read(window).is_none());
        // Room again once some have run, and only as much as they made.
        for id in 1..=3 {
            assert!(backlog.start(id));
            backlog.settled(id);
        }
        store.fill(&mut backlog, window);
        assert_eq!(backlog.len(), 11);

        // A key longer than the whole budget is still read, alone.
        let mut backlog = Backlog::default();
        let tiny = Window {
            rows: 256,
            bytes: footprint / 2,
        };
        store.fill(&mut backlog, tiny);
        assert_eq!(backlog.len(), 1);
        assert!(backlog.next_read(tiny).is_none());
    }

    #[test]
    fn a_long_run_of_one_key_is_passed_in_few_reads() {
        let mut deliveries: Vec<_> = (1..=1000).map(|id| delivery(id, key("k"))).collect();
        deliveries.push(delivery(1001, key("l")));
        let store = Pending::of(deliveries);
        let mut backlog = Backlog::default();
        let window = Window {
            rows: 256,
            bytes: 1 << 20,
        };
        let reads = store.fill(&mut backlog, window);
        assert_eq!(backlog.len(), KEY_LOOKAHEAD + 1);
        assert_eq!(select(&backlog, 0, 8, None).start, [1, 1001]);
        assert!(reads <= 5, "{reads} reads");
    }

    #[tokio::test(start_paused = true)]
    async fn unordered_deliveries_fill_the_permits_and_a_retry_waits_for_its_due_time() {
        let deliveries = (1..=6).map(|id| delivery(id, None)).collect();
        let mut sim = Sim::new(deliveries, 2);
        sim.fail_once.insert(2);
        sim.run(1000).await;
        assert_eq!(sim.order(), [1, 2, 3, 4, 5, 6, 2]);
        assert_eq!(sim.started_at(2), [0, 110]);
        assert_eq!(sim.started_at(6), [20]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_of_unordered_deliveries_reads_on_as_they_finish() {
        let deliveries = (1..=40).map(|id| delivery(id, None)).collect();
        let mut sim = Sim::new(deliveries, 2);
        sim.window = Window {
            rows: 4,
            bytes: 1 << 20,
        };
        sim.run(1000).await;
        assert_eq!(sim.order(), (1..=40).collect::<Vec<_>>());
        assert_eq!(sim.peak.0, 4);
    }

    #[test]
    fn a_delivery_not_due_says_when_to_look_again() {
        let mut later = delivery(1, None);
        later.not_before_ms = 5_000;
        let mut sooner = delivery(2, key("a"));
        sooner.not_before_ms = 3_000;
        let backlog = backlog_of([later, sooner, delivery(3, key("a"))]);
        let selection = select(&backlog, 1_000, 8, None);
        // 3 is held behind 2, which is not due.
        assert_eq!(
            selection,
            Selection {
                start: vec![],
                wake_at: Some(3_000)
            }
        );
        assert_eq!(select(&backlog, 3_000, 8, None).start, [2]);
        assert_eq!(select(&backlog, 5_000, 8, None).start, [1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_paces_starts_and_says_when_the_next_token_comes() {
        let deliveries = (1..=25).map(|id| delivery(id, None)).collect();
        let mut sim = Sim::new(deliveries, 64);
        sim.bucket = Some(TokenBucket::new(
            Rate {
                tokens: 10,
                period: RatePeriod::Second,
            },
            sim.clock.now_ms(),
        ));
        sim.run(5_000).await;
        // A second's burst at once, then one every 100 ms.
        let starts: Vec<i64> = sim.started.iter().map(|(_, at)| *at).collect();
        assert_eq!(&starts[..10], [0; 10]);
        assert_eq!(&starts[10..13], [100, 200, 300]);
        assert_eq!(starts[24], 1500);
    }

    #[test]
    fn the_token_bucket_allows_a_second_of_burst_then_paces() {
        let mut bucket = TokenBucket::new(
            Rate {
                tokens: 10,
                period: RatePeriod::Second,
            },
            0,
        );
        for _ in 0..10 {
            assert!(bucket.try_take(0).is_ok());
        }
        assert_eq!(bucket.try_take(0), Err(100));
        bucket.give_back();
        assert!(bucket.try_take(0).is_ok());
        assert!(bucket.try_take(100).is_ok());

        let mut slow = TokenBucket::new(
            Rate {
                tokens: 60,
                period: RatePeriod::Minute,
            },
            0,
        );
        assert!(slow.try_take(0).is_ok());
        assert_eq!(slow.try_take(0), Err(1000));
        assert!(slow.try_take(1000).is_ok());
    }

    #[test]
    fn a_delivery_that_could_not_start_keeps_its_place() {
        let store = Pending::of([delivery(1, key("a")), delivery(2, key("a"))]);
        let mut backlog = Backlog::default();
        store.fill(&mut backlog, WIDE);
        assert!(backlog.start(1));
        assert!(
            select(&backlog, 0, 8, None).start.is_empty(),
            "`a` is held by 1"
        );
        backlog.unstart(1);
        assert_eq!(select(&backlog, 0, 8, None).start, [1]);
        // A re-read does not add what runs.
        assert!(backlog.start(1));
        backlog.rescan();
        store.fill(&mut backlog, WIDE);
        assert_eq!(backlog.len(), 2);
    }
}
