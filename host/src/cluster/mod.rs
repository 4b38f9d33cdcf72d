//! Cluster mode: many hosts, one app, kept in NATS JetStream instead of SQLite
//! (`evhost up APP --cluster nats://...`). Every host takes events and admin calls; together
//! they keep the single node's promises, because JetStream, not any host, holds what must
//! survive one and decides what runs where.
//!
//! # What lives where, and why
//!
//! **One stream per app** (`EVHOST_{app}`, or `[cluster] stream`): file storage, the
//! `[cluster] replicas`, `max_msgs_per_subject = 1`, atomic batch publish and direct gets
//! on. Every record has a subject of its own ([`subjects`]), so the last message of a
//! subject *is* the record and its sequence is the record's revision:
//!
//! | subject (under `evh.{app}.`) | record |
//! |---|---|
//! | `ev.{type}.{p}.{p}.{p}.{key}` | an event, as the CloudEvents NATS binding's binary mode (attributes as `ce-` headers); the three `p` are its partition by `partitionkey`, `subject` and `source`; `key` digests `source` and `id` |
//! //! | `done.{handler}.{key}` | the delivery is done: its effects are committed |
//! | `st.{handler}.{state key}` | one state value (KV semantics: the last message, its sequence the revision) |
//! | `chk.{handler}` | checks of keys read and not written (only the newest is kept) |
//! | `att.{handler}.{key}` | the delivery's failed attempts |
//! | `dead.{handler}.{key}` | its dead letter, or what became of it (redriven, discarded) |
//! | `rd.{handler}.{p}.{p}.{p}.{key}` | a redrive: run the delivery again |
//!
//! Why one stream and not an events stream beside a KV bucket for state: an invocation's
//! commit (done record, state writes, emitted events) must be one atomic
//! write, and JetStream's atomic batch publish (nats-server 2.12+, [`batch`]) writes to one
//! stream. Each message of a batch carries its own `Nats-Expected-Last-Subject-Sequence`,
//! checked at the commit: `0` on the done record (so the effects of one (event, handler)
//! land once), the revision read on each state key written (optimistic concurrency), a
//! check message per key read and not written, and on each emitted event `0` for the filter
//! of its key (`ev.*.*.*.*.{key}`, `...-Subject`), so an event id is stored once. A write of
//! one message (an ingested event, the done record of a handler that touched no state) is a
//! plain publish with the same check: the server stages every atomic batch in a store of
//! its own, one batch at a time per stream, which costs far more (BENCHMARKS.md).
//! A state key *is* a KV entry: a KV bucket is a stream of one message per subject; these
//! are in the app's stream so that a commit can include them.
//!
//! **Dedupe** lasts as long as the stream keeps the event, not the two minutes of JetStream's
//! duplicate window: an event is written only if no event with its key is stored, checked
//! by the server in the write itself, whatever host writes it. The stream has no age
//! limit: nothing is deleted in cluster mode (single-node retention does not apply yet).
//!
//! **Consumers** ([`consumers`]): per handler, durable pull consumers shared by all hosts,
//! filtered by subject to its types (and, for ordered handlers, its partitions). Their
//! `max_ack_pending` makes concurrency and per-key order cluster-wide; a host that dies
//! loses its deliveries to another after the ack wait.
//!
//! **A KV bucket** (`{stream}_deployments`) holds the deployment records, one document
//! (every handler, every version, the manifest's word), changed with a revision check so
//! that a plan's changes land together; every host watches it and reconciles its live set
//! to it through the same deployer as a single node. **An object store**
//! (`{stream}_modules`) holds module bytes by digest; each host compiles a module once and
//! caches the compiled code on its disk.
//!
//! # Guarantees, and their price
//!
//! - `202` means JetStream acknowledged the event: stored on the stream's replicas.
//!   JetStream writes to its files at once but syncs them to disk every two minutes by
//!   default (`sync_interval`); a power cut of a single server can lose what was not synced.
//!   For fsync on every write set `jetstream { sync_interval: always }` on the servers, or
//!   run three servers with `replicas = 3`, where an acknowledged write is on a majority.
//! - While NATS is unreachable, ingress answers 503 with `Retry-After`, nothing is lost, and
//!   deliveries wait; they go on when it is back.

pub mod batch;
pub mod consumers;
pub mod records;
pub mod store;
pub mod subjects;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;

use crate::clock::Clock;
use crate::deploy::{DeployError, Deployer, Plan};
use crate::live::Live;
use crate::name::AppName;
use crate::runtime::Runtime;
use crate::store::SharedBackend;
use crate::{Options, RunningWorkers, Started};

