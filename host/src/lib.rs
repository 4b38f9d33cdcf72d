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
//! - [`ingress`] decodes and validates CloudEvents from HTTP (binary, structured, batch) into
//!   [`event::Event`]s, checks each one's data against its type's schema ([`schemas`]), asks
//!   [`pressure`] for room, and appends to the store.
//! - [`router`] turns an event into one delivery per subscribed handler.
//! - [`store`] appends events with their deliveries durably, commits an invocation's outcome
//!   (state writes, emitted events and their deliveries, delivery done) atomically, and keeps
//!   the deployment records; its retention deletes, in the background, what the
//!   `[retention]` policy keeps no longer, and checkpoints the WAL.
//! - [`scheduler`] runs each handler's pending deliveries under its rules ([`scheduler::select`]
//!   decides which start, as a pure function of the backlog and the [`clock`]), and retries
//!   failures with backoff.
//! - [`runtime`] runs one delivery in a fresh sandboxed Wasm instance (and upcasters, one step
//!   each); [`capabilities`] are the host side of each WIT import (types from [`wit`]),
//!   staging the handler's effects. Both schedulers go through [`schemas::Registry::invoke`]:
//!   an older event upcast to the version the handler reads, its emitted events checked
//!   against their schemas.
//!
//! Beside the pipeline:
//!
//! - [`deploy`] turns every deployment change (the manifest, `--watch`, the API) into a plan
//!   and reconciles the store and the [`live`] set to it; the live set (each handler's
//!   running version and the routes they make) is what ingress, the scheduler and the admin
//!   API read, swapped whole. Changes to the schema registry go the same way, one at a time
//!   with deploys, through the deploy gate ([`schemas`]: versions, schemas, compatibility,
//!   upcasters).
//! - [`server`] serves the router on hyper under the HTTP limits (header and connection
//!   deadlines, a connection cap, a bounded stop); [`access`] decides who may call the admin
//!   API (the token, and the `Host` / `Origin` checks against pages in a browser).
//! - [`config`] reads and validates the application manifest; [`name`] holds the names it
//!   gives out; [`admin`] serves the admin API, whose answers are the types of [`api`];
//!   [`client`] calls it (the CLI is a thin shell over it); [`metrics`] is `/metrics`;
//!   [`toolchain`] runs the manifest's build commands.
//!
//! The binary (`main.rs`) parses the command line and calls [`run`] or the [`client`]; tests
//! call the same [`run`] on `127.0.0.1:0`.

pub mod access;
pub mod admin;
pub mod api;
pub mod capabilities;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod event;
pub mod ingress;
pub mod live;
pub mod metrics;
pub mod name;
pub mod pressure;
pub mod router;
pub mod runtime;
pub mod scheduler;
pub mod schemas;
pub mod server;
pub mod store;
pub mod toolchain;
pub mod wit;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::routing::get;

use crate::admin::AdminState;
use crate::clock::Clock;
use crate::config::Manifest;
use crate::deploy::Deployer;
use crate::ingress::IngressState;
use crate::ingress::problem::Problem;
use crate::live::Live;
use crate::name::AppName;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::scheduler::Scheduler;
use crate::store::{Durability, SharedBackend, Store};

/// The app of a host started without a manifest on a new data directory.
pub const DEFAULT_APP: &str = "evhost";

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
    /// refuses to listen on anything but a loopback address. At least
    /// [`access::AdminToken::MIN_BYTES`] long, or the host refuses to start.
    pub admin_token: Option<String>,
    /// Host names (beyond IP addresses and `localhost`) the admin API answers to
    /// ([`access::Guard`]).
    pub allowed_hosts: Vec<String>,
    /// Serve `/metrics` without the admin token.
    pub metrics_open: bool,
    /// Header read timeout and connection cap ([`server`]).
    pub http: server::HttpLimits,
    /// How long a request body may take to arrive in full (then 408).
    pub body_read_timeout: Duration,
    /// Redeploy a manifest handler when its module file changes.
    pub watch: bool,
    /// Run as a host of the app's cluster on NATS JetStream at this URL ([`cluster`]); the
    /// data directory then holds only the compiled-module cache.
    pub cluster: Option<String>,
    /// Cluster mode: invocations this host runs at once over all handlers, its share of the
    /// cluster's work (what it pulls beyond waits, and other hosts take it); `None`: as many
    /// as each handler's cluster-wide `concurrency` allows.
    pub max_in_flight: Option<usize>,
    /// The URL producers and handlers reach this host at, e.g. `https://events.example.com`:
    /// accepted events' `dataschema` points under it (`/admin/schemas/{type}`). `None`:
    /// `http://` and the address the host listens on.
    pub public_url: Option<String>,
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
            allowed_hosts: Vec::new(),
            metrics_open: false,
            http: server::HttpLimits::default(),
            body_read_timeout: ingress::DEFAULT_BODY_READ_TIMEOUT,
            watch: false,
            cluster: None,
            max_in_flight: None,
            public_url: None,
        }
    }
}

