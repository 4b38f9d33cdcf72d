//! The scheduler: when each pending delivery runs, and what happens after.
//!
//! One worker task per handler picks the handler's pending deliveries from the store (pending
//! work lives there, not in memory queues, so it survives a restart and memory stays
//! bounded), starts an invocation for each delivery its rules allow, and hands each outcome
//! to the store: a success commits the handler's effects with the delivery, a failure
//! records the error and schedules a retry with backoff or dead-letters the delivery. Only
//! the scheduler settles deliveries.
//!
//! # Rules
//!
//! - At most `concurrency` invocations of a handler are in flight (its semaphore).
//! - `ordering = "key"`: deliveries with the same ordering key run one at a time, in the
//!   order they were appended; a delivery waiting for its retry holds its key, so later
//!   events for that key wait while other keys flow. `serial` is one key for everything.
//! - A delivery is never started twice at once: the worker alone adds to and removes from
//!   its in-flight set, and it removes a delivery only after that delivery's outcome is
//!   durable, so a later read of the store can no longer see it pending.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use anyhow::Result;
use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::config::{Backoff, Rate};
use crate::metrics::Metrics;
use crate::router::RouteTable;
use crate::runtime::{DeployedHandler, InvokeError, Runtime};
use crate::store::{Commit, Committed, Failure, PendingDelivery, Store, now_ms};

/// Pending deliveries read per look at the store, beyond the handler's concurrency. Deeper
/// windows let more keys proceed past a blocked one, at the cost of a larger read.
const MIN_WINDOW: u32 = 256;

/// Times one delivery is re-run because the state it read changed before its commit; past
/// this the conflict counts as a failed attempt (a key that hot is a design problem).
const MAX_CONFLICT_RERUNS: u32 = 100;

/// What a 429 asks a client to wait when the handler has not drained anything lately.
const UNKNOWN_DRAIN_WAIT: Duration = Duration::from_secs(5);
/// The longest wait a 429 asks for.
const MAX_DRAIN_WAIT: Duration = Duration::from_secs(60);

/// After a store error the worker waits this long before looking again.
const STORE_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Shared by the host, ingress and every worker.
pub struct Scheduler {
    store: Store,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    wasm_threads: WasmThreads,
    routes: ArcSwap<RouteTable>,
    handlers: ArcSwap<HashMap<String, Arc<HandlerSlot>>>,
    shutdown: watch::Sender<bool>,
}

/// One handler's scheduling state, for as long as the handler is deployed.
pub struct HandlerSlot {
    deployed: ArcSwap<DeployedHandler>,
    wake: Notify,
    permits: Arc<Semaphore>,
    /// The permits the semaphore holds in all: the concurrency of the latest deployment.
    concurrency: std::sync::atomic::AtomicU32,
    /// Set when the handler is removed: its worker stops.
    removed: std::sync::atomic::AtomicBool,
    /// Set when old deliveries became pending again (a redrive): the worker re-reads its
    /// backlog from the start.
    rescan: std::sync::atomic::AtomicBool,
    /// Deliveries appended and not yet settled (done or dead).
    pending: AtomicU64,
    drain: std::sync::Mutex<DrainRate>,
}

impl HandlerSlot {
    pub fn deployed(&self) -> Arc<DeployedHandler> {
        self.deployed.load_full()
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(AtomicOrdering::Relaxed)
    }

    /// How long until `excess` deliveries have drained, at the rate this handler settled
    /// them lately; what a 429 asks the client to wait.
    pub fn time_to_drain(&self, excess: u64) -> Duration {
        let rate = self.drain.lock().map_or(0.0, |d| d.per_second);
        if rate <= 0.0 {
            return UNKNOWN_DRAIN_WAIT;
        }
        Duration::from_secs_f64(excess as f64 / rate).clamp(Duration::from_secs(1), MAX_DRAIN_WAIT)
    }

    fn settled(&self) {
        self.pending.fetch_sub(1, AtomicOrdering::Relaxed);
        if let Ok(mut drain) = self.drain.lock() {
            drain.settled();
        }
    }