use store::{ClusterBackend, ClusterStore};
use worker::ClusterWorkers;

/// Times a host tries its manifest again at start when another host changed the
/// deployment records at the same moment (every host of a new cluster starts with the same
/// manifest).
const START_RACES: u32 = 10;

/// After the watch of the deployment records broke, a host waits this long to watch again.
const WATCH_PAUSE: Duration = Duration::from_secs(1);

/// Join the cluster at `url` for the manifest's app: connect, make the stored and the
/// manifest's handlers live, and follow the deployment records other hosts change.
pub async fn start(url: &str, options: &Options, runtime: Arc<Runtime>) -> Result<Started> {
    let app = match &options.manifest {
        Some(manifest) => manifest.app.name.clone(),
        None => AppName::new(crate::DEFAULT_APP)?,
    };
    let layout = options
        .manifest
        .as_ref()
        .map(|manifest| manifest.cluster.clone())
        .unwrap_or_default();
    let store = Arc::new(ClusterStore::connect(url, &app, &layout).await?);
    tracing::info!(url, stream = store.stream_name(), "joined the cluster");
    let metrics = Arc::new(crate::metrics::Metrics::new(Vec::new())?);
    let live = Arc::new(Live::new());
    live.set_registry(crate::empty_registry(options));
    let workers = ClusterWorkers::new(
        store.clone(),
        runtime.clone(),
        live.clone(),
        metrics.clone(),
        options.max_in_flight,
    );
    let backend: SharedBackend = Arc::new(ClusterBackend(store.clone()));
    let deployer = Arc::new(Deployer::new(
        backend.clone(),
        runtime,
        live.clone(),
        Arc::new(workers.clone()),
        Clock::new(),
        app.clone(),
    ));
    let mut attempt = 0;
    loop {
        match deployer.start(options.manifest.as_ref()).await {
            Ok(()) => break,
            Err(err) if attempt < START_RACES && is_transient(&err) => {
                attempt += 1;
                let pause = Duration::from_millis(rand::random_range(50..400));
                tracing::info!(error = %err, "the deployments changed meanwhile; applying again");
                tokio::time::sleep(pause).await;
            }
            Err(err) => return Err(err),
        }
    }
    follow_deployments(store.clone(), deployer.clone());
    follow_schemas(store.clone(), deployer.clone());
    Ok(Started {
        app,
        backend,
        live,
        deployer,
        metrics,
        workers: RunningWorkers::Cluster(workers),
        _retention: None,
    })
}

fn is_transient(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<DeployError>(), Some(DeployError::Store(store)) if store.is_transient())
}

/// Apply the stored deployments whenever any host changes them: a deploy, rollback or
/// removal made on one host reaches every other one this way.
fn follow_deployments(store: Arc<ClusterStore>, deployer: Arc<Deployer>) {
    tokio::spawn(async move {
        loop {
            let mut changes = match store.book().watch(store::BOOK_KEY).await {
                Ok(changes) => changes,
                Err(err) => {
                    tracing::warn!(error = %err, "failed to watch the deployment records");
                    tokio::time::sleep(WATCH_PAUSE).await;
                    continue;
                }
            };
            // Also after a break: what changed while the watch was down is applied now.
            reconcile(&deployer).await;
            while let Some(change) = changes.next().await {
                if change.is_err() {
                    break;
                }
                reconcile(&deployer).await;
            }
            tokio::time::sleep(WATCH_PAUSE).await;
        }
    });
}

/// Make the stored schema registry live whenever any host changes it, as deployments are.
fn follow_schemas(store: Arc<ClusterStore>, deployer: Arc<Deployer>) {
    tokio::spawn(async move {
        loop {
            let mut changes = match store.book().watch(store::SCHEMAS_KEY).await {
                Ok(changes) => changes,
                Err(err) => {
                    tracing::warn!(error = %err, "failed to watch the schema registry");
                    tokio::time::sleep(WATCH_PAUSE).await;
                    continue;
                }
            };
            reload_schemas(&deployer).await;
            while let Some(change) = changes.next().await {
                if change.is_err() {
                    break;
                }
                reload_schemas(&deployer).await;
            }
            tokio::time::sleep(WATCH_PAUSE).await;
        }
    });
}

async fn reload_schemas(deployer: &Deployer) {
    if let Err(err) = deployer.reload_schemas().await {
        tracing::warn!(error = %err, "failed to load the schema registry");
    }
}

async fn reconcile(deployer: &Deployer) {
    if let Err(err) = deployer.apply(Plan::Stored).await {
        tracing::warn!(error = %err, "failed to apply the stored deployments");
    }
}