/// The HTTP interface (DESIGN section 6): ingress, the admin API and `/metrics`, health.
///
/// `/healthz` is liveness: the process answers HTTP (restart it if not). `/readyz` is
/// readiness: the host takes events now, which needs it not stopping and its store able to
/// write (a full or failing disk makes it not ready until a write succeeds again); it is
/// served only once every handler is loaded, since the host listens only after that.
pub fn router(ingress: Arc<IngressState>, admin: Arc<AdminState>) -> Router {
    let readiness = Router::new()
        .route("/readyz", get(readyz))
        .with_state(ingress.clone());
    Router::new()
        .merge(ingress::router(ingress))
        .merge(admin::router(admin))
        .merge(readiness)
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { Problem::not_found("no such resource") })
}

/// How long `/readyz` waits for its probe write before answering not ready.
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /readyz`: 200 `ready`, or 503 naming why not.
async fn readyz(
    axum::extract::State(ingress): axum::extract::State<Arc<IngressState>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if ingress.stopping.load(Ordering::Relaxed) {
        return Problem::service_unavailable(None, "the host is shutting down").into_response();
    }
    if let Some(failure) = ingress.store.write_failure() {
        // The last write failed: try one now, so that readiness returns with the disk's space
        // even when no traffic comes to find out.
        let probe = tokio::time::timeout(READINESS_PROBE_TIMEOUT, ingress.store.probe_write());
        if !matches!(probe.await, Ok(Ok(()))) {
            return Problem::service_unavailable(
                Some(Duration::from_secs(1)),
                format!("the store cannot write: {failure}"),
            )
            .into_response();
        }
    }
    "ready".into_response()
}

/// Open the store, make the manifest's handlers (and every other stored one) live, and serve
/// on `listener` until `shutdown` completes; then stop taking events, let in-flight
/// invocations finish within the grace period, and return.
pub async fn run(
    listener: tokio::net::TcpListener,
    mut options: Options,
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
    let admin_token = match &options.admin_token {
        Some(token) => Some(access::AdminToken::new(token)?),
        None => None,
    };
    access::check_listen(addr, admin_token.as_ref())?;
    if let Some(url) = &options.public_url {
        let absolute = fluent_uri::Uri::parse(url.as_str()).is_ok_and(|uri| {
            matches!(uri.scheme().as_str(), "http" | "https") && uri.authority().is_some()
        });
        if !absolute {
            bail!("the public URL {url:?} is not an absolute http:// or https:// URL");
        }
    }
    options
        .public_url
        .get_or_insert_with(|| format!("http://{addr}"));
    // Held until `run` returns: a second host on this directory refuses to start.
    let _data_dir_lock = store::DataDirLock::acquire(&data_dir)?;
    let cache_dir = match &options.cache_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => data_dir.join("compiled"),
    };
    store::create_private_dir(&cache_dir)?;
    let runtime = Arc::new(Runtime::new(&RuntimeOptions {
        cache_dir: Some(cache_dir),
    })?);
    let host = match &options.cluster {
        None => start_embedded(&options, &data_dir, runtime.clone()).await?,
        Some(url) => cluster::start(url, &options, runtime.clone()).await?,
    };
    let Started {
        app,
        backend,
        live,
        deployer,
        metrics,
        workers,
        _retention,
    } = host;
    if options.watch
        && let Some(manifest) = &options.manifest
    {
        deploy::watch(deployer.clone(), manifest.clone());
    }

    let stopping = Arc::new(AtomicBool::new(false));
    let ingress = Arc::new(IngressState {
        namespace: format!("/{app}"),
        live: live.clone(),
        store: backend.clone(),
        metrics: metrics.clone(),
        body_limit: options.body_limit,
        body_read_timeout: options.body_read_timeout,
        stopping: stopping.clone(),
    });
    let admin = Arc::new(AdminState {
        live,
        store: backend,
        deployer,
        metrics,
        runtime,
        guard: access::Guard::new(&options.allowed_hosts, admin_token.is_some()),
        token: admin_token,
        metrics_open: options.metrics_open,
    });
    tracing::info!(%addr, cluster = options.cluster.is_some(), "evhost is serving");

    let stop_taking_events = async move {
        shutdown.await;
        stopping.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: no new events, waiting for open requests");
    };
    server::serve(
        listener,
        router(ingress, admin),
        &options.http,
        stop_taking_events,
        options.shutdown_grace,
    )
    .await;
    workers.shutdown(options.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// A host's parts once its handlers are live, whichever backend it runs on.
pub struct Started {
    pub app: AppName,
    pub backend: SharedBackend,
    pub live: Arc<Live>,
    pub deployer: Arc<Deployer>,
    pub metrics: Arc<metrics::Metrics>,
    pub workers: RunningWorkers,
    /// The embedded store's background retention, stopped when dropped.
    pub _retention: Option<store::RetentionTask>,
}

/// What runs deliveries, to stop at shutdown.
pub enum RunningWorkers {
    Embedded(Arc<Scheduler>),
    Cluster(cluster::worker::ClusterWorkers),
}

impl RunningWorkers {
    /// Stop starting deliveries; let running ones finish within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        match self {
            RunningWorkers::Embedded(scheduler) => scheduler.shutdown(grace).await,
            RunningWorkers::Cluster(workers) => workers.shutdown(grace).await,
        }
    }
}

/// Open the embedded store in `data_dir` and make the manifest's handlers (and every other
/// stored one) live.
async fn start_embedded(
    options: &Options,
    data_dir: &std::path::Path,
    runtime: Arc<Runtime>,
) -> Result<Started> {
    let store = Store::open(data_dir, options.durability)?;
    let app = app_of(&store, data_dir, options.manifest.as_ref()).await?;
    let metrics = Arc::new(metrics::Metrics::new(store.metric_collectors())?);
    let clock = Clock::new();
    let live = Arc::new(Live::new());
    live.set_registry(empty_registry(options));
    let scheduler = Scheduler::new(
        store.clone(),
        runtime.clone(),
        metrics.clone(),
        live.clone(),
        clock,
    );
    let backend: SharedBackend = Arc::new(store.clone());
    let deployer = Arc::new(Deployer::new(
        backend.clone(),
        runtime,
        live.clone(),
        scheduler.workers(),
        clock,
        app.clone(),
    ));
    // Every module is built before anything is stored: a broken one fails the start with
    // nothing changed.
    deployer.start(options.manifest.as_ref()).await?;
    store.claim_app(&app).await?;
    let retention_policy = options
        .manifest
        .as_ref()
        .map(|manifest| manifest.retention.clone())
        .unwrap_or_default();
    // Stops when `run` returns, so that no pass outlives the host (nor holds its store open
    // for the next one on this data directory).
    let retention = store::start_retention(store.clone(), retention_policy);
    Ok(Started {
        app,
        backend,
        live,
        deployer,
        metrics,
        workers: RunningWorkers::Embedded(scheduler),
        _retention: Some(retention),
    })
}

/// The registry a host starts with, before the stored one is loaded: nothing registered,
/// the manifest's `[schemas]` policy, schemas served under the host's public URL.
pub fn empty_registry(options: &Options) -> schemas::Registry {
    let policy = options
        .manifest
        .as_ref()
        .map(|manifest| manifest.schema_policy)
        .unwrap_or_default();
    schemas::Registry::empty(options.public_url.as_deref().unwrap_or_default(), policy)
}

/// The app this host runs: the manifest's, which must be the one the data directory holds
/// (emitted events carry the app in their `source`, and their dedupe with it); without a
/// manifest, whichever the data directory holds. The caller claims it once started.
async fn app_of(
    store: &Store,
    data_dir: &std::path::Path,
    manifest: Option<&Manifest>,
) -> Result<AppName> {
    let proposed = match manifest {
        Some(manifest) => manifest.app.name.clone(),
        None => match store.app().await? {
            Some(stored) => return Ok(stored),
            None => AppName::new(DEFAULT_APP)?,
        },
    };
    if let Some(stored) = store.app().await?
        && stored != proposed
    {
        bail!(
            "the data directory {} holds the app `{stored}`, not `{proposed}`: start `{proposed}` \
             with another --data, or `{stored}` with this one",
            data_dir.display()
        );
    }
    Ok(proposed)
}
