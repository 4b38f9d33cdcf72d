//! The whole suite: every scenario against its baseline, in one run, printed as one table.
//!
//! The machine is shared and noisy, so absolute figures move from run to run; what holds is
//! the ratio of a scenario to a baseline measured minutes apart on the same machine. Each
//! row names its baseline.
//!
//! Every server runs as its own child process (the host is the release `evhost` binary;
//! the baselines are this binary's hidden `serve-*` commands), started fresh on a new data
//! directory for each scenario and killed after it, so that one scenario's backlog never
//! slows the next and each peak RSS is that scenario's own.
//!
//! Throughput is measured closed-loop: N connections each post as soon as their previous
//! POST was answered. Ingest latencies are POST to 202 under that load. End-to-end runs have
//! two phases: a saturating one for throughput (events settled per second, from the first
//! POST to the last commit), then one at half that rate for latency (POST to the commit of
//! the work, read from the host's store, millisecond resolution), because latency at
//! saturation is only the length of the queue.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use evhost::config::Ordering;
use hdrhistogram::Histogram;

use crate::db::HostDb;
use crate::load::{self, LoadConfig, LoadReport};
use crate::payload::{self, Body, Mode, Payload};
use crate::process::{self, Server};
use crate::servers::ACK_TYPE;
use crate::wasm;

/// How long an end-to-end run may take to settle its backlog after the load stops.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Deliveries the bench handlers let wait before ingress answers 429: bounds the backlog an
/// end-to-end run leaves, so that draining it takes a second or two, not minutes.
pub(crate) const BENCH_MAX_PENDING: u64 = 4000;
/// A connection answered 429 waits this long before its next POST.
pub(crate) const PAUSE_AFTER_429: Duration = Duration::from_millis(5);
/// SKUs the shop orders spread over: enough for the inventory's per-key ordering to run in
/// parallel.
const SHOP_SKUS: u32 = 64;
/// The busy handler's event type in the fan-out scenario.
const FANOUT_TYPE: &str = "bench.fanout.v1";
/// The event type no handler subscribes to: pure ingest.
pub(crate) const INGEST_TYPE: &str = "bench.ingest.v1";

/// What the suite needs to know.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub duration: Duration,
    /// Length of the latency phase of end-to-end runs.
    pub latency_duration: Duration,
    pub connections: usize,
    /// Run only scenarios whose name contains one of these (all when empty).
    pub only: Vec<String>,
    pub evhost_bin: PathBuf,
    pub guests_dir: PathBuf,
    /// This binary, for the `serve-floor` / `serve-native` baselines.
    pub self_exe: PathBuf,
    /// Compiled components shared by every host the suite starts.
    pub cache_dir: PathBuf,
    /// Where data directories, manifests and logs go.
    pub work_dir: PathBuf,
    /// How long each in-process Wasm cost variant is measured.
    pub wasm_each: Duration,
    /// `EVHOST_LOG` for the hosts.
    pub host_log: String,
    /// `concurrency` of the `ack` handlers (and of the native pipeline's worker).
    pub concurrency: u32,
    /// The workspace root, for the tools the suite installs (nats-server).
    pub workspace: PathBuf,
}

/// One line of the result table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub scenario: String,
    /// events/s, orders/s, deliveries/s, calls/s.
    pub unit: &'static str,
    pub rate: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    /// What the latency is from and to.
    pub latency: &'static str,
    /// (baseline name, this rate / the baseline's rate).
    pub ratio: Option<(String, f64)>,
    pub peak_rss_mib: Option<f64>,
    /// Server CPU time per event (or order), microseconds.
    pub cpu_us: Option<f64>,
    pub errors: String,
    pub note: String,
}

/// All the suite measured.
#[derive(Debug, Default)]
pub struct Results {
    pub rows: Vec<Row>,
    pub wasm: Vec<wasm::CostRow>,
    pub notes: Vec<String>,
}

impl Results {
    pub(crate) fn rate_of(&self, scenario: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario)
            .map(|r| r.rate)
    }

    pub(crate) fn add(&mut self, mut row: Row, baseline: Option<&str>) {
        if let Some(base) = baseline
            && let Some(rate) = self.rate_of(base)
            && rate > 0.0
        {
            row.ratio = Some((base.to_owned(), row.rate / rate));
        }
        eprintln!("  -> {}", one_line(&row));
        self.rows.push(row);
    }
}

fn one_line(row: &Row) -> String {
    format!(
        "{}: {:.0} {} p50 {} p99 {}{}{}",
        row.scenario,
        row.rate,
        row.unit,
        fmt_us(row.p50_us),
        fmt_us(row.p99_us),
        row.ratio
            .as_ref()
            .map(|(b, r)| format!(", {r:.2}x {b}"))
            .unwrap_or_default(),
        if row.errors.is_empty() || row.errors == "-" {
            String::new()
        } else {
            format!(", errors {}", row.errors)
        }
    )
}

/// The cluster scenarios (`crate::cluster`, run after these), for `--only`: each kind on 1
/// and on 3 hosts.
pub fn cluster_scenarios() -> Vec<String> {
    let mut names = Vec::new();
    for kind in ["ingest", "e2e-ack", "bounded"] {
        for hosts in [1, 3] {
            names.push(format!("cluster{hosts}/{kind}"));
        }
    }
    names
}

