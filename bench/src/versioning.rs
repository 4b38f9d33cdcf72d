//! Event versions: what schema validation costs at ingress, and what delivering an older
//! event through a chain of upcasters costs against delivering the version a handler reads.
//!
//! - `ingest/schema` against `ingest/no-schema`: a host with no handlers (pure durable
//!   ingest, as `ingest/*`), posting the shop's PlaceOrder command
//!   (`com.example.shop.order.place.v1`, `{order_id, sku, quantity, amount}`, unique ids),
//!   once with the shop's schema for that type registered in the manifest (`[[schema]]`) and
//!   once without; the same per batch of 10.
//! - `upcast/...` end to end: one host, three versions of the family `bench.up` registered
//!   with the `stepper` fixture as the upcaster of v1 -> v2 and v2 -> v3, and the `ack`
//!   handler subscribed to `bench.up.v3` with `accept_older = true`. Events posted as v1
//!   (two upcast steps per delivery, each one a fresh upcaster instance and a check of its
//!   output against the next version's schema) against events posted directly as v3 with
//!   the data the chain would make, each on a fresh host with the same manifest.
//! - `upcast/read_as` in process: the same registry built with the host's own
//!   [`Registry::build`], and [`Registry::read_as`] timed on a v1 event (2 steps), a v2 event
//!   (1 step) and a v3 event (0 steps: the floor), interleaved call by call so that the
//!   machine's other load falls on all of them alike; with one step's parts beside them
//!   ([`Runtime::upcast`] alone, the parse and check of its output).
//! - `schema/admit` in process: [`Registry::admit`] of one PlaceOrder command against the
//!   shop's schema, what ingress adds per event when its type has a schema.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use evhost::config::HandlerSettings;
use evhost::event::Event;
use evhost::runtime::{LinkedUpcaster, Runtime, RuntimeOptions};
use evhost::schemas::validate::Compiled;
use evhost::schemas::{AcceptOlder, Book, Compatibility, Registration, Registry, SchemaPolicy};
use evhost::store::Origin;
use serde_json::{Value, json};

use crate::payload::{self, Body, Mode};
use crate::suite::{self, BENCH_MAX_PENDING, Flow, Results, SuiteOptions, fmt_us};
use crate::wasm::{CostRow, ns_histogram};

/// The family the upcast scenarios run, `bench.up`, at its three versions.
pub const V1: &str = "bench.up.v1";
pub const V2: &str = "bench.up.v2";
pub const V3: &str = "bench.up.v3";
/// What the chain adds to v1's `{"n": N}` by v3 (the `stepper` fixture's trace), and so what
/// a v3 event posted directly carries.
const V3_FIELDS: &str = r#""steps":["bench.up.v1","bench.up.v2"],"version_seen":2"#;
/// The schema of the shop's PlaceOrder command, relative to the workspace.
const PLACE_ORDER_SCHEMA: &str = "examples/shop/schemas/com.example.shop.order.place.v1.json";
/// SKUs the orders spread over (as in `shop/order`).
const SKUS: u32 = 64;
/// Rounds (one call of every variant each) before measuring.
const WARMUP_ROUNDS: u32 = 200;
/// Rounds measured at least, however long they take...
const MIN_ROUNDS: u64 = 5000;
/// ...but never longer than this.
const MAX_MEASURE: Duration = Duration::from_secs(60);
/// The in-process rows, for `--only`.
pub const READ_AS: &str = "upcast/read_as";
pub const ADMIT: &str = "schema/admit";

