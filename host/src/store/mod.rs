//! The store: the event log, deliveries, handler state, all in one SQLite database.
//!
//! Ingress hands it validated events with their routed deliveries ([`Store::append`]); the
//! scheduler reads pending deliveries without their events ([`Store::queued`]), the event of
//! each one it starts ([`Store::pending_delivery`]), and hands back each invocation's
//! outcome ([`Store::commit`] or [`Store::fail`]). Handler state is read only through
//! [`StateReader`], which the `state` capability scopes to one handler.
//!
//! # Invariants
//!
//! - When `append` returns, the events and their deliveries are on disk (WAL, fsync per
//!   commit with `synchronous=FULL`): a crash after the 202 loses nothing.
//! - An event is stored once per (`source`, `id`); a duplicate append stores nothing and
//!   creates no delivery.
//! - A delivery is `pending` until exactly one `commit` marks it `done`, or `fail` marks it
//!   `dead`. A commit for a delivery that is no longer pending changes nothing, so a handler
//!   that ran twice for one event has its effects committed once.
//! - A commit's state writes, emitted events (with their deliveries) and the delivery's
//!   completion land in one transaction: a crash leaves all of them or none.
//!
//! All writes go through one writer thread that group-commits: every request waiting when a
//! transaction starts shares it and its one fsync (see [`writer`]). What is deleted, and
//! when, is [`retention`]'s alone.

mod backend;
mod deployments;
mod error;
mod files;
mod registry;
mod retention;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::event::Event;

pub use backend::{Backend, SharedBackend};
pub use error::{StoreError, StoreErrorKind};
pub use files::{DataDirLock, create_private_dir};
pub use registry::{BookWrite, StoredBook};
pub use retention::{
    Checkpoint, Compacted, Deleted, Retained, RetentionTask, Sizes, compact_offline,
    start as start_retention,
};

/// What a store call answers.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

pub use deployments::{
    Applied, Deployment, DeploymentChange, HandlerRecord, ManifestEntry, Origin,
};

use crate::name::HandlerName;
use crate::router::{OrderingKey, Routed};

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every group commit: nothing answered 202 is lost on power failure.
    #[default]
    Full,
    /// No fsync (`synchronous=OFF`): survives a process crash, not a power cut. For measuring
    /// the cost of durability, never for production.
    Off,
}

/// What became of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this log position, with its deliveries.
    New { seq: i64 },
    /// Already in the log (same `source` and `id`) at this position; nothing was stored.
    Duplicate { seq: i64 },
}

impl Appended {
    pub fn is_new(&self) -> bool {
        matches!(self, Appended::New { .. })
    }
}

/// A delivery waiting to run, with its event.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    pub id: i64,
    pub seq: i64,
    pub handler: HandlerName,
    pub ordering_key: Option<OrderingKey>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Unix milliseconds before which it must not run (0 = now).
    pub not_before_ms: i64,
    pub event: Event,
}

/// A pending delivery as the scheduler's window holds it: what the ordering rules and due
/// times need, without the event, which is read only when the delivery starts
/// ([`Store::pending_delivery`]), so that what waits costs a few bytes, not the event's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedDelivery {
    pub id: i64,
    pub ordering_key: Option<OrderingKey>,
    /// Unix milliseconds before which it must not run (0 = now).
    pub not_before_ms: i64,
}

/// The fixed part of [`QueuedDelivery::footprint`]: the row and its entries in the window's
/// maps, rounded up.
const QUEUED_ROW_BYTES: usize = 128;

impl QueuedDelivery {
    /// About what holding it in memory costs: the row, its entries in the window's maps, and
    /// two copies of its ordering key (the row's and the window's count per key). The key is
    /// the only part that grows: an attribute can be as long as the event is.
    pub fn footprint(&self) -> usize {
        let key = match &self.ordering_key {
            Some(OrderingKey::Key(key)) => key.len(),
            Some(OrderingKey::Serial) | None => 0,
        };
        QUEUED_ROW_BYTES + 2 * key
    }
}

/// What one read of queued deliveries found, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queued {
    pub rows: Vec<QueuedDelivery>,
    /// The read saw every row that matched; `false` when it stopped at its row or byte limit
    /// (or took exactly `rows`), so that more may follow.
    pub complete: bool,
}

