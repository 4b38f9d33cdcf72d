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
        /// Require `Authorization: Bearer TOKEN` on /admin/* (needed to listen beyond
        /// loopback).
        #[arg(long, env = "EVHOST_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Redeploy a handler whenever its module file changes (rebuild it elsewhere).
        #[arg(long)]
        watch: bool,
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
    /// The admin token, when the host requires one.
    #[arg(long = "token", env = "EVHOST_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
                admin_token,
                watch,
            } => {
                let mut options = evhost::Options::new(data);
                options.durability = if no_fsync {
                    Durability::Off
                } else {
                    Durability::Full
                };
                options.body_limit = body_limit;
                options.shutdown_grace = Duration::from_secs(grace_secs);
                options.admin_token = admin_token;
                options.watch = watch;
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
            } => send(ty, source, data, id, subject, partition_key, &host).await,
            Command::Handlers { host } => handlers(&host).await,
            Command::Deadletters { handler, ty, host } => dead_letters(handler, ty, &host).await,
            Command::Redrive { id, handler, host } => redrive(id, handler, &host).await,
            Command::Deploy {
                name,
                module,
                config,
                host,
            } => deploy(&name, &module, config.as_deref(), &host).await,
            Command::Rollback { name, host } => {
                let url = host.url(&format!("/admin/handlers/{name}/rollback"));
                let body = admin(&host, reqwest::Method::POST, url).await?;
                println!("{name}: version {} is live", body["version"]);
                Ok(())
            }
            Command::Remove { name, host } => {
                let url = host.url(&format!("/admin/handlers/{name}"));
                let body = admin(&host, reqwest::Method::DELETE, url).await?;
                println!(
                    "{name}: removed; {} pending deliveries dead-lettered",
                    body["dead_lettered"]
                );
                Ok(())
            }
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

async fn up(app: &Path, build: bool, listen: &str, mut options: evhost::Options) -> Result<()> {
    let manifest = Manifest::load(app).map_err(|err| anyhow::anyhow!("{err}"))?;
    if build {
        build_handlers(&manifest).await?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    options.manifest = Some(manifest);
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
async fn admin(host: &HostArg, method: reqwest::Method, url: String) -> Result<Value> {
    let request = reqwest::Client::new().request(method, &url);
    admin_send(host, request, &url).await
}

async fn admin_send(
    host: &HostArg,
    mut request: reqwest::RequestBuilder,
    url: &str,
) -> Result<Value> {
    if let Some(token) = &host.token {
        request = request.bearer_auth(token);
    }
    let response = request
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
    let body = admin(host, reqwest::Method::GET, host.url("/admin/handlers")).await?;
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
    let body = admin(host, reqwest::Method::GET, url.to_string()).await?;
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
    let body = admin(host, reqwest::Method::POST, url).await?;
    println!("redriven: {}", body["redriven"]);
    Ok(())
}

async fn deploy(name: &str, module: &Path, config: Option<&Path>, host: &HostArg) -> Result<()> {
    let bytes = tokio::fs::read(module)
        .await
        .with_context(|| format!("failed to read {module:?}"))?;
    let mut form = reqwest::multipart::Form::new().part(
        "module",
        reqwest::multipart::Part::bytes(bytes).file_name("module.wasm"),
    );
    if let Some(config) = config {
        let text = tokio::fs::read_to_string(config)
            .await
            .with_context(|| format!("failed to read {config:?}"))?;
        form = form.text("config", text);
    }
    let url = host.url(&format!("/admin/handlers/{name}"));
    let request = reqwest::Client::new().put(&url).multipart(form);
    let body = admin_send(host, request, &url).await?;
    if body["unchanged"] == true {
        println!("{name}: unchanged, version {} stays live", body["version"]);
    } else {
        println!(
            "{name}: version {} is live ({})",
            body["version"], body["module_sha256"]
        );
    }
    Ok(())
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}
