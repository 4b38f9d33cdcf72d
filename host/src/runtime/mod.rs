//! The runtime: runs one delivery in a fresh, sandboxed Wasm component instance.
//!
//! It owns the process-wide [`Runtime`] (one wasmtime `Engine` with the pooling allocator and
//! epoch interruption, one `Linker`, the epoch ticker, the threads Wasm runs on) and the three
//! stages a module goes through before it runs:
//!
//! - an [`Artifact`]: a module compiled, shared by every handler deployed from the same bytes
//!   (it is known by its SHA-256);
//! - a [`Linked`] artifact: checked against the `handler` world and a handler's limits, which
//!   is where a wrong module fails, at deploy time;
//! - a [`DeployedHandler`]: a linked artifact with the deployment record it runs as (name,
//!   version, settings, origin), made once, complete, by [`DeployedHandler::new`].
//!
//! [`Runtime::invoke`] gets an event from the scheduler and hands back what the handler
//! staged, or why it failed; it never writes to the store (the scheduler commits).
//!
//! # Sandboxing
//!
//! Every invocation gets a new `Store`, dropped after it: nothing survives from one event to
//! the next except through the `state` capability. The handler gets WASI clocks, random and
//! captured stdout/stderr; no filesystem, no sockets, no environment, no arguments. Memory
//! is capped per handler by a resource limiter, time by the epoch deadline: the instance
//! yields to tokio every epoch tick, so the wall-clock timeout can cancel even a handler
//! that loops forever, and a busy handler cannot hold a worker thread for longer than a
//! tick. Epochs, not fuel: fuel instruments every basic block and costs throughput on every
//! call, epochs cost one check per loop header and function entry.
//!
//! What the handler stages is bounded by its invocation budget (see
//! [`crate::capabilities::budget`]), what it prints by [`STDIO_CAPTURE_BYTES`], and the
//! instances all handlers run at once by the pool's [`capacity`], which an invocation waits
//! for rather than fails on.

/// An [`Event`] as the `event` record of a WIT contract. The handler's and the upcaster's
/// are one shape in two packages (two generated types), so one macro writes both.
macro_rules! wit_event {
    ($record:path, $event:expr) => {{
        let event: &$crate::event::Event = $event;
        $record {
            id: event.id().to_owned(),
            source: event.source().to_owned(),
            specversion: $crate::event::SPEC_VERSION.to_owned(),
            type_: event.ty().to_owned(),
            datacontenttype: event.datacontenttype().map(str::to_owned),
            dataschema: event.dataschema().map(str::to_owned),
            subject: event.subject().map(str::to_owned),
            time: event.time().map(str::to_owned),
            extensions: event
                .extensions()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            data: event.data().map(<[u8]>::to_vec),
        }
    }};
}

mod capacity;
mod limits;
mod stdio;
mod threads;
mod upcast;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::{Budget, Invocation, InvocationContext, Staged};
use crate::config::HandlerSettings;
use crate::event::Event;
use crate::name::{AppName, HandlerName};
use crate::store::{Deployment, StateReader};
use crate::wit::evhost::handler::types::{Event as WitEvent, HandlerError};
use crate::wit::{Handler, HandlerPre};

use capacity::{Needs, Pool};
pub use limits::MemoryLimiter;
use stdio::Captured;
use threads::WasmThreads;
pub use upcast::{LinkedUpcaster, StepError, UPCAST_MEMORY_BYTES, UPCAST_TIMEOUT};

/// How often the epoch advances. A handler yields to the async runtime once per tick, and
/// timeouts are enforced to within a tick.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Captured stdout and stderr kept per invocation, each; beyond this, output is dropped (and
/// counted in the log), never an error for the handler.
const STDIO_CAPTURE_BYTES: usize = 64 * 1024;

/// Longest `retry` or `reject` reason kept, in bytes: it is stored with every attempt and
/// dead letter. The rest is cut, and the kept part says how much.
pub const MAX_REASON_BYTES: usize = 4096;

/// Memory and table bytes per pooling slot kept mapped between instances (see `Runtime::new`).
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// The largest linear memory any handler may grow to; a handler's own `memory_mb` is lower.
const MAX_MEMORY_BYTES: usize = 4 << 30;