impl Queued {
    /// Take rows, oldest first, up to `limit` of them, until their
    /// [`QueuedDelivery::footprint`]s reach `bytes`: the row that reaches it is taken, so a
    /// read takes one row at least (a delivery whose key alone is larger than the budget must
    /// still be read to run) and goes past `bytes` by less than one row. The one place a
    /// window read's limits are applied, so that the store and a model of it stop at the
    /// same row.
    pub fn take<E>(
        rows: impl IntoIterator<Item = std::result::Result<QueuedDelivery, E>>,
        limit: u32,
        bytes: usize,
    ) -> std::result::Result<Queued, E> {
        let mut queued = Queued::default();
        let mut total = 0usize;
        for row in rows {
            if queued.rows.len() >= limit as usize || (total >= bytes && !queued.rows.is_empty()) {
                return Ok(queued);
            }
            let row = row?;
            total += row.footprint();
            queued.rows.push(row);
        }
        queued.complete = queued.rows.len() < limit as usize;
        Ok(queued)
    }
}

/// One state change staged by an invocation; `None` deletes the key.
pub type StateWrite = (String, Option<Vec<u8>>);

/// The effects of one successful invocation, committed atomically.
#[derive(Debug, Clone)]
pub struct Commit {
    pub delivery_id: i64,
    pub handler: HandlerName,
    /// The committed state keys the invocation read, with the version it saw (0: absent).
    /// If any changed since, the commit is refused with [`Committed::Conflict`].
    pub state_reads: Vec<(String, i64)>,
    pub state_writes: Vec<StateWrite>,
    pub emitted: Vec<Routed>,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The effects landed; the emitted events are as appended.
    Done { emitted: Vec<Appended> },
    /// The delivery was no longer pending (already done or dead): nothing was written.
    AlreadySettled,
    /// A state key the invocation read changed before the commit (another invocation of the
    /// same handler wrote it): nothing was written; run the invocation again on fresh state.
    Conflict { key: String },
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    pub delivery_id: i64,
    pub error: String,
    /// Retry at this unix-millisecond time, or `None` to dead-letter now.
    pub retry_at_ms: Option<i64>,
}

/// The event log query of `GET /admin/events`.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub ty: Option<String>,
    pub source: Option<String>,
    pub subject: Option<String>,
    /// Only events after this log position.
    pub after: Option<i64>,
    pub limit: u32,
    /// Stop once the events' data reach this many bytes, the event that reaches it included
    /// (so one event at least); `None`: no such limit.
    pub data_bytes: Option<usize>,
}

/// An event as the log holds it.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub seq: i64,
    pub received_at_ms: i64,
    pub event: Event,
    pub deliveries: Vec<LoggedDelivery>,
}

/// Where a delivery stands. The store keeps `pending`, `done`, `dead` and `discarded`; a
/// pending delivery that has failed before is [`DeliveryStatus::Retrying`], waiting for its
/// next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt.
    Pending,
    /// Failed, and waiting for its next attempt.
    Retrying,
    Done,
    Dead,
    /// A dead letter given up on for good.
    Discarded,
}

impl DeliveryStatus {
    /// From the store's `status` column and the attempts since the last redrive.
    pub(crate) fn from_stored(status: &str, attempts: u32) -> Option<DeliveryStatus> {
        Some(match status {
            "pending" if attempts > 0 => DeliveryStatus::Retrying,
            "pending" => DeliveryStatus::Pending,
            "done" => DeliveryStatus::Done,
            "dead" => DeliveryStatus::Dead,
            "discarded" => DeliveryStatus::Discarded,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Done => "done",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Discarded => "discarded",
        }
    }

    /// Whether the delivery is finished for now: nothing more happens to it unless an
    /// operator redrives it.
    pub fn is_settled(self) -> bool {
        !matches!(self, DeliveryStatus::Pending | DeliveryStatus::Retrying)
    }
}

/// One delivery of a logged event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedDelivery {
    pub id: i64,
    pub handler: HandlerName,
    pub status: DeliveryStatus,
    /// Attempts since the last redrive.
    pub attempts: u32,
    pub redrives: u32,
    /// For a retrying delivery: when it is tried again (unix ms).
    pub not_before_ms: i64,
    pub last_error: Option<String>,
    /// The log positions of the events this delivery's handler emitted.
    pub caused: Vec<i64>,
}

