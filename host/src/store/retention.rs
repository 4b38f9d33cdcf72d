//! Retention: what the store deletes, when, and the upkeep that hands the space back.
//!
//! A pass ([`Store::retain`], run every `[retention] interval` by [`start`]) deletes:
//!
//! 1. by age: each event whose deliveries all settled (`done` or `discarded`) more than
//!    `done_after` ago, or that had none and was received that long ago, with its deliveries
//!    and their attempts;
//! 2. by size: while the database's pages in use are over `max_log_bytes`, the oldest settled
//!    events, whatever their age;
//! 3. old versions: each handler's versions beyond its live one, the one a rollback returns
//!    to and the newest `versions_kept`, then every module no version left uses;
//!
//! and then checkpoints the WAL ([`Store::checkpoint`]) if it deleted anything or the WAL
//! is over [`schema::WAL_KEEP_BYTES`].
//!
//! # Invariants
//!
//! - An event with a delivery pending (retrying included) or dead is never deleted: what is
//!   still to run, or waits for an operator's redrive, keeps its event.
//! - Candidates are found on a read connection, off the writer; each is checked again, and
//!   deleted, inside one write request of at most [`BATCH_ROWS`] rows. So a delivery that
//!   was redriven or came back between the two keeps its event, and a 202 waits for at most
//!   one small batch, never for a whole pass.
//! - Deleting an event forgets its dedupe key (`source`, `id`): dedupe holds for as long as
//!   the event is stored, `done_after` at least unless `max_log_bytes` forces it out first
//!   (counted apart, with a warning).
//! - An event that caused others goes when it is old enough even if they stay: the effects
//!   keep their own `causationid` and `correlationid` extensions (the cause's id), and their
//!   link to the deleted delivery is cleared, so no row points at a row that is gone.
//! - Log positions (`seq`) and delivery ids are never reused (`AUTOINCREMENT`), so a page
//!   cursor or a dead-letter id an operator holds never comes to mean something else.
//! - A crash mid-pass leaves whole batches deleted or not; the next pass goes on.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Store, StoreError, StoreResult, now_ms, schema};
use crate::config::RetentionPolicy;

/// Events one scan for candidates reads (with a look at each one's deliveries), on a read
/// connection.
const SCAN_ROWS: u32 = 1024;

/// Rows one deletion request removes at most (events, deliveries, attempts and the cause
/// links it clears; one event at least, however many deliveries it has): it shares a group
/// commit with the 202s waiting for it, so it is kept to about one fsync's worth of the
/// writer's time. Measured on the 2-core development machine:
/// 128 events with one delivery each (256 rows) took 2.9 ms (median of 157 batches, 8 ms at
/// most), against 19 ms for 512.
const BATCH_ROWS: usize = 256;

/// Old versions, and unused modules, one request deletes at most.
const VERSIONS_BATCH: usize = 256;

/// How long a TRUNCATE checkpoint waits for readers still on an older snapshot before it
/// gives up for this time. It runs on the writer thread, so every write waits this long at
/// most behind it.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(100);

/// Free pages one step of `evhost compact` hands back to the file system (4 MiB of 4 KiB
/// pages): each step is a write of its own, so ingress goes on between them.
const VACUUM_STEP_PAGES: u64 = 1024;

/// Rows retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
}

impl Deleted {
    fn add(&mut self, other: Deleted) {
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.attempts += other.attempts;
    }

    fn rows(&self) -> u64 {
        self.events + self.deliveries + self.attempts
    }
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    /// Settled events older than `done_after`.
    pub by_age: Deleted,
    /// Settled events deleted to get under `max_log_bytes`.
    pub by_size: Deleted,
    /// Of `by_size`, the events younger than `done_after`: their dedupe ended early.
    pub early: u64,
    /// Still over `max_log_bytes` with nothing settled left to delete.
    pub over_limit: bool,
    pub versions: u64,
    pub modules: u64,
    /// The checkpoint that followed, if one did.
    pub checkpoint: Option<Checkpoint>,
}

/// What a TRUNCATE checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every frame reached the database and the WAL file was emptied; `false` when a reader
    /// on an older snapshot kept part of it (the next checkpoint takes the rest).
    pub truncated: bool,
    pub wal_bytes_before: u64,
    pub wal_bytes_after: u64,
}