/// The single-node rows the cluster rows are compared with: run whenever a cluster row is.
pub const CLUSTER_BASELINES: [&str; 3] = ["floor/binary", "ingest/binary", "e2e/ack"];

impl SuiteOptions {
    pub(crate) fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| scenario.contains(o.as_str()))
    }

    /// Whether a single-node row is needed as the baseline of a cluster row that was asked
    /// for (`--only cluster` runs them too).
    fn wants_as_cluster_baseline(&self, scenario: &str) -> bool {
        CLUSTER_BASELINES.contains(&scenario) && cluster_scenarios().iter().any(|s| self.wants(s))
    }

    pub(crate) fn guest(&self, name: &str) -> PathBuf {
        self.guests_dir.join(format!("{name}.wasm"))
    }
}

/// Run every scenario `options` asks for.
pub async fn run(options: &SuiteOptions) -> Result<Results> {
    std::fs::create_dir_all(&options.work_dir)?;
    std::fs::create_dir_all(&options.cache_dir)?;
    let mut results = Results::default();
    warm_cache(options).await?;

    // 1. The HTTP floor, per mode.
    let modes = [Mode::Binary, Mode::Structured, Mode::Batch(10)];
    for mode in modes {
        let name = format!("floor/{}", mode.label());
        if !options.wants(&name)
            && !options.wants("ingest")
            && !options.wants_as_cluster_baseline(&name)
        {
            continue;
        }
        eprintln!("{name}");
        let server = spawn_self(options, &name, "serve-floor", &[]).await?;
        let report = saturate(options, &server, mode, counter(INGEST_TYPE), "f", false).await?;
        results.add(ingest_row(&name, &report, &server), None);
        server.stop().await;
    }

    // 2. Durable ingest (no handler subscribed), per mode; and with fsync off.
    let ingest = [
        (Mode::Binary, true),
        (Mode::Binary, false),
        (Mode::Structured, true),
        (Mode::Batch(10), true),
    ];
    for (mode, durable) in ingest {
        let name = format!(
            "ingest/{}{}",
            mode.label(),
            if durable { "" } else { " fsync-off" }
        );
        if !options.wants(&name) && !options.wants_as_cluster_baseline(&name) {
            continue;
        }
        eprintln!("{name}");
        let manifest = ack_manifest(options, &[("ack", ACK_TYPE)])?;
        let server = spawn_host(options, &name, &manifest, durable).await?;
        let report = saturate(options, &server, mode, counter(INGEST_TYPE), "i", false).await?;
        let mut row = ingest_row(&name, &report, &server);
        if !durable {
            row.note = "durability cost: compare with ingest/binary".into();
        }
        results.add(row, Some(&format!("floor/{}", mode.label())));
        server.stop().await;
    }

    // 3. End to end with the trivial handler: the host (durable, fsync off) and the native
    //    pipeline over the same store.
    let e2e = [
        ("e2e/ack", Target::Host { durable: true }),
        ("e2e/ack fsync-off", Target::Host { durable: false }),
        ("e2e/native", Target::Native),
    ];
    for (name, target) in e2e {
        if !options.wants(name) && !options.wants_as_cluster_baseline(name) {
            continue;
        }
        eprintln!("{name}");
        let server = match target {
            Target::Host { durable } => {
                let manifest = ack_manifest(options, &[("ack", ACK_TYPE)])?;
                spawn_host(options, name, &manifest, durable).await?
            }
            Target::Native => {
                let data = options.work_dir.join(slug(name));
                let args = [
                    "--data".into(),
                    OsString::from(data.as_os_str()),
                    "--concurrency".into(),
                    options.concurrency.to_string().into(),
                ];
                spawn_self(options, name, "serve-native", &args).await?
            }
        };
        let flow = Flow::Deliveries {
            ty: ACK_TYPE,
            per_event: 1,
        };
        let row = end_to_end(
            options,
            name,
            &server,
            Mode::Binary,
            counter(ACK_TYPE),
            &flow,
        )
        .await?;
        let baseline = match target {
            Target::Host { durable: true } => "floor/binary",
            Target::Host { durable: false } => "e2e/ack",
            Target::Native => "floor/binary",
        };
        results.add(row, Some(baseline));
        server.stop().await;
    }
    if let (Some(wasm), Some(native)) = (results.rate_of("e2e/ack"), results.rate_of("e2e/native"))
    {
        results.notes.push(format!(
            "Wasm cost end to end: e2e/ack reaches {:.2}x the native pipeline ({wasm:.0} vs \
             {native:.0} events/s).",
            wasm / native
        ));
    }

    // 4. Fan-out: one event, ten handlers.
    let name = "fanout/10";
    if options.wants(name) {
        eprintln!("{name}");
        let handlers: Vec<(String, &str)> =
            (0..10).map(|i| (format!("ack-{i}"), FANOUT_TYPE)).collect();
        let handlers: Vec<(&str, &str)> = handlers.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let manifest = ack_manifest(options, &handlers)?;
        let server = spawn_host(options, name, &manifest, true).await?;
        let flow = Flow::Deliveries {
            ty: FANOUT_TYPE,
            per_event: 10,
        };
        let mut row = end_to_end(
            options,
            name,
            &server,
            Mode::Binary,
            counter(FANOUT_TYPE),
            &flow,
        )
        .await?;
        row.note = format!("{:.0} deliveries/s; {}", row.rate * 10.0, row.note);
        results.add(row, Some("e2e/ack"));
        server.stop().await;
    }

    // 5. The shop flow: orders per second from POST to shipment.created committed.
    for durable in [true, false] {
        let name = if durable {
            "shop/order"
        } else {
            "shop/order fsync-off"
        };
        if !options.wants(name) {
            continue;
        }
        eprintln!("{name}");
        let manifest = shop_manifest(options)?;
        let server = spawn_host(options, name, &manifest, durable).await?;
        add_stock(&server).await?;
        let flow = Flow::Shop;
        let row = end_to_end(
            options,
            name,
            &server,
            Mode::Binary,
            Body::PlaceOrder { skus: SHOP_SKUS },
            &flow,
        )
        .await?;
        results.add(row, Some(if durable { "e2e/ack" } else { "shop/order" }));
        server.stop().await;
    }

    // 6. Many deployed handlers idle beside one busy one.
    for idle in [100usize, 1000] {
        let name = format!("idle/{idle}+1");
        if !options.wants(&name) {
            continue;
        }
        eprintln!("{name}");
        let names: Vec<(String, String)> = std::iter::once(("ack".to_owned(), ACK_TYPE.to_owned()))
            .chain((0..idle).map(|i| (format!("idle-{i}"), format!("bench.idle.{i}.v1"))))
            .collect();
        let handlers: Vec<(&str, &str)> = names
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let manifest = ack_manifest(options, &handlers)?;
        let server = spawn_host(options, &name, &manifest, true).await?;
        let idle_rss = server.usage().rss_kib;
        let flow = Flow::Deliveries {
            ty: ACK_TYPE,
            per_event: 1,
        };
        let mut row = end_to_end(
            options,
            &name,
            &server,
            Mode::Binary,
            counter(ACK_TYPE),
            &flow,
        )
        .await?;
        row.note = format!(
            "startup {:.1} s, RSS idle {:.0} MiB; {}",
            server.startup.as_secs_f64(),
            idle_rss as f64 / 1024.0,
            row.note
        );
        results.add(row, Some("e2e/ack"));
        server.stop().await;
    }

    // 7. Ordering rules of one handler: unordered, per key (1, 10, 1000 keys), serial.
    let orderings: [(&str, Ordering, u32); 5] = [
        ("ordering/unordered", Ordering::Unordered, 1),
        ("ordering/key 1", Ordering::Key, 1),
        ("ordering/key 10", Ordering::Key, 10),
        ("ordering/key 1000", Ordering::Key, 1000),
        ("ordering/serial", Ordering::Serial, 1),
    ];
    for (name, ordering, keys) in orderings {
        if !options.wants(name) {
            continue;
        }
        eprintln!("{name}");
        let manifest = ordering_manifest(options, name, ordering)?;
        let server = spawn_host(options, name, &manifest, true).await?;
        let flow = Flow::Deliveries {
            ty: ACK_TYPE,
            per_event: 1,
        };
        let body = Body::Keyed {
            ty: ACK_TYPE.to_owned(),
            keys,
        };
        let mut row = end_to_end(options, name, &server, Mode::Binary, body, &flow).await?;
        row.note = format!("{}; {}", describe_ordering(ordering, keys), row.note);
        let baseline = (ordering != Ordering::Unordered).then_some("ordering/unordered");
        results.add(row, baseline);
        server.stop().await;
    }

    // 8. Deploy to live: PUT /admin/handlers/{name} until the first event of its type is
    //    committed, on a host with an empty compiled cache (cold), then the same module under
    //    a second name (the compile hits the on-disk cache).
    if options.wants("deploy/") {
        let mut modules = vec![("ack".to_owned(), Some(options.guest("ack")), None)];
        match python_ack(options).await {
            Ok(path) => modules.push(("python-ack".to_owned(), Some(path), None)),
            Err(why) => modules.push(("python-ack".to_owned(), None, Some(why))),
        }
        for (label, module, skipped) in modules {
            let Some(module) = module else {
                let why = skipped.unwrap_or_default();
                eprintln!("deploy/{label}: skipped ({why})");
                results
                    .notes
                    .push(format!("deploy/{label}: skipped: {why}"));
                continue;
            };
            for row in deploy_to_live(options, &label, &module).await? {
                let baseline = row
                    .scenario
                    .ends_with(" cached")
                    .then(|| format!("deploy/{label} cold"));
                results.add(row, baseline.as_deref());
            }
        }
    }

    // 9. What one Wasm invocation costs, in process.
    if options.wants("wasm") {
        eprintln!("wasm cost per invocation (in process)");
        let ack = options.guest("ack");
        let order = options.guest("order");
        let guests = wasm::Guests {
            ack: &ack,
            order: order.exists().then_some(order.as_path()),
            filter: None,
        };
        results.wasm =
            wasm::measure_all(&guests, options.wasm_each, Some(options.cache_dir.clone())).await?;
    }
    Ok(results)
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Host { durable: bool },
    Native,
}