/// A dead-lettered delivery: the event, the handler and every error.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The delivery id, which redrive and discard take.
    pub id: i64,
    pub handler: HandlerName,
    pub seq: i64,
    pub event: Event,
    pub attempts: u32,
    pub redrives: u32,
    pub died_at_ms: i64,
    /// Every failed attempt, oldest first, over all redrives.
    pub errors: Vec<Attempt>,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub redrive: u32,
    pub attempt: u32,
    pub error: String,
    pub at_ms: i64,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    pub handler: Option<String>,
    pub ty: Option<String>,
    pub id: Option<i64>,
    /// Only dead letters with a delivery id above this.
    pub after: Option<i64>,
    pub limit: u32,
}

/// What to redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveTarget {
    Delivery(i64),
    /// Every dead letter of this handler.
    Handler(HandlerName),
}

/// The size of a readiness probe's write: as much as a large event needs, so that a disk with
/// room for a tiny row but not for events is not called writable.
const PROBE_BYTES: i64 = 1 << 20;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: writer::Writer,
    health: Arc<writer::Health>,
    readers: ReadPool,
    metrics: crate::metrics::StoreMetrics,
}

impl Store {
    /// Open (or create) the database `evhost.db` in `data_dir`.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Store> {
        files::create_private_dir(data_dir)
            .with_context(|| format!("failed to create the data directory {data_dir:?}"))?;
        let path = data_dir.join("evhost.db");
        files::make_private_file(&path)?;
        let conn = Connection::open(&path)
            .with_context(|| format!("failed to open the store at {path:?}"))?;
        schema::prepare_writer(&conn, durability)
            .and_then(|()| deployments::prepare(&conn))
            .and_then(|()| registry::prepare(&conn))
            .with_context(|| format!("failed to prepare the store at {path:?}"))?;
        let metrics = crate::metrics::StoreMetrics::new()?;
        // Counted once here, then kept by every append and deletion: a count at each scrape
        // would read the whole log.
        let events: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
            .with_context(|| format!("failed to read the store at {path:?}"))?;
        metrics.events.set(events);
        let health = Arc::new(writer::Health::default());
        let writer = writer::Writer::spawn(conn, metrics.clone(), health.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                health,
                readers: ReadPool::new(path.clone()),
                path,
                writer,
                metrics,
            }),
        })
    }

    /// Why the store cannot write, if a write found the disk full or failing since the last
    /// successful [`Store::probe_write`].
    pub fn write_failure(&self) -> Option<String> {
        self.inner.health.failure()
    }

    /// Write (and keep, replacing the last one) a row of [`PROBE_BYTES`], to learn whether
    /// the store can take events again; on success, [`Store::write_failure`] is cleared.
    pub async fn probe_write(&self) -> StoreResult<()> {
        self.write(|conn, _now| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('write-probe', zeroblob(?1))",
            )?
            .execute([PROBE_BYTES])?;
            Ok(())
        })
        .await?;
        self.inner.health.recovered();
        Ok(())
    }

    /// The database file, for people who want to look with `sqlite3`.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Append events (one request's worth: all or nothing) and their deliveries; returns once
    /// durable, handing each event back with what became of it.
    pub async fn append(&self, events: Vec<Routed>) -> StoreResult<Vec<(Routed, Appended)>> {
        let rows = events.iter().map(|r| 1 + r.deliveries.len()).sum();
        let appended: Vec<(Routed, Appended)> = self
            .write_rows(rows, move |tx, now| {
                let outcomes = events
                    .iter()
                    .map(|routed| schema::append(tx, routed, None, now))
                    .collect::<Result<Vec<_>>>()?;
                Ok(events.into_iter().zip(outcomes).collect())
            })
            .await?;
        self.count_new(appended.iter().map(|(_, appended)| appended));
        Ok(appended)
    }

    /// Add the new events of `appended` to the events gauge.
    fn count_new<'a>(&self, appended: impl Iterator<Item = &'a Appended>) {
        let new = appended.filter(|a| a.is_new()).count();
        self.inner
            .metrics
            .events
            .add(i64::try_from(new).unwrap_or(i64::MAX));
    }

    /// Commit an invocation's effects and mark its delivery done; returns once durable.
    pub async fn commit(&self, commit: Commit) -> StoreResult<Committed> {
        let rows = 1
            + commit.state_writes.len()
            + commit
                .emitted
                .iter()
                .map(|r| 1 + r.deliveries.len())
                .sum::<usize>();
        let committed = self
            .write_rows(rows, move |tx, now| schema::commit(tx, &commit, now))
            .await?;
        if let Committed::Done { emitted } = &committed {
            self.count_new(emitted.iter());
        }
        Ok(committed)
    }

    /// Record a failed attempt: schedule the retry, or dead-letter the delivery.
    pub async fn fail(&self, failure: Failure) -> StoreResult<()> {
        self.write(move |tx, now| schema::fail(tx, &failure, now))
            .await
    }

    /// Put dead deliveries back to pending, with a fresh attempt count. Returns the handler
    /// of each redriven delivery (empty: nothing was dead).
    pub async fn redrive(&self, target: RedriveTarget) -> StoreResult<Vec<HandlerName>> {
        self.write(move |tx, now| schema::redrive(tx, &target, now))
            .await
    }

    /// Give up on a dead delivery; `false` when `id` is not a dead delivery.
    pub async fn discard(&self, id: i64) -> StoreResult<bool> {
        self.write(move |tx, now| schema::discard(tx, id, now))
            .await
    }

    /// Run `apply` in the writer's next group commit; returns once it is durable.
    async fn write<T, F>(&self, apply: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
    {
        self.write_rows(1, apply).await
    }

    /// [`Store::write`] of about `rows` rows (the writer's group commit counts them).
    async fn write_rows<T, F>(&self, rows: usize, apply: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.inner.writer.send(writer::job(reply, rows, apply))?;
        rx.await
            .map_err(|_| StoreError::broken("the store writer stopped"))?
    }

    /// Dead letters, oldest first, with every error.
    pub async fn dead_letters(&self, query: DeadLetterQuery) -> StoreResult<Vec<DeadLetter>> {
        self.read(move |conn| schema::dead_letters(conn, &query))
            .await
    }

    /// Up to `limit` pending deliveries of `handler` with an id above `after_id`, oldest
    /// first, due or not.
    pub async fn pending(
        &self,
        handler: &HandlerName,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<PendingDelivery>> {
        let handler = handler.clone();
        self.read(move |conn| schema::pending(conn, &handler, after_id, limit))
            .await
    }

    /// Up to `limit` pending deliveries of `handler` with an id above `after_id`, oldest
    /// first, due or not, without their events; the read stops at `bytes` (see
    /// [`Queued::take`]).
    pub async fn queued(
        &self,
        handler: &HandlerName,
        after_id: i64,
        limit: u32,
        bytes: usize,
    ) -> StoreResult<Queued> {
        let handler = handler.clone();
        self.read(move |conn| schema::queued(conn, &handler, after_id, limit, bytes))
            .await
    }

    /// Like [`Store::queued`], for the pending deliveries of `handler` with the ordering key
    /// `key` and an id up to `up_to_id`: the next ones of a key a window read passed over.
    pub async fn queued_of_key(
        &self,
        handler: &HandlerName,
        key: &OrderingKey,
        up_to_id: i64,
        limit: u32,
        bytes: usize,
    ) -> StoreResult<Queued> {
        let (handler, key) = (handler.clone(), key.clone());
        self.read(move |conn| schema::queued_of_key(conn, &handler, &key, up_to_id, limit, bytes))
            .await
    }

    /// The delivery `id` of `handler` with its event, if it is still pending.
    pub async fn pending_delivery(
        &self,
        handler: &HandlerName,
        id: i64,
    ) -> StoreResult<Option<PendingDelivery>> {
        let handler = handler.clone();
        self.read(move |conn| schema::pending_delivery(conn, &handler, id))
            .await
    }

    /// How many deliveries are pending per handler (for back-pressure after a restart).
    pub async fn pending_counts(&self) -> StoreResult<Vec<(HandlerName, u64)>> {
        self.read(|conn| schema::counts_by_handler(conn, "pending"))
            .await
    }

    /// How many deliveries are dead-lettered per handler.
    pub async fn dead_counts(&self) -> StoreResult<Vec<(HandlerName, u64)>> {
        self.read(|conn| schema::counts_by_handler(conn, "dead"))
            .await
    }

    /// The writer's Prometheus collectors (commit latency and batch size).
    pub fn metric_collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        self.inner.metrics.collectors()
    }

    /// The event log, oldest first, with each event's deliveries.
    pub async fn events(&self, query: EventQuery) -> StoreResult<Vec<LoggedEvent>> {
        self.read(move |conn| schema::events(conn, &query)).await
    }

    /// A state reader scoped to one handler: the only way to read handler state.
    pub fn state_reader(&self, handler: &HandlerName) -> StateReader {
        StateReader {
            handler: handler.clone(),
            source: StateSource::Local(self.inner.clone()),
        }
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|_| StoreError::broken("a store read panicked"))?
            .map_err(|err| StoreError::classify(&err))
    }
}