/// The schemas of the family's three versions: v1 `{n}`, v2 adds the `steps` array, v3 the
/// `version_seen` integer (what one `stepper` step adds each time).
pub fn family_schemas() -> [(&'static str, Value); 3] {
    let n = || json!({"type": "integer"});
    let steps = || json!({"type": "array", "items": {"type": "string"}});
    [
        (
            V1,
            json!({"type": "object", "required": ["n"], "properties": {"n": n()}}),
        ),
        (
            V2,
            json!({"type": "object", "required": ["n", "steps"],
                "properties": {"n": n(), "steps": steps()}}),
        ),
        (
            V3,
            json!({"type": "object", "required": ["n", "steps", "version_seen"],
                "properties": {"n": n(), "steps": steps(), "version_seen": {"type": "integer"}}}),
        ),
    ]
}

/// One row of the in-process table.
#[derive(Debug, Clone)]
pub struct StepRow {
    pub cost: CostRow,
    /// Upcast steps of a `read_as` row; `None` for the rows that time one step's parts.
    pub steps: Option<u32>,
}

/// Every versioning scenario `options` asks for: its rows go into `results`, and the
/// in-process ones come back, for [`render`] to print after the suite's table.
pub async fn run(options: &SuiteOptions, results: &mut Results) -> Result<Vec<StepRow>> {
    let mut in_process = Vec::new();
    ingest(options, results).await?;
    end_to_end(options, results).await?;
    if options.wants(ADMIT) {
        eprintln!("{ADMIT} (in process)");
        let schema = options.workspace.join(PLACE_ORDER_SCHEMA);
        let rows = measure_admit(&schema, options.wasm_each.max(Duration::from_secs(1)))?;
        in_process.extend(rows);
    }
    if options.wants(READ_AS) {
        eprintln!("{READ_AS} (in process)");
        let duration = (options.wasm_each * 5).max(Duration::from_secs(2));
        let rows = measure_read_as(
            &options.guest("stepper"),
            Some(options.cache_dir.clone()),
            duration,
        )
        .await?;
        if let Some(note) = per_step_note(&rows) {
            eprintln!("  -> {note}");
            results.notes.push(note);
        }
        in_process.extend(rows);
    }
    Ok(in_process)
}

/// `ingest/{no-schema,schema}` per mode, without then with the schema.
async fn ingest(options: &SuiteOptions, results: &mut Results) -> Result<()> {
    for mode in [Mode::Binary, Mode::Batch(10)] {
        let suffix = match mode {
            Mode::Binary => String::new(),
            other => format!(" {}", other.label()),
        };
        let base = format!("ingest/no-schema{suffix}");
        let with = format!("ingest/schema{suffix}");
        if !options.wants(&base) && !options.wants(&with) {
            continue;
        }
        for (name, schema) in [(&base, false), (&with, true)] {
            eprintln!("{name}");
            let manifest = ingest_manifest(options, schema)?;
            let server = suite::spawn_host(options, name, &manifest, true).await?;
            let body = Body::PlaceOrder { skus: SKUS };
            let report = suite::saturate(options, &server, mode, body, "v", false).await?;
            let mut row = suite::ingest_row(name, &report, &server);
            row.note = match schema {
                true => format!("{} registered ([[schema]])", payload::PLACE_ORDER),
                false => "no schema registered".into(),
            };
            results.add(row, schema.then_some(base.as_str()));
            server.stop().await;
        }
    }
    Ok(())
}

/// An app with no handlers; with `schema`, the shop's schema of the PlaceOrder command.
fn ingest_manifest(options: &SuiteOptions, schema: bool) -> Result<PathBuf> {
    let mut text = String::from("[app]\nname = \"bench\"\n");
    if schema {
        let file = options.workspace.join(PLACE_ORDER_SCHEMA);
        if !file.exists() {
            bail!("{file:?} is missing");
        }
        write!(
            text,
            "\n[[schema]]\ntype = \"{}\"\nfile = {file:?}\n",
            payload::PLACE_ORDER
        )?;
    }
    let path = options.work_dir.join(format!(
        "ingest-{}.toml",
        if schema { "schema" } else { "no-schema" }
    ));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The family's schemas in files, the stepper as both upcasters, and `ack` reading v3 with
/// `accept_older = true`.
fn upcast_manifest(options: &SuiteOptions) -> Result<PathBuf> {
    let stepper = options.guest("stepper");
    let mut text = String::from("[app]\nname = \"bench\"\n");
    for (ty, schema) in family_schemas() {
        let file = options.work_dir.join(format!("{ty}.schema.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&schema)?)?;
        write!(text, "\n[[schema]]\ntype = \"{ty}\"\nfile = {file:?}\n")?;
        if ty != V1 {
            writeln!(text, "upcaster = {stepper:?}")?;
        }
    }
    write!(
        text,
        "\n[[handler]]\nname = \"ack\"\nmodule = {:?}\nsubscribe = [\"{V3}\"]\n\
         accept_older = true\nconcurrency = {}\nmax_pending = {BENCH_MAX_PENDING}\n",
        options.guest("ack"),
        options.concurrency
    )?;
    let path = options.work_dir.join("upcast.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `upcast/direct v3` (the baseline) and `upcast/v1 via 2 upcasters`, each on a fresh host
/// with the same manifest.
async fn end_to_end(options: &SuiteOptions, results: &mut Results) -> Result<()> {
    const DIRECT: &str = "upcast/direct v3";
    const CHAIN: &str = "upcast/v1 via 2 upcasters";
    if !options.wants(DIRECT) && !options.wants(CHAIN) {
        return Ok(());
    }
    let cases = [
        (
            DIRECT,
            V3,
            Body::CounterWith {
                ty: V3.to_owned(),
                fields: V3_FIELDS.to_owned(),
            },
        ),
        (CHAIN, V1, suite::counter(V1)),
    ];
    for (name, ty, body) in cases {
        eprintln!("{name}");
        let manifest = upcast_manifest(options)?;
        let server = suite::spawn_host(options, name, &manifest, true).await?;
        let flow = Flow::Deliveries { ty, per_event: 1 };
        let mut row = suite::end_to_end(options, name, &server, Mode::Binary, body, &flow).await?;
        row.note = format!(
            "posted as {ty}, ack reads {V3}{}; {}",
            if ty == V1 {
                " (stepper v1 -> v2 -> v3)"
            } else {
                ""
            },
            row.note
        );
        results.add(row, (ty == V1).then_some(DIRECT));
        server.stop().await;
    }
    Ok(())
}

/// The family registered on a runtime of its own, as a host's registry holds it.
pub struct Chain {
    runtime: Runtime,
    registry: Registry,
    upcaster: Arc<LinkedUpcaster>,
    settings: HandlerSettings,
}

impl Chain {
    /// The three versions, the `stepper` component at `stepper` upcasting v1 -> v2 and
    /// v2 -> v3. Blocking (it compiles, or reads the compiled cache).
    pub fn new(stepper: &std::path::Path, cache_dir: Option<PathBuf>) -> Result<Chain> {
        let runtime = Runtime::new(&RuntimeOptions { cache_dir })?;
        let bytes =
            std::fs::read(stepper).with_context(|| format!("failed to read {stepper:?}"))?;
        let artifact = runtime
            .compile(&bytes)
            .with_context(|| format!("failed to compile {stepper:?}"))?;
        let upcaster = Arc::new(runtime.link_upcaster(&artifact)?);
        let sha256 = upcaster.sha256().to_owned();
        let mut book = Book::default();
        for (ty, schema) in family_schemas() {
            let with = Registration {
                compatibility: Some(Compatibility::None),
                upcaster_sha256: (ty != V1).then(|| sha256.clone()),
            };
            book.register(ty, schema, with, Compatibility::Backward, Origin::Api, 0)
                .map_err(|err| anyhow!("registering {ty}: {err}"))?;
        }
        let upcasters = HashMap::from([(sha256, upcaster.clone())]);
        let registry = Registry::build(
            book,
            SchemaPolicy::default(),
            "http://127.0.0.1",
            &upcasters,
            &Registry::default(),
        )
        .map_err(|problems| anyhow!("building the registry: {}", problems.join("; ")))?;
        let settings = HandlerSettings {
            subscribe: vec![V3.to_owned()],
            accept_older: AcceptOlder::All,
            ..Default::default()
        };
        Ok(Chain {
            runtime,
            registry,
            upcaster,
            settings,
        })
    }

    /// `event` as the v3 reader reads it.
    pub async fn read_as(&self, event: &Event) -> Result<Option<Event>> {
        self.registry
            .read_as(&self.runtime, &self.settings, event)
            .await
            .map_err(|why| anyhow!("read_as failed: {why}"))
    }

    /// One stepper step, as `read_as` runs it, without the registry around it.
    pub async fn upcast_once(&self, event: &Event, to: &str) -> Result<Event> {
        self.runtime
            .upcast(&self.upcaster, event, to)
            .await
            .map_err(|err| anyhow!("upcast failed: {err}"))
    }
}

/// An event of `ty` with `data`.
pub fn event(ty: &str, data: &str) -> Event {
    Event::builder(format!("up-{ty}"), "/load", ty)
        .data(Some("application/json"), data.as_bytes().to_vec())
        .build()
        .expect("a valid event")
}

/// The events the in-process rows read: v1, v2 and v3, each as the chain would make it.
pub fn sample_events() -> [Event; 3] {
    [
        event(V1, r#"{"n":1}"#),
        event(V2, r#"{"n":1,"steps":["bench.up.v1"],"version_seen":1}"#),
        event(V3, &format!("{{\"n\":1,{V3_FIELDS}}}")),
    ]
}

/// Time [`Registry::admit`] of a PlaceOrder command against the shop's schema, beside the
/// clone of the event it consumes (its floor), a call of each per round, for `duration` (and
/// at least [`MIN_ROUNDS`] rounds): what ingress adds per event when its type has a schema.
pub fn measure_admit(schema: &std::path::Path, duration: Duration) -> Result<Vec<StepRow>> {
    let text = std::fs::read(schema).with_context(|| format!("failed to read {schema:?}"))?;
    let mut book = Book::default();
    book.register(
        payload::PLACE_ORDER,
        serde_json::from_slice(&text)?,
        Registration::default(),
        Compatibility::Backward,
        Origin::Api,
        0,
    )
    .map_err(|err| anyhow!("registering {}: {err}", payload::PLACE_ORDER))?;
    let registry = Registry::build(
        book,
        SchemaPolicy::default(),
        "http://127.0.0.1:8080",
        &HashMap::new(),
        &Registry::default(),
    )
    .map_err(|problems| anyhow!("building the registry: {}", problems.join("; ")))?;
    let order = Event::builder("place-o-1", "/load", payload::PLACE_ORDER)
        .subject("o-1")
        .data(
            Some("application/json"),
            &br#"{"order_id":"o-1","sku":"sku-1","quantity":1,"amount":25.0}"#[..],
        )
        .build()
        .expect("a valid event");
    registry
        .admit(order.clone())
        .map_err(|err| anyhow!("the PlaceOrder sample was refused: {err}"))?;
    let names = [
        format!("{ADMIT}, PlaceOrder with the shop's schema (incl. clone)"),
        "event clone only (what admit consumes)".to_owned(),
    ];
    let mut histograms: Vec<_> = names.iter().map(|_| ns_histogram()).collect();
    let started = Instant::now();
    let mut rounds = 0u64;
    loop {
        let elapsed = started.elapsed();
        let enough = rounds >= MIN_ROUNDS + u64::from(WARMUP_ROUNDS) && elapsed >= duration;
        if enough || elapsed >= MAX_MEASURE {
            break;
        }
        for (i, histogram) in histograms.iter_mut().enumerate() {
            let start = Instant::now();
            let event = std::hint::black_box(&order).clone();
            if i == 0 {
                let admitted = registry
                    .admit(event)
                    .map_err(|err| anyhow!("admit failed: {err}"))?;
                std::hint::black_box(admitted);
            } else {
                std::hint::black_box(event);
            }
            if rounds >= u64::from(WARMUP_ROUNDS) {
                histogram.saturating_record(start.elapsed().as_nanos() as u64);
            }
        }
        rounds += 1;
    }
    Ok(names
        .into_iter()
        .zip(histograms)
        .map(|(name, histogram)| StepRow {
            cost: CostRow { name, histogram },
            steps: None,
        })
        .collect())
}

/// What `read_as` must make of each sample, checked once before timing it.
async fn check_chain(chain: &Chain, events: &[Event; 3]) -> Result<()> {
    let expected = json!({"n": 1, "steps": [V1, V2], "version_seen": 2});
    for event in &events[..2] {
        let read = chain
            .read_as(event)
            .await?
            .with_context(|| format!("{} was not upcast", event.ty()))?;
        let data: Value = serde_json::from_slice(read.data().unwrap_or_default())?;
        if read.ty() != V3 || data != expected {
            bail!(
                "{} was read as {} with data {data}, not {V3} with {expected}",
                event.ty(),
                read.ty()
            );
        }
    }
    if chain.read_as(&events[2]).await?.is_some() {
        bail!("a {V3} event was upcast");
    }
    Ok(())
}

/// Time `read_as` on 2, 1 and 0 steps and one step's parts, a call of each per round, for
/// `duration` (and at least [`MIN_ROUNDS`] rounds).
pub async fn measure_read_as(
    stepper: &std::path::Path,
    cache_dir: Option<PathBuf>,
    duration: Duration,
) -> Result<Vec<StepRow>> {
    let chain = Chain::new(stepper, cache_dir)?;
    let events = sample_events();
    check_chain(&chain, &events).await?;
    let (v3_schema, v3_data) = {
        let schema = &family_schemas()[2].1;
        let compiled = Compiled::new(schema).map_err(|why| anyhow!(why))?;
        (compiled, events[2].data().unwrap_or_default().to_vec())
    };
    let parse_and_check = || -> Result<()> {
        let data: Value = serde_json::from_slice(std::hint::black_box(&v3_data))?;
        v3_schema
            .check(&data)
            .map_err(|v| anyhow!("the v3 sample does not match: {v:?}"))
    };

    let names = [
        (format!("{READ_AS}, v1 event (2 steps)"), Some(2)),
        (format!("{READ_AS}, v2 event (1 step)"), Some(1)),
        (format!("{READ_AS}, v3 event (0 steps)"), Some(0)),
        (
            "Runtime::upcast alone, stepper v1 -> v2 (no check)".to_owned(),
            None,
        ),
        ("parse + schema check of the v3 data".to_owned(), None),
    ];
    let mut histograms: Vec<_> = names.iter().map(|_| ns_histogram()).collect();
    let started = Instant::now();
    let mut rounds = 0u64;
    loop {
        let warm = rounds >= u64::from(WARMUP_ROUNDS);
        let elapsed = started.elapsed();
        let enough = rounds >= MIN_ROUNDS + u64::from(WARMUP_ROUNDS) && elapsed >= duration;
        if enough || elapsed >= MAX_MEASURE {
            break;
        }
        for (i, histogram) in histograms.iter_mut().enumerate() {
            let start = Instant::now();
            match i {
                0..=2 => {
                    std::hint::black_box(chain.read_as(&events[i]).await?);
                }
                3 => {
                    std::hint::black_box(chain.upcast_once(&events[0], V2).await?);
                }
                _ => parse_and_check()?,
            }
            if warm {
                histogram.saturating_record(start.elapsed().as_nanos() as u64);
            }
        }
        rounds += 1;
    }
    Ok(names
        .into_iter()
        .zip(histograms)
        .map(|((name, steps), histogram)| StepRow {
            cost: CostRow { name, histogram },
            steps,
        })
        .collect())
}

/// Per step, microseconds: (t(2 steps) - t(0 steps)) / 2 for the mean, p50 and p99.
pub fn per_step(rows: &[StepRow]) -> Option<(f64, f64, f64)> {
    let of = |steps: u32| rows.iter().find(|r| r.steps == Some(steps));
    let (two, zero) = (of(2)?, of(0)?);
    let at = |row: &StepRow, q: f64| row.cost.histogram.value_at_quantile(q) as f64 / 1000.0;
    Some((
        (two.cost.mean_us() - zero.cost.mean_us()) / 2.0,
        (at(two, 0.5) - at(zero, 0.5)) / 2.0,
        (at(two, 0.99) - at(zero, 0.99)) / 2.0,
    ))
}

fn per_step_note(rows: &[StepRow]) -> Option<String> {
    let (mean, p50, p99) = per_step(rows)?;
    let calls = rows.first().map_or(0, |r| r.cost.histogram.len());
    Some(format!(
        "Upcast per step, in process ((read_as of a v1 event - read_as of a v3 event) / 2, \
         {calls} calls each): mean {}, p50 {}, p99 {} (target under 20 us).",
        fmt_us(Some(mean)),
        fmt_us(Some(p50)),
        fmt_us(Some(p99)),
    ))
}

/// The in-process table.
pub fn render(rows: &[StepRow], out: &mut String) {
    let zero = rows.iter().find(|r| r.steps == Some(0));
    let _ = writeln!(
        out,
        "| event versions, in process, one call at a time | calls | mean | p50 | p99 | upcast steps | per step, minus 0 steps (mean / p50 / p99) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    let at = |row: &StepRow, q: f64| row.cost.histogram.value_at_quantile(q) as f64 / 1000.0;
    for row in rows {
        let per_step = match (row.steps, zero) {
            (Some(steps), Some(zero)) if steps > 0 => {
                let n = f64::from(steps);
                format!(
                    "{} / {} / {}",
                    fmt_us(Some((row.cost.mean_us() - zero.cost.mean_us()) / n)),
                    fmt_us(Some((at(row, 0.5) - at(zero, 0.5)) / n)),
                    fmt_us(Some((at(row, 0.99) - at(zero, 0.99)) / n)),
                )
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.cost.name,
            row.cost.histogram.len(),
            fmt_us(Some(row.cost.mean_us())),
            fmt_us(Some(at(row, 0.5))),
            fmt_us(Some(at(row, 0.99))),
            row.steps.map_or_else(|| "-".into(), |s| s.to_string()),
            per_step,
        );
    }
    out.push('\n');
}