/// The store's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// The database file on disk, free pages included.
    pub database_bytes: u64,
    /// The WAL file on disk.
    pub wal_bytes: u64,
    /// The database's pages in use: what `max_log_bytes` bounds.
    pub used_bytes: u64,
    /// Free pages inside the database file, which new rows reuse.
    pub free_bytes: u64,
    /// Whether free pages can be handed back a few at a time (`auto_vacuum = INCREMENTAL`):
    /// a store created by an evhost without retention cannot, until `evhost compact --data`
    /// rewrites it.
    pub incremental_vacuum: bool,
}

/// What `evhost compact` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub before: Sizes,
    pub after: Sizes,
    /// Free pages handed back to the file system.
    pub vacuumed_pages: u64,
    pub checkpoint: Checkpoint,
}

/// The retention task; it stops when dropped.
pub struct RetentionTask(JoinHandle<()>);

impl Drop for RetentionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run a retention pass every `policy.interval`, the first at once. A pass that fails (a
/// full disk, say) is logged and the next one tries again.
pub fn start(store: Store, policy: RetentionPolicy) -> RetentionTask {
    RetentionTask(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(policy.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.retain(&policy).await {
                Ok(retained) => log_pass(&retained, &store),
                Err(err) => tracing::warn!(error = %err, "a retention pass failed"),
            }
        }
    }))
}

fn log_pass(retained: &Retained, store: &Store) {
    let deleted = retained.by_age.events + retained.by_size.events;
    if deleted + retained.versions + retained.modules > 0 {
        tracing::info!(
            events_by_age = retained.by_age.events,
            events_by_size = retained.by_size.events,
            versions = retained.versions,
            modules = retained.modules,
            "retention deleted what it keeps no longer"
        );
    }
    if retained.early > 0 {
        tracing::warn!(
            events = retained.early,
            "max_log_bytes forced out settled events younger than done_after: their dedupe \
             ended early"
        );
    }
    // The gauge remembers the last pass, so that the warning comes once per episode.
    let gauge = &store.inner.metrics.over_limit;
    let was_over = gauge.get() == 1;
    if retained.over_limit && !was_over {
        tracing::warn!(
            "the store is over max_log_bytes and everything left is pending or dead: it keeps \
             taking events, and deletes again as deliveries settle"
        );
    } else if !retained.over_limit && was_over {
        tracing::info!("the store is under max_log_bytes again");
    }
    gauge.set(i64::from(retained.over_limit));
}

impl Store {
    /// One retention pass under `policy` (module docs).
    pub async fn retain(&self, policy: &RetentionPolicy) -> StoreResult<Retained> {
        let now = now_ms();
        let cutoff = policy
            .done_after
            .map(|after| now.saturating_sub(millis(after)));
        let mut retained = Retained::default();
        if let Some(cutoff) = cutoff {
            retained.by_age = self.sweep_by_age(cutoff).await?;
        }
        if let Some(limit) = policy.max_log_bytes {
            let young_from = cutoff.unwrap_or(i64::MIN);
            (retained.by_size, retained.early, retained.over_limit) =
                self.sweep_by_size(limit, young_from).await?;
        }
        (retained.versions, retained.modules) = self.prune_versions(policy.versions_kept).await?;
        let deleted = retained.by_age.rows() + retained.by_size.rows() + retained.versions;
        let wal = file_len(&wal_path(self.path()));
        if deleted > 0 || wal > schema::WAL_KEEP_BYTES as u64 {
            retained.checkpoint = Some(self.checkpoint().await?);
        }
        Ok(retained)
    }

    /// Delete settled events received and settled before `cutoff` (unix ms), oldest first.
    async fn sweep_by_age(&self, cutoff: i64) -> StoreResult<Deleted> {
        let mut deleted = Deleted::default();
        let mut after = 0;
        loop {
            let rows = self.read(move |conn| scan(conn, after, cutoff)).await?;
            let mut end = rows.len() < SCAN_ROWS as usize;
            let mut candidates = Vec::new();
            for row in &rows {
                // The log is in receipt order: past the first young event all are young (a
                // clock stepped back keeps a few longer, never the other way).
                if row.received_at >= cutoff {
                    end = true;
                    break;
                }
                after = row.seq;
                if !row.kept {
                    candidates.push(row.seq);
                }
            }
            let mut rest = candidates.as_slice();
            while !rest.is_empty() {
                let batch = self
                    .delete_batch(rest, cutoff, cutoff, u64::MAX, "age")
                    .await?;
                deleted.add(batch.deleted);
                rest = &rest[batch.consumed..];
            }
            if end {
                return Ok(deleted);
            }
        }
    }

