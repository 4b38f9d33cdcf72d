//! The scheduler: when each pending delivery runs, and what happens after.
//!
//! One worker task per live handler reads the handler's pending deliveries from the store
//! (pending work lives there, not in memory queues, so it survives a restart and memory stays
//! bounded) into a window bounded in rows and bytes that holds no events ([`Backlog`]), asks
//! [`select`] which of them the rules let start now, runs each on the Wasm threads (reading
//! its event from the store as it starts), and hands each outcome to the store: a success
//! commits the handler's effects with the delivery, a failure records the error and schedules
//! a retry with backoff or dead-letters the delivery. Only the scheduler settles deliveries.
//!
//! The rules themselves (concurrency, key FIFO, serial, due times, rate) are the pure
//! function in [`select`]; this module is the I/O around it. Time comes from the host's
//! [`Clock`].
//!
//! # Invariants
//!
//! - A delivery is never started twice at once: the worker alone adds to and removes from
//!   its backlog's running set, and it removes a delivery only after that delivery's outcome
//!   is durable, so a later read of the store can no longer see it pending.
//! - A delivery runs on the version live when it starts (re-runs after a state conflict take
//!   the version live then); a new version never interrupts one that runs.
//! - A success's emitted events are committed only with room for their deliveries taken in
//!   every queue they go to ([`crate::live::LiveSet::admit_emitted`]): while a queue is full
//!   the invocation waits for room, holding its permit (so a full handler slows down those
//!   that feed it), for at most [`ROOM_WAIT`]; then its effects are dropped and it runs
//!   again later. Neither counts as a failed attempt, and the commit stays all or nothing.
//! - An emitted event past [`MAX_CAUSATION_DEPTH`] is never committed: the delivery that
//!   emitted it is dead-lettered, naming the loop.

mod select;

pub use select::{Backlog, KEY_LOOKAHEAD, Read, Selection, TokenBucket, Window, select};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::capabilities::Staged;
use crate::clock::Clock;
use crate::config::Backoff;
use crate::event::Event;
use crate::live::{EmitRefusal, HandlerSlot, Live, LiveSet};
use crate::metrics::{Metrics, Outcome};
use crate::name::HandlerName;
use crate::pressure::Admission;
use crate::router::describe_loop;
use crate::runtime::{DeployedHandler, InvokeError, Runtime};
use crate::store::{Commit, Committed, Failure, PendingDelivery, Store, StoreResult};

/// Pending deliveries a worker holds at least (it holds four times its handler's concurrency
/// if that is more), so that when some wait for a retry or behind their key, others are at
/// hand to fill the permits. Beyond it they stay in the store until room is made.
const MIN_WINDOW_ROWS: usize = 256;

/// Bytes of pending deliveries (their [`crate::store::QueuedDelivery::footprint`]s: ids,
/// keys and due times, no events) a worker holds at most; beyond it they stay in the store
/// until room is made. A window of small keys stays far below it (256 rows of 32-byte keys
/// are about 50 KiB); it bounds a handler whose keys are long.
const WINDOW_BYTES: usize = 1 << 20;

/// Times one delivery is re-run because the state it read changed before its commit; past
/// this the conflict counts as a failed attempt (a key that hot is a design problem).
const MAX_CONFLICT_RERUNS: u32 = 100;

/// After a store error the worker waits this long before looking again.
const STORE_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// After the host had no room for an instance, the delivery waits this long before it runs
/// again (not counted as an attempt: the lack of room was the host's).
const NO_CAPACITY_PAUSE: Duration = Duration::from_millis(250);

/// The longest chain of causes: an event a producer sent has depth 0 (or the
/// `causationdepth` it came with), an event a handler emitted has its cause's depth + 1. A
/// success that emits an event deeper than this is not committed: the delivery is
/// dead-lettered with the loop named, since a chain this long is a loop of emits far more
/// often than a design.
pub const MAX_CAUSATION_DEPTH: u32 = 32;

