//! The `evhost` command: run the host, and talk to a running one. Argument parsing and
//! printing only; the host is [`evhost::run`] and the talking is [`evhost::client`].
//!
//! ```text
//! evhost up [APP_DIR | evhost.toml] [--build] [--listen ADDR] [--data DIR] [--watch]
//! evhost deploy NAME MODULE.wasm [--config FILE] | rollback NAME | remove NAME
//! evhost handlers | deadletters [--handler H] | redrive ID | redrive --handler H
//! evhost send --type T --source S [--data JSON] [--subject S] [--host URL]
//! evhost compact [--host URL] | compact --data DIR
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use cloudevents::EventBuilder as _;
use evhost::client::{Client, ClientError, DeadLettersQuery};
use evhost::config::Manifest;
use evhost::store::Durability;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "evhost",
    version,
    about = "A host runtime for serverless event handlers on WebAssembly"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host with an application's handlers.
    Up {
        /// The application folder (holding evhost.toml) or the manifest file.
        #[arg(default_value = ".")]
        app: PathBuf,
        /// Run each handler's `build` command first (adding the Rust targets they name).
        #[arg(long)]
        build: bool,
        /// Address to serve HTTP on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "EVHOST_LISTEN")]
        listen: String,
        /// Where the store lives.
        #[arg(long, default_value = ".evhost", env = "EVHOST_DATA")]
        data: PathBuf,
        /// Where compiled handlers are cached (default: `compiled` in the data directory).
        #[arg(long, env = "EVHOST_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// The largest request body accepted, in bytes (at least 65536).
        #[arg(long, default_value_t = evhost::ingress::DEFAULT_BODY_LIMIT)]
        body_limit: usize,
        /// Skip fsync on commit: faster, but a power cut can lose accepted events.
        #[arg(long)]
        no_fsync: bool,
        /// Seconds in-flight invocations may run on after a shutdown signal.
        #[arg(long, default_value_t = 10)]
        grace_secs: u64,
        /// Require `Authorization: Bearer TOKEN` on /admin/* and /metrics (needed to listen
        /// beyond loopback); at least 16 bytes.
        #[arg(long, env = "EVHOST_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// A host name the admin API answers to, beyond IP addresses and `localhost`
        /// (repeat, or comma-separate in the variable).
        #[arg(long = "allow-host", env = "EVHOST_ALLOW_HOSTS", value_delimiter = ',')]
        allowed_hosts: Vec<String>,
        /// Connections served at once; more wait until one closes.
        #[arg(long, default_value_t = evhost::server::DEFAULT_MAX_CONNECTIONS, env = "EVHOST_MAX_CONNECTIONS")]
        max_connections: usize,
        /// Milliseconds a connection may take to send a request's headers (or, idle, its next
        /// request) before it is closed.
        #[arg(long, default_value_t = evhost::server::DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64)]
        header_timeout_ms: u64,
        /// Milliseconds a request body may take to arrive in full (then 408).
        #[arg(long, default_value_t = evhost::ingress::DEFAULT_BODY_READ_TIMEOUT.as_millis() as u64)]
        body_timeout_ms: u64,
        /// Serve /metrics without the admin token.
        #[arg(long)]
        metrics_open: bool,
        /// Apply the manifest again whenever it or a module it names changes.
        #[arg(long)]
        watch: bool,
        /// Join the app's cluster on NATS JetStream at this URL (several servers:
        /// comma-separated) instead of keeping it in the data directory's SQLite store.
        #[arg(long, env = "EVHOST_CLUSTER")]
        cluster: Option<String>,
        /// With --cluster: invocations this host runs at once over all handlers (its share
        /// of the cluster's work; other hosts take the rest). Default: no limit of its own.
        #[arg(long, env = "EVHOST_MAX_IN_FLIGHT", requires = "cluster")]
        max_in_flight: Option<usize>,
        /// The URL this host is reached at (e.g. `https://events.example.com`): accepted
        /// events' `dataschema` points under it. Default: http:// and the listen address.
        #[arg(long, env = "EVHOST_PUBLIC_URL")]
        public_url: Option<String>,
    },
    /// The schema registry of a running host: register, read and list event schemas.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Upcasters of a running host: components turning one version of a type into the next.
    Upcaster {
        #[command(subcommand)]
        command: UpcasterCommand,
    },
    /// Deploy a new version of a handler to a running host.
    Deploy {
        name: String,
        /// The handler's component (.wasm).
        module: PathBuf,
        /// The handler's settings as TOML (the keys of a `[[handler]]` table, without name,
        /// module and build); without it, a new version keeps the live settings.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        host: HostArg,
    },
    /// Put the version before the live one back.
    Rollback {
        name: String,
        #[command(flatten)]
        host: HostArg,
    },
    /// Remove a handler; what was pending for it becomes dead letters.
    Remove {
        name: String,
        #[command(flatten)]
        host: HostArg,
    },
    /// Post one event to a running host (structured mode, through the CloudEvents SDK).
    Send {
        /// The event type, e.g. com.example.shop.order.place.v1.
        #[arg(long = "type")]
        ty: String,
        /// The event source, a URI-reference, e.g. /cli.
        #[arg(long)]
        source: String,
        /// The event data, as JSON.
        #[arg(long)]
        data: Option<String>,
        /// The event id; a random one by default.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        /// Sets the `partitionkey` extension.
        #[arg(long)]
        partition_key: Option<String>,
        #[command(flatten)]
        host: HostArg,
    },
    /// List the deployed handlers with their version, origin, policy and counters.
    Handlers {
        #[command(flatten)]
        host: HostArg,
    },
    /// List dead letters: deliveries that failed for good.
    Deadletters {
        /// Only this handler's.
        #[arg(long)]
        handler: Option<String>,
        /// Only events of this type.
        #[arg(long = "type")]
        ty: Option<String>,
        #[command(flatten)]
        host: HostArg,
    },
    /// Deliver a dead letter again (after fixing the handler), with a fresh attempt count.
    Redrive {
        /// The dead letter's id (from `evhost deadletters`).
        #[arg(required_unless_present = "handler", conflicts_with = "handler")]
        id: Option<i64>,
        /// Redrive every dead letter of this handler instead.
        #[arg(long)]
        handler: Option<String>,
        #[command(flatten)]
        host: HostArg,
    },
    /// Hand the store's free pages back to the file system and empty its WAL, on a running
    /// host; or, with --data, rewrite a store no host runs on whole.
    Compact {
        /// The data directory of a store no host is running on: rewritten whole (VACUUM),
        /// which also lets a store from before retention be compacted while a host runs.
        #[arg(long, conflicts_with = "url")]
        data: Option<PathBuf>,
        #[command(flatten)]
        host: HostArg,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Register the schema of a versioned type (`NAME.vN`); a registered schema never changes.
    Put {
        /// The type, e.g. `com.example.shop.order.placed.v2`.
        #[arg(value_name = "TYPE")]
        ty: String,
        /// The JSON Schema file (draft 2020-12).
        file: PathBuf,
        /// A component upcasting the previous version into this one: lets a version that
        /// breaks readers of the previous one in, since old events have a way to it.
        #[arg(long)]
        upcaster: Option<PathBuf>,
        /// The family's compatibility mode from now on: backward, forward, full (each also
        /// `_transitive`) or none.
        #[arg(long)]
        compatibility: Option<String>,
        #[command(flatten)]
        host: HostArg,
    },
    /// Print a registered schema.
    Get {
        #[arg(value_name = "TYPE")]
        ty: String,
        #[command(flatten)]
        host: HostArg,
    },
    /// List the registered schemas by family.
    List {
        #[command(flatten)]
        host: HostArg,
    },
    /// Unregister a family's latest version (and the upcaster into it).
    Rm {
        #[arg(value_name = "TYPE")]
        ty: String,
        #[command(flatten)]
        host: HostArg,
    },
}