    /// While the pages in use are over `limit`, delete the oldest settled events. Returns
    /// what it deleted, how many of those were received from `young_from` on, and whether it
    /// is still over the limit with nothing settled left.
    async fn sweep_by_size(
        &self,
        limit: u64,
        young_from: i64,
    ) -> StoreResult<(Deleted, u64, bool)> {
        let mut deleted = Deleted::default();
        let mut early = 0;
        let mut used = self.sizes().await?.used_bytes;
        if used <= limit {
            return Ok((deleted, early, false));
        }
        let mut after = 0;
        loop {
            let rows = self.read(move |conn| scan(conn, after, i64::MAX)).await?;
            let end = rows.len() < SCAN_ROWS as usize;
            after = rows.last().map_or(after, |row| row.seq);
            let candidates: Vec<i64> = rows.iter().filter(|r| !r.kept).map(|r| r.seq).collect();
            let mut rest = candidates.as_slice();
            while !rest.is_empty() {
                // Only about what is over: a batch of large events could free far more.
                let over = used - limit;
                let batch = self
                    .delete_batch(rest, i64::MAX, i64::MAX, over, "size")
                    .await?;
                deleted.add(batch.deleted);
                early += batch
                    .received
                    .iter()
                    .filter(|&&at| at >= young_from)
                    .count() as u64;
                rest = &rest[batch.consumed..];
                used = self.sizes().await?.used_bytes;
                if used <= limit {
                    return Ok((deleted, early, false));
                }
            }
            if end {
                return Ok((deleted, early, true));
            }
        }
    }

    /// Delete, in one write request, the events of `seqs` (from the first on, until the
    /// request's row budget, or once their rows hold about `bytes`) that are still settled
    /// before `settled_before` and were received before `received_before`.
    async fn delete_batch(
        &self,
        seqs: &[i64],
        received_before: i64,
        settled_before: i64,
        bytes: u64,
        reason: &'static str,
    ) -> StoreResult<Batch> {
        let seqs = seqs.to_vec();
        let batch = self
            .write_rows(BATCH_ROWS, move |tx, _now| {
                delete_settled(tx, &seqs, received_before, settled_before, bytes)
            })
            .await?;
        let metrics = &self.inner.metrics;
        let counted = [
            ("events", batch.deleted.events),
            ("deliveries", batch.deleted.deliveries),
            ("attempts", batch.deleted.attempts),
        ];
        for (table, rows) in counted {
            metrics
                .retention_deleted
                .with_label_values(&[table, reason])
                .inc_by(rows);
        }
        metrics
            .events
            .sub(i64::try_from(batch.deleted.events).unwrap_or(i64::MAX));
        Ok(batch)
    }

    /// Delete each handler's versions beyond the live one, the one a rollback returns to and
    /// the newest `kept`; then every module no version left uses (nor the manifest's word on
    /// a handler). Returns the versions and the modules deleted.
    async fn prune_versions(&self, kept: u32) -> StoreResult<(u64, u64)> {
        let (mut versions, mut modules) = (0, 0);
        loop {
            let (v, m) = self
                .write_rows(VERSIONS_BATCH, move |tx, _now| prune(tx, kept))
                .await?;
            versions += v;
            modules += m;
            if v < VERSIONS_BATCH as u64 && m < VERSIONS_BATCH as u64 {
                break;
            }
        }
        let deleted = &self.inner.metrics.retention_deleted;
        deleted
            .with_label_values(&["handler_versions", "versions"])
            .inc_by(versions);
        deleted
            .with_label_values(&["modules", "versions"])
            .inc_by(modules);
        Ok((versions, modules))
    }

    /// Checkpoint the WAL and empty its file: first copying what it can beside the writer
    /// (PASSIVE, on a connection of its own, blocking nobody), then, on the writer thread
    /// between two group commits, the rest (TRUNCATE), which is then little. A reader on an
    /// older snapshot for longer than [`CHECKPOINT_WAIT`] leaves part of it for next time.
    pub async fn checkpoint(&self) -> StoreResult<Checkpoint> {
        let wal = wal_path(self.path());
        let wal_bytes_before = file_len(&wal);
        let path = self.path().to_owned();
        tokio::task::spawn_blocking(move || passive_checkpoint(&path))
            .await
            .map_err(|_| StoreError::broken("a checkpoint panicked"))?
            .map_err(|err| StoreError::classify(&err))?;
        let truncated = self.upkeep(truncate_checkpoint).await?;
        let result = if truncated { "truncated" } else { "busy" };
        self.inner
            .metrics
            .checkpoints
            .with_label_values(&[result])
            .inc();
        Ok(Checkpoint {
            truncated,
            wal_bytes_before,
            wal_bytes_after: file_len(&wal),
        })
    }