/// Process-wide Wasm machinery.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// Upcasters link against WASI alone ([`upcast`]).
    upcast_linker: Linker<upcast::UpcastState>,
    cache: Option<wasmtime::Cache>,
    ticker_stop: Arc<AtomicBool>,
    threads: WasmThreads,
    pool: Pool,
}

/// A compiled component, shared by every handler deployed from the same module. Cheap to
/// clone (the compiled code is reference-counted).
#[derive(Clone)]
pub struct Artifact {
    component: Component,
    sha256: String,
}

impl Artifact {
    /// The module's SHA-256, hex: its identity in the store and in the API.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// An artifact checked against the `handler` world and a handler's memory limit.
#[derive(Clone)]
pub struct Linked {
    artifact: Artifact,
    pre: HandlerPre<HostState>,
    /// What each instance takes from the pool.
    needs: Needs,
}

/// Bytes in a Wasm page.
const WASM_PAGE_BYTES: u64 = 64 * 1024;

/// One deployed version of a handler, ready to run: its deployment record and its linked
/// module. Made once, complete, by [`DeployedHandler::new`]; never changed after.
pub struct DeployedHandler {
    deployment: Deployment,
    /// The `source` of the events it emits: `/{app}/{handler}`.
    emit_source: Arc<str>,
    /// The handler's `config` settings, shared by all its invocations.
    config: Arc<BTreeMap<String, String>>,
    budget: Budget,
    linked: Linked,
}

impl DeployedHandler {
    /// The version `deployment` of a handler of `app`, running `linked`, which must have
    /// been linked with the deployment's settings.
    pub fn new(deployment: Deployment, linked: Linked, app: &AppName) -> DeployedHandler {
        DeployedHandler {
            emit_source: Arc::from(format!("/{app}/{}", deployment.handler)),
            config: Arc::new(deployment.settings.config.clone()),
            budget: Budget::of(&deployment.settings),
            deployment,
            linked,
        }
    }

    pub fn name(&self) -> &HandlerName {
        &self.deployment.handler
    }

    pub fn version(&self) -> u32 {
        self.deployment.version
    }

    pub fn settings(&self) -> &HandlerSettings {
        &self.deployment.settings
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The compiled module it runs.
    pub fn artifact(&self) -> &Artifact {
        &self.linked.artifact
    }

    /// The `source` of the events it emits.
    pub fn emit_source(&self) -> &str {
        &self.emit_source
    }
}

impl std::fmt::Debug for DeployedHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployedHandler")
            .field("name", self.name())
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

/// Why an invocation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    /// The handler asked for a retry.
    #[error("handler asked to retry: {0}")]
    Retry(String),
    /// The handler rejected the event: dead-letter it without retrying.
    #[error("handler rejected the event: {0}")]
    Reject(String),
    #[error("handler trapped: {0}")]
    Trap(String),
    #[error("handler timed out after {0:?}")]
    Timeout(Duration),
    #[error("handler exceeded its memory limit of {0} MiB")]
    MemoryExceeded(u64),
    /// The handler staged more than its invocation budget allows.
    #[error("handler exceeded its invocation budget: {0}")]
    Budget(String),
    /// The state the handler read kept changing under it; it was re-run this many times.
    #[error("state key `{key}` kept changing during the invocation ({reruns} re-runs)")]
    Conflict { key: String, reruns: u32 },
    /// The instance could not be set up, for a reason of the handler's (its start trapped,
    /// its tables are too large...).
    #[error("failed to start the handler: {0}")]
    Instantiate(String),
    /// The event could not be made the version the handler reads (an upcast step failed, or
    /// there is none): no attempt can succeed, so the delivery is dead-lettered at once.
    #[error("the event could not be delivered in the version the handler reads: {0}")]
    Upcast(String),
    /// An event the handler emitted does not match its type's schema: nothing it staged is
    /// committed.
    #[error("handler emitted an invalid event: {0}")]
    InvalidEmit(String),
    /// The host had no room for the instance (a pool of the allocator ran dry). Not the
    /// handler's doing: the delivery runs again later without it counting as an attempt.
    #[error("the host had no room to start the handler: {0}")]
    NoCapacity(String),
}

impl InvokeError {
    /// Whether another attempt may succeed: a handler's own `reject` says no, and so does an
    /// event no upcast can make readable (the registry changes through the gate, not between
    /// attempts).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, InvokeError::Reject(_) | InvokeError::Upcast(_))
    }

