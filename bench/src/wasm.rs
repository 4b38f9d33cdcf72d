//! What one Wasm invocation costs, in process, and where that time goes.
//!
//! Every variant calls `handle` of the `ack` fixture (which does nothing) once per event, one
//! call at a time on one thread, and records each call's wall time:
//!
//! - `native`: the handler's work as a Rust function, the floor;
//! - `evhost invoke`: the host's own [`Runtime::invoke`](evhost::runtime::Runtime::invoke),
//!   the real path (per-call WASI context, captured stdio, limiter, timeout, fresh instance);
//! - `wasmtime ...`: a bare wasmtime engine with the host's pooling settings, a store that
//!   holds nothing and imports that trap (`ack` calls none), so only instantiate + call is
//!   left; and the same with one setting changed at a time, to find what the host should
//!   configure;
//! - `reused instance`: one instance called again and again, what a warm instance costs.
//!
//! The difference between `evhost invoke` and `wasmtime (host config)` is the host's own
//! per-invocation setup; the differences between the wasmtime rows are engine settings.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::servers::native_ack;

/// The host side of the `handler` world, only to call `handle`.
mod bindings {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit/0.1.0",
        exports: { default: async },
    });
}

use bindings::HandlerPre;
use bindings::evhost::handler::types::Event as WitEvent;

/// Calls made before measuring, so that pooling slots, caches and branch predictors are warm.
const WARMUP_CALLS: u32 = 200;

/// The pooling settings of `host/src/runtime/mod.rs` (kept in step by hand).
pub fn host_pooling() -> PoolingAllocationConfig {
    const MAX_INSTANCES: u32 = 1000;
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 2)
        .total_memories(MAX_INSTANCES * 2)
        .total_tables(MAX_INSTANCES * 2)
        .total_stacks(MAX_INSTANCES)
        .max_memories_per_component(4)
        .max_tables_per_component(4)
        .max_memory_size(4 << 30);
    pooling
}

/// One way to configure the engine: the host's settings with one or two changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineVariant {
    /// Copy-on-write memory initialisation (wasmtime's default, and the host's): each new
    /// instance maps the module's memory image anew and takes a page fault per page it
    /// touches; off, the data segments are copied into the slot.
    pub cow: bool,
    /// Bytes of each linear memory and table kept resident between instances (reset with
    /// memset instead of madvise, so no page faults on the next use); 0 as in the host.
    pub keep_resident: usize,
    /// The pooling allocator (as the host); off, memories are mmapped per instance.
    pub pooling: bool,
    /// Reset only the pages an instance dirtied, found with the `PAGEMAP_SCAN` ioctl (Linux
    /// 6.7+), instead of memsetting all `keep_resident` bytes.
    pub pagemap_scan: bool,
}

impl EngineVariant {
    /// Exactly the host's settings.
    pub const HOST: EngineVariant = EngineVariant {
        cow: true,
        keep_resident: 0,
        pooling: true,
        pagemap_scan: false,
    };

    pub const ALL: [EngineVariant; 11] = [
        EngineVariant::HOST,
        EngineVariant {
            cow: false,
            ..EngineVariant::HOST
        },
        EngineVariant {
            keep_resident: 1 << 20,
            ..EngineVariant::HOST
        },
        EngineVariant {
            keep_resident: 2 << 20,
            ..EngineVariant::HOST
        },
        EngineVariant {
            cow: false,
            keep_resident: 1 << 20,
            ..EngineVariant::HOST
        },
        EngineVariant {
            cow: false,
            keep_resident: 2 << 20,
            ..EngineVariant::HOST
        },
        EngineVariant {
            cow: false,
            keep_resident: 4 << 20,
            ..EngineVariant::HOST
        },
        EngineVariant {
            keep_resident: 2 << 20,
            pagemap_scan: true,
            ..EngineVariant::HOST
        },
        EngineVariant {
            cow: false,
            keep_resident: 2 << 20,
            pagemap_scan: true,
            ..EngineVariant::HOST
        },
        EngineVariant {
            keep_resident: 16 << 20,
            pagemap_scan: true,
            ..EngineVariant::HOST
        },
        EngineVariant {
            pooling: false,
            ..EngineVariant::HOST
        },
    ];

    pub fn label(self) -> String {
        if self == EngineVariant::HOST {
            return "wasmtime fresh instance (host config)".into();
        }
        let mut changes = Vec::new();
        if !self.pooling {
            changes.push("on-demand allocator".to_owned());
        }
        if !self.cow {
            changes.push("memory_init_cow off".to_owned());
        }
        if self.keep_resident > 0 {
            changes.push(format!("keep {} MiB resident", self.keep_resident >> 20));
        }
        if self.pagemap_scan {
            changes.push("pagemap_scan".to_owned());
        }
        format!("wasmtime fresh, {}", changes.join(" + "))
    }