    /// Hand free pages back to the file system (a step of [`VACUUM_STEP_PAGES`] at a time,
    /// each a write of its own, when the store has incremental vacuum), then checkpoint and
    /// empty the WAL: what `evhost compact` does to a running host.
    pub async fn compact(&self) -> StoreResult<Compacted> {
        let before = self.sizes().await?;
        let mut vacuumed_pages = 0;
        if before.incremental_vacuum {
            loop {
                let freed = self.upkeep(vacuum_step).await?;
                vacuumed_pages += freed;
                if freed < VACUUM_STEP_PAGES {
                    break;
                }
            }
        }
        let checkpoint = self.checkpoint().await?;
        Ok(Compacted {
            before,
            after: self.sizes().await?,
            vacuumed_pages,
            checkpoint,
        })
    }

    /// The store's sizes now.
    pub async fn sizes(&self) -> StoreResult<Sizes> {
        let path = self.path().to_owned();
        self.read(move |conn| sizes(conn, &path)).await
    }

    /// Set the size gauges of `/metrics` to what they are now.
    pub async fn refresh_size_metrics(&self) -> StoreResult<()> {
        let sizes = self.sizes().await?;
        let metrics = &self.inner.metrics;
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        metrics.database_bytes.set(gauge(sizes.database_bytes));
        metrics.wal_bytes.set(gauge(sizes.wal_bytes));
        metrics.used_bytes.set(gauge(sizes.used_bytes));
        Ok(())
    }

    /// Run `upkeep` on the writer's connection outside any transaction, between two group
    /// commits (see [`super::writer`]).
    async fn upkeep<T, F>(&self, upkeep: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.inner.writer.upkeep(Box::new(move |conn| {
            let result = upkeep(conn).map_err(|err| StoreError::classify(&err));
            // A requester that gave up is no reason to stop.
            drop(reply.send(result));
        }))?;
        answer
            .await
            .map_err(|_| StoreError::broken("the store writer stopped"))?
    }
}

/// Rewrite a store no host is running on into its smallest form, turning on incremental
/// vacuum for a store created without it: `VACUUM` copies every live page into a new file,
/// so it needs free disk space of the database's size, and blocks writers while it runs,
/// which is why a running host does only [`Store::compact`]. The caller holds the data
/// directory's lock.
pub fn compact_offline(data_dir: &Path) -> Result<(Sizes, Sizes)> {
    let path = data_dir.join("evhost.db");
    anyhow::ensure!(path.is_file(), "no store at {}", path.display());
    let conn = Connection::open(&path)?;
    conn.busy_timeout(schema::BUSY_TIMEOUT)?;
    let before = sizes(&conn, &path)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let after = sizes(&conn, &path)?;
    Ok((before, after))
}

/// One batch of deletions: how many of its candidates it looked at, what it deleted, and
/// when each deleted event was received.
struct Batch {
    consumed: usize,
    deleted: Deleted,
    received: Vec<i64>,
}

/// An event, as a scan for candidates sees it.
struct Scanned {
    seq: i64,
    received_at: i64,
    /// It has a delivery pending or dead, or one that settled from `settled_before` on.
    kept: bool,
}

/// Whether the event `e` has a delivery that keeps it: pending (retrying included) or dead,
/// or settled at `?settled_before` or later.
const KEEPS_EVENT: &str = "EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq \
     AND (d.status IN ('pending', 'dead') OR d.updated_at >= ?3))";