    /// Whether the failure is the host's, not the handler's: it is no attempt of the
    /// handler's, and the delivery stays pending as if it had not run.
    pub fn is_host_capacity(&self) -> bool {
        matches!(self, InvokeError::NoCapacity(_))
    }
}

/// Everything one invocation's `Store` holds; dropped with it.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    invocation: Invocation,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Where compiled components are cached between runs; `None` compiles every time.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    pub cache_dir: Option<std::path::PathBuf>,
}

/// Compiled-module cache figures since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
}

impl Runtime {
    pub fn new(options: &RuntimeOptions) -> Result<Runtime> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(capacity::MAX_INSTANCES)
            // Core instances are only counted, not reserved, so size them for the largest
            // components: an instance of a Rust handler takes 3 (its code, the WIT shim and
            // fixup), of a JavaScript one (ComponentizeJS) 4, of a Python one (componentize-py)
            // 14 (libc, libpython, the WASI adapter, the componentize-py runtime...). At 2 per
            // component the pool ran dry at 142 Python invocations in flight, measured.
            .total_core_instances(capacity::MAX_INSTANCES * 16)
            .total_memories(capacity::TOTAL_MEMORIES)
            .total_tables(capacity::TOTAL_TABLES)
            .total_stacks(capacity::MAX_INSTANCES)
            .max_memories_per_component(capacity::MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(capacity::MAX_TABLES_PER_COMPONENT)
            .max_memory_size(MAX_MEMORY_BYTES)
            // A fresh instance per event: what makes it cheap is not returning its memory to
            // the kernel. Keeping the first 2 MiB of each slot resident (a Rust guest's 1 MiB
            // stack sits below its data, so 1 MiB is not enough) and resetting only the pages
            // the instance dirtied (pagemap_scan, where the kernel has it) took a fresh
            // instance from 22 to 7 us; the madvise calls and page faults it avoids were a
            // fifth of the host's CPU end to end (measured, BENCHMARKS.md).
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        // Compiled code is cached on disk keyed by the module's hash and the engine's
        // settings, so a restart loads large handlers instead of compiling them again.
        let cache = match &options.cache_dir {
            Some(dir) => {
                let mut cache = wasmtime::CacheConfig::new();
                cache.with_directory(dir);
                Some(
                    wasmtime::Cache::new(cache)
                        .map_err(anyhow::Error::from)
                        .context("failed to set up the compiled-module cache")?,
                )
            }
            None => None,
        };
        config.cache(cache.clone());
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("failed to create the wasm engine")?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("failed to link the wasi interfaces")?;
        Handler::add_to_linker::<_, HasSelf<Invocation>>(&mut linker, |state| {
            &mut state.invocation
        })
        .map_err(anyhow::Error::from)
        .context("failed to link the handler interfaces")?;

        let upcast_linker = upcast::linker(&engine)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(&engine, ticker_stop.clone())?;
        Ok(Runtime {
            engine,
            linker,
            upcast_linker,
            cache,
            ticker_stop,
            threads: WasmThreads::start()?,
            pool: Pool::new(),
        })
    }

