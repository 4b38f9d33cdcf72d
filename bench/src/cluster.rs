//! Cluster mode under load: the host's ingest and end-to-end paths with the app in NATS
//! JetStream (`evhost up --cluster`), on one host and on three sharing one nats-server, and
//! a scaling run with a handler bounded by waiting rather than by CPU.
//!
//! Each scenario starts its own nats-server (fresh store) and its own hosts, and kills them
//! after it, as the single-node scenarios do with their hosts. The load generator spreads its
//! connections round robin over the hosts. CPU is read per process: the hosts' CPU is summed
//! into the row's CPU per unit, and the nats-server's is reported beside it, because on a
//! cluster it is a large part of the cost of an event.
//!
//! When each delivery was committed comes from its done record's `at_ms`, read after the run
//! ([`crate::nats::StreamView`]); the single-node rows read the same from SQLite.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use evhost::cluster::subjects::EventKey;
use hdrhistogram::Histogram;

use crate::load::{self, LoadConfig, LoadReport};
use crate::nats::{NatsServer, StreamView};
use crate::payload::{self, Mode, Payload};
use crate::process::Server;
use crate::servers::ACK_TYPE;
use crate::suite::{self, Results, Row, SuiteOptions, fmt_us, slug};

/// The app every cluster scenario runs (its stream is `EVHOST_bench`).
const APP: &str = "bench";
/// Host counts of each cluster scenario.
const HOSTS: [usize; 2] = [1, 3];
/// The bounded handler's event type.
const SLEEP_TYPE: &str = "bench.sleep.v1";
/// How long one bounded invocation waits.
const SLEEP_MS: u64 = 20;
/// Cluster-wide `concurrency` of the bounded handler: JetStream lets this many of its
/// deliveries be out at once over all hosts; set well above what the hosts run, so that it
/// is never what is measured.
const BOUNDED_CONCURRENCY: u32 = 512;
/// What each host of the bounded run takes on at once (`--max-in-flight`): its capacity,
/// the bound that more hosts add to. 16 sleepers of 20 ms are 800 events/s per host, well
/// within what a host's CPU commits, so waiting, not CPU, is what bounds each host.
const BOUNDED_PER_HOST: usize = 16;

/// A nats-server and the hosts of one app on it.
struct Cluster {
    nats: NatsServer,
    hosts: Vec<Server>,
    view: StreamView,
}

impl Cluster {
    /// `hosts` hosts of `manifest`, started one after the other (each is ready before the
    /// next starts, so they do not race to create the stream and deploy).
    async fn start(
        options: &SuiteOptions,
        nats_bin: &Path,
        name: &str,
        hosts: usize,
        manifest: &Path,
        host_args: &[&str],
    ) -> Result<Cluster> {
        let log = options
            .work_dir
            .join(format!("{}-nats-server.log", slug(name)));
        let nats = NatsServer::spawn(nats_bin, &options.work_dir, log).await?;
        let mut extra: Vec<OsString> = vec!["--cluster".into(), nats.url.clone().into()];
        extra.extend(host_args.iter().map(OsString::from));
        let mut servers = Vec::new();
        for i in 0..hosts {
            let host = format!("{name} host{i}");
            servers.push(suite::spawn_host_with(options, &host, manifest, &extra).await?);
        }
        let view = StreamView::connect(&nats.url, APP).await?;
        Ok(Cluster {
            nats,
            hosts: servers,
            view,
        })
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.hosts.iter().map(|h| h.addr).collect()
    }

    fn host_cpu(&self) -> Duration {
        self.hosts.iter().map(|h| h.usage().cpu).sum()
    }

    /// The largest peak RSS of any host, MiB.
    fn host_peak_rss_mib(&self) -> f64 {
        self.hosts
            .iter()
            .map(|h| h.usage().peak_rss_kib)
            .max()
            .unwrap_or(0) as f64
            / 1024.0
    }

    async fn stop(self) {
        for host in self.hosts {
            host.stop().await;
        }
        self.nats.stop().await;
    }

    fn load(&self, options: &SuiteOptions, rate: Option<f64>, payload: Arc<Payload>) -> LoadConfig {
        LoadConfig {
            addrs: self.addrs(),
            connections: options.connections,
            duration: if rate.is_some() {
                options.latency_duration
            } else {
                options.duration
            },
            rate,
            max_requests: None,
            track_sends: true,
            pause_after_429: suite::PAUSE_AFTER_429,
            payload,
        }
    }
}