    pub fn engine(self, cache_dir: Option<&Path>) -> Result<Engine> {
        let mut pooling = host_pooling();
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(self.cow);
        if self.pagemap_scan {
            pooling.pagemap_scan(wasmtime::Enabled::Yes);
        }
        if self.keep_resident > 0 {
            pooling
                .linear_memory_keep_resident(self.keep_resident)
                .table_keep_resident(self.keep_resident);
        }
        if self.pooling {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        }
        if let Some(dir) = cache_dir {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(wasmtime::Cache::new(cache)?));
        }
        Ok(Engine::new(&config)?)
    }
}

/// A component ready to instantiate in a bare engine.
pub struct Bare {
    engine: Engine,
    pre: HandlerPre<()>,
}

impl Bare {
    pub fn new(variant: EngineVariant, wasm: &[u8], cache_dir: Option<&Path>) -> Result<Bare> {
        let engine = variant.engine(cache_dir)?;
        let component = Component::new(&engine, wasm)?;
        let mut linker: Linker<()> = Linker::new(&engine);
        linker.define_unknown_imports_as_traps(&component)?;
        let pre = HandlerPre::new(linker.instantiate_pre(&component)?)?;
        Ok(Bare { engine, pre })
    }

    fn store(&self) -> Store<()> {
        let mut store = Store::new(&self.engine, ());
        store.set_epoch_deadline(1 << 40);
        store
    }

    /// A fresh store and instance, one call, everything dropped.
    pub async fn fresh_call(&self, event: &WitEvent) -> Result<()> {
        let mut store = self.store();
        let instance = self.pre.instantiate_async(&mut store).await?;
        instance
            .call_handle(&mut store, event)
            .await?
            .map_err(|err| anyhow!("ack failed: {err:?}"))
    }

    /// Only instantiate (and drop): the share of [`Bare::fresh_call`] that is not the call.
    pub async fn instantiate_only(&self) -> Result<()> {
        let mut store = self.store();
        self.pre.instantiate_async(&mut store).await?;
        Ok(())
    }

    /// One instance, called once to warm it, then `calls` times; returns the time of those.
    pub async fn reused_for(&self, event: &WitEvent, calls: u64) -> Result<Duration> {
        let mut store = self.store();
        let instance = self.pre.instantiate_async(&mut store).await?;
        instance.call_handle(&mut store, event).await?.ok();
        let start = Instant::now();
        for _ in 0..calls {
            instance
                .call_handle(&mut store, event)
                .await?
                .map_err(|err| anyhow!("ack failed: {err:?}"))?;
        }
        Ok(start.elapsed())
    }

    /// One instance, called until `until`; returns each call's time.
    pub async fn reused_calls(&self, event: &WitEvent, until: Instant) -> Result<Histogram<u64>> {
        let mut store = self.store();
        let instance = self.pre.instantiate_async(&mut store).await?;
        let mut histogram = ns_histogram();
        for _ in 0..WARMUP_CALLS {
            instance.call_handle(&mut store, event).await?.ok();
        }
        while Instant::now() < until {
            let start = Instant::now();
            instance
                .call_handle(&mut store, event)
                .await?
                .map_err(|err| anyhow!("ack failed: {err:?}"))?;
            histogram.saturating_record(start.elapsed().as_nanos() as u64);
        }
        Ok(histogram)
    }
}

/// The event every variant handles: what the ingest scenarios post.
pub fn sample_event() -> evhost::event::Event {
    evhost::event::Event::builder("bench-1", "/bench", crate::servers::ACK_TYPE)
        .data(Some("application/json"), b"{\"n\":1}".to_vec())
        .build()
        .expect("a valid event")
}

pub fn to_wit(event: &evhost::event::Event) -> WitEvent {
    WitEvent {
        id: event.id().to_owned(),
        source: event.source().to_owned(),
        specversion: "1.0".into(),
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
}

/// The host's runtime with one handler loaded, and a store for its state reads.
pub struct HostInvoke {
    runtime: evhost::runtime::Runtime,
    handler: evhost::runtime::DeployedHandler,
    store: evhost::store::Store,
    _data: tempfile::TempDir,
}

impl HostInvoke {
    pub fn new(name: &str, wasm: &Path, ty: &str, cache_dir: Option<PathBuf>) -> Result<Self> {
        let data = tempfile::tempdir()?;
        let store = evhost::store::Store::open(data.path(), evhost::store::Durability::Off)?;
        let runtime =
            evhost::runtime::Runtime::new(&evhost::runtime::RuntimeOptions { cache_dir })?;
        let settings = evhost::config::HandlerSettings {
            subscribe: vec![ty.to_owned()],
            ..Default::default()
        };
        let bytes = std::fs::read(wasm).with_context(|| format!("failed to read {wasm:?}"))?;
        let handler =
            runtime.standalone(&evhost::name::HandlerName::new(name)?, &bytes, settings)?;
        Ok(HostInvoke {
            runtime,
            handler,
            store,
            _data: data,
        })
    }

    pub async fn invoke(&self, event: &evhost::event::Event) -> Result<()> {
        let reader = self.store.state_reader(self.handler.name());
        self.runtime
            .invoke(&self.handler, event, 0, reader)
            .await
            .map(drop)
            .map_err(|err| anyhow!("invoke failed: {err}"))
    }
}

/// One measured variant.
#[derive(Debug, Clone)]
pub struct CostRow {
    pub name: String,
    /// Per call, nanoseconds.
    pub histogram: Histogram<u64>,
}

impl CostRow {
    pub fn mean_us(&self) -> f64 {
        self.histogram.mean() / 1000.0
    }

    pub fn calls_per_sec(&self) -> f64 {
        let mean = self.histogram.mean();
        if mean > 0.0 { 1e9 / mean } else { 0.0 }
    }
}

pub fn ns_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Call `f` for `WARMUP_CALLS`, then measure it until `each` has passed.
async fn measure<F, Fut>(name: impl Into<String>, each: Duration, mut f: F) -> Result<CostRow>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for _ in 0..WARMUP_CALLS {
        f().await?;
    }
    let mut histogram = ns_histogram();
    let until = Instant::now() + each;
    while Instant::now() < until {
        let start = Instant::now();
        f().await?;
        histogram.saturating_record(start.elapsed().as_nanos() as u64);
    }
    Ok(CostRow {
        name: name.into(),
        histogram,
    })
}