/// How long a success waits, holding its permit, for room in a full queue its emitted
/// events go to. Past it the invocation's effects are dropped and the delivery runs again
/// once the full queue is expected to have drained; neither counts as a failed attempt.
/// Long enough that a queue which drains at all makes room first, short enough that the
/// permits are not held for a queue that does not drain (its handler failing, say).
pub const ROOM_WAIT: Duration = Duration::from_secs(10);

/// While waiting for room, how often a success looks again even when the full queue has
/// not rung: a redeploy may have changed the routes or the limit.
const ROOM_RECHECK: Duration = Duration::from_secs(1);

/// Runs every live handler's deliveries.
pub struct Scheduler {
    store: Store,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    live: Arc<Live>,
    clock: Clock,
    shutdown: watch::Sender<bool>,
}

/// What became of a delivery a worker started, reported back to the worker.
enum AfterRun {
    /// Done or dead-lettered (or settled by someone else): it leaves the backlog.
    Settled,
    /// Still pending: it waits in the backlog until this time (unix ms), holding its key.
    Again { not_before_ms: i64 },
}

struct Finished {
    id: i64,
    after: AfterRun,
}

/// Whether a success's emitted events may be committed.
enum Room {
    /// Yes: the room is taken in every queue they go to, as routed by this live set.
    Taken(Arc<LiveSet>, Admission),
    /// Never: dead-letter the delivery, for this reason.
    Refused(String),
    /// Not now: run the delivery again at this time (unix ms).
    Later { retry_at_ms: i64 },
}