/// Reads one handler's committed state, wherever it is kept: the embedded store (each read
/// one indexed SQLite read on a pooled connection, microseconds, done in place rather than
/// with a hop to the blocking pool) or, in cluster mode, JetStream ([`RemoteState`]).
#[derive(Clone)]
pub struct StateReader {
    handler: HandlerName,
    source: StateSource,
}

#[derive(Clone)]
enum StateSource {
    Local(Arc<Inner>),
    Remote(Arc<dyn RemoteState>),
}

/// State kept elsewhere than the embedded store: what a [`StateReader`] asks of it.
#[async_trait::async_trait]
pub trait RemoteState: Send + Sync {
    /// The value under `key` of `handler` and its version (0: never written).
    async fn get_versioned(
        &self,
        handler: &HandlerName,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, i64)>;
    /// `handler`'s keys starting with `prefix`, sorted.
    async fn list_keys(&self, handler: &HandlerName, prefix: &str) -> Result<Vec<String>>;
}

impl StateReader {
    /// A reader of `handler`'s state kept in `source`.
    pub fn remote(handler: HandlerName, source: Arc<dyn RemoteState>) -> StateReader {
        StateReader {
            handler,
            source: StateSource::Remote(source),
        }
    }

    pub fn handler(&self) -> &HandlerName {
        &self.handler
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key).await?.0)
    }

    /// The value under `key` and its version (0 when the key was never written); the
    /// version is what a commit checks to detect a concurrent write.
    pub async fn get_versioned(&self, key: &str) -> Result<(Option<Vec<u8>>, i64)> {
        let inner = match &self.source {
            StateSource::Local(inner) => inner,
            StateSource::Remote(remote) => return remote.get_versioned(&self.handler, key).await,
        };
        inner.readers.with(|conn| {
            let row = conn
                .prepare_cached("SELECT value, version FROM state WHERE handler = ?1 AND key = ?2")?
                .query_row(params![self.handler.as_str(), key], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            Ok(row.unwrap_or((None, 0)))
        })
    }

    /// Keys starting with `prefix`, sorted.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let inner = match &self.source {
            StateSource::Local(inner) => inner,
            StateSource::Remote(remote) => return remote.list_keys(&self.handler, prefix).await,
        };
        inner.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key FROM state WHERE handler = ?1 AND substr(key, 1, length(?2)) = ?2 \
                 AND value IS NOT NULL ORDER BY key",
            )?;
            let keys = stmt
                .query_map(params![self.handler.as_str(), prefix], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(keys)
        })
    }
}