    /// Invocations running now.
    pub fn in_flight(&self) -> usize {
        let concurrency = self.concurrency.load(AtomicOrdering::Relaxed) as usize;
        concurrency.saturating_sub(self.permits.available_permits())
    }

    fn new(deployed: DeployedHandler, pending: u64) -> HandlerSlot {
        let concurrency = deployed.settings.concurrency;
        HandlerSlot {
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency: std::sync::atomic::AtomicU32::new(concurrency),
            removed: std::sync::atomic::AtomicBool::new(false),
            rescan: std::sync::atomic::AtomicBool::new(false),
            pending: AtomicU64::new(pending),
            drain: std::sync::Mutex::new(DrainRate::new()),
            wake: Notify::new(),
            deployed: ArcSwap::from_pointee(deployed),
        }
    }

    /// Make `deployed` the version every delivery not yet started runs on; invocations
    /// already running keep their own `Arc` of the old version and finish on it.
    fn swap(&self, deployed: DeployedHandler) {
        let new = deployed.settings.concurrency;
        let old = self.concurrency.swap(new, AtomicOrdering::Relaxed);
        if new > old {
            self.permits.add_permits((new - old) as usize);
        } else if new < old {
            // Take the surplus out as permits come back from running invocations.
            let permits = self.permits.clone();
            tokio::spawn(async move {
                if let Ok(surplus) = permits.acquire_many(old - new).await {
                    surplus.forget();
                }
            });
        }
        self.deployed.store(Arc::new(deployed));
        self.wake.notify_one();
    }
}

/// A finished invocation, reported to its worker.
struct Finished {
    delivery: PendingDelivery,
    after: AfterRun,
}

/// What became of a delivery the worker started.
enum AfterRun {
    /// Done or dead-lettered (or settled by someone else): it leaves the backlog.
    Settled,
    /// Still pending: it waits in the backlog until this time (unix ms), holding its key.
    Again { not_before_ms: i64 },
}

/// What a handler's worker knows of its pending deliveries. The store is the truth; the
/// backlog holds a window of it, read incrementally: each look at the store reads only
/// deliveries appended since the last (ids grow in commit order, as one writer assigns
/// them), and a delivery the worker ran comes back to it with its new state. Only a redrive
/// puts an old id back to pending, and it asks for a full re-read ([`HandlerSlot::rescan`]).
#[derive(Default)]
struct Backlog {
    /// Pending and not running, by id (= arrival order).
    waiting: BTreeMap<i64, PendingDelivery>,
    /// Running: id -> ordering key.
    running: HashMap<i64, Option<String>>,
    /// The highest id read from the store.
    read_up_to: i64,
}