    /// Run `task` (an invocation and what follows it) on the Wasm threads, so that handlers
    /// busy with CPU never hold the threads that serve HTTP.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.threads.spawn(task);
    }

    /// How often compiling found its result in the on-disk cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache
            .as_ref()
            .map_or(CacheStats::default(), |cache| CacheStats {
                hits: cache.cache_hits(),
                misses: cache.cache_misses(),
            })
    }

    /// Compile a component (blocking; seconds for a large one: call it off the async
    /// threads). One [`Artifact`] serves every handler deployed from the same module.
    pub fn compile(&self, bytes: &[u8]) -> Result<Artifact> {
        if is_core_module(bytes) {
            return Err(anyhow!(
                "it is a core wasm module, not a component (build it for wasm32-wasip2, or \
                 wrap it with `wasm-tools component new`)"
            ));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(anyhow::Error::from)
            .context("it is not a valid component")?;
        Ok(Artifact {
            component,
            sha256: module_sha256(bytes),
        })
    }

    /// Check a compiled module against the `handler` world and a handler's limits, and that
    /// the instances its concurrency asks for fit the host's pool: this is where a wrong
    /// module, or one the host cannot run as configured, fails, at deploy time.
    pub fn link(&self, artifact: &Artifact, settings: &HandlerSettings) -> Result<Linked> {
        let instance_pre = self
            .linker
            .instantiate_pre(&artifact.component)
            .map_err(anyhow::Error::from)
            .context("it imports something the host does not provide")?;
        let pre = HandlerPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context(
                "it does not export the `evhost:handler/handler` world (`handle: func(event) -> \
             result<_, handler-error>`)",
            )?;
        // A module whose memory starts above the limit would fail every delivery; say so now.
        let initial_pages = artifact
            .component
            .resources_required()
            .and_then(|r| r.max_initial_memory_size)
            .unwrap_or(0);
        let initial_bytes = initial_pages.saturating_mul(WASM_PAGE_BYTES);
        if initial_bytes > settings.memory_bytes() {
            return Err(anyhow!(
                "it needs {:.2} MiB of memory to start, over its `memory_mb` of {} (raise \
                 `memory_mb`)",
                initial_bytes as f64 / f64::from(1 << 20),
                settings.memory_mb
            ));
        }
        let needs = Needs::of(&artifact.component);
        Pool::check_fits(needs, settings.concurrency).map_err(|why| anyhow!(why))?;
        Ok(Linked {
            artifact: artifact.clone(),
            pre,
            needs,
        })
    }

    /// Version 1 of handler `name` from `bytes`, outside any host, for measuring or testing
    /// the runtime alone (the benchmarks). A host deploys through [`crate::deploy`], which
    /// records each version in the store; this builds the same [`DeployedHandler`], with
    /// the same checks, without one. Blocking (it compiles).
    pub fn standalone(
        &self,
        name: &HandlerName,
        bytes: &[u8],
        settings: HandlerSettings,
    ) -> Result<DeployedHandler> {
        let artifact = self.compile(bytes)?;
        let linked = self.link(&artifact, &settings)?;
        let deployment = Deployment {
            handler: name.clone(),
            version: 1,
            module_sha256: artifact.sha256().to_owned(),
            settings,
            origin: crate::store::Origin::Api,
            deployed_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let app = AppName::new("standalone")?;
        Ok(DeployedHandler::new(deployment, linked, &app))
    }

    /// Run `handler` on `event` (at `seq` in the log) in a fresh instance; return what it
    /// staged. Waits first for
    /// the instance's slots in the pool, which the handler's timeout does not count.
    pub async fn invoke(
        &self,
        handler: &DeployedHandler,
        event: &Event,
        seq: i64,
        state: StateReader,
    ) -> Result<Staged, InvokeError> {
        let _slots = self.pool.acquire(handler.linked.needs).await;
        let stdout = Captured::new(STDIO_CAPTURE_BYTES);
        let stderr = Captured::new(STDIO_CAPTURE_BYTES);
        // No preopens, no environment, no arguments, no network: the handler's world is the
        // event and the host's capabilities.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let settings = handler.settings();
        let memory_limit = u64::from(settings.memory_mb) << 20;
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(memory_limit),
                invocation: Invocation::new(
                    InvocationContext {
                        handler: handler.name().clone(),
                        emit_source: handler.emit_source.clone(),
                        config: handler.config.clone(),
                        budget: handler.budget,
                    },
                    event,
                    seq,
                    state,
                ),
            },
        );
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_async_yield_and_update(1);

        let timeout = settings.timeout;
        let wit_event = to_wit(event);
        let outcome = tokio::time::timeout(timeout, async {
            let instance = handler
                .linked
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|err| (true, err))?;
            instance
                .call_handle(&mut store, &wit_event)
                .await
                .map_err(|err| (false, err))
        })
        .await;

        for (stream, captured) in [("stdout", stdout), ("stderr", stderr)] {
            let (kept, dropped) = captured.take();
            log_captured(handler.name(), event.id(), stream, &kept, dropped);
        }
        let invocation = &store.data().invocation;
        invocation.finish_log();

        if let Some(exceeded) = invocation.budget_exceeded() {
            return Err(InvokeError::Budget(exceeded.to_string()));
        }
        let memory_exceeded = store.data().limiter.exceeded();
        match outcome {
            Err(_elapsed) => Err(InvokeError::Timeout(timeout)),
            Ok(Err(_)) if memory_exceeded => Err(InvokeError::MemoryExceeded(memory_limit >> 20)),
            Ok(Err((true, err))) if is_pool_exhausted(&err) => Err(InvokeError::NoCapacity(
                format!("{:#}", anyhow::Error::from(err)),
            )),
            Ok(Err((true, err))) if err.downcast_ref::<wasmtime::Trap>().is_none() => Err(
                InvokeError::Instantiate(format!("{:#}", anyhow::Error::from(err))),
            ),
            Ok(Err((_, err))) => Err(InvokeError::Trap(trap_message(&err))),
            Ok(Ok(Err(HandlerError::Retry(reason)))) => Err(InvokeError::Retry(bounded(reason))),
            Ok(Ok(Err(HandlerError::Reject(reason)))) => Err(InvokeError::Reject(bounded(reason))),
            Ok(Ok(Ok(()))) => Ok(store.into_data().invocation.into_staged()),
        }
    }
}