/// The [`SCAN_ROWS`] events after `after`, oldest first, each with whether it is kept.
fn scan(conn: &Connection, after: i64, settled_before: i64) -> Result<Vec<Scanned>> {
    let sql = format!(
        "SELECT e.seq, e.received_at, {KEEPS_EVENT} FROM events e \
         WHERE e.seq > ?1 ORDER BY e.seq LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![after, SCAN_ROWS, settled_before], |row| {
        Ok(Scanned {
            seq: row.get(0)?,
            received_at: row.get(1)?,
            kept: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Bytes a stored event takes beyond its data and extensions, about: its other attributes,
/// the row's header and its entries in the indexes.
const EVENT_ROW_BYTES: u64 = 256;

fn delete_settled(
    tx: &Connection,
    seqs: &[i64],
    received_before: i64,
    settled_before: i64,
    bytes: u64,
) -> Result<Batch> {
    let mut still_settled = tx.prepare_cached(&format!(
        "SELECT e.received_at, coalesce(length(e.data), 0) + length(e.extensions) \
         FROM events e WHERE e.seq = ?1 AND e.received_at < ?2 AND NOT {KEEPS_EVENT}"
    ))?;
    let mut attempts = tx.prepare_cached(
        "DELETE FROM attempts WHERE delivery_id IN \
         (SELECT id FROM deliveries WHERE event_seq = ?1)",
    )?;
    let mut causes = tx.prepare_cached(
        "UPDATE events SET caused_by = NULL WHERE caused_by IN \
         (SELECT id FROM deliveries WHERE event_seq = ?1)",
    )?;
    let mut deliveries = tx.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1")?;
    let mut event = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
    let mut batch = Batch {
        consumed: 0,
        deleted: Deleted::default(),
        received: Vec::new(),
    };
    let (mut rows, mut freed) = (0, 0);
    for &seq in seqs {
        if rows >= BATCH_ROWS || freed >= bytes {
            break;
        }
        batch.consumed += 1;
        let settled: Option<(i64, u64)> = still_settled
            .query_row(params![seq, received_before, settled_before], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let Some((received, size)) = settled else {
            continue;
        };
        freed += size + EVENT_ROW_BYTES;
        let removed_attempts = attempts.execute([seq])?;
        let cleared = causes.execute([seq])?;
        let removed_deliveries = deliveries.execute([seq])?;
        event.execute([seq])?;
        rows += 1 + removed_attempts + cleared + removed_deliveries;
        batch.deleted.events += 1;
        batch.deleted.deliveries += removed_deliveries as u64;
        batch.deleted.attempts += removed_attempts as u64;
        batch.received.push(received);
    }
    Ok(batch)
}

/// One request's worth of [`Store::prune_versions`]: up to [`VERSIONS_BATCH`] versions,
/// then up to as many modules.
fn prune(tx: &Connection, kept: u32) -> Result<(u64, u64)> {
    // Per handler: its versions newest first, beside its live version and the latest one
    // before it (where a rollback goes).
    let doomed: Vec<(String, i64)> = tx
        .prepare_cached(
            "SELECT handler, version FROM ( \
               SELECT v.handler, v.version, h.active_version AS live, \
                 row_number() OVER (PARTITION BY v.handler ORDER BY v.version DESC) AS newest, \
                 (SELECT max(w.version) FROM handler_versions w \
                   WHERE w.handler = v.handler AND w.version < h.active_version) AS previous \
               FROM handler_versions v LEFT JOIN handlers h ON h.handler = v.handler) \
             WHERE newest > ?1 AND version IS NOT live AND version IS NOT previous \
             LIMIT ?2",
        )?
        .query_map(params![kept, VERSIONS_BATCH], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete_version =
        tx.prepare_cached("DELETE FROM handler_versions WHERE handler = ?1 AND version = ?2")?;
    for (handler, version) in &doomed {
        delete_version.execute(params![handler, version])?;
    }
    // A module goes once nothing refers to it: no version, nor what the manifest last said
    // about a handler (which a restart compares with the manifest's file).
    let unused: Vec<String> = tx
        .prepare_cached(
            "SELECT sha256 FROM modules \
             EXCEPT SELECT module_sha256 FROM handler_versions \
             EXCEPT SELECT manifest_module FROM handlers WHERE manifest_module IS NOT NULL \
             LIMIT ?1",
        )?
        .query_map([VERSIONS_BATCH], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete_module = tx.prepare_cached("DELETE FROM modules WHERE sha256 = ?1")?;
    for sha256 in &unused {
        delete_module.execute([sha256])?;
    }
    Ok((doomed.len() as u64, unused.len() as u64))
}

fn sizes(conn: &Connection, path: &Path) -> Result<Sizes> {
    let pragma = |name: &str| -> Result<u64> {
        Ok(conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))?)
    };
    let page_size = pragma("page_size")?;
    let pages = pragma("page_count")?;
    let free = pragma("freelist_count")?;
    Ok(Sizes {
        database_bytes: file_len(path),
        wal_bytes: file_len(&wal_path(path)),
        used_bytes: pages.saturating_sub(free) * page_size,
        free_bytes: free * page_size,
        // 2 is INCREMENTAL.
        incremental_vacuum: pragma("auto_vacuum")? == 2,
    })
}

fn passive_checkpoint(path: &Path) -> Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(CHECKPOINT_WAIT)?;
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    Ok(())
}

/// Whether the checkpoint emptied the WAL. The writer's busy timeout is shortened for it:
/// every write waits behind it.
fn truncate_checkpoint(conn: &mut Connection) -> Result<bool> {
    conn.busy_timeout(CHECKPOINT_WAIT)?;
    let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    });
    conn.busy_timeout(schema::BUSY_TIMEOUT)?;
    Ok(busy? == 0)
}

/// Hand up to [`VACUUM_STEP_PAGES`] free pages back; how many it did.
fn vacuum_step(conn: &mut Connection) -> Result<u64> {
    let free = |conn: &Connection| -> Result<u64> {
        Ok(conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))?)
    };
    let before = free(conn)?;
    // It frees a page per step of the statement, so it is stepped to the end.
    let mut vacuum = conn.prepare(&format!("PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})"))?;
    let mut steps = vacuum.query([])?;
    while steps.next()?.is_some() {}
    drop(steps);
    drop(vacuum);
    Ok(before.saturating_sub(free(conn)?))
}