/// Read-only connections, reused. WAL lets readers run beside the writer without blocking it.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept beyond this are closed.
const MAX_IDLE_READERS: usize = 16;

impl ReadPool {
    fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        // A std mutex: it is held only to pop or push a connection, never across a query.
        let conn = self.idle.lock().map_err(|_| poisoned())?.pop();
        let conn = match conn {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .with_context(|| format!("failed to open {:?} for reading", self.path))?;
                schema::prepare_reader(&conn)?;
                conn
            }
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().map_err(|_| poisoned())?;
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

fn poisoned() -> anyhow::Error {
    anyhow::anyhow!("the store's reader pool is poisoned")
}

/// Milliseconds since the Unix epoch, the store's clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::NewDelivery;

    fn handler() -> HandlerName {
        HandlerName::new("h").unwrap()
    }

    /// Append one event per key (`None`: unkeyed), each with 100 KiB of data.
    async fn append_keyed(store: &Store, keys: &[Option<String>]) {
        let routed = keys
            .iter()
            .enumerate()
            .map(|(i, key)| Routed {
                event: Event::builder(format!("e{i}"), "/t", "t.v1")
                    .data(Some("application/octet-stream"), vec![7u8; 100 << 10])
                    .build()
                    .unwrap(),
                deliveries: vec![NewDelivery {
                    handler: handler(),
                    ordering_key: key.clone().map(OrderingKey::Key),
                }],
            })
            .collect();
        store.append(routed).await.unwrap();
    }