/// Run the cluster scenarios `options` asks for, adding their rows to `results`.
pub async fn run(options: &SuiteOptions, results: &mut Results) -> Result<()> {
    if !suite::cluster_scenarios().iter().any(|s| options.wants(s)) {
        return Ok(());
    }
    let nats_bin = match crate::nats::server_binary(&options.workspace).await {
        Ok(path) => path,
        Err(why) => {
            eprintln!("cluster: skipped ({why})");
            results.notes.push(format!("cluster: skipped: {why}"));
            return Ok(());
        }
    };

    for hosts in HOSTS {
        let name = format!("cluster{hosts}/ingest");
        if !options.wants(&name) {
            continue;
        }
        eprintln!("{name}");
        let manifest = suite::ack_manifest(options, &[("ack", ACK_TYPE)])?;
        let cluster = Cluster::start(options, &nats_bin, &name, hosts, &manifest, &[]).await?;
        let mut row = ingest(options, &name, &cluster).await?;
        if hosts > 1
            && let Some(one) = results.rate_of("cluster1/ingest")
        {
            row.note = format!("{:.2}x cluster1/ingest; {}", row.rate / one, row.note);
        }
        results.add(row, Some("floor/binary"));
        cluster.stop().await;
    }

    for hosts in HOSTS {
        let name = format!("cluster{hosts}/e2e-ack");
        if !options.wants(&name) {
            continue;
        }
        eprintln!("{name}");
        let manifest = suite::ack_manifest(options, &[("ack", ACK_TYPE)])?;
        let cluster = Cluster::start(options, &nats_bin, &name, hosts, &manifest, &[]).await?;
        let mut row = end_to_end(options, &name, &cluster, "ack", ACK_TYPE).await?;
        row.note = format!(
            "concurrency {} cluster-wide; {}",
            options.concurrency, row.note
        );
        let baseline = if hosts == 1 {
            "e2e/ack"
        } else {
            "cluster1/e2e-ack"
        };
        results.add(row, Some(baseline));
        cluster.stop().await;
    }

    for hosts in HOSTS {
        let name = format!("cluster{hosts}/bounded");
        if !options.wants(&name) {
            continue;
        }
        eprintln!("{name}");
        let manifest = bounded_manifest(options)?;
        let per_host = BOUNDED_PER_HOST.to_string();
        let host_args = ["--max-in-flight", per_host.as_str()];
        let cluster =
            Cluster::start(options, &nats_bin, &name, hosts, &manifest, &host_args).await?;
        let mut row = end_to_end(options, &name, &cluster, "sleep", SLEEP_TYPE).await?;
        let cap = (BOUNDED_PER_HOST * hosts) as f64 * 1000.0 / SLEEP_MS as f64;
        row.note = format!(
            "sleeper, {SLEEP_MS} ms wait, {BOUNDED_PER_HOST} at once per host \
             (--max-in-flight; cap {cap:.0}/s, reached {:.0}%), concurrency \
             {BOUNDED_CONCURRENCY} cluster-wide; {}",
            row.rate / cap * 100.0,
            row.note
        );
        let baseline = (hosts > 1).then_some("cluster1/bounded");
        results.add(row, baseline);
        cluster.stop().await;
    }
    Ok(())
}

