//! Back-pressure: whether ingress may add work to the handlers' queues, and what a 429 asks a
//! client to wait.
//!
//! Each deployed handler has a [`Queue`]: how many of its deliveries are appended and not yet
//! settled, and how fast it has settled them lately. Whoever adds deliveries asks [`admit`]
//! first: ingress before it appends, the scheduler before it commits the events an
//! invocation emitted. The policy is that a request is refused whole if any handler it routes
//! to would pass its `max_pending`, or if any handler downstream of those (reached through
//! the events handlers emit) is full already: its work would only pile up in front of that
//! handler. The check and the count are one atomic step per handler (a reservation), so
//! concurrent requests cannot together overshoot the limit; a reservation that is not kept
//! (the append failed, or the events were duplicates) is given back.
//!
//! Ingress answers a refusal with 429; the scheduler waits for the room
//! ([`Queue::room_made`]), so a full handler slows down the handlers that feed it instead of
//! letting its queue grow. Only a redrive, an operator's act, adds deliveries whatever the
//! limit ([`Queue::added`]).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::clock::Clock;
use crate::name::HandlerName;

/// What a 429 asks a client to wait when the handler has not drained anything lately.
pub const UNKNOWN_DRAIN_WAIT: Duration = Duration::from_secs(5);
/// The longest wait a 429 asks for.
pub const MAX_DRAIN_WAIT: Duration = Duration::from_secs(60);

/// One handler's queue of deliveries appended and not yet settled (done or dead).
pub struct Queue {
    pending: AtomicU64,
    drain: Mutex<DrainRate>,
    /// Rung whenever room is made: a delivery settled, or a reservation given back.
    room: Notify,
    clock: Clock,
}

impl Queue {
    /// A queue that already holds `pending` deliveries (what the store had at start).
    pub fn new(pending: u64, clock: Clock) -> Queue {
        Queue {
            pending: AtomicU64::new(pending),
            drain: Mutex::new(DrainRate::new(clock.now_ms())),
            room: Notify::new(),
            clock,
        }
    }

    /// Deliveries appended and not yet settled.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// The count as someone who sees the whole queue tells it (a cluster host: what its
    /// handler's consumers hold, over all hosts), replacing this host's own count.
    pub fn set_pending(&self, n: u64) {
        self.pending.store(n, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// Count `n` more deliveries whatever the limit (a redrive).
    pub fn added(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::Relaxed);
    }

    /// Resolves once room is made in this queue after this call, even before it is first
    /// polled (so a caller can ask, then look, then wait, without missing what happened in
    /// between).
    pub fn room_made(&self) -> Notified<'_> {
        self.room.notified()
    }

    /// One delivery settled: it leaves the queue and counts toward the drain rate.
    pub fn settled(&self) {
        // Never below zero: a count that wrapped would refuse every request for good. (`Err`
        // says it was zero already: nothing to take off.)
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if let Ok(mut drain) = self.drain.lock() {
            drain.settled(self.clock.now_ms());
        }
        self.room.notify_waiters();
    }

    /// Count `n` more if the queue stays within `limit`; else the count it holds now.
    fn try_reserve(&self, n: u64, limit: u64) -> Result<(), u64> {
        self.pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                pending.checked_add(n).filter(|&total| total <= limit)
            })
            .map(drop)
    }

    fn release(&self, n: u64) {
        // The closure always answers `Some`, so this cannot fail.
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                Some(pending.saturating_sub(n))
            });
        if n > 0 {
            self.room.notify_waiters();
        }
    }

    /// How long until `excess` deliveries have drained, at the rate this queue settled them
    /// lately.
    pub fn time_to_drain(&self, excess: u64) -> Duration {
        let rate = self.drain.lock().map_or(0.0, |d| d.per_second);
        if rate <= 0.0 {
            return UNKNOWN_DRAIN_WAIT;
        }
        Duration::from_secs_f64(excess as f64 / rate).clamp(Duration::from_secs(1), MAX_DRAIN_WAIT)
    }
}

/// A request's demand on one handler's queue: `incoming` deliveries against `limit`.
pub struct Demand<'a> {
    pub handler: &'a HandlerName,
    pub queue: &'a Arc<Queue>,
    pub limit: u64,
    pub incoming: u64,
}

