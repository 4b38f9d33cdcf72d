//! # evhost
//!
//! A host runtime for serverless event handlers on WebAssembly. Producers POST CloudEvents;
//! evhost stores each event durably, routes it by its versioned `type` to every subscribed
//! handler, and runs each handler as a sandboxed Wasm component.
//!
//! # Layout
//!
//! Data moves one way through one module per pipeline stage:
//!
//! ```text
//! ingress -> router -> store -> scheduler -> runtime -> store
//! ```
//!
//! - [`ingress`] decodes and validates CloudEvents from HTTP (binary, structured, batch).
//! - [`router`] turns an event into one delivery per subscribed handler.
//! - [`store`] appends events with their deliveries durably, and commits an invocation's
//!   outcome (state writes, emitted events and their deliveries, delivery done) atomically.
//! - [`scheduler`] picks pending deliveries per handler under its concurrency and ordering
//!   rules, and retries failures with backoff.
//! - [`runtime`] runs one delivery in a fresh sandboxed Wasm instance; [`capabilities`] are
//!   the host side of each WIT import, staging the handler's effects.
//! - [`config`] reads and validates the application manifest; [`admin`] serves the read side.
//!
//! The binary (`main.rs`) parses the command line and calls [`run`]; tests call the same
//! [`run`] on `127.0.0.1:0`.

pub mod admin;
pub mod capabilities;
pub mod config;
pub mod deploy;
pub mod event;
pub mod ingress;
pub mod metrics;
pub mod router;
pub mod runtime;
pub mod scheduler;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::routing::{get, post};

use crate::config::Manifest;
use crate::ingress::problem::Problem;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::scheduler::Scheduler;
use crate::store::{Durability, Store};

/// How the host runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the store (and the compiled-module cache) live.
    pub data_dir: PathBuf,
    /// The application: its handlers are loaded at start-up.
    pub manifest: Option<Manifest>,
    pub durability: Durability,
    /// The largest request body ingress reads; never below [`ingress::MIN_BODY_LIMIT`].
    pub body_limit: usize,
    /// Where compiled components are cached; `None` puts the cache under `data_dir`.
    pub cache_dir: Option<PathBuf>,
    /// How long in-flight invocations may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// When set, `/admin/*` requires `Authorization: Bearer <token>`. Without it the host
    /// refuses to listen on anything but a loopback address.
    pub admin_token: Option<String>,
    /// Redeploy a manifest handler when its module file changes.
    pub watch: bool,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Options {
        Options {
            data_dir: data_dir.into(),
            manifest: None,
            durability: Durability::Full,
            body_limit: ingress::DEFAULT_BODY_LIMIT,
            cache_dir: None,
            shutdown_grace: Duration::from_secs(10),
            admin_token: None,
            watch: false,
        }
    }
}

