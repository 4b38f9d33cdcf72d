//! The `evhost` command: run the host, and talk to a running one.
//!
//! ```text
//! evhost up [APP_DIR | evhost.toml] [--build] [--listen ADDR] [--data DIR]
//! evhost send --type T --source S [--data JSON] [--subject S] [--host URL]
//! evhost handlers | deadletters [--handler H] | redrive ID | redrive --handler H
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use evhost::config::Manifest;
use evhost::store::Durability;
use serde_json::{Value, json};

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
        /// Run each handler's `build` command first.
        #[arg(long)]
        build: bool,
        /// Address to serve HTTP on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "EVHOST_LISTEN")]
        listen: String,
        /// Where the store lives.
        #[arg(long, default_value = ".evhost", env = "EVHOST_DATA")]
        data: PathBuf,
        /// The largest request body accepted, in bytes (at least 65536).
        #[arg(long, default_value_t = evhost::ingress::DEFAULT_BODY_LIMIT)]
        body_limit: usize,
        /// Skip fsync on commit: faster, but a power cut can lose accepted events.
        #[arg(long)]
        no_fsync: bool,
        /// Seconds in-flight invocations may run on after a shutdown signal.
        #[arg(long, default_value_t = 10)]
        grace_secs: u64,
    },
    /// Post one event to a running host (structured mode).
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
    /// List the deployed handlers with their policy and counters.
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
}

impl HostArg {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up {
                app,
                build,
                listen,
                data,
                body_limit,
                no_fsync,
                grace_secs,
            } => {
                let durability = if no_fsync {
                    Durability::Off
                } else {
                    Durability::Full
                };
                up(
                    &app, build, &listen, data, body_limit, durability, grace_secs,
                )
                .await
            }
            Command::Send {
                ty,
                source,
                data,
                id,
                subject,
                partition_key,
                host,
            } => send(ty, source, data, id, subject, partition_key, &host).await,
            Command::Handlers { host } => handlers(&host).await,
            Command::Deadletters { handler, ty, host } => dead_letters(handler, ty, &host).await,
            Command::Redrive { id, handler, host } => redrive(id, handler, &host).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn up(
    app: &Path,
    build: bool,
    listen: &str,
    data: PathBuf,
    body_limit: usize,
    durability: Durability,
    grace_secs: u64,
) -> Result<()> {
    let manifest = Manifest::load(app).map_err(|err| anyhow::anyhow!("{err}"))?;
    if build {
        build_handlers(&manifest).await?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    let mut options = evhost::Options::new(data);
    options.manifest = Some(manifest);
    options.durability = durability;
    options.body_limit = body_limit;
    options.shutdown_grace = Duration::from_secs(grace_secs);
    evhost::run(listener, options, shutdown_signal()).await
}

/// Run each handler's `build` command in the manifest's folder, one after the other (they
/// usually share a cargo target directory, which serialises them anyway).
async fn build_handlers(manifest: &Manifest) -> Result<()> {
    for handler in &manifest.handlers {
        let Some(command) = &handler.build else {
            continue;
        };
        tracing::info!(handler = handler.name, command, "building");
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&manifest.dir)
            .status()
            .await
            .with_context(|| format!("handler `{}`: failed to run `{command}`", handler.name))?;
        if !status.success() {
            bail!(
                "handler `{}`: build command `{command}` failed ({status})",
                handler.name
            );
        }
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

async fn send(
    ty: String,
    source: String,
    data: Option<String>,
    id: Option<String>,
    subject: Option<String>,
    partition_key: Option<String>,
    host: &HostArg,
) -> Result<()> {
    let mut event = json!({
        "specversion": "1.0",
        "id": id.unwrap_or_else(random_id),
        "source": source,
        "type": ty,
    });
    if let Some(data) = data {
        let data: Value = serde_json::from_str(&data).context("--data is not valid JSON")?;
        event["datacontenttype"] = json!("application/json");
        event["data"] = data;
    }
    if let Some(subject) = subject {
        event["subject"] = json!(subject);
    }
    if let Some(key) = partition_key {
        event["partitionkey"] = json!(key);
    }
    let url = host.url("/events");
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(&event)?)
        .send()
        .await
        .with_context(|| format!("failed to reach {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{status}");
    if !body.is_empty() {
        println!("{body}");
    }
    if !status.is_success() {
        bail!("the host answered {status}");
    }
    Ok(())
}

/// Call the admin API; a non-2xx answer is an error showing the problem's detail.
async fn admin(method: reqwest::Method, url: String) -> Result<Value> {
    let response = reqwest::Client::new()
        .request(method, &url)
        .send()
        .await
        .with_context(|| format!("failed to reach {url}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("no detail");
        bail!("the host answered {status}: {detail}");
    }
    Ok(body)
}

async fn handlers(host: &HostArg) -> Result<()> {
    let body = admin(reqwest::Method::GET, host.url("/admin/handlers")).await?;
    println!(
        "{:<20} {:<10} {:>11} {:>8} {:>9}  SUBSCRIBES",
        "NAME", "ORDERING", "CONCURRENCY", "PENDING", "IN-FLIGHT"
    );
    for h in body["handlers"].as_array().into_iter().flatten() {
        let subscribes: Vec<&str> = h["subscribe"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<20} {:<10} {:>11} {:>8} {:>9}  {}",
            h["name"].as_str().unwrap_or("?"),
            h["ordering"].as_str().unwrap_or("?"),
            h["concurrency"],
            h["pending"],
            h["in_flight"],
            subscribes.join(", ")
        );
    }
    Ok(())
}

async fn dead_letters(handler: Option<String>, ty: Option<String>, host: &HostArg) -> Result<()> {
    let mut url = reqwest::Url::parse(&host.url("/admin/deadletters"))
        .with_context(|| format!("bad --host {}", host.url))?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("limit", "1000");
        if let Some(handler) = &handler {
            query.append_pair("handler", handler);
        }
        if let Some(ty) = &ty {
            query.append_pair("type", ty);
        }
    }
    let body = admin(reqwest::Method::GET, url.to_string()).await?;
    let letters = body["deadletters"].as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    println!(
        "{:>6}  {:<16} {:<24} {:>8}  LAST ERROR",
        "ID", "HANDLER", "EVENT ID", "ATTEMPTS"
    );
    for letter in &letters {
        let last_error = letter["errors"]
            .as_array()
            .and_then(|errors| errors.last())
            .and_then(|e| e["error"].as_str())
            .unwrap_or("");
        println!(
            "{:>6}  {:<16} {:<24} {:>8}  {}",
            letter["id"],
            letter["handler"].as_str().unwrap_or("?"),
            letter["event"]["id"].as_str().unwrap_or("?"),
            letter["attempts"],
            last_error
        );
    }
    Ok(())
}

async fn redrive(id: Option<i64>, handler: Option<String>, host: &HostArg) -> Result<()> {
    let url = match (id, &handler) {
        (Some(id), _) => host.url(&format!("/admin/deadletters/{id}/redrive")),
        (None, Some(handler)) => {
            let mut url = reqwest::Url::parse(&host.url("/admin/deadletters/redrive"))
                .with_context(|| format!("bad --host {}", host.url))?;
            url.query_pairs_mut().append_pair("handler", handler);
            url.to_string()
        }
        (None, None) => bail!("give a dead letter id or --handler"),
    };
    let body = admin(reqwest::Method::POST, url).await?;
    println!("redriven: {}", body["redriven"]);
    Ok(())
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}