/// A handler a request's events lead to beyond those they go to (through the events
/// handlers emit): it must not be full.
pub struct Downstream<'a> {
    pub handler: &'a HandlerName,
    pub queue: &'a Arc<Queue>,
    pub limit: u64,
    /// The type of the request's event that leads there.
    pub of_type: &'a str,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub handler: HandlerName,
    pub limit: u64,
    /// What the 429's `Retry-After` says.
    pub retry_after: Duration,
    /// When the full handler is downstream of the request's events: the type that leads
    /// there.
    pub downstream_of: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Refusal { handler, limit, .. } = self;
        match &self.downstream_of {
            None => write!(
                f,
                "handler `{handler}` has {limit} deliveries waiting, its limit"
            ),
            Some(ty) => write!(
                f,
                "handler `{handler}`, downstream of `{ty}`, has {limit} deliveries waiting, \
                 its limit: the work would pile up in front of it"
            ),
        }
    }
}

/// Room taken in handlers' queues for one request. Dropped, it gives the room back; the
/// request keeps it with [`Admission::keep`] once its deliveries are stored.
#[must_use = "an admission not kept gives its room back when dropped"]
pub struct Admission {
    reserved: Vec<(HandlerName, Arc<Queue>, u64)>,
}

impl Admission {
    /// An admission that took no room (a request that adds no deliveries).
    pub fn empty() -> Admission {
        Admission {
            reserved: Vec::new(),
        }
    }

    /// The deliveries are stored, except `unstored` of them per handler (duplicates, which
    /// the store recognised and did not store again): keep the room of the rest.
    pub fn keep(mut self, unstored: impl Fn(&HandlerName) -> u64) {
        for (handler, queue, n) in std::mem::take(&mut self.reserved) {
            queue.release(unstored(&handler).min(n));
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for (_, queue, n) in &self.reserved {
            queue.release(*n);
        }
    }
}

/// The back-pressure rule: take room for every demand, or for none and say who is full; and
/// refuse when a handler downstream is full. The downstream check reserves nothing (the
/// work reaches those handlers later, if at all, and is held to their limit then); it only
/// stops taking work that could not drain.
pub fn admit<'a>(
    demands: impl IntoIterator<Item = Demand<'a>>,
    downstream: impl IntoIterator<Item = Downstream<'a>>,
) -> Result<Admission, Refusal> {
    for next in downstream {
        let waiting = next.queue.pending();
        if waiting >= next.limit {
            let excess = waiting + 1 - next.limit;
            return Err(Refusal {
                handler: next.handler.clone(),
                limit: next.limit,
                retry_after: next.queue.time_to_drain(excess),
                downstream_of: Some(next.of_type.to_owned()),
            });
        }
    }
    let mut admission = Admission::empty();
    for demand in demands {
        if let Err(waiting) = demand.queue.try_reserve(demand.incoming, demand.limit) {
            // `admission` drops here and gives back what it took so far.
            let excess = (waiting + demand.incoming).saturating_sub(demand.limit);
            return Err(Refusal {
                handler: demand.handler.clone(),
                limit: demand.limit,
                retry_after: demand.queue.time_to_drain(excess.max(1)),
                downstream_of: None,
            });
        }
        admission.reserved.push((
            demand.handler.clone(),
            demand.queue.clone(),
            demand.incoming,
        ));
    }
    Ok(admission)
}

/// Deliveries settled per second, measured over windows of at least a second.
struct DrainRate {
    window_start_ms: i64,
    in_window: u64,
    per_second: f64,
}

impl DrainRate {
    fn new(now_ms: i64) -> DrainRate {
        DrainRate {
            window_start_ms: now_ms,
            in_window: 0,
            per_second: 0.0,
        }
    }