/// One `sleeper` handler named `sleep`, waiting [`SLEEP_MS`] per event.
fn bounded_manifest(options: &SuiteOptions) -> Result<PathBuf> {
    let module = options.guest("sleeper");
    let text = format!(
        "[app]\nname = \"{APP}\"\n\n[[handler]]\nname = \"sleep\"\nmodule = {module:?}\n\
         subscribe = [\"{SLEEP_TYPE}\"]\nconcurrency = {BOUNDED_CONCURRENCY}\n\
         max_pending = {}\nconfig = {{ sleep_ms = \"{SLEEP_MS}\" }}\n",
        suite::BENCH_MAX_PENDING,
    );
    let path = options.work_dir.join("bounded.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// CPU per unit of work, microseconds.
fn per_unit(cpu: Duration, units: usize) -> Option<f64> {
    (units > 0).then(|| cpu.as_secs_f64() * 1e6 / units as f64)
}

/// Closed-loop binary ingest of a type no handler subscribes to, over every host.
async fn ingest(options: &SuiteOptions, name: &str, cluster: &Cluster) -> Result<Row> {
    let nats_before = cluster.nats.usage().cpu;
    let hosts_before = cluster.host_cpu();
    let payload = suite::payload_for(
        &cluster.hosts[0],
        Mode::Binary,
        suite::counter(suite::INGEST_TYPE),
        "i",
    );
    let mut config = cluster.load(options, None, payload);
    config.track_sends = false;
    let report = load::run(config).await?;
    let events = report.accepted_events as usize;
    let mut row = suite::ingest_row(name, &report, &cluster.hosts[0]);
    row.cpu_us = per_unit(cluster.host_cpu() - hosts_before, events);
    row.peak_rss_mib = Some(cluster.host_peak_rss_mib());
    row.note = nats_note(cluster, nats_before, events, "");
    Ok(row)
}

/// `nats-server X us/unit, peak RSS Y MiB` and what follows.
fn nats_note(cluster: &Cluster, nats_before: Duration, units: usize, rest: &str) -> String {
    let usage = cluster.nats.usage();
    let sep = if rest.is_empty() { "" } else { "; " };
    format!(
        "{} host(s); nats-server {} CPU/unit, peak RSS {:.0} MiB{sep}{rest}",
        cluster.hosts.len(),
        fmt_us(per_unit(usage.cpu - nats_before, units)),
        usage.peak_rss_kib as f64 / 1024.0,
    )
}

/// When each event of `report` (posted with `payload`) had its delivery to `handler`
/// committed, unix ms, by event number.
async fn completions(
    view: &StreamView,
    handler: &str,
    payload: &Payload,
    report: &LoadReport,
) -> Result<HashMap<u64, i64>> {
    let done = view.done_records(handler).await?;
    let per_request = payload.mode.events_per_request();
    let mut out = HashMap::with_capacity(report.sends.len());
    for (seq, _) in &report.sends {
        for i in 0..per_request {
            let n = seq * per_request + i;
            let key = EventKey::of(payload::SOURCE, &payload.id_of(n));
            if let Some(at) = done.get(key.as_str()) {
                out.insert(n, *at);
            }
        }
    }
    Ok(out)
}

/// The single-node suite's two end-to-end phases (saturating for throughput, half that rate
/// for latency) against a cluster, with `handler` (unordered) on `ty`.
async fn end_to_end(
    options: &SuiteOptions,
    name: &str,
    cluster: &Cluster,
    handler: &str,
    ty: &str,
) -> Result<Row> {
    let nats_before = cluster.nats.usage().cpu;
    let hosts_before = cluster.host_cpu();

    // Phase 1: throughput.
    let payload = suite::payload_for(&cluster.hosts[0], Mode::Binary, suite::counter(ty), "s");
    let report = load::run(cluster.load(options, None, payload.clone())).await?;
    let drained = cluster
        .view
        .wait_drained(handler, suite::DRAIN_TIMEOUT)
        .await?;
    let host_cpu = cluster.host_cpu() - hosts_before;
    let nats_cpu_end = cluster.nats.usage().cpu;
    let done = completions(&cluster.view, handler, &payload, &report).await?;
    let first_sent_ms = report.started_unix_us as f64 / 1000.0;
    let last_done_ms = done.values().copied().max().unwrap_or(0) as f64;
    let span_s = ((last_done_ms - first_sent_ms) / 1000.0).max(1e-3);
    let rate = done.len() as f64 / span_s;
    let mut errors = report.errors_text();
    if !drained {
        errors = format!("{errors}; not drained after {:?}", suite::DRAIN_TIMEOUT);
    }
    let dead = cluster.view.dead().await?;
    if dead > 0 {
        errors = format!("{errors}; {dead} dead letters");
    }
    let nats_per_unit = per_unit(nats_cpu_end - nats_before, done.len());
    eprintln!(
        "  saturated: {} accepted, {} finished in {span_s:.2} s ({rate:.0}/s), POST->2xx p50 {}",
        report.accepted_events,
        done.len(),
        fmt_us(Some(report.latency.value_at_quantile(0.5) as f64))
    );

    // Phase 2: latency at half the throughput.
    let latency_rate = (rate / 2.0).max(1.0);
    let payload = suite::payload_for(&cluster.hosts[0], Mode::Binary, suite::counter(ty), "l");
    let report2 = load::run(cluster.load(options, Some(latency_rate), payload.clone())).await?;
    cluster
        .view
        .wait_drained(handler, suite::DRAIN_TIMEOUT)
        .await?;
    let done2 = completions(&cluster.view, handler, &payload, &report2).await?;
    let mut histogram: Histogram<u64> = load::new_histogram();
    for (seq, sent_us) in &report2.sends {
        if let Some(at_ms) = done2.get(seq) {
            let micros = (*at_ms as f64 * 1000.0 - *sent_us as f64).max(1.0);
            histogram.saturating_record(micros as u64);
        }
    }
    let usage = cluster.nats.usage();
    let note = format!(
        "{} host(s); nats-server {} CPU/event, peak RSS {:.0} MiB; {}",
        cluster.hosts.len(),
        fmt_us(nats_per_unit),
        usage.peak_rss_kib as f64 / 1024.0,
        suite::latency_note(latency_rate, &histogram, &report2),
    );
    Ok(Row {
        peak_rss_mib: Some(cluster.host_peak_rss_mib()),
        cpu_us: per_unit(host_cpu, done.len()),
        errors,
        note,
        ..Row::end_to_end(name, "events/s", rate, &histogram)
    })
}