/// What marks one unit of end-to-end work as finished.
pub(crate) enum Flow {
    /// Every one of `per_event` deliveries of the posted event is done.
    Deliveries { ty: &'static str, per_event: u32 },
    /// The order's `shipment.created` was appended.
    Shop,
}

pub(crate) fn counter(ty: &str) -> Body {
    Body::Counter { ty: ty.to_owned() }
}

pub(crate) fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Compile every guest once into the shared cache, with the host's own runtime, so that no
/// scenario's start-up (or its peak memory) includes compiling.
async fn warm_cache(options: &SuiteOptions) -> Result<()> {
    let cache = options.cache_dir.clone();
    let guests: Vec<PathBuf> = [
        "ack",
        "sleeper",
        "stepper",
        "order_placed_upcaster",
        "order",
        "inventory",
        "payment",
        "shipping",
        "notification",
    ]
    .iter()
    .map(|g| options.guest(g))
    .collect();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let runtime = evhost::runtime::Runtime::new(&evhost::runtime::RuntimeOptions {
            cache_dir: Some(cache),
        })?;
        for guest in guests {
            let bytes =
                std::fs::read(&guest).with_context(|| format!("failed to read {guest:?}"))?;
            runtime
                .compile(&bytes)
                .with_context(|| format!("failed to compile {guest:?}"))?;
        }
        Ok(())
    })
    .await?
}