/// Whether instantiating failed because one of the allocator's pools was full: the host's
/// lack of room, not anything the handler did.
fn is_pool_exhausted(err: &wasmtime::Error) -> bool {
    err.chain()
        .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
}

/// A handler's `retry` or `reject` reason, cut to [`MAX_REASON_BYTES`].
fn bounded(mut reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let cut = reason.len() - end;
    reason.truncate(end);
    reason.push_str(&format!("... ({cut} more bytes cut)"));
    reason
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, AtomicOrdering::Relaxed);
    }
}

/// Advance the engine's epoch every [`EPOCH_TICK`] on a plain thread: a timer that must keep
/// ticking even when every tokio worker is busy running Wasm.
fn spawn_epoch_ticker(engine: &Engine, stop: Arc<AtomicBool>) -> Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("evhost-epoch".into())
        .spawn(move || {
            while !stop.load(AtomicOrdering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .context("failed to start the epoch ticker")?;
    Ok(())
}

/// The hex SHA-256 of a module: its identity in the store and in the API.
pub fn module_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A core module starts with the same magic as a component but a different version/layer.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// The trap's own message, plus the guest backtrace when there is one.
fn trap_message(err: &wasmtime::Error) -> String {
    let mut message = match err.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    if let Some(backtrace) = err.downcast_ref::<wasmtime::WasmBacktrace>() {
        let frames: Vec<String> = backtrace
            .frames()
            .iter()
            .take(8)
            .filter_map(|frame| frame.func_name().map(str::to_owned))
            .collect();
        if !frames.is_empty() {
            message.push_str(" (in ");
            message.push_str(&frames.join(" <- "));
            message.push(')');
        }
    }
    message
}

fn log_captured(handler: &HandlerName, event_id: &str, stream: &str, kept: &[u8], dropped: u64) {
    let handler = handler.as_str();
    for line in String::from_utf8_lossy(kept).lines() {
        tracing::info!(target: "evhost::handler", handler, event_id, stream, "{line}");
    }
    if dropped > 0 {
        tracing::warn!(
            target: "evhost::handler",
            handler,
            event_id,
            stream,
            dropped_bytes = dropped,
            "dropped {dropped} bytes of {stream} past the {STDIO_CAPTURE_BYTES} kept per invocation"
        );
    }
}

fn to_wit(event: &Event) -> WitEvent {
    wit_event!(WitEvent, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short".to_owned()), "short");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded(long);
        assert!(cut.len() < MAX_REASON_BYTES + 40, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("... ({} more bytes cut)", MAX_REASON_BYTES)),
            "{cut}"
        );
    }
}