fn wal_path(database: &Path) -> PathBuf {
    let mut path = OsString::from(database.as_os_str());
    path.push("-wal");
    PathBuf::from(path)
}

/// A file's length; 0 when it does not exist (no WAL yet, or one a checkpoint removed).
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::Event;
    use crate::name::HandlerName;
    use crate::router::{NewDelivery, Routed};
    use crate::store::{
        Appended, Commit, Committed, DeploymentChange, Durability, EventQuery, Failure, Origin,
    };

    fn name(name: &str) -> HandlerName {
        HandlerName::new(name).unwrap()
    }

    fn routed(id: &str, handlers: &[&str], data: usize) -> Routed {
        Routed {
            event: Event::builder(id, "/t", "t.v1")
                .data(Some("application/octet-stream"), vec![7u8; data])
                .build()
                .unwrap(),
            deliveries: handlers
                .iter()
                .map(|h| NewDelivery {
                    handler: name(h),
                    ordering_key: None,
                })
                .collect(),
        }
    }

    /// Append one event, each routed to `handlers`; its log position.
    async fn append(store: &Store, id: &str, handlers: &[&str]) -> i64 {
        match store.append(vec![routed(id, handlers, 16)]).await.unwrap()[0].1 {
            Appended::New { seq } => seq,
            Appended::Duplicate { seq } => panic!("{id} is already at {seq}"),
        }
    }

    /// The delivery of the event at `seq` to `handler`.
    async fn delivery(store: &Store, seq: i64, handler: &str) -> i64 {
        let events = store.events(query()).await.unwrap();
        let event = events.iter().find(|e| e.seq == seq).unwrap();
        event
            .deliveries
            .iter()
            .find(|d| d.handler.as_str() == handler)
            .unwrap()
            .id
    }

    async fn done(store: &Store, seq: i64, handler: &str, emitted: Vec<Routed>) {
        let id = delivery(store, seq, handler).await;
        let committed = store
            .commit(Commit {
                delivery_id: id,
                handler: name(handler),
                state_reads: Vec::new(),
                state_writes: Vec::new(),
                emitted,
            })
            .await
            .unwrap();
        assert!(matches!(committed, Committed::Done { .. }), "{committed:?}");
    }

    async fn dead(store: &Store, seq: i64, handler: &str) -> i64 {
        let id = delivery(store, seq, handler).await;
        for retry_at_ms in [Some(0), None] {
            store
                .fail(Failure {
                    delivery_id: id,
                    error: "no".into(),
                    retry_at_ms,
                })
                .await
                .unwrap();
        }
        id
    }

    fn query() -> EventQuery {
        EventQuery {
            limit: 1000,
            ..EventQuery::default()
        }
    }

    async fn ids(store: &Store) -> Vec<String> {
        let events = store.events(query()).await.unwrap();
        events.iter().map(|e| e.event.id().to_owned()).collect()
    }

    fn policy(done_after: Option<Duration>) -> RetentionPolicy {
        RetentionPolicy {
            done_after,
            ..RetentionPolicy::default()
        }
    }

    /// A pass as if `done_after` had passed for everything settled so far: settled events
    /// are stamped with the store's clock, so wait out the 1 ms of `done_after`.
    async fn retain_settled(store: &Store) -> Retained {
        tokio::time::sleep(Duration::from_millis(5)).await;
        store
            .retain(&policy(Some(Duration::from_millis(1))))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn settled_events_go_and_pending_or_dead_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        let both = append(&store, "both-done", &["a", "b"]).await;
        let half = append(&store, "one-pending", &["a", "b"]).await;
        let dies = append(&store, "one-dead", &["a"]).await;
        let discarded = append(&store, "discarded", &["a"]).await;
        append(&store, "unrouted", &[]).await;
        append(&store, "pending", &["a"]).await;
        for handler in ["a", "b"] {
            done(&store, both, handler, Vec::new()).await;
        }
        done(&store, half, "a", Vec::new()).await;
        dead(&store, dies, "a").await;
        let letter = dead(&store, discarded, "a").await;
        assert!(store.discard(letter).await.unwrap());

        // Nothing is old enough under the default week.
        let kept = store.retain(&RetentionPolicy::default()).await.unwrap();
        assert_eq!(kept.by_age, Deleted::default());
        assert_eq!(ids(&store).await.len(), 6);

        let retained = retain_settled(&store).await;
        assert_eq!(
            ids(&store).await,
            ["one-pending", "one-dead", "pending"],
            "settled, discarded and unrouted events go"
        );
        assert_eq!(
            retained.by_age,
            Deleted {
                events: 3,
                deliveries: 3,
                attempts: 2,
            }
        );
        assert!(
            retained.checkpoint.is_some(),
            "a pass that deleted checkpoints"
        );
        let metrics = &store.inner.metrics;
        assert_eq!(metrics.events.get(), 3);
        let deleted = |table| {
            metrics
                .retention_deleted
                .with_label_values(&[table, "age"])
                .get()
        };
        assert_eq!((deleted("events"), deleted("attempts")), (3, 2));

        // Forgotten, so taken again; the dead one is still a duplicate.
        let again = store
            .append(vec![
                routed("both-done", &["a"], 16),
                routed("one-dead", &["a"], 16),
            ])
            .await
            .unwrap();
        assert!(again[0].1.is_new());
        assert!(!again[1].1.is_new());
        // Never the dead letter, however old.
        let letters = store
            .dead_letters(crate::store::DeadLetterQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(letters.len(), 1);
    }

    #[tokio::test]
    async fn a_deleted_cause_leaves_its_effects_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        let cause = append(&store, "cause", &["a"]).await;
        done(&store, cause, "a", vec![routed("effect", &["b"], 16)]).await;
        let events = store.events(query()).await.unwrap();
        assert_eq!(events[0].deliveries[0].caused, [events[1].seq]);

        retain_settled(&store).await;
        assert_eq!(ids(&store).await, ["effect"], "its delivery is pending");
        let dangling: i64 = store
            .read(|conn| {
                Ok(conn.query_row(
                    "SELECT count(*) FROM events WHERE caused_by IS NOT NULL",
                    [],
                    |row| row.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(dangling, 0);
    }

    #[tokio::test]
    async fn over_max_log_bytes_the_oldest_settled_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        // 20 events of 256 KiB; the first 4 dead, the rest done.
        let mut seqs = Vec::new();
        for i in 0..20 {
            let appended = store
                .append(vec![routed(&format!("e{i:02}"), &["a"], 256 << 10)])
                .await
                .unwrap();
            let Appended::New { seq } = appended[0].1 else {
                panic!()
            };
            seqs.push(seq);
        }
        for &seq in &seqs[..4] {
            dead(&store, seq, "a").await;
        }
        for &seq in &seqs[4..] {
            done(&store, seq, "a", Vec::new()).await;
        }
        let limit = 3 << 20;
        let over = RetentionPolicy {
            max_log_bytes: Some(limit),
            ..policy(None)
        };
        let retained = store.retain(&over).await.unwrap();
        assert!(!retained.over_limit);
        assert!(store.sizes().await.unwrap().used_bytes <= limit);
        let left = ids(&store).await;
        let first_done = left.iter().find(|id| *id >= &"e04".to_owned()).unwrap();
        assert_eq!(&left[..4], ["e00", "e01", "e02", "e03"], "dead ones stay");
        assert!(left.len() < 20 && left.len() > 4, "{left:?}");
        // The oldest went: what is left of the done ones is the newest, in one run.
        let from = first_done[1..].parse::<usize>().unwrap();
        let expected: Vec<String> = (from..20).map(|i| format!("e{i:02}")).collect();
        assert_eq!(left[4..], expected);
        assert_eq!(
            retained.early, retained.by_size.events,
            "no done_after: all early"
        );

        // Under a limit the dead alone pass, it deletes every settled event and says so.
        let under_dead = RetentionPolicy {
            max_log_bytes: Some(MIB),
            ..policy(None)
        };
        let retained = store.retain(&under_dead).await.unwrap();
        assert!(retained.over_limit);
        assert_eq!(ids(&store).await, ["e00", "e01", "e02", "e03"]);
    }

    const MIB: u64 = 1 << 20;

    fn deploy(handler: &str, sha: &str) -> DeploymentChange {
        DeploymentChange::Deploy {
            handler: name(handler),
            module_sha256: sha.to_owned(),
            module: Some(Arc::from(sha.as_bytes())),
            settings: crate::config::HandlerSettings {
                subscribe: vec!["t.v1".into()],
                ..Default::default()
            },
            origin: Origin::Api,
        }
    }

    async fn versions(store: &Store, handler: &str) -> Vec<u32> {
        let versions = store.versions(&name(handler)).await.unwrap();
        versions.iter().map(|v| v.version).collect()
    }

    #[tokio::test]
    async fn old_versions_go_but_the_live_one_its_rollback_and_shared_modules_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        // v1..v8 of `a`, each its own module but v2, which shares `b`'s.
        let mut changes = Vec::new();
        for v in 1..=8 {
            let sha = if v == 2 {
                "shared".to_owned()
            } else {
                format!("a{v}")
            };
            changes.push(deploy("a", &sha));
        }
        changes.push(deploy("b", "shared"));
        // Rolled back to v5: v4 is where the next rollback goes.
        changes.push(DeploymentChange::Activate {
            handler: name("a"),
            version: 5,
        });
        store.apply_deployments(changes).await.unwrap();

        let kept_two = RetentionPolicy {
            versions_kept: 2,
            ..policy(None)
        };
        let retained = store.retain(&kept_two).await.unwrap();
        assert_eq!(versions(&store, "a").await, [4, 5, 7, 8]);
        assert_eq!(versions(&store, "b").await, [1]);
        assert_eq!(retained.versions, 4);
        assert_eq!(retained.modules, 3, "a1, a3, a6; `shared` is b's");
        for (sha, kept) in [("a1", false), ("a4", true), ("shared", true), ("a6", false)] {
            assert_eq!(store.module(sha).await.unwrap().is_some(), kept, "{sha}");
        }
        // Nothing more to do.
        let retained = store.retain(&kept_two).await.unwrap();
        assert_eq!((retained.versions, retained.modules), (0, 0));
        assert!(retained.checkpoint.is_none());

        let none_kept = RetentionPolicy {
            versions_kept: 0,
            ..policy(None)
        };
        store.retain(&none_kept).await.unwrap();
        assert_eq!(versions(&store, "a").await, [4, 5]);
        assert_eq!(versions(&store, "b").await, [1], "live");
    }

    #[tokio::test]
    async fn compact_hands_free_pages_back_and_empties_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Full).unwrap();
        assert!(store.sizes().await.unwrap().incremental_vacuum);
        for i in 0..40 {
            let seq = append(&store, &format!("filler-{i}"), &[]).await;
            assert!(seq > 0);
        }
        let big: Vec<Routed> = (0..16)
            .map(|i| routed(&format!("big-{i}"), &[], 512 << 10))
            .collect();
        store.append(big).await.unwrap();
        retain_settled(&store).await;
        // The WAL a pass empties, the pages it frees stay in the file.
        let sizes = store.sizes().await.unwrap();
        assert!(sizes.free_bytes >= 7 << 20, "{sizes:?}");
        assert_eq!(store.inner.metrics.events.get(), 0);

        let compacted = store.compact().await.unwrap();
        assert!(compacted.checkpoint.truncated);
        assert_eq!(compacted.after.wal_bytes, 0);
        assert!(compacted.vacuumed_pages * 4096 >= 7 << 20, "{compacted:?}");
        assert!(
            compacted.after.database_bytes + (7 << 20) <= compacted.before.database_bytes,
            "{compacted:?}"
        );
        assert_eq!(compacted.after.free_bytes, 0);
    }

    #[tokio::test]
    async fn a_store_from_before_incremental_vacuum_is_rewritten_offline() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("evhost.db")).unwrap();
            // As an evhost before retention left it: no auto_vacuum, and free pages.
            conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE old (x BLOB);")
                .unwrap();
            for _ in 0..50 {
                conn.execute("INSERT INTO old VALUES (zeroblob(100000))", [])
                    .unwrap();
            }
            conn.execute_batch("DELETE FROM old").unwrap();
        }
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        assert!(!store.sizes().await.unwrap().incremental_vacuum);
        let compacted = store.compact().await.unwrap();
        assert_eq!(compacted.vacuumed_pages, 0, "it cannot while running");
        drop(store);

        let (before, after) = compact_offline(dir.path()).unwrap();
        assert!(!before.incremental_vacuum && after.incremental_vacuum);
        assert!(
            after.database_bytes < before.database_bytes,
            "{before:?} {after:?}"
        );
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        assert!(store.sizes().await.unwrap().incremental_vacuum);
    }
}