    #[tokio::test]
    async fn a_window_read_stops_at_its_byte_budget_and_reads_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        let long_key = |i: usize| Some(format!("{i:0>4096}"));
        append_keyed(&store, &(0..50).map(long_key).collect::<Vec<_>>()).await;
        let footprint = QueuedDelivery {
            id: 1,
            ordering_key: long_key(0).map(OrderingKey::Key),
            not_before_ms: 0,
        }
        .footprint();

        // Rows up to the budget, the one that reaches it included, whatever the data's size.
        let queued = store
            .queued(&handler(), 0, 100, 5 * footprint)
            .await
            .unwrap();
        assert_eq!(queued.rows.len(), 5);
        assert!(!queued.complete);
        let ids: Vec<i64> = queued.rows.iter().map(|d| d.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        let queued = store.queued(&handler(), 5, 100, 1).await.unwrap();
        assert_eq!(queued.rows.len(), 1, "one row at least");
        // The row limit, and the end.
        let queued = store.queued(&handler(), 40, 5, usize::MAX).await.unwrap();
        assert_eq!((queued.rows.len(), queued.complete), (5, false));
        let queued = store.queued(&handler(), 45, 100, usize::MAX).await.unwrap();
        assert_eq!((queued.rows.len(), queued.complete), (5, true));

        // The event is read as the delivery starts.
        let delivery = store
            .pending_delivery(&handler(), 3)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delivery.event.id(), "e2");
        assert_eq!(delivery.event.data().map(<[u8]>::len), Some(100 << 10));
    }

    #[tokio::test]
    async fn the_next_deliveries_of_a_key_are_read_by_key_and_only_while_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        let k = || Some("k".to_owned());
        let keys = [k(), Some("l".to_owned()), None, k(), k(), k()];
        append_keyed(&store, &keys).await;
        let key = OrderingKey::Key("k".into());
        let of_k = |queued: Queued| queued.rows.iter().map(|d| d.id).collect::<Vec<_>>();
        let h = handler();
        let queued = store.queued_of_key(&h, &key, 5, 10, usize::MAX).await;
        assert_eq!(of_k(queued.unwrap()), [1, 4, 5]);

        store
            .fail(Failure {
                delivery_id: 1,
                error: "no".into(),
                retry_at_ms: None,
            })
            .await
            .unwrap();
        let queued = store
            .queued_of_key(&h, &key, 6, 2, usize::MAX)
            .await
            .unwrap();
        assert!(!queued.complete);
        assert_eq!(of_k(queued), [4, 5]);
        assert!(
            store
                .pending_delivery(&handler(), 1)
                .await
                .unwrap()
                .is_none()
        );

        // By the index, not by a scan of the handler's pending deliveries.
        let plan: Vec<String> = store
            .read(|conn| {
                let mut stmt = conn.prepare(
                    "EXPLAIN QUERY PLAN SELECT id, ordering_key, not_before FROM deliveries \
                     WHERE handler = ?1 AND status = 'pending' AND ordering_key = ?2 \
                     AND id <= ?3 ORDER BY id LIMIT ?4",
                )?;
                let rows = stmt.query_map(params!["h", "k", 6, 2], |row| row.get(3))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .await
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("deliveries_pending_by_key")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn a_page_of_the_log_ends_at_its_data_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        append_keyed(&store, &vec![None; 10]).await;
        let page = |after, data_bytes| EventQuery {
            after: Some(after),
            limit: 100,
            data_bytes,
            ..EventQuery::default()
        };
        // 100 KiB each: the third reaches 250 KiB and ends the page.
        let seqs = |events: Vec<LoggedEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let first = store.events(page(0, Some(250 << 10))).await.unwrap();
        assert_eq!(seqs(first), [1, 2, 3]);
        let next = store.events(page(3, Some(250 << 10))).await.unwrap();
        assert_eq!(seqs(next), [4, 5, 6]);
        let one = store.events(page(0, Some(1))).await.unwrap();
        assert_eq!(seqs(one), [1], "one event at least");
        assert_eq!(store.events(page(0, None)).await.unwrap().len(), 10);
    }
}