/// A fresh data directory whose compiled-module cache is the suite's shared one.
fn data_dir(options: &SuiteOptions, name: &str) -> Result<PathBuf> {
    let dir = options.work_dir.join(slug(name));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::os::unix::fs::symlink(&options.cache_dir, dir.join("compiled"))?;
    Ok(dir)
}

pub(crate) async fn spawn_host(
    options: &SuiteOptions,
    name: &str,
    manifest: &Path,
    durable: bool,
) -> Result<Server> {
    let extra: Vec<OsString> = if durable {
        Vec::new()
    } else {
        vec!["--no-fsync".into()]
    };
    spawn_host_with(options, name, manifest, &extra).await
}

/// `evhost up MANIFEST` on a fresh data directory, with `extra` arguments.
pub(crate) async fn spawn_host_with(
    options: &SuiteOptions,
    name: &str,
    manifest: &Path,
    extra: &[OsString],
) -> Result<Server> {
    let data = data_dir(options, name)?;
    let mut args: Vec<OsString> = vec![
        "up".into(),
        manifest.into(),
        "--listen".into(),
        "{addr}".into(),
        "--data".into(),
        data.into(),
    ];
    args.extend_from_slice(extra);
    let log = options.work_dir.join(format!("{}.log", slug(name)));
    Server::spawn(
        name,
        &options.evhost_bin,
        &args,
        &[("EVHOST_LOG", options.host_log.as_str())],
        log,
    )
    .await
}

async fn spawn_self(
    options: &SuiteOptions,
    name: &str,
    command: &str,
    extra: &[OsString],
) -> Result<Server> {
    let mut args: Vec<OsString> = vec![command.into(), "--listen".into(), "{addr}".into()];
    args.extend_from_slice(extra);
    let log = options.work_dir.join(format!("{}.log", slug(name)));
    Server::spawn(name, &options.self_exe, &args, &[], log).await
}