    fn settled(&mut self, now_ms: i64) {
        self.in_window += 1;
        let elapsed_ms = now_ms - self.window_start_ms;
        if elapsed_ms >= 1000 {
            self.per_second = self.in_window as f64 * 1000.0 / elapsed_ms as f64;
            self.in_window = 0;
            self.window_start_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> HandlerName {
        HandlerName::new(n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_takes_room_in_every_queue_or_in_none() {
        let clock = Clock::new();
        let (a, b) = (name("a"), name("b"));
        let qa = Arc::new(Queue::new(0, clock));
        let qb = Arc::new(Queue::new(8, clock));
        let demand = |incoming_b| {
            [
                Demand {
                    handler: &a,
                    queue: &qa,
                    limit: 10,
                    incoming: 2,
                },
                Demand {
                    handler: &b,
                    queue: &qb,
                    limit: 10,
                    incoming: incoming_b,
                },
            ]
        };
        let refused = admit(demand(3), []).err().expect("b would hold 11");
        assert_eq!((refused.handler.as_str(), refused.limit), ("b", 10));
        assert_eq!(refused.retry_after, UNKNOWN_DRAIN_WAIT);
        assert_eq!(
            (qa.pending(), qb.pending()),
            (0, 8),
            "nothing kept of a refusal"
        );

        let admitted = admit(demand(2), []).expect("b holds exactly 10");
        assert_eq!((qa.pending(), qb.pending()), (2, 10));
        assert!(
            admit(demand(1), []).is_err(),
            "the room is taken until given back"
        );
        drop(admitted);
        assert_eq!(
            (qa.pending(), qb.pending()),
            (0, 8),
            "an append that failed"
        );

        // Kept, minus the duplicates the store did not store again.
        admit(demand(2), [])
            .unwrap()
            .keep(|h| if h == &a { 1 } else { 0 });
        assert_eq!((qa.pending(), qb.pending()), (1, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_never_overshoot_the_limit() {
        let queue = Arc::new(Queue::new(0, Clock::new()));
        let handler = name("h");
        let admitted: Vec<_> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..100)
                            .filter_map(|_| {
                                admit(
                                    [Demand {
                                        handler: &handler,
                                        queue: &queue,
                                        limit: 250,
                                        incoming: 1,
                                    }],
                                    [],
                                )
                                .ok()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert_eq!(admitted.len(), 250);
        assert_eq!(queue.pending(), 250);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_handler_downstream_refuses_without_taking_room_anywhere() {
        let clock = Clock::new();
        let (up, down) = (name("up"), name("down"));
        let (qu, qd) = (
            Arc::new(Queue::new(0, clock)),
            Arc::new(Queue::new(3, clock)),
        );
        let request = |down_limit| {
            let demand = Demand {
                handler: &up,
                queue: &qu,
                limit: 10,
                incoming: 1,
            };
            let downstream = Downstream {
                handler: &down,
                queue: &qd,
                limit: down_limit,
                of_type: "up.v1",
            };
            admit([demand], [downstream])
        };
        let refused = request(3).err().expect("down is full");
        assert_eq!(refused.handler, down);
        assert_eq!(refused.downstream_of.as_deref(), Some("up.v1"));
        assert!(
            refused.to_string().contains("downstream of `up.v1`"),
            "{refused}"
        );
        assert_eq!((qu.pending(), qd.pending()), (0, 3));
        // Room for one more downstream is enough; nothing is reserved there.
        request(4).expect("down has room").keep(|_| 0);
        assert_eq!((qu.pending(), qd.pending()), (1, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn room_made_wakes_a_waiter_that_asked_before_it_looked() {
        let queue = Queue::new(2, Clock::new());
        let room = queue.room_made();
        queue.settled();
        // Not polled until now, and still woken.
        tokio::time::timeout(Duration::from_secs(1), room)
            .await
            .expect("woken by the settle");
        let room = queue.room_made();
        queue.release(0);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), room)
                .await
                .is_err(),
            "nothing given back, no room made"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_asked_for_follows_the_drain_rate_and_the_count_never_wraps() {
        let queue = Queue::new(1000, Clock::new());
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            queue.settled();
        }
        // 100 per second: 500 more take 5 s.
        assert_eq!(queue.time_to_drain(500), Duration::from_secs(5));
        assert_eq!(queue.time_to_drain(1), Duration::from_secs(1));
        assert_eq!(queue.time_to_drain(1 << 40), MAX_DRAIN_WAIT);
        let empty = Queue::new(0, Clock::new());
        empty.settled();
        assert_eq!(empty.pending(), 0);
    }
}