#[derive(Debug, Subcommand)]
enum UpcasterCommand {
    /// Register or replace the upcaster from a type into its next version.
    Put {
        /// The type it starts from, e.g. `com.example.shop.order.placed.v1`.
        from: String,
        /// The component (.wasm).
        module: PathBuf,
        #[command(flatten)]
        host: HostArg,
    },
    /// Unregister the upcaster from a type.
    Rm {
        from: String,
        #[command(flatten)]
        host: HostArg,
    },
}

#[derive(Debug, clap::Args)]
struct HostArg {
    /// The host's base URL.
    #[arg(
        long = "host",
        default_value = "http://127.0.0.1:8080",
        env = "EVHOST_HOST"
    )]
    url: String,
    /// The admin token, when the host requires one.
    #[arg(long = "token", env = "EVHOST_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl HostArg {
    fn client(&self) -> Client {
        Client::new(&self.url, self.token.clone())
    }
}

/// Log lines waiting for stderr. Lines are written by a thread of their own, so that a slow or
/// stalled stderr (a full pipe nobody reads) never holds a thread that serves HTTP or runs
/// Wasm; past this many waiting lines, new ones are dropped and counted.
const LOG_BUFFER_LINES: usize = 16 * 1024;

/// How often the count of dropped log lines is looked at; when it grew, a warning says by how
/// much (once stderr takes lines again).
const DROPPED_LOG_CHECK: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it flushes the lines still waiting (for a second at most).
    let _log_writer = init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn command(command: Command) -> Result<()> {
    match command {
        Command::Up {
            app,
            build,
            listen,
            data,
            cache_dir,
            body_limit,
            no_fsync,
            grace_secs,
            admin_token,
            allowed_hosts,
            max_connections,
            header_timeout_ms,
            body_timeout_ms,
            metrics_open,
            watch,
            cluster,
            max_in_flight,
            public_url,
        } => {
            let mut options = evhost::Options::new(data);
            options.durability = if no_fsync {
                Durability::Off
            } else {
                Durability::Full
            };
            options.body_limit = body_limit;
            options.cache_dir = cache_dir;
            options.shutdown_grace = Duration::from_secs(grace_secs);
            options.admin_token = admin_token;
            options.allowed_hosts = allowed_hosts;
            options.metrics_open = metrics_open;
            options.http = evhost::server::HttpLimits {
                header_read_timeout: Duration::from_millis(header_timeout_ms.max(1)),
                max_connections: max_connections.max(1),
            };
            options.body_read_timeout = Duration::from_millis(body_timeout_ms.max(1));
            options.watch = watch;
            options.cluster = cluster;
            options.max_in_flight = max_in_flight.map(|n| n.max(1));
            options.public_url = public_url;
            up(&app, build, &listen, options).await
        }
        Command::Send {
            ty,
            source,
            data,
            id,
            subject,
            partition_key,
            host,
        } => {
            let mut event = cloudevents::EventBuilderV10::new()
                .id(id.unwrap_or_else(random_id))
                .source(source)
                .ty(ty);
            if let Some(data) = data {
                let data: Value =
                    serde_json::from_str(&data).context("--data is not valid JSON")?;
                event = event.data("application/json", data);
            }
            if let Some(subject) = subject {
                event = event.subject(subject);
            }
            if let Some(key) = partition_key {
                event = event.extension("partitionkey", key);
            }
            let event = event.build().context("the event is incomplete")?;
            match host.client().send(event).await {
                Ok(answer) => {
                    println!("202 Accepted");
                    println!("{}", serde_json::to_string(&answer)?);
                    Ok(())
                }
                Err(err) => {
                    if let ClientError::Refused { status, problem } = &err {
                        println!("{status}");
                        if let Some(problem) = problem {
                            println!("{}", serde_json::to_string(problem)?);
                        }
                    }
                    Err(err.into())
                }
            }
        }
        Command::Handlers { host } => {
            let handlers = host.client().handlers().await?;
            println!(
                "{:<20} {:>7} {:<8} {:<10} {:>11} {:>8} {:>9}  SUBSCRIBES",
                "NAME", "VERSION", "ORIGIN", "ORDERING", "CONCURRENCY", "PENDING", "IN-FLIGHT"
            );
            for h in handlers {
                println!(
                    "{:<20} {:>7} {:<8} {:<10} {:>11} {:>8} {:>9}  {}",
                    h.name.as_str(),
                    h.version,
                    h.origin.as_str(),
                    h.ordering,
                    h.concurrency,
                    h.pending,
                    h.in_flight,
                    h.subscribe.join(", ")
                );
            }
            Ok(())
        }
        Command::Deadletters { handler, ty, host } => {
            let query = DeadLettersQuery {
                handler,
                ty,
                after: None,
                limit: Some(1000),
            };
            let letters = host.client().dead_letters(&query).await?.deadletters;
            if letters.is_empty() {
                println!("no dead letters");
                return Ok(());
            }
            println!(
                "{:>6}  {:<16} {:<24} {:>8}  LAST ERROR",
                "ID", "HANDLER", "EVENT ID", "ATTEMPTS"
            );
            for letter in &letters {
                let last_error = letter.errors.last().map_or("", |e| e.error.as_str());
                println!(
                    "{:>6}  {:<16} {:<24} {:>8}  {}",
                    letter.id,
                    letter.handler.as_str(),
                    letter.event["id"].as_str().unwrap_or("?"),
                    letter.attempts,
                    last_error
                );
            }
            Ok(())
        }
        Command::Redrive { id, handler, host } => {
            let client = host.client();
            let answer = match (id, handler) {
                (Some(id), _) => client.redrive(id).await?,
                (None, Some(handler)) => client.redrive_all(&handler).await?,
                (None, None) => anyhow::bail!("give a dead letter id or --handler"),
            };
            println!("redriven: {}", answer.redriven);
            Ok(())
        }
        Command::Deploy {
            name,
            module,
            config,
            host,
        } => deploy(&name, &module, config.as_deref(), &host).await,
        Command::Schema { command } => schema(command).await,
        Command::Upcaster { command } => upcaster(command).await,
        Command::Rollback { name, host } => {
            let answer = host.client().rollback(&name).await?;
            println!("{name}: version {} is live", answer.version);
            Ok(())
        }
        Command::Compact { data, host } => compact(data.as_deref(), &host).await,
        Command::Remove { name, host } => {
            let answer = host.client().remove(&name).await?;
            println!(
                "{name}: removed; {} pending deliveries dead-lettered",
                answer.dead_lettered
            );
            Ok(())
        }
    }
}