impl Scheduler {
    pub fn new(
        store: Store,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        live: Arc<Live>,
        clock: Clock,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            store,
            runtime,
            metrics,
            live,
            clock,
            shutdown: watch::channel(false).0,
        })
    }

    /// Start the worker of handler `name`, which runs until the handler's slot is retired (or
    /// replaced) or the host stops. The handler must be in the live set already.
    pub fn start_worker(self: &Arc<Self>, name: HandlerName, slot: Arc<HandlerSlot>) {
        let scheduler = self.clone();
        tokio::spawn(async move { scheduler.run_worker(name, slot).await });
    }

    /// This scheduler as the deployer's [`crate::live::Workers`].
    pub fn workers(self: &Arc<Self>) -> Arc<dyn crate::live::Workers> {
        Arc::new(SchedulerWorkers(self.clone()))
    }

    /// Stop starting invocations, and wait up to `grace` for those in flight to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.send_replace(true);
        let live = self.live.current();
        if tokio::time::timeout(grace, live.all_idle()).await.is_err() {
            tracing::warn!(
                ?grace,
                "invocations still running at shutdown; they will be retried on the next start"
            );
        }
    }

    /// The version of `name` live now, if the handler is still (this same slot) live.
    fn live_version(
        &self,
        name: &HandlerName,
        slot: &Arc<HandlerSlot>,
    ) -> Option<Arc<DeployedHandler>> {
        self.live.version_in(name, slot)
    }

    async fn run_worker(self: Arc<Self>, name: HandlerName, slot: Arc<HandlerSlot>) {
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Finished>();
        let mut backlog = Backlog::default();
        let mut bucket: Option<(u32, Option<TokenBucket>)> = None;
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if *shutdown.borrow() || slot.is_retired() {
                return;
            }
            let Some(deployed) = self.live_version(&name, &slot) else {
                return;
            };
            // A new version brings its own rate: a fresh bucket.
            if bucket
                .as_ref()
                .is_none_or(|(version, _)| *version != deployed.version())
            {
                let rate = deployed.settings().rate;
                let fresh = rate.map(|rate| TokenBucket::new(rate, self.clock.now_ms()));
                bucket = Some((deployed.version(), fresh));
            }
            let rate = bucket.as_mut().and_then(|(_, bucket)| bucket.as_mut());
            let wake_at = match self
                .dispatch(&deployed, &slot, &mut backlog, rate, &finished_tx)
                .await
            {
                Ok(wake_at) => wake_at,
                Err(err) => {
                    tracing::error!(
                        handler = name.as_str(),
                        error = %err,
                        "failed to read pending deliveries"
                    );
                    Some(self.clock.now_ms() + STORE_ERROR_PAUSE.as_millis() as i64)
                }
            };
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep(self.clock.until(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(finished) = finished_rx.recv() => {
                    record(&mut backlog, finished);
                    // Take every other report already waiting before dispatching again.
                    while let Ok(finished) = finished_rx.try_recv() {
                        record(&mut backlog, finished);
                    }
                }
                () = slot.wake.notified() => {}
                () = sleep => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Fill the window from the store, start every delivery the rules allow now, and return
    /// when to look again at the latest.
    async fn dispatch(
        self: &Arc<Self>,
        deployed: &Arc<DeployedHandler>,
        slot: &Arc<HandlerSlot>,
        backlog: &mut Backlog,
        mut bucket: Option<&mut TokenBucket>,
        finished: &mpsc::UnboundedSender<Finished>,
    ) -> StoreResult<Option<i64>> {
        if slot.take_rescan() {
            backlog.rescan();
        }
        let window = Window {
            rows: MIN_WINDOW_ROWS.max(deployed.settings().concurrency as usize * 4),
            bytes: WINDOW_BYTES,
        };
        self.fill(deployed.name(), backlog, window).await?;

        let free_permits = slot.permits().available_permits();
        let now = self.clock.now_ms();
        let selection = select(backlog, now, free_permits, bucket.as_deref_mut());
        for id in selection.start {
            if !backlog.start(id) {
                continue;
            }
            let Ok(permit) = slot.permits().clone().try_acquire_owned() else {
                // Permits shrank under a redeploy: it waits for the next round.
                backlog.unstart(id);
                if let Some(bucket) = bucket.as_deref_mut() {
                    bucket.give_back();
                }
                break;
            };
            let scheduler = self.clone();
            let (deployed, slot, finished) = (deployed.clone(), slot.clone(), finished.clone());
            self.runtime.spawn(async move {
                let after = scheduler.run_queued(deployed, &slot, id).await;
                drop(permit);
                // The worker may be gone (handler removed); then nobody needs the report.
                drop(finished.send(Finished { id, after }));
            });
        }
        Ok(selection.wake_at)
    }

    /// Read into `backlog` what its window has room for: the next deliveries of keys it read
    /// past, then what was appended since the last read.
    async fn fill(
        &self,
        handler: &HandlerName,
        backlog: &mut Backlog,
        window: Window,
    ) -> StoreResult<()> {
        while let Some(read) = backlog.next_read(window) {
            let found = match &read {
                Read::Key {
                    key,
                    up_to_id,
                    rows,
                    bytes,
                } => {
                    self.store
                        .queued_of_key(handler, key, *up_to_id, *rows, *bytes)
                        .await?
                }
                Read::After {
                    after_id,
                    rows,
                    bytes,
                } => self.store.queued(handler, *after_id, *rows, *bytes).await?,
            };
            if !backlog.took(read, found, window) {
                break;
            }
        }
        Ok(())
    }

    /// Read delivery `id` with its event, run it, and say what became of it. The event is
    /// read only now, under the handler's permit, so that the events in memory are those of
    /// the invocations running, whatever waits.
    async fn run_queued(
        &self,
        deployed: Arc<DeployedHandler>,
        slot: &Arc<HandlerSlot>,
        id: i64,
    ) -> AfterRun {
        match self.store.pending_delivery(deployed.name(), id).await {
            Ok(Some(delivery)) => self.run_delivery(deployed, slot, delivery).await.1,
            // Settled since it was read (a removal dead-lettered it): nothing left to run.
            Ok(None) => AfterRun::Settled,
            Err(err) => {
                tracing::error!(
                    handler = deployed.name().as_str(),
                    delivery = id,
                    error = %err,
                    "failed to read a delivery's event"
                );
                let not_before_ms = self.clock.now_ms() + STORE_ERROR_PAUSE.as_millis() as i64;
                AfterRun::Again { not_before_ms }
            }
        }
    }

    /// Invoke the handler for one delivery and settle the outcome in the store; hand the
    /// delivery back with what became of it.
    async fn run_delivery(
        &self,
        mut deployed: Arc<DeployedHandler>,
        slot: &Arc<HandlerSlot>,
        mut delivery: PendingDelivery,
    ) -> (PendingDelivery, AfterRun) {
        let mut reruns = 0;
        let outcome = loop {
            let reader = self.store.state_reader(deployed.name());
            let started = std::time::Instant::now();
            let outcome = self
                .live
                .registry()
                .invoke(
                    &self.runtime,
                    &deployed,
                    &delivery.event,
                    delivery.seq,
                    reader,
                )
                .await;
            self.metrics
                .handler_duration
                .with_label_values(&[deployed.name().as_str()])
                .observe(started.elapsed().as_secs_f64());
            let staged = match outcome {
                Ok(staged) => staged,
                Err(error) if error.is_host_capacity() => {
                    tracing::warn!(
                        handler = deployed.name().as_str(),
                        event_id = delivery.event.id(),
                        error = %error,
                        "no room for the handler; the delivery waits, no attempt counted"
                    );
                    let not_before_ms = self.clock.now_ms() + NO_CAPACITY_PAUSE.as_millis() as i64;
                    return (delivery, AfterRun::Again { not_before_ms });
                }
                Err(error) => break self.record_failure(&deployed, &delivery, error).await,
            };
            let (live, admission) = match self.make_room(deployed.name(), &staged.emitted).await {
                Room::Taken(live, admission) => (live, admission),
                Room::Refused(reason) => {
                    break self
                        .settle_failure(&deployed, &delivery, reason, false)
                        .await;
                }
                Room::Later { retry_at_ms } => {
                    self.count(deployed.name(), Outcome::Deferred);
                    let after = AfterRun::Again {
                        not_before_ms: retry_at_ms,
                    };
                    return (delivery, after);
                }
            };
            match self
                .commit(&deployed, &delivery, staged, &live, admission)
                .await
            {
                Ok(Committed::Done { .. }) => {
                    self.count(deployed.name(), Outcome::Ok);
                    break Ok(None);
                }
                // Someone else settled it (and counted it): nothing left to do.
                Ok(Committed::AlreadySettled) => return (delivery, AfterRun::Settled),
                // Another invocation wrote what this one read: its decision is stale, not
                // wrong, so run it again on fresh state (and on the version live now)
                // without counting a failed attempt.
                Ok(Committed::Conflict { .. }) if reruns < MAX_CONFLICT_RERUNS => {
                    self.count(deployed.name(), Outcome::Conflict);
                    reruns += 1;
                    if let Some(live) = self.live_version(deployed.name(), slot) {
                        deployed = live;
                    }
                }
                Ok(Committed::Conflict { key }) => {
                    let error = InvokeError::Conflict { key, reruns };
                    break self.record_failure(&deployed, &delivery, error).await;
                }
                Err(err) => break Err(err),
            }
        };
        match outcome {
            Ok(None) => {
                slot.queue.settled();
                (delivery, AfterRun::Settled)
            }
            Ok(Some(retry_at_ms)) => {
                delivery.attempts += 1;
                let after = AfterRun::Again {
                    not_before_ms: retry_at_ms,
                };
                (delivery, after)
            }
            Err(err) => {
                // Nothing was settled: the delivery is still pending and runs again.
                tracing::error!(
                    handler = deployed.name().as_str(),
                    event_id = delivery.event.id(),
                    error = %err,
                    "failed to record a delivery's outcome"
                );
                let not_before_ms = self.clock.now_ms() + STORE_ERROR_PAUSE.as_millis() as i64;
                (delivery, AfterRun::Again { not_before_ms })
            }
        }
    }

    /// Whether the events handler `from` emitted may be committed: none past the hop limit,
    /// and room taken for their deliveries in every queue they go to, waiting for it (at
    /// most [`ROOM_WAIT`]) while one is full.
    async fn make_room(&self, from: &HandlerName, emitted: &[Event]) -> Room {
        let live = self.live.current();
        if emitted.is_empty() {
            return Room::Taken(live, Admission::empty());
        }
        // Learned first, so that the loop below, and ingress from now on, know the way.
        live.learn_emits(from, emitted.iter().map(Event::ty));
        if let Some(reason) = past_hop_limit(&live, from, emitted) {
            return Room::Refused(reason);
        }
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        let mut shutdown = self.shutdown.subscribe();
        let mut live = live;
        loop {
            let full = match live.admit_emitted(from, emitted) {
                Ok(admission) => return Room::Taken(live, admission),
                Err(EmitRefusal::Full(full)) => full,
                Err(EmitRefusal::NeverFits {
                    handler,
                    incoming,
                    limit,
                }) => {
                    return Room::Refused(format!(
                        "the events emitted hold {incoming} deliveries for handler `{handler}`, \
                         more than its whole queue (`max_pending` = {limit}): they can never \
                         be committed; raise its `max_pending` or emit fewer, then redrive"
                    ));
                }
            };
            let now = tokio::time::Instant::now();
            if now >= deadline || *shutdown.borrow() {
                tracing::info!(
                    handler = from.as_str(),
                    full = full.handler.as_str(),
                    "the queue its events go to stayed full; it runs again later"
                );
                let retry_at_ms = self.clock.now_ms() + full.retry_after.as_millis() as i64;
                return Room::Later { retry_at_ms };
            }
            let Some(queue) = live
                .handler(full.handler.as_str())
                .map(|h| h.slot.queue.clone())
            else {
                // The refusal came from this set, which holds the handler; never here, but
                // should it be, look again later rather than at once.
                tokio::time::sleep(ROOM_RECHECK).await;
                live = self.live.current();
                continue;
            };
            // Asked before looking again, so that room made after the look still wakes us.
            let room = queue.room_made();
            live = self.live.current();
            if let Ok(admission) = live.admit_emitted(from, emitted) {
                return Room::Taken(live, admission);
            }
            let recheck = deadline.min(now + ROOM_RECHECK);
            tokio::select! {
                () = room => {}
                () = tokio::time::sleep_until(recheck) => {}
                _ = shutdown.changed() => {}
            }
            live = self.live.current();
        }
    }

    /// Commit a success with the room `admission` took for its emitted events, and wake the
    /// handlers of those events. They are routed by `live`, the set the room was taken in.
    async fn commit(
        &self,
        deployed: &DeployedHandler,
        delivery: &PendingDelivery,
        staged: Staged,
        live: &LiveSet,
        admission: Admission,
    ) -> StoreResult<Committed> {
        let emitted: Vec<_> = staged.emitted.into_iter().map(|e| live.route(e)).collect();
        let targets: Vec<Vec<HandlerName>> = emitted
            .iter()
            .map(|r| r.deliveries.iter().map(|d| d.handler.clone()).collect())
            .collect();
        let committed = self
            .store
            .commit(Commit {
                delivery_id: delivery.id,
                handler: deployed.name().clone(),
                state_reads: staged.state_reads.into_iter().collect(),
                state_writes: staged.state_writes.into_iter().collect(),
                emitted,
            })
            .await?;
        if let Committed::Done { emitted } = &committed {
            // The room of the events stored again (duplicates of an earlier run's) goes
            // back; the rest is kept, and their handlers are woken.
            let mut unstored: HashMap<&HandlerName, u64> = HashMap::new();
            for (appended, handlers) in emitted.iter().zip(&targets) {
                for handler in handlers {
                    if !appended.is_new() {
                        *unstored.entry(handler).or_default() += 1;
                    } else if let Some(target) = live.handler(handler.as_str()) {
                        target.slot.wake.notify_one();
                    }
                }
            }
            admission.keep(|handler| unstored.get(handler).copied().unwrap_or(0));
            tracing::debug!(
                handler = deployed.name().as_str(),
                event_id = delivery.event.id(),
                "delivered"
            );
        }
        Ok(committed)
    }

    fn count(&self, handler: &HandlerName, outcome: Outcome) {
        self.metrics
            .deliveries
            .with_label_values(&[handler.as_str(), outcome.as_str()])
            .inc();
    }

    /// Record a failure: retry with backoff (`Ok(Some(when))`), or dead-letter (`Ok(None)`).
    async fn record_failure(
        &self,
        deployed: &DeployedHandler,
        delivery: &PendingDelivery,
        error: InvokeError,
    ) -> StoreResult<Option<i64>> {
        let retryable = error.is_retryable();
        self.settle_failure(deployed, delivery, error.to_string(), retryable)
            .await
    }

    /// Record a failed attempt with this message: retried with backoff if `retryable` and
    /// attempts are left (`Ok(Some(when))`), else dead-lettered (`Ok(None)`).
    async fn settle_failure(
        &self,
        deployed: &DeployedHandler,
        delivery: &PendingDelivery,
        message: String,
        retryable: bool,
    ) -> StoreResult<Option<i64>> {
        let settings = deployed.settings();
        let attempt = delivery.attempts + 1;
        let retry_at_ms = (retryable && attempt < settings.max_attempts).then(|| {
            self.clock.now_ms() + backoff_delay(&settings.backoff, attempt).as_millis() as i64
        });
        let (handler, event_id) = (deployed.name().as_str(), delivery.event.id());
        match retry_at_ms {
            Some(_) => tracing::warn!(
                handler,
                event_id,
                attempt,
                error = message,
                "delivery failed; will retry"
            ),
            None => tracing::warn!(
                handler,
                event_id,
                attempt,
                error = message,
                "delivery failed; dead-lettered"
            ),
        }
        self.store
            .fail(Failure {
                delivery_id: delivery.id,
                error: message,
                retry_at_ms,
            })
            .await?;
        let outcome = match retry_at_ms {
            Some(_) => Outcome::Retry,
            None => Outcome::Dead,
        };
        self.count(deployed.name(), outcome);
        Ok(retry_at_ms)
    }
}

/// Why these emitted events may not be committed, if one is past [`MAX_CAUSATION_DEPTH`]:
/// the loop it went round, as far as the handlers have shown it.
pub(crate) fn past_hop_limit(
    live: &LiveSet,
    from: &HandlerName,
    emitted: &[Event],
) -> Option<String> {
    let deepest = emitted.iter().max_by_key(|e| e.causation_depth())?;
    let depth = deepest.causation_depth();
    if depth <= MAX_CAUSATION_DEPTH {
        return None;
    }
    let ty = deepest.ty();
    let path = match live.routes().loop_back(from, ty, &live.emit_graph()) {
        Some(hops) => format!("the events loop {}", describe_loop(from, &hops)),
        None => format!("`{from}` emitted `{ty}`, and no loop back to it is known"),
    };
    Some(format!(
        "hop limit: the `{ty}` emitted would be {depth} hops from the event that started its \
         chain of causes (`causationdepth` {depth}), past the limit of {MAX_CAUSATION_DEPTH}; \
         {path}"
    ))
}

fn record(backlog: &mut Backlog, Finished { id, after }: Finished) {
    match after {
        AfterRun::Settled => backlog.settled(id),
        AfterRun::Again { not_before_ms } => backlog.again(id, not_before_ms),
    }
}

/// The wait before attempt `attempt + 1`: exponential from `initial`, capped at `max`, with
/// jitter (a random point in the upper half) so that many failing deliveries do not retry
/// in lockstep.
pub fn backoff_delay(backoff: &Backoff, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let ceiling = backoff
        .initial
        .saturating_mul(1u32 << exp.min(31))
        .min(backoff.max);
    let factor = rand::rng().random_range(0.5..=1.0);
    ceiling.mul_f64(factor)
}

/// The scheduler behind [`crate::live::Workers`].
struct SchedulerWorkers(Arc<Scheduler>);

impl crate::live::Workers for SchedulerWorkers {
    fn start_worker(&self, name: HandlerName, slot: Arc<HandlerSlot>) {
        self.0.start_worker(name, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_caps() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let first = backoff_delay(&backoff, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff_delay(&backoff, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff_delay(&backoff, 30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }
}