impl Scheduler {
    pub fn new(
        store: Store,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Scheduler>> {
        Ok(Arc::new(Scheduler {
            store,
            runtime,
            metrics,
            wasm_threads: WasmThreads::start()?,
            routes: ArcSwap::from_pointee(RouteTable::default()),
            handlers: ArcSwap::from_pointee(HashMap::new()),
            shutdown: watch::channel(false).0,
        }))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    pub fn handler(&self, name: &str) -> Option<Arc<HandlerSlot>> {
        self.handlers.load().get(name).cloned()
    }

    pub fn handler_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Start scheduling `handlers` (at start-up): count what is already pending in the
    /// store, and start one worker per handler. Every handler is in the routes before any
    /// worker starts: a delivery left pending by a crash may run at once, and the events it
    /// emits must reach every subscriber, not only those whose worker happened to start first.
    pub async fn start(self: &Arc<Self>, handlers: Vec<DeployedHandler>) -> Result<()> {
        let pending: HashMap<String, u64> =
            self.store.pending_counts().await?.into_iter().collect();
        let mut slots = HashMap::clone(&self.handlers.load());
        let mut started = Vec::new();
        for deployed in handlers {
            let waiting = pending.get(&deployed.name).copied().unwrap_or(0);
            let slot = Arc::new(HandlerSlot::new(deployed, waiting));
            slots.insert(slot.deployed.load().name.clone(), slot.clone());
            started.push(slot);
        }
        self.handlers.store(Arc::new(slots));
        self.rebuild_routes();
        for slot in started {
            self.spawn_worker(slot);
        }
        Ok(())
    }

    /// Deploy `deployed`: a new handler gets a worker; a new version of a running one is
    /// swapped in (see [`HandlerSlot::swap`]). The routes change with it, atomically.
    /// Callers serialise deploys and removals.
    pub fn deploy(self: &Arc<Self>, deployed: DeployedHandler) {
        match self.handler(&deployed.name) {
            Some(slot) => {
                slot.swap(deployed);
                self.rebuild_routes();
            }
            None => self.add(deployed, 0),
        }
    }

    /// Stop scheduling `name`: no new event routes to it and its worker stops. Invocations
    /// running finish; what is still pending is the caller's to dead-letter.
    pub fn remove(&self, name: &str) -> Option<Arc<HandlerSlot>> {
        let mut slots = HashMap::clone(&self.handlers.load());
        let slot = slots.remove(name)?;
        self.handlers.store(Arc::new(slots));
        self.rebuild_routes();
        slot.removed.store(true, AtomicOrdering::Relaxed);
        slot.wake.notify_one();
        Some(slot)
    }

    fn add(self: &Arc<Self>, deployed: DeployedHandler, pending: u64) {
        let name = deployed.name.clone();
        let slot = Arc::new(HandlerSlot::new(deployed, pending));
        let mut slots = HashMap::clone(&self.handlers.load());
        slots.insert(name, slot.clone());
        self.handlers.store(Arc::new(slots));
        self.rebuild_routes();
        self.spawn_worker(slot);
    }

    fn spawn_worker(self: &Arc<Self>, slot: Arc<HandlerSlot>) {
        let scheduler = self.clone();
        tokio::spawn(async move { scheduler.run_worker(slot).await });
    }

    /// The routes, rebuilt from every handler's current subscriptions.
    fn rebuild_routes(&self) {
        let mut routes = RouteTable::default();
        for slot in self.handlers.load().values() {
            let deployed = slot.deployed.load();
            let s = &deployed.settings;
            routes.subscribe(&deployed.name, &s.subscribe, s.ordering, s.key);
        }
        self.routes.store(Arc::new(routes));
    }

    /// New deliveries were appended for these handlers: count them and wake their workers.
    pub fn appended<'a>(&self, handlers: impl IntoIterator<Item = &'a str>) {
        self.now_pending(handlers, false);
    }

    /// Dead deliveries of these handlers were put back to pending: count them, and have the
    /// workers re-read their backlogs (the redriven ids are older than what they have read).
    pub fn redriven<'a>(&self, handlers: impl IntoIterator<Item = &'a str>) {
        self.now_pending(handlers, true);
    }

