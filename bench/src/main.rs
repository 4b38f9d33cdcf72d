//! The `evhost-bench` command.
//!
//! ```text
//! cargo run --release -p evhost-bench -- all                 # the whole suite, one table
//! cargo run --release -p evhost-bench -- all --only e2e      # the scenarios matching `e2e`
//! cargo run --release -p evhost-bench -- load --url http://127.0.0.1:8080/events --mode batch10
//! cargo run --release -p evhost-bench -- wasm                # one invocation, in process
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use evhost::store::Durability;
use evhost_bench::load::{self, LoadConfig};
use evhost_bench::payload::{Body, Mode, Payload};
use evhost_bench::suite::{self, SuiteOptions};
use evhost_bench::{servers, wasm};

#[derive(Debug, Parser)]
#[command(
    name = "evhost-bench",
    about = "Benchmarks for evhost, with baselines in the same run"
)]
struct Cli {
    /// Worker threads of the load generator. It shares the machine with the server under
    /// test; one thread leaves the server the other core.
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the host and the guests, run every scenario, print the table.
    All {
        /// Length of each throughput run, seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Length of each end-to-end latency run (at half the measured rate), seconds.
        #[arg(long, default_value_t = 3.0)]
        latency_duration: f64,
        /// Connections of the load generator.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Run only scenarios whose name contains this (repeatable): floor, ingest, e2e,
        /// fanout, shop, idle, ordering, deploy, schema (ingest with and without schema
        /// validation), upcast (delivery through two upcasters, end to end and in process),
        /// wasm, cluster (which also runs its single-node baselines).
        #[arg(long)]
        only: Vec<String>,
        /// Seconds each in-process Wasm variant is measured.
        #[arg(long, default_value_t = 1.0)]
        wasm_each: f64,
        /// Use the binaries and guests as they are, without running cargo first.
        #[arg(long)]
        no_build: bool,
        /// `EVHOST_LOG` for the hosts under test.
        #[arg(long, default_value = "warn")]
        host_log: String,
        /// `concurrency` of the benchmark's `ack` handlers (and the native pipeline's).
        #[arg(long, default_value_t = 16)]
        concurrency: u32,
        /// Also write the Markdown report here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Post CloudEvents to a running server and report throughput and latency.
    Load {
        /// The ingress URL; loopback only. Repeat it to spread the connections round robin
        /// over several hosts (of one cluster): they must share the path.
        #[arg(long, default_value = "http://127.0.0.1:8080/events")]
        url: Vec<String>,
        /// binary, structured, batch (10 events) or batchN.
        #[arg(long, default_value = "binary")]
        mode: String,
        /// The event type.
        #[arg(long = "type", default_value = "bench.ack.v1")]
        ty: String,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Requests per second across all connections; as fast as possible when absent.
        #[arg(long)]
        rate: Option<f64>,
        /// Starts every event id (change it between runs against one host, or they are
        /// duplicates).
        #[arg(long, default_value = "load")]
        prefix: String,
    },
    /// Measure one Wasm invocation in process, variant by variant.
    Wasm {
        /// Seconds per variant.
        #[arg(long, default_value_t = 2.0)]
        each: f64,
        /// Only the variants whose name contains this (e.g. to run one under `perf record`).
        #[arg(long)]
        only: Option<String>,
    },
    /// The HTTP floor baseline server (the suite starts it).
    #[command(hide = true)]
    ServeFloor {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The native pipeline baseline server (the suite starts it).
    #[command(hide = true)]
    ServeNative {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        no_fsync: bool,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match &cli.command {
        // Servers get the same runtime as the `evhost` binary: all cores.
        Command::ServeFloor { .. } | Command::ServeNative { .. } => tokio::runtime::Runtime::new(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.client_threads.max(1))
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::All {
            duration,
            latency_duration,
            connections,
            only,
            wasm_each,
            no_build,
            host_log,
            concurrency,
            out,
        } => {
            if !no_build {
                build()?;
            }
            let target = target_dir();
            let work = target.join("evhost-bench");
            let options = SuiteOptions {
                duration: Duration::from_secs_f64(duration),
                latency_duration: Duration::from_secs_f64(latency_duration),
                connections,
                only,
                evhost_bin: target.join("release/evhost"),
                guests_dir: target.join("wasm32-wasip2/release"),
                self_exe: std::env::current_exe()?,
                cache_dir: work.join("cache"),
                work_dir: work.join("run"),
                wasm_each: Duration::from_secs_f64(wasm_each),
                host_log,
                concurrency,
                workspace: workspace(),
            };
            if options.work_dir.exists() {
                std::fs::remove_dir_all(&options.work_dir)?;
            }
            let started = Instant::now();
            let cpu_before = suite::self_cpu();
            let mut results = suite::run(&options).await?;
            // Cluster mode: the same ingest and end-to-end paths on 1 and 3 hosts sharing one
            // nats-server, and a handler bounded by waiting rather than by CPU; compared with
            // rows of the suite's run.
            evhost_bench::cluster::run(&options, &mut results).await?;
            // Event versions: ingest with and without schema validation, delivery through a
            // chain of two upcasters against a direct event (end to end, and in process).
            let versions = evhost_bench::versioning::run(&options, &mut results).await?;
            let header = format!(
                "evhost-bench, {} connections, handler concurrency {concurrency}, {duration} s per run, \
                 load generator on {} thread(s); {}; suite took {:.0} s, the load generator used {:.0} s of CPU",
                connections,
                cli.client_threads,
                suite::machine(),
                started.elapsed().as_secs_f64(),
                (suite::self_cpu() - cpu_before).as_secs_f64(),
            );
            let mut report = suite::render(&results, &header);
            if !versions.is_empty() {
                report.push('\n');
                evhost_bench::versioning::render(&versions, &mut report);
            }
            println!("{report}");
            let latest = work.join("latest.md");
            std::fs::write(&latest, &report)?;
            if let Some(out) = out {
                std::fs::write(&out, &report)?;
            }
            eprintln!("written to {latest:?}");
            Ok(())
        }
        Command::Load {
            url,
            mode,
            ty,
            connections,
            duration,
            rate,
            prefix,
        } => {
            let mode = Mode::parse(&mode).context("--mode: binary, structured, batch or batchN")?;
            let urls: Vec<reqwest::Url> = url
                .iter()
                .map(|u| u.parse().context("--url"))
                .collect::<Result<_>>()?;
            let mut addrs = Vec::new();
            for url in &urls {
                addrs.push(
                    url.socket_addrs(|| Some(80))?
                        .into_iter()
                        .next()
                        .with_context(|| format!("--url {url} has no address"))?,
                );
            }
            let first = urls.first().context("--url is required")?;
            let payload = Arc::new(Payload {
                mode,
                body: Body::Counter { ty },
                prefix,
                authority: addrs[0].to_string(),
                path: first.path().to_owned(),
            });
            let report = load::run(LoadConfig {
                addrs,
                connections,
                duration: Duration::from_secs_f64(duration),
                rate,
                max_requests: None,
                track_sends: false,
                pause_after_429: Duration::from_millis(5),
                payload,
            })
            .await?;
            let h = &report.latency;
            let us = |q: f64| suite::fmt_us(Some(h.value_at_quantile(q) as f64));
            println!(
                "{} events/s ({} requests answered in {:.2} s)\nlatency p50 {} p90 {} p99 {} max {}\nerrors: {}",
                report.events_per_sec().round(),
                report.answered,
                report.elapsed.as_secs_f64(),
                us(0.5),
                us(0.9),
                us(0.99),
                suite::fmt_us(Some(h.max() as f64)),
                report.errors_text()
            );
            Ok(())
        }
        Command::Wasm { each, only } => {
            if !target_dir().join("wasm32-wasip2/release/ack.wasm").exists() {
                build()?;
            }
            let dir = target_dir().join("wasm32-wasip2/release");
            let ack = dir.join("ack.wasm");
            let order = dir.join("order.wasm");
            let guests = wasm::Guests {
                ack: &ack,
                order: order.exists().then_some(order.as_path()),
                filter: only.as_deref(),
            };
            let cache = target_dir().join("evhost-bench/cache");
            let rows =
                wasm::measure_all(&guests, Duration::from_secs_f64(each), Some(cache)).await?;
            let results = suite::Results {
                wasm: rows,
                ..Default::default()
            };
            println!("{}", suite::render(&results, &suite::machine()));
            Ok(())
        }
        Command::ServeFloor { listen } => servers::serve_floor(listen).await,
        Command::ServeNative {
            listen,
            data,
            no_fsync,
            concurrency,
        } => {
            let durability = if no_fsync {
                Durability::Off
            } else {
                Durability::Full
            };
            servers::serve_native(listen, &data, durability, concurrency).await
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The release host and the guests, built by cargo (a no-op when nothing changed).
fn build() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let steps: [&[&str]; 2] = [
        &["build", "--release", "-p", "evhost", "--bin", "evhost"],
        &[
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "ack",
            "-p",
            "order",
            "-p",
            "inventory",
            "-p",
            "payment",
            "-p",
            "shipping",
            "-p",
            "notification",
            "-p",
            "sleeper",
            "-p",
            "stepper",
            "-p",
            "order-placed-upcaster",
        ],
    ];
    for args in steps {
        eprintln!("cargo {}", args.join(" "));
        let status = std::process::Command::new(&cargo)
            .args(args)
            .current_dir(workspace())
            .status()
            .context("failed to run cargo")?;
        if !status.success() {
            bail!("`cargo {}` failed ({status})", args.join(" "));
        }
    }
    Ok(())
}