/// `evhost schema ...`.
async fn schema(command: SchemaCommand) -> Result<()> {
    match command {
        SchemaCommand::Put {
            ty,
            file,
            upcaster,
            compatibility,
            host,
        } => {
            let schema =
                std::fs::read(&file).with_context(|| format!("failed to read {file:?}"))?;
            let upcaster = match &upcaster {
                Some(path) => {
                    Some(std::fs::read(path).with_context(|| format!("failed to read {path:?}"))?)
                }
                None => None,
            };
            let answer = host
                .client()
                .put_schema(&ty, schema, upcaster, compatibility.as_deref())
                .await
                .map_err(explain_refusal)?;
            println!(
                "{ty}: {} ({})",
                answer.outcome,
                answer.url.unwrap_or_default()
            );
            Ok(())
        }
        SchemaCommand::Get { ty, host } => {
            let schema = host.client().schema(&ty).await?;
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
        SchemaCommand::List { host } => {
            let list = host.client().schemas().await?;
            println!(
                "require = {}, default compatibility = {}",
                list.require, list.default_compatibility
            );
            println!(
                "{:<48} {:>7}  {:<20} {:<10} SHA256",
                "TYPE", "VERSION", "COMPATIBILITY", "FROM PREV"
            );
            for family in &list.families {
                for version in &family.versions {
                    println!(
                        "{:<48} {:>7}  {:<20} {:<10} {}",
                        version.ty,
                        version.version,
                        family.compatibility,
                        version.from_previous.as_deref().unwrap_or("-"),
                        version.sha256.get(..12).unwrap_or(&version.sha256)
                    );
                }
            }
            Ok(())
        }
        SchemaCommand::Rm { ty, host } => {
            host.client()
                .remove_schema(&ty)
                .await
                .map_err(explain_refusal)?;
            println!("{ty}: removed");
            Ok(())
        }
    }
}

/// `evhost upcaster ...`.
async fn upcaster(command: UpcasterCommand) -> Result<()> {
    match command {
        UpcasterCommand::Put { from, module, host } => {
            let bytes =
                std::fs::read(&module).with_context(|| format!("failed to read {module:?}"))?;
            let answer = host
                .client()
                .put_upcaster(&from, bytes)
                .await
                .map_err(explain_refusal)?;
            println!("upcaster from {from}: {}", answer.outcome);
            Ok(())
        }
        UpcasterCommand::Rm { from, host } => {
            host.client()
                .remove_upcaster(&from)
                .await
                .map_err(explain_refusal)?;
            println!("upcaster from {from}: removed");
            Ok(())
        }
    }
}

/// A refusal with each of its listed problems (breaking changes, gate problems) on a line.
fn explain_refusal(err: ClientError) -> anyhow::Error {
    if let ClientError::Refused {
        problem: Some(problem),
        ..
    } = &err
    {
        let mut lines = Vec::new();
        for member in ["breaking_changes", "problems"] {
            if let Some(items) = problem.members.get(member).and_then(Value::as_array) {
                for item in items {
                    lines.push(match item {
                        Value::String(text) => text.clone(),
                        Value::Object(change) => format!(
                            "v{} ({}): \"{}\": {}",
                            change.get("against").and_then(Value::as_u64).unwrap_or(0),
                            change
                                .get("direction")
                                .and_then(Value::as_str)
                                .unwrap_or("?"),
                            change.get("pointer").and_then(Value::as_str).unwrap_or(""),
                            change.get("rule").and_then(Value::as_str).unwrap_or("?")
                        ),
                        other => other.to_string(),
                    });
                }
            }
        }
        // What the message says already (a gate's one problem) is not said twice.
        let said = err.to_string();
        lines.retain(|line| !said.contains(line.as_str()));
        if !lines.is_empty() {
            return anyhow::anyhow!("{said}\n  {}", lines.join("\n  "));
        }
    }
    err.into()
}

fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("evhost-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let reporter = std::thread::Builder::new()
        .name("evhost-log-drops".into())
        .spawn(move || {
            let mut reported = 0;
            loop {
                std::thread::sleep(DROPPED_LOG_CHECK);
                let now = dropped.dropped_lines();
                if now > reported {
                    tracing::warn!(
                        dropped_lines = now - reported,
                        dropped_total = now,
                        "stderr did not keep up; log lines were dropped"
                    );
                    reported = now;
                }
            }
        });
    if let Err(err) = reporter {
        tracing::warn!(error = %err, "failed to start counting dropped log lines");
    }
    guard
}

async fn up(app: &Path, build: bool, listen: &str, mut options: evhost::Options) -> Result<()> {
    let manifest = Manifest::load(app).map_err(|err| anyhow::anyhow!("{err}"))?;
    if build {
        evhost::toolchain::build_handlers(&manifest).await?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    options.manifest = Some(manifest);
    evhost::run(listener, options, shutdown_signal()).await
}

async fn deploy(name: &str, module: &Path, config: Option<&Path>, host: &HostArg) -> Result<()> {
    let bytes = tokio::fs::read(module)
        .await
        .with_context(|| format!("failed to read {module:?}"))?;
    let config = match config {
        Some(config) => Some(
            tokio::fs::read_to_string(config)
                .await
                .with_context(|| format!("failed to read {config:?}"))?,
        ),
        None => None,
    };
    let answer = host.client().deploy(name, bytes, config).await?;
    if answer.unchanged {
        println!("{name}: unchanged, version {} stays live", answer.version);
    } else {
        println!(
            "{name}: version {} is live ({})",
            answer.version, answer.module_sha256
        );
    }
    Ok(())
}

async fn compact(data: Option<&Path>, host: &HostArg) -> Result<()> {
    let (before, after): (evhost::api::StoreSizes, evhost::api::StoreSizes) = match data {
        Some(dir) => {
            anyhow::ensure!(
                dir.join("evhost.db").is_file(),
                "no store in {} (no evhost.db)",
                dir.display()
            );
            let _lock = evhost::store::DataDirLock::acquire(dir)
                .context("compact a running host with --host instead")?;
            let (before, after) = evhost::store::compact_offline(dir)?;
            (before.into(), after.into())
        }
        None => {
            let answer = host.client().compact().await?;
            if !answer.wal_truncated {
                println!("a reader kept part of the WAL; the next checkpoint takes the rest");
            }
            if !answer.before.incremental_vacuum {
                println!(
                    "this store was created without incremental vacuum: its free pages are \
                     reused but not handed back; `evhost compact --data DIR` with the host \
                     stopped rewrites it"
                );
            }
            (answer.before, answer.after)
        }
    };
    let sizes = [
        ("database", before.database_bytes, after.database_bytes),
        ("wal", before.wal_bytes, after.wal_bytes),
        ("free", before.free_bytes, after.free_bytes),
    ];
    for (what, before, after) in sizes {
        println!("{what:<9} {before:>14} -> {after:>14} bytes");
    }
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once (whatever was in
/// flight is retried on the next start).
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    drop(ctrl_c.await);
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    drop(ctrl_c.await);
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}