/// The name of the native row, the table's floor.
pub const NATIVE_ROW: &str = "native Rust function (ack)";

/// Guests the cost table runs: `ack.wasm` and a real handler, `order.wasm`.
pub struct Guests<'a> {
    pub ack: &'a Path,
    pub order: Option<&'a Path>,
    /// Measure only the variants whose name contains this (e.g. for `perf record`).
    pub filter: Option<&'a str>,
}

/// Measure every variant for `each`; `cache_dir` keeps compiled components between runs.
pub async fn measure_all(
    guests: &Guests<'_>,
    each: Duration,
    cache_dir: Option<PathBuf>,
) -> Result<Vec<CostRow>> {
    let wants = |name: &str| guests.filter.is_none_or(|f| name.contains(f));
    let wasm =
        std::fs::read(guests.ack).with_context(|| format!("failed to read {:?}", guests.ack))?;
    let event = sample_event();
    let wit_event = to_wit(&event);
    let mut rows = Vec::new();

    let name = NATIVE_ROW;
    if wants(name) {
        rows.push(
            measure(name, each, || async {
                native_ack(std::hint::black_box(&event)).map_err(|e| anyhow!(e))
            })
            .await?,
        );
    }

    let name = "evhost Runtime::invoke, ack (fresh)";
    if wants(name) {
        let host = HostInvoke::new(
            "ack",
            guests.ack,
            crate::servers::ACK_TYPE,
            cache_dir.clone(),
        )?;
        rows.push(measure(name, each, || host.invoke(&event)).await?);
    }

    let name = "evhost Runtime::invoke, shop order (fresh)";
    if let Some(order) = guests.order
        && wants(name)
    {
        let host = HostInvoke::new(
            "order",
            order,
            crate::payload::PLACE_ORDER,
            cache_dir.clone(),
        )?;
        let mut n = 0u64;
        rows.push(
            measure(name, each, || {
                n += 1;
                let data = format!(
                    "{{\"order_id\":\"o-{n}\",\"sku\":\"sku-1\",\"quantity\":1,\"amount\":25.0}}"
                );
                let event = evhost::event::Event::builder(
                    format!("order-{n}"),
                    "/bench",
                    crate::payload::PLACE_ORDER,
                )
                .subject(format!("o-{n}"))
                .data(Some("application/json"), data.into_bytes())
                .build()
                .expect("a valid event");
                let host = &host;
                async move { host.invoke(&event).await }
            })
            .await?,
        );
    }

    let name = "host per-call setup only (WasiCtx + pipes)";
    if wants(name) {
        rows.push(
            measure(name, each, || async {
                let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(64 * 1024);
                let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(64 * 1024);
                let wasi = wasmtime_wasi::WasiCtx::builder()
                    .stdout(stdout)
                    .stderr(stderr)
                    .allow_tcp(false)
                    .allow_udp(false)
                    .allow_ip_name_lookup(false)
                    .build();
                std::hint::black_box(wasi);
                Ok(())
            })
            .await?,
        );
    }

    for variant in EngineVariant::ALL {
        let label = variant.label();
        let host = variant == EngineVariant::HOST;
        let instantiate = "wasmtime instantiate only (host config)";
        let reused = "wasmtime reused instance, call only";
        if !(wants(&label) || host && (wants(instantiate) || wants(reused))) {
            continue;
        }
        let bare = Bare::new(variant, &wasm, cache_dir.as_deref())?;
        if wants(&label) {
            rows.push(measure(label, each, || bare.fresh_call(&wit_event)).await?);
        }
        if host && wants(instantiate) {
            rows.push(measure(instantiate, each, || bare.instantiate_only()).await?);
        }
        if host && wants(reused) {
            let histogram = bare.reused_calls(&wit_event, Instant::now() + each).await?;
            rows.push(CostRow {
                name: reused.into(),
                histogram,
            });
        }
    }
    Ok(rows)
}