    /// One more pending delivery per name given; wake each worker, asking for a full
    /// re-read when the deliveries are not new ones.
    fn now_pending<'a>(&self, handlers: impl IntoIterator<Item = &'a str>, rescan: bool) {
        let slots = self.handlers.load();
        for name in handlers {
            if let Some(slot) = slots.get(name) {
                slot.pending.fetch_add(1, AtomicOrdering::Relaxed);
                if rescan {
                    slot.rescan.store(true, AtomicOrdering::Relaxed);
                }
                slot.wake.notify_one();
            }
        }
    }

    /// Stop starting invocations, and wait up to `grace` for those in flight to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.send_replace(true);
        let slots = self.handlers.load_full();
        let drained = async {
            for slot in slots.values() {
                let all = slot.concurrency.load(AtomicOrdering::Relaxed);
                // Every permit back means no invocation of this handler is running.
                drop(slot.permits.acquire_many(all).await);
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                ?grace,
                "invocations still running at shutdown; they will be retried on the next start"
            );
        }
    }

    async fn run_worker(self: Arc<Self>, slot: Arc<HandlerSlot>) {
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Finished>();
        let mut backlog = Backlog::default();
        let mut bucket = slot.deployed.load().settings.rate.map(TokenBucket::new);
        let mut bucket_version = slot.deployed.load().version;
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if *shutdown.borrow() || slot.removed.load(AtomicOrdering::Relaxed) {
                return;
            }
            let version = slot.deployed.load().version;
            if version != bucket_version {
                bucket = slot.deployed.load().settings.rate.map(TokenBucket::new);
                bucket_version = version;
            }
            let dispatched = self
                .dispatch(&slot, &mut backlog, bucket.as_mut(), &finished_tx)
                .await;
            let next_due = match dispatched {
                Ok(next_due) => next_due,
                Err(err) => {
                    tracing::error!(
                        handler = slot.deployed.load().name,
                        error = format!("{err:#}"),
                        "failed to read pending deliveries"
                    );
                    Some(now_ms() + STORE_ERROR_PAUSE.as_millis() as i64)
                }
            };
            let sleep = async {
                match next_due {
                    Some(at) => {
                        let wait = (at - now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(finished) = finished_rx.recv() => {
                    backlog.finished(finished);
                    // Take every other report already waiting before dispatching again.
                    while let Ok(finished) = finished_rx.try_recv() {
                        backlog.finished(finished);
                    }
                }
                () = slot.wake.notified() => {}
                () = sleep => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Start every delivery the rules allow now; return when the earliest waiting retry is due.
    async fn dispatch(
        self: &Arc<Self>,
        slot: &Arc<HandlerSlot>,
        backlog: &mut Backlog,
        mut bucket: Option<&mut TokenBucket>,
        finished: &mpsc::UnboundedSender<Finished>,
    ) -> Result<Option<i64>> {
        let deployed = slot.deployed.load_full();
        if slot.rescan.swap(false, AtomicOrdering::Relaxed) {
            backlog.waiting.clear();
            backlog.read_up_to = 0;
        }
        let window = MIN_WINDOW.max(deployed.settings.concurrency * 4) as usize;
        let room = window.saturating_sub(backlog.waiting.len() + backlog.running.len());
        if room > 0 {
            let fresh = self
                .store
                .pending(&deployed.name, backlog.read_up_to, room as u32)
                .await?;
            for delivery in fresh {
                backlog.read_up_to = backlog.read_up_to.max(delivery.id);
                if !backlog.running.contains_key(&delivery.id) {
                    backlog.waiting.insert(delivery.id, delivery);
                }
            }
        }

        let mut held_keys: HashSet<&str> = backlog
            .running
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        let mut next_due: Option<i64> = None;
        let mut start = Vec::new();
        let now = now_ms();
        for delivery in backlog.waiting.values() {
            if let Some(key) = &delivery.ordering_key
                && !held_keys.insert(key.as_str())
            {
                continue; // an earlier delivery for this key runs or waits for its retry
            }
            if delivery.not_before_ms > now {
                next_due = Some(
                    next_due.map_or(delivery.not_before_ms, |t| t.min(delivery.not_before_ms)),
                );
                continue;
            }
            if slot.permits.available_permits() <= start.len() {
                break; // a finishing invocation wakes the worker
            }
            if let Some(bucket) = bucket.as_deref_mut()
                && let Err(wait) = bucket.try_take()
            {
                // Out of tokens: this delivery (and its key) waits for the next one.
                let at = now + wait.as_millis() as i64 + 1;
                next_due = Some(next_due.map_or(at, |t| t.min(at)));
                break;
            }
            start.push(delivery.id);
        }
        for id in start {
            let Some(delivery) = backlog.waiting.remove(&id) else {
                continue;
            };
            let Ok(permit) = slot.permits.clone().try_acquire_owned() else {
                // Permits shrank under a redeploy: it waits for the next round.
                backlog.waiting.insert(id, delivery);
                if let Some(bucket) = bucket.as_deref_mut() {
                    bucket.give_back();
                }
                break;
            };
            backlog.running.insert(id, delivery.ordering_key.clone());
            let scheduler = self.clone();
            let slot = slot.clone();
            let finished = finished.clone();
            // Wasm runs on its own threads, so that handlers busy with CPU never hold the
            // threads that serve HTTP.
            self.wasm_threads.spawn(async move {
                let (delivery, after) = scheduler.run_delivery(&slot, delivery).await;
                drop(permit);
                // The worker may be gone (handler removed); then nobody needs the report.
                drop(finished.send(Finished { delivery, after }));
            });
        }
        Ok(next_due)
    }

    /// Invoke the handler for one delivery and settle the outcome in the store; hand the
    /// delivery back with what became of it.
    async fn run_delivery(
        &self,
        slot: &HandlerSlot,
        mut delivery: PendingDelivery,
    ) -> (PendingDelivery, AfterRun) {
        let mut reruns = 0;
        let outcome = loop {
            let deployed = slot.deployed.load_full();
            let reader = self.store.state_reader(&deployed.name);
            let started = std::time::Instant::now();
            let outcome = self
                .runtime
                .invoke(&deployed, &delivery.event, reader)
                .await;
            self.metrics
                .handler_duration
                .with_label_values(&[deployed.name.as_str()])
                .observe(started.elapsed().as_secs_f64());
            let staged = match outcome {
                Ok(staged) => staged,
                Err(error) => break self.record_failure(&deployed, &delivery, error).await,
            };
            match self.commit(&deployed, &delivery, staged).await {
                Ok(Committed::Done { .. }) => {
                    self.count(&deployed.name, "ok");
                    break Ok(None);
                }
                // Someone else settled it (and counted it): nothing left to do.
                Ok(Committed::AlreadySettled) => return (delivery, AfterRun::Settled),
                // Another invocation wrote what this one read: its decision is stale, not
                // wrong, so run it again on fresh state without counting a failed attempt.
                Ok(Committed::Conflict { .. }) if reruns < MAX_CONFLICT_RERUNS => {
                    self.count(&deployed.name, "conflict");
                    reruns += 1;
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
                slot.settled();
                (delivery, AfterRun::Settled)
            }
            Ok(Some(retry_at_ms)) => {
                delivery.attempts += 1;
                (
                    delivery,
                    AfterRun::Again {
                        not_before_ms: retry_at_ms,
                    },
                )
            }
            Err(err) => {
                // Nothing was settled: the delivery is still pending and runs again.
                tracing::error!(
                    handler = slot.deployed.load().name,
                    event_id = delivery.event.id,
                    error = format!("{err:#}"),
                    "failed to record a delivery's outcome"
                );
                let not_before_ms = now_ms() + STORE_ERROR_PAUSE.as_millis() as i64;
                (delivery, AfterRun::Again { not_before_ms })
            }
        }
    }

    /// Commit a success, and wake the handlers of the events it emitted.
    async fn commit(
        &self,
        deployed: &DeployedHandler,
        delivery: &PendingDelivery,
        staged: crate::capabilities::Staged,
    ) -> Result<Committed> {
        let routes = self.routes();
        let emitted: Vec<_> = staged
            .emitted
            .into_iter()
            .map(|e| routes.route(e))
            .collect();
        let targets: Vec<Vec<String>> = emitted
            .iter()
            .map(|r| r.deliveries.iter().map(|d| d.handler.clone()).collect())
            .collect();
        let committed = self
            .store
            .commit(Commit {
                delivery_id: delivery.id,
                handler: deployed.name.clone(),
                state_reads: staged.state_reads.into_iter().collect(),
                state_writes: staged.state_writes.into_iter().collect(),
                emitted,
            })
            .await?;
        if let Committed::Done { emitted } = &committed {
            for (appended, handlers) in emitted.iter().zip(&targets) {
                if appended.is_new() {
                    self.appended(handlers.iter().map(String::as_str));
                }
            }
            tracing::debug!(
                handler = deployed.name,
                event_id = delivery.event.id,
                "delivered"
            );
        }
        Ok(committed)
    }

    fn count(&self, handler: &str, outcome: &str) {
        self.metrics
            .deliveries
            .with_label_values(&[handler, outcome])
            .inc();
    }

    /// Record a failure: retry with backoff (`Ok(Some(when))`), or dead-letter (`Ok(None)`).
    async fn record_failure(
        &self,
        deployed: &DeployedHandler,
        delivery: &PendingDelivery,
        error: InvokeError,
    ) -> Result<Option<i64>> {
        let settings = &deployed.settings;
        let attempt = delivery.attempts + 1;
        let retry_at_ms = (error.is_retryable() && attempt < settings.max_attempts)
            .then(|| now_ms() + backoff_delay(&settings.backoff, attempt).as_millis() as i64);
        let message = error.to_string();
        match retry_at_ms {
            Some(_) => tracing::warn!(
                handler = deployed.name,
                event_id = delivery.event.id,
                attempt,
                error = message,
                "delivery failed; will retry"
            ),
            None => tracing::warn!(
                handler = deployed.name,
                event_id = delivery.event.id,
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
        let outcome = if retry_at_ms.is_some() {
            "retry"
        } else {
            "dead"
        };
        self.count(&deployed.name, outcome);
        Ok(retry_at_ms)
    }
}

impl Backlog {
    fn finished(
        &mut self,
        Finished {
            mut delivery,
            after,
        }: Finished,
    ) {
        self.running.remove(&delivery.id);
        if let AfterRun::Again { not_before_ms } = after {
            delivery.not_before_ms = not_before_ms;
            self.waiting.insert(delivery.id, delivery);
        }
    }
}

/// The threads that run Wasm: a tokio runtime of their own beside the one serving HTTP.
/// Epoch yields keep any one invocation from holding a thread for long, and separate
/// threads let the OS share the cores fairly between serving requests and running handlers.
struct WasmThreads {
    runtime: Option<tokio::runtime::Runtime>,
}

impl WasmThreads {
    fn start() -> Result<WasmThreads> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("evhost-wasm")
            .enable_all()
            .build()?;
        Ok(WasmThreads {
            runtime: Some(runtime),
        })
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

impl Drop for WasmThreads {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; let its threads wind down on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Deliveries settled per second, measured over windows of at least a second.
struct DrainRate {
    window_start: std::time::Instant,
    in_window: u64,
    per_second: f64,
}

impl DrainRate {
    fn new() -> DrainRate {
        DrainRate {
            window_start: std::time::Instant::now(),
            in_window: 0,
            per_second: 0.0,
        }
    }

    fn settled(&mut self) {
        self.in_window += 1;
        let elapsed = self.window_start.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.per_second = self.in_window as f64 / elapsed.as_secs_f64();
            self.in_window = 0;
            self.window_start = std::time::Instant::now();
        }
    }
}

/// A token bucket for a handler's `rate`: holds up to one second of tokens (at least one),
/// so a burst never exceeds a second's worth and slow rates are spread evenly.
struct TokenBucket {
    per_ms: f64,
    capacity: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    fn new(rate: Rate) -> TokenBucket {
        let per_second = rate.per_second();
        let capacity = per_second.max(1.0);
        TokenBucket {
            per_ms: per_second / 1000.0,
            capacity,
            tokens: capacity,
            last: std::time::Instant::now(),
        }
    }

    /// Take a token, or say how long until one is there.
    fn try_take(&mut self) -> Result<(), Duration> {
        let now = std::time::Instant::now();
        let elapsed_ms = now.duration_since(self.last).as_secs_f64() * 1000.0;
        self.tokens = (self.tokens + elapsed_ms * self.per_ms).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_ms / 1000.0,
            ))
        }
    }

    /// Return a token taken for an invocation that did not start.
    fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RatePeriod;

    #[test]
    fn the_token_bucket_allows_a_second_of_burst_then_paces() {
        let mut bucket = TokenBucket::new(Rate {
            tokens: 10,
            period: RatePeriod::Second,
        });
        for _ in 0..10 {
            assert!(bucket.try_take().is_ok());
        }
        let wait = bucket.try_take().expect_err("the burst is spent");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        bucket.give_back();
        assert!(bucket.try_take().is_ok());

        let mut slow = TokenBucket::new(Rate {
            tokens: 60,
            period: RatePeriod::Minute,
        });
        assert!(slow.try_take().is_ok());
        let wait = slow.try_take().expect_err("one per second");
        assert!(wait > Duration::from_millis(900), "{wait:?}");
    }

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
