//! Which pending deliveries start now: the ordering rules, as a function of the backlog, the
//! time, the free permits and the rate bucket. No I/O and no clock of its own, so that every
//! rule is tested here with the time given.
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

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::Rate;
use crate::router::OrderingKey;
use crate::store::PendingDelivery;

/// What the worker knows of its handler's pending deliveries: a window of what the store
/// holds, read incrementally, and the deliveries it started.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Pending and not running, by id (= append order).
    waiting: BTreeMap<i64, PendingDelivery>,
    /// Running: id -> ordering key.
    running: HashMap<i64, Option<OrderingKey>>,
    /// The highest id read from the store.
    read_up_to: i64,
}

impl Backlog {
    /// The highest delivery id read so far; the next read starts after it.
    pub fn read_up_to(&self) -> i64 {
        self.read_up_to
    }

    /// Deliveries held, waiting or running.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add deliveries read from the store (one that runs already is not added twice).
    pub fn add(&mut self, fresh: impl IntoIterator<Item = PendingDelivery>) {
        for delivery in fresh {
            self.read_up_to = self.read_up_to.max(delivery.id);
            if !self.running.contains_key(&delivery.id) {
                self.waiting.insert(delivery.id, delivery);
            }
        }
    }

    /// Forget what waits and read everything again (old ids became pending: a redrive).
    pub fn rescan(&mut self) {
        self.waiting.clear();
        self.read_up_to = 0;
    }

    /// Take `id` from the waiting deliveries to run it.
    pub fn start(&mut self, id: i64) -> Option<PendingDelivery> {
        let delivery = self.waiting.remove(&id)?;
        self.running.insert(id, delivery.ordering_key.clone());
        Some(delivery)
    }

    /// A delivery that could not start after all: it waits again, first in its key.
    pub fn unstart(&mut self, delivery: PendingDelivery) {
        self.running.remove(&delivery.id);
        self.waiting.insert(delivery.id, delivery);
    }

    /// A delivery that ran is settled: it leaves the backlog.
    pub fn settled(&mut self, id: i64) {
        self.running.remove(&id);
    }

    /// A delivery that ran is pending again, not before `not_before_ms`, holding its key.
    pub fn again(&mut self, mut delivery: PendingDelivery, not_before_ms: i64) {
        self.running.remove(&delivery.id);
        delivery.not_before_ms = not_before_ms;
        self.waiting.insert(delivery.id, delivery);
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
    let mut held: HashSet<&OrderingKey> = backlog.running.values().flatten().collect();
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
    //! tokio's paused clock, running each started delivery for a fixed time and failing the
    //! ones a test says fail, and records who started when.

    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::config::RatePeriod;
    use crate::event::Event;
    use crate::name::HandlerName;

    fn delivery(id: i64, key: Option<OrderingKey>) -> PendingDelivery {
        PendingDelivery {
            id,
            seq: id,
            handler: HandlerName::new("h").unwrap(),
            ordering_key: key,
            attempts: 0,
            not_before_ms: 0,
            event: Event::builder(id.to_string(), "/t", "t.v1")
                .build()
                .unwrap(),
        }
    }

    fn key(k: &str) -> Option<OrderingKey> {
        Some(OrderingKey::Key(k.to_owned()))
    }

    /// A worker without I/O: starts what [`select`] says, each run takes `run_ms`, and a
    /// run of a delivery in `fail_once` fails the first time and is retried `retry_ms` later.
    struct Sim {
        clock: Clock,
        start_ms: i64,
        backlog: Backlog,
        permits: usize,
        bucket: Option<TokenBucket>,
        run_ms: i64,
        fail_once: BTreeSet<i64>,
        retry_ms: i64,
        /// (delivery, ms after the start) of each start, in order.
        started: Vec<(i64, i64)>,
    }

    impl Sim {
        fn new(deliveries: Vec<PendingDelivery>, permits: usize) -> Sim {
            let clock = Clock::new();
            let mut backlog = Backlog::default();
            backlog.add(deliveries);
            Sim {
                start_ms: clock.now_ms(),
                clock,
                backlog,
                permits,
                bucket: None,
                run_ms: 10,
                fail_once: BTreeSet::new(),
                retry_ms: 100,
                started: Vec::new(),
            }
        }

        /// Run until nothing is left, at most `limit_ms` of simulated time.
        async fn run(&mut self, limit_ms: i64) {
            let mut running: Vec<(i64, PendingDelivery)> = Vec::new(); // (ends at, delivery)
            while !self.backlog.is_empty() {
                let now = self.clock.now_ms();
                assert!(
                    now - self.start_ms <= limit_ms,
                    "still running after {limit_ms} ms"
                );
                // Finish what ends now.
                running.sort_by_key(|(end, _)| *end);
                while running.first().is_some_and(|(end, _)| *end <= now) {
                    let (_, delivery) = running.remove(0);
                    if self.fail_once.remove(&delivery.id) {
                        self.backlog.again(delivery, now + self.retry_ms);
                    } else {
                        self.backlog.settled(delivery.id);
                    }
                }
                let free = self.permits - running.len();
                let selection = select(&self.backlog, now, free, self.bucket.as_mut());
                for id in selection.start {
                    let delivery = self.backlog.start(id).expect("selected from the backlog");
                    self.started.push((id, now - self.start_ms));
                    running.push((now + self.run_ms, delivery));
                }
                let next_end = running.iter().map(|(end, _)| *end).min();
                let next = [next_end, selection.wake_at].into_iter().flatten().min();
                match next {
                    Some(at) => {
                        tokio::time::sleep(self.clock.until(at).max(Duration::from_millis(1))).await
                    }
                    None if self.backlog.is_empty() => break,
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
        let deliveries = (1..=4)
            .map(|id| delivery(id, Some(OrderingKey::Serial)))
            .collect();
        let mut sim = Sim::new(deliveries, 16);
        sim.run(1000).await;
        assert_eq!(sim.started, [(1, 0), (2, 10), (3, 20), (4, 30)]);
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

    #[test]
    fn a_delivery_not_due_says_when_to_look_again() {
        let mut backlog = Backlog::default();
        let mut later = delivery(1, None);
        later.not_before_ms = 5_000;
        let mut sooner = delivery(2, key("a"));
        sooner.not_before_ms = 3_000;
        backlog.add([later, sooner, delivery(3, key("a"))]);
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
        let mut backlog = Backlog::default();
        backlog.add([delivery(1, key("a")), delivery(2, key("a"))]);
        let first = backlog.start(1).unwrap();
        assert!(
            select(&backlog, 0, 8, None).start.is_empty(),
            "`a` is held by 1"
        );
        backlog.unstart(first);
        assert_eq!(select(&backlog, 0, 8, None).start, [1]);
        // A re-read does not add what runs.
        backlog.start(1).unwrap();
        backlog.add([delivery(1, key("a"))]);
        assert_eq!(backlog.len(), 2);
    }
}
