//! Back-pressure: whether ingress may add work to the handlers' queues, and what a 429 asks a
//! client to wait.
//!
//! Each deployed handler has a [`Queue`]: how many of its deliveries are appended and not yet
//! settled, and how fast it has settled them lately. Ingress asks [`admit`] before it appends;
//! the policy is that a request is refused whole if any handler it routes to would pass its
//! `max_pending`. The check and the count are one atomic step per handler (a reservation), so
//! concurrent requests cannot together overshoot the limit; a reservation that is not kept
//! (the append failed, or the events were duplicates) is given back.
//!
//! Deliveries that do not come from ingress (the events a handler emits, a redrive) are
//! counted with [`Queue::added`] but not refused here.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    clock: Clock,
}

impl Queue {
    /// A queue that already holds `pending` deliveries (what the store had at start).
    pub fn new(pending: u64, clock: Clock) -> Queue {
        Queue {
            pending: AtomicU64::new(pending),
            drain: Mutex::new(DrainRate::new(clock.now_ms())),
            clock,
        }
    }

    /// Deliveries appended and not yet settled.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Count `n` more deliveries whatever the limit (emitted events, redrives).
    pub fn added(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::Relaxed);
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

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub handler: HandlerName,
    pub limit: u64,
    /// What the 429's `Retry-After` says.
    pub retry_after: Duration,
}

/// Room taken in handlers' queues for one request. Dropped, it gives the room back; the
/// request keeps it with [`Admission::keep`] once its deliveries are stored.
#[must_use = "an admission not kept gives its room back when dropped"]
pub struct Admission {
    reserved: Vec<(HandlerName, Arc<Queue>, u64)>,
}

impl Admission {
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

/// The back-pressure rule: take room for every demand, or for none and say who is full.
pub fn admit<'a>(demands: impl IntoIterator<Item = Demand<'a>>) -> Result<Admission, Refusal> {
    let mut admission = Admission {
        reserved: Vec::new(),
    };
    for demand in demands {
        if let Err(waiting) = demand.queue.try_reserve(demand.incoming, demand.limit) {
            // `admission` drops here and gives back what it took so far.
            let excess = (waiting + demand.incoming).saturating_sub(demand.limit);
            return Err(Refusal {
                handler: demand.handler.clone(),
                limit: demand.limit,
                retry_after: demand.queue.time_to_drain(excess.max(1)),
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
        let refused = admit(demand(3)).err().expect("b would hold 11");
        assert_eq!((refused.handler.as_str(), refused.limit), ("b", 10));
        assert_eq!(refused.retry_after, UNKNOWN_DRAIN_WAIT);
        assert_eq!(
            (qa.pending(), qb.pending()),
            (0, 8),
            "nothing kept of a refusal"
        );

        let admitted = admit(demand(2)).expect("b holds exactly 10");
        assert_eq!((qa.pending(), qb.pending()), (2, 10));
        assert!(
            admit(demand(1)).is_err(),
            "the room is taken until given back"
        );
        drop(admitted);
        assert_eq!(
            (qa.pending(), qb.pending()),
            (0, 8),
            "an append that failed"
        );

        // Kept, minus the duplicates the store did not store again.
        admit(demand(2))
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
                                admit([Demand {
                                    handler: &handler,
                                    queue: &queue,
                                    limit: 250,
                                    incoming: 1,
                                }])
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