/// A manifest of `ack` handlers, each `(name, subscribed type)`.
pub(crate) fn ack_manifest(options: &SuiteOptions, handlers: &[(&str, &str)]) -> Result<PathBuf> {
    let module = options.guest("ack");
    let mut text = String::from("[app]\nname = \"bench\"\n");
    for (name, ty) in handlers {
        write!(
            text,
            "\n[[handler]]\nname = \"{name}\"\nmodule = {module:?}\nsubscribe = [\"{ty}\"]\n\
             concurrency = {}\nmax_pending = {BENCH_MAX_PENDING}\n",
            options.concurrency
        )?;
    }
    let path = options
        .work_dir
        .join(format!("ack-{}.toml", handlers.len()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The shop example's handlers and settings, with absolute module paths, a bounded queue, and
/// no rate limit on payment (the example's `rate = "200/s"` models a payment provider; the
/// bench measures the host). As in the example, inventory reads orders as v2, each v1 order
/// the order handler emits upcast for it.
fn shop_manifest(options: &SuiteOptions) -> Result<PathBuf> {
    let module = |name: &str| format!("{:?}", options.guest(name));
    let schema = |ty: &str| {
        let path = options
            .workspace
            .join(format!("examples/shop/schemas/{ty}.json"));
        format!("{path:?}")
    };
    let text = format!(
        r#"[app]
name = "shop"

[[schema]]
type = "com.example.shop.order.placed.v1"
file = {placed_v1}

[[schema]]
type = "com.example.shop.order.placed.v2"
file = {placed_v2}
upcaster = {upcaster}

[[handler]]
name = "order"
module = {order}
subscribe = ["com.example.shop.order.place.v1"]
concurrency = 16
max_pending = {BENCH_MAX_PENDING}
timeout_ms = 2000
memory_mb = 32

[[handler]]
name = "inventory"
module = {inventory}
subscribe = ["com.example.shop.stock.added.v1", "com.example.shop.order.placed.v2"]
accept_older = true
concurrency = 8
ordering = "key"
key = "partitionkey"
timeout_ms = 2000
memory_mb = 32

[[handler]]
name = "payment"
module = {payment}
subscribe = ["com.example.shop.stock.reserved.v1"]
concurrency = 8
timeout_ms = 5000
memory_mb = 32
config = {{ decline_over = "1000" }}

[[handler]]
name = "shipping"
module = {shipping}
subscribe = ["com.example.shop.payment.confirmed.v1"]
concurrency = 8
timeout_ms = 2000
memory_mb = 32

[[handler]]
name = "notification"
module = {notification}
subscribe = [
    "com.example.shop.order.placed.v1",
    "com.example.shop.stock.unavailable.v1",
    "com.example.shop.payment.failed.v1",
    "com.example.shop.shipment.created.v1",
]
ordering = "serial"
timeout_ms = 1000
memory_mb = 16
"#,
        placed_v1 = schema("com.example.shop.order.placed.v1"),
        placed_v2 = schema("com.example.shop.order.placed.v2"),
        upcaster = module("order_placed_upcaster"),
        order = module("order"),
        inventory = module("inventory"),
        payment = module("payment"),
        shipping = module("shipping"),
        notification = module("notification"),
    );
    let path = options.work_dir.join("shop.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Stock for every SKU, plenty, then wait until the inventory has taken it.
async fn add_stock(server: &Server) -> Result<()> {
    let client = reqwest::Client::new();
    for sku in 0..SHOP_SKUS {
        let response = client
            .post(format!("{}/events", server.base_url()))
            .header("content-type", "application/cloudevents+json")
            .body(payload::stock_added("stock", sku, 1_000_000_000))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("stock.added answered {}", response.status());
        }
    }
    Ok(())
}

pub(crate) fn payload_for(server: &Server, mode: Mode, body: Body, prefix: &str) -> Arc<Payload> {
    Arc::new(Payload {
        mode,
        body,
        prefix: prefix.to_owned(),
        authority: server.addr.to_string(),
        path: "/events".into(),
    })
}

pub(crate) async fn saturate(
    options: &SuiteOptions,
    server: &Server,
    mode: Mode,
    body: Body,
    prefix: &str,
    track_sends: bool,
) -> Result<LoadReport> {
    load::run(LoadConfig {
        addrs: vec![server.addr],
        connections: options.connections,
        duration: options.duration,
        rate: None,
        max_requests: None,
        track_sends,
        pause_after_429: PAUSE_AFTER_429,
        payload: payload_for(server, mode, body, prefix),
    })
    .await
}

pub(crate) fn ingest_row(name: &str, report: &LoadReport, server: &Server) -> Row {
    let usage = server.usage();
    let micros = |q: f64| Some(report.latency.value_at_quantile(q) as f64);
    Row {
        scenario: name.to_owned(),
        unit: "events/s",
        rate: report.events_per_sec(),
        p50_us: micros(0.5),
        p99_us: micros(0.99),
        max_us: Some(report.latency.max() as f64),
        latency: "POST -> 2xx",
        ratio: None,
        peak_rss_mib: Some(usage.peak_rss_kib as f64 / 1024.0),
        cpu_us: (report.accepted_events > 0)
            .then(|| usage.cpu.as_secs_f64() * 1e6 / report.accepted_events as f64),
        errors: report.errors_text(),
        note: String::new(),
    }
}

/// When each unit of work finished (unix ms), by the number of the event (or order) that
/// started it, for events of `payload`.
fn completions(db: &HostDb, flow: &Flow, payload: &Payload) -> Result<HashMap<u64, i64>> {
    let mut done: HashMap<u64, (i64, u32)> = HashMap::new();
    match flow {
        Flow::Deliveries { ty, per_event } => {
            // Every handler's done deliveries of `ty`, grouped by event.
            let mut stmt_rows = Vec::new();
            for handler in db_handlers(*per_event) {
                stmt_rows.extend(db.done_deliveries(&handler, ty)?);
            }
            for (id, at) in stmt_rows {
                if let Some(n) = payload.number_of(&id) {
                    let entry = done.entry(n).or_insert((0, 0));
                    entry.0 = entry.0.max(at);
                    entry.1 += 1;
                }
            }
            Ok(done
                .into_iter()
                .filter(|(_, (_, count))| *count == *per_event)
                .map(|(n, (at, _))| (n, at))
                .collect())
        }
        Flow::Shop => Ok(db
            .appended_by_subject(payload::SHIPMENT_CREATED)?
            .into_iter()
            .filter_map(|(subject, at)| Some((payload.order_number_of(&subject)?, at)))
            .collect()),
    }
}

/// The handler names of an end-to-end scenario with `per_event` subscribers.
fn db_handlers(per_event: u32) -> Vec<String> {
    if per_event == 1 {
        vec!["ack".into()]
    } else {
        (0..per_event).map(|i| format!("ack-{i}")).collect()
    }
}

/// Units of work of this phase, and how many have finished.
fn finished(db: &HostDb, flow: &Flow, sent: usize) -> Result<bool> {
    let done = match flow {
        Flow::Shop => db.count_of_type(payload::SHIPMENT_CREATED)? as usize,
        Flow::Deliveries { .. } => return Ok(db.pending()? == 0),
    };
    Ok(done >= sent)
}

/// A saturating phase for throughput, then a phase at half that rate for latency.
pub(crate) async fn end_to_end(
    options: &SuiteOptions,
    name: &str,
    server: &Server,
    mode: Mode,
    body: Body,
    flow: &Flow,
) -> Result<Row> {
    let db = HostDb::open(&options.work_dir.join(slug(name)))?;
    let before_cpu = server.usage().cpu;

    // Phase 1: throughput.
    let payload = payload_for(server, mode, body.clone(), "s");
    let mut shipments_expected = db.count_of_type(payload::SHIPMENT_CREATED)? as usize;
    let report = load::run(LoadConfig {
        addrs: vec![server.addr],
        connections: options.connections,
        duration: options.duration,
        rate: None,
        max_requests: None,
        track_sends: true,
        pause_after_429: PAUSE_AFTER_429,
        payload: payload.clone(),
    })
    .await?;
    shipments_expected += report.accepted_events as usize;
    let drained = db
        .wait_until(DRAIN_TIMEOUT, |db| finished(db, flow, shipments_expected))
        .await?;
    let cpu = server.usage().cpu - before_cpu;
    let done = completions(&db, flow, &payload)?;
    let first_sent_ms = report.started_unix_us as f64 / 1000.0;
    let last_done_ms = done.values().copied().max().unwrap_or(0) as f64;
    let span_s = ((last_done_ms - first_sent_ms) / 1000.0).max(1e-3);
    let rate = done.len() as f64 / span_s;
    let mut errors = report.errors_text();
    if !drained {
        errors = format!("{errors}; not drained after {DRAIN_TIMEOUT:?}");
    }
    let dead = db.dead()?;
    if dead > 0 {
        errors = format!("{errors}; {dead} dead letters");
    }
    let unit_cpu = (!done.is_empty()).then(|| cpu.as_secs_f64() * 1e6 / done.len() as f64);
    eprintln!(
        "  saturated: {} accepted, {} finished in {span_s:.2} s ({rate:.0}/s), POST->2xx p50 {}",
        report.accepted_events,
        done.len(),
        fmt_us(Some(report.latency.value_at_quantile(0.5) as f64))
    );

    // Phase 2: latency at half the throughput.
    let latency_rate = (rate / 2.0 / mode.events_per_request() as f64).max(1.0);
    let payload = payload_for(server, mode, body, "l");
    let mut shipments_expected = db.count_of_type(payload::SHIPMENT_CREATED)? as usize;
    let report2 = load::run(LoadConfig {
        addrs: vec![server.addr],
        connections: options.connections,
        duration: options.latency_duration,
        rate: Some(latency_rate),
        max_requests: None,
        track_sends: true,
        pause_after_429: PAUSE_AFTER_429,
        payload: payload.clone(),
    })
    .await?;
    shipments_expected += report2.accepted_events as usize;
    db.wait_until(DRAIN_TIMEOUT, |db| finished(db, flow, shipments_expected))
        .await?;
    let done = completions(&db, flow, &payload)?;
    let mut histogram: Histogram<u64> = load::new_histogram();
    let per_request = mode.events_per_request();
    for (seq, sent_us) in &report2.sends {
        for i in 0..per_request {
            if let Some(at_ms) = done.get(&(seq * per_request + i)) {
                let micros = (*at_ms as f64 * 1000.0 - *sent_us as f64).max(1.0);
                histogram.saturating_record(micros as u64);
            }
        }
    }
    let usage = server.usage();
    let unit = match flow {
        Flow::Shop => "orders/s",
        Flow::Deliveries { .. } => "events/s",
    };
    let note = latency_note(latency_rate * per_request as f64, &histogram, &report2);
    Ok(Row {
        peak_rss_mib: Some(usage.peak_rss_kib as f64 / 1024.0),
        cpu_us: unit_cpu,
        errors,
        note,
        ..Row::end_to_end(name, unit, rate, &histogram)
    })
}

impl Row {
    /// A POST -> commit row of `rate`, its latencies from `histogram` (none if it is empty),
    /// the rest to fill in.
    pub(crate) fn end_to_end(
        name: &str,
        unit: &'static str,
        rate: f64,
        histogram: &Histogram<u64>,
    ) -> Row {
        let at = |q: f64| (!histogram.is_empty()).then(|| histogram.value_at_quantile(q) as f64);
        Row {
            scenario: name.to_owned(),
            unit,
            rate,
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: (!histogram.is_empty()).then(|| histogram.max() as f64),
            latency: "POST -> commit",
            ratio: None,
            peak_rss_mib: None,
            cpu_us: None,
            errors: String::new(),
            note: String::new(),
        }
    }
}

/// What an end-to-end row's latency phase did: its rate, and how much of it finished.
pub(crate) fn latency_note(rate: f64, histogram: &Histogram<u64>, report: &LoadReport) -> String {
    let errors = match report.errors.is_empty() {
        true => String::new(),
        false => format!(" ({})", report.errors_text()),
    };
    format!(
        "latency at {rate:.0}/s: {} of {} finished{errors}",
        histogram.len(),
        report.accepted_events
    )
}

/// The ordering settings of an `ordering/*` row, for its note.
fn describe_ordering(ordering: Ordering, keys: u32) -> String {
    match ordering {
        Ordering::Key => format!("ordering = \"key\", {keys} distinct partitionkey(s)"),
        other => format!("ordering = \"{other}\""),
    }
}

/// One `ack` handler named `ack` on the bench's type, with the given ordering (keyed by the
/// `partitionkey` extension).
fn ordering_manifest(options: &SuiteOptions, name: &str, ordering: Ordering) -> Result<PathBuf> {
    let module = options.guest("ack");
    let key = if ordering == Ordering::Key {
        "key = \"partitionkey\"\n"
    } else {
        ""
    };
    let text = format!(
        "[app]\nname = \"bench\"\n\n[[handler]]\nname = \"ack\"\nmodule = {module:?}\n\
         subscribe = [\"{ACK_TYPE}\"]\nconcurrency = {}\nmax_pending = {BENCH_MAX_PENDING}\n\
         ordering = \"{}\"\n{key}",
        options.concurrency,
        ordering.as_str(),
    );
    let path = options.work_dir.join(format!("{}.toml", slug(name)));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// How long the Python build may take before the Python deploy rows are skipped.
const PYTHON_BUILD_TIMEOUT: Duration = Duration::from_secs(120);
/// The event type the deployed handlers subscribe to.
const DEPLOY_TYPE: &str = "bench.deploy.v1";
/// How long one deploy may take to go live (a cold compile of a large component included).
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);

/// target/python/ack.wasm, built (or found up to date) the way tests/polyglot.rs builds it:
/// `python3 handlers/python/build.py ack` (`EVHOST_PYTHON` for another interpreter). The
/// error says why the Python rows are skipped.
async fn python_ack(options: &SuiteOptions) -> std::result::Result<PathBuf, String> {
    let target = options
        .guests_dir
        .parent()
        .and_then(Path::parent)
        .ok_or("no target folder")?;
    let workspace = target.parent().ok_or("no workspace folder")?;
    let python = std::env::var("EVHOST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(workspace.join("handlers/python/build.py"))
        .arg("ack")
        .current_dir(workspace)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let output = match tokio::time::timeout(PYTHON_BUILD_TIMEOUT, command.output()).await {
        Err(_) => {
            return Err(format!(
                "`{python} handlers/python/build.py ack` took over {PYTHON_BUILD_TIMEOUT:?}"
            ));
        }
        Ok(Err(err)) => return Err(format!("failed to run {python}: {err}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        return Err(format!(
            "handlers/python/build.py failed ({}): {last}",
            output.status
        ));
    }
    eprintln!(
        "python3 handlers/python/build.py ack: {:.1?}",
        started.elapsed()
    );
    let path = target.join("python/ack.wasm");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{path:?} missing after the build"))
    }
}

/// A host with no handlers on a fresh data directory (so an empty compiled cache under
/// `<data>/compiled`); `module` deployed as `{label}-cold`, then again as `{label}-cached`.
/// Each row's rate is milliseconds from the start of the PUT to the first event's delivery
/// seen `done`.
async fn deploy_to_live(options: &SuiteOptions, label: &str, module: &Path) -> Result<Vec<Row>> {
    let name = format!("deploy/{label}");
    eprintln!("{name}");
    let manifest = options.work_dir.join("empty.toml");
    std::fs::write(&manifest, "[app]\nname = \"bench-deploy\"\n")?;
    let data = options.work_dir.join(slug(&name));
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    std::fs::create_dir_all(&data)?;
    let args: Vec<OsString> = vec![
        "up".into(),
        manifest.into(),
        "--listen".into(),
        "{addr}".into(),
        "--data".into(),
        data.into(),
    ];
    let log = options.work_dir.join(format!("{}.log", slug(&name)));
    let server = Server::spawn(
        &name,
        &options.evhost_bin,
        &args,
        &[("EVHOST_LOG", options.host_log.as_str())],
        log,
    )
    .await?;
    let bytes = std::fs::read(module).with_context(|| format!("failed to read {module:?}"))?;
    let client = reqwest::Client::builder().timeout(DEPLOY_TIMEOUT).build()?;
    let mut rows = Vec::new();
    for case in ["cold", "cached"] {
        let handler = format!("{label}-{case}");
        let (put, live) = deploy_once(&client, &server, &handler, &bytes).await?;
        let cache = compile_cache(&client, &server).await.unwrap_or_default();
        let usage = server.usage();
        rows.push(Row {
            scenario: format!("{name} {case}"),
            unit: "ms to live",
            rate: live.as_secs_f64() * 1e3,
            latency: "PUT -> first commit",
            peak_rss_mib: Some(usage.peak_rss_kib as f64 / 1024.0),
            errors: "-".into(),
            note: format!(
                "{:.1} MiB module; PUT answered after {:.0} ms, first event committed {:.0} ms \
                 later; compile cache so far: {cache}",
                bytes.len() as f64 / 1024.0 / 1024.0,
                put.as_secs_f64() * 1e3,
                (live - put).as_secs_f64() * 1e3,
            ),
            ..Default::default()
        });
    }
    server.stop().await;
    Ok(rows)
}

/// PUT the module as `handler`, post one event of [`DEPLOY_TYPE`] after the 2xx, and poll the
/// admin API until its delivery to `handler` is done. Returns (PUT answered, live), both from
/// the start of the PUT.
async fn deploy_once(
    client: &reqwest::Client,
    server: &Server,
    handler: &str,
    module: &[u8],
) -> Result<(Duration, Duration)> {
    let base = server.base_url();
    let form = reqwest::multipart::Form::new()
        .part(
            "module",
            reqwest::multipart::Part::bytes(module.to_vec()).file_name("module.wasm"),
        )
        .text("config", format!("subscribe = [\"{DEPLOY_TYPE}\"]\n"));
    let started = std::time::Instant::now();
    let response = client
        .put(format!("{base}/admin/handlers/{handler}"))
        .multipart(form)
        .send()
        .await?;
    let put = started.elapsed();
    if !response.status().is_success() {
        bail!(
            "PUT /admin/handlers/{handler} answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let id = format!("deploy-{handler}");
    let response = client
        .post(format!("{base}/events"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-source", payload::SOURCE)
        .header("ce-id", &id)
        .header("ce-type", DEPLOY_TYPE)
        .body("{}")
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("the first {DEPLOY_TYPE} answered {}", response.status());
    }
    let url = format!("{base}/admin/events?type={DEPLOY_TYPE}&limit=1000");
    loop {
        let listing: serde_json::Value = client.get(&url).send().await?.json().await?;
        let done = listing["events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                e["event"]["id"] == id.as_str()
                    && e["deliveries"].as_array().is_some_and(|ds| {
                        ds.iter()
                            .any(|d| d["handler"] == handler && d["status"] == "done")
                    })
            })
        });
        if done {
            return Ok((put, started.elapsed()));
        }
        if started.elapsed() > DEPLOY_TIMEOUT {
            bail!("{handler} was not live after {DEPLOY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The host's compiled-cache lookups so far, from /metrics, e.g. `hit 1, miss 1`.
async fn compile_cache(client: &reqwest::Client, server: &Server) -> Result<String> {
    let text = client
        .get(format!("{}/metrics", server.base_url()))
        .send()
        .await?
        .text()
        .await?;
    let parts: Vec<String> = text
        .lines()
        .filter(|l| l.contains("compile_cache_lookups") && !l.starts_with('#'))
        .filter_map(|l| {
            let result = l.split("result=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?;
            Some(format!("{result} {value}"))
        })
        .collect();
    Ok(parts.join(", "))
}

pub fn fmt_us(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us >= 1_000_000.0 => format!("{:.2} s", us / 1e6),
        Some(us) if us >= 10_000.0 => format!("{:.0} ms", us / 1e3),
        Some(us) if us >= 1_000.0 => format!("{:.1} ms", us / 1e3),
        Some(us) if us >= 10.0 => format!("{us:.0} us"),
        Some(us) => format!("{us:.2} us"),
    }
}

/// The results as Markdown: the scenario table, the Wasm cost table, notes.
pub fn render(results: &Results, header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    if !results.rows.is_empty() {
        let _ = writeln!(
            out,
            "| scenario | rate | p50 | p99 | latency | ratio to baseline | host CPU/unit | peak RSS | errors | notes |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|---|---:|---:|---|---|");
        for row in &results.rows {
            let ratio = row
                .ratio
                .as_ref()
                .map(|(base, r)| format!("{r:.2}x {base}"))
                .unwrap_or_else(|| "baseline".into());
            let _ = writeln!(
                out,
                "| {} | {:.0} {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.scenario,
                row.rate,
                row.unit,
                fmt_us(row.p50_us),
                fmt_us(row.p99_us),
                row.latency,
                ratio,
                fmt_us(row.cpu_us),
                row.peak_rss_mib
                    .map(|m| format!("{m:.0} MiB"))
                    .unwrap_or_else(|| "-".into()),
                row.errors,
                row.note
            );
        }
        out.push('\n');
    }
    if !results.wasm.is_empty() {
        let native = results
            .wasm
            .iter()
            .find(|r| r.name == wasm::NATIVE_ROW)
            .map_or(0.0, |r| r.mean_us());
        let fresh = results
            .wasm
            .iter()
            .find(|r| r.name.starts_with("evhost Runtime::invoke, ack"))
            .map(|r| r.mean_us());
        let _ = writeln!(
            out,
            "| one invocation, in process, one at a time | calls/s | mean | p50 | p99 | x native | x evhost invoke |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for row in &results.wasm {
            let h = &row.histogram;
            let ns = |q: f64| Some(h.value_at_quantile(q) as f64 / 1000.0);
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} | {} | {} |",
                row.name,
                row.calls_per_sec(),
                fmt_us(Some(row.mean_us())),
                fmt_us(ns(0.5)),
                fmt_us(ns(0.99)),
                if native > 0.0 {
                    format!("{:.0}x", row.mean_us() / native)
                } else {
                    "-".into()
                },
                fresh
                    .filter(|f| *f > 0.0)
                    .map(|f| format!("{:.2}", row.mean_us() / f))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        out.push('\n');
    }
    for note in &results.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}

/// The machine the figures came from, for the report's header.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// The bench's own CPU use over a run, to show how much of the machine the load generator
/// took from the server.
pub fn self_cpu() -> Duration {
    process::usage_of("self").cpu
}