/// What every HTTP handler shares.
pub struct AppState {
    pub scheduler: Arc<Scheduler>,
    pub deployer: Arc<deploy::Deployer>,
    pub body_limit: usize,
    admin_token: Option<String>,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(
        scheduler: Arc<Scheduler>,
        deployer: Arc<deploy::Deployer>,
        body_limit: usize,
        admin_token: Option<String>,
    ) -> AppState {
        AppState {
            scheduler,
            deployer,
            body_limit,
            admin_token,
            shutting_down: AtomicBool::new(false),
        }
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// The HTTP interface (DESIGN section 6).
pub fn router(state: Arc<AppState>) -> Router {
    let ingress = post(ingress::post)
        .options(ingress::options)
        .fallback(ingress::method_not_allowed);
    let admin = Router::new()
        .route("/admin/events", get(admin::events))
        .route("/admin/handlers", get(admin::handlers))
        .route(
            "/admin/handlers/{name}",
            get(admin::handler)
                .put(admin::deploy)
                .delete(admin::remove)
                .layer(axum::extract::DefaultBodyLimit::max(
                    admin::MAX_MODULE_BYTES,
                )),
        )
        .route("/admin/handlers/{name}/rollback", post(admin::rollback))
        .route("/admin/state/{handler}/{*key}", get(admin::state))
        .route("/admin/deadletters", get(admin::dead_letters))
        .route("/admin/deadletters/redrive", post(admin::redrive_all))
        .route(
            "/admin/deadletters/{id}",
            get(admin::dead_letter).delete(admin::discard),
        )
        .route("/admin/deadletters/{id}/redrive", post(admin::redrive))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    Router::new()
        .route("/", ingress.clone())
        .route("/events", ingress)
        .layer(axum::extract::DefaultBodyLimit::max(state.body_limit))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(admin::metrics))
        .merge(admin)
        .fallback(|| async { Problem::not_found("no such resource") })
        .with_state(state)
}

/// Open the store, load the manifest's handlers, and serve on `listener` until `shutdown`
/// completes; then stop taking events, let in-flight invocations finish within the grace
/// period, and return.
pub async fn run(
    listener: tokio::net::TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if options.body_limit < ingress::MIN_BODY_LIMIT {
        bail!(
            "the body limit of {} bytes is below the CloudEvents minimum of {} bytes",
            options.body_limit,
            ingress::MIN_BODY_LIMIT
        );
    }
    let data_dir = std::path::absolute(&options.data_dir)
        .with_context(|| format!("bad data directory {:?}", options.data_dir))?;
    let addr = listener.local_addr()?;
    if options.admin_token.is_none() && !addr.ip().is_loopback() {
        bail!(
            "refusing to serve the admin API on {addr} without a token: set --admin-token \
             (or EVHOST_ADMIN_TOKEN), or listen on a loopback address"
        );
    }
    let cache_dir = match &options.cache_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => data_dir.join("compiled"),
    };
    let runtime = Arc::new(Runtime::new(&RuntimeOptions {
        cache_dir: Some(cache_dir),
    })?);
    // The manifest's modules are compiled before the store is touched: a broken module
    // fails the start with nothing changed.
    let compiled = match &options.manifest {
        Some(manifest) => load_handlers(&runtime, manifest).await?,
        None => Vec::new(),
    };
    let store = Store::open(&data_dir, options.durability)?;
    let proposed_app = options
        .manifest
        .as_ref()
        .map_or("evhost", |m| m.app.name.as_str());
    let app_name = store.app_name(proposed_app).await?;
    let metrics = Arc::new(metrics::Metrics::new(store.metric_collectors())?);
    let scheduler = Scheduler::new(store, runtime, metrics)?;
    let deployer = Arc::new(deploy::Deployer::new(scheduler.clone(), app_name));
    deployer
        .restore(options.manifest.as_ref(), compiled)
        .await?;
    if options.watch
        && let Some(manifest) = &options.manifest
    {
        deploy::watch(deployer.clone(), manifest.clone());
    }

    let state = Arc::new(AppState::new(
        scheduler.clone(),
        deployer,
        options.body_limit,
        options.admin_token.clone(),
    ));
    let app = router(state.clone());
    tracing::info!(%addr, store = ?scheduler.store().path(), "evhost is serving");

    let shutdown_state = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            shutdown_state.shutting_down.store(true, Ordering::Relaxed);
            tracing::info!("shutting down: no new events, waiting for open requests");
        })
        .await
        .context("the HTTP server failed")?;
    scheduler.shutdown(options.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// Compile and check every handler of `manifest`, off the async threads, all at once so that
/// every broken module is reported, not the first only. Handlers that share a module file
/// share one compile.
async fn load_handlers(
    runtime: &Arc<Runtime>,
    manifest: &Manifest,
) -> Result<Vec<runtime::DeployedHandler>> {
    let mut compiles = std::collections::HashMap::new();
    for spec in &manifest.handlers {
        if !compiles.contains_key(&spec.module) {
            let (runtime, path) = (runtime.clone(), spec.module.clone());
            let task = tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("failed to read module {path:?}"))?;
                runtime
                    .compile(&bytes)
                    .with_context(|| format!("module {path:?}"))
            });
            compiles.insert(spec.module.clone(), task);
        }
    }
    let mut compiled = std::collections::HashMap::new();
    for (path, task) in compiles {
        let result = task.await.context("a handler compile panicked")?;
        compiled.insert(path, result.map_err(|err| format!("{err:#}")));
    }
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for spec in &manifest.handlers {
        // The real source is set once the store has told the app's name.
        let source = format!("/{}/{}", manifest.app.name, spec.name);
        let linked = match &compiled[&spec.module] {
            Ok(module) => runtime
                .link(&spec.name, module, spec.settings.clone(), source)
                .with_context(|| format!("module {:?}", spec.module))
                .map_err(|err| format!("{err:#}")),
            Err(err) => Err(err.clone()),
        };
        match linked {
            Ok(handler) => loaded.push(handler),
            Err(err) => problems.push(format!("handler `{}`: {err}", spec.name)),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{}: {} handler(s) failed to load:\n  {}",
            manifest.path.display(),
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(loaded)
}
