//! The SQLite schema and every statement the store runs, in one place.
//!
//! Tables: `events` (the log; `seq` is the log position), `deliveries` (one row per event and
//! subscribed handler), `attempts` (each failed attempt's error), `state` (each handler's
//! key-value state). What retention deletes, and the WAL and vacuum upkeep, are in
//! [`super::retention`].

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    Appended, Attempt, Commit, Committed, DeadLetter, DeadLetterQuery, DeliveryStatus, Durability,
    EventQuery, Failure, LoggedDelivery, LoggedEvent, PendingDelivery, Queued, QueuedDelivery,
    RedriveTarget, now_ms,
};
use crate::event::{Event, EventBuilder};
use crate::name::HandlerName;
use crate::router::{OrderingKey, Routed};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL,
    source          TEXT NOT NULL,
    type            TEXT NOT NULL,
    subject         TEXT,
    time            TEXT,
    datacontenttype TEXT,
    dataschema      TEXT,
    extensions      TEXT NOT NULL,   -- a JSON object of strings
    data            BLOB,
    received_at     INTEGER NOT NULL, -- unix ms
    caused_by       INTEGER,          -- the delivery whose handler emitted it, if any
    UNIQUE (source, id)
);
CREATE INDEX IF NOT EXISTS events_by_cause ON events (caused_by) WHERE caused_by IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, seq);
CREATE INDEX IF NOT EXISTS events_by_subject ON events (subject, seq);

CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL REFERENCES events (seq),
    handler         TEXT NOT NULL,
    ordering_key    TEXT,
    -- pending -> done | dead; dead -> pending (redrive) | discarded
    status          TEXT NOT NULL CHECK (status IN ('pending', 'done', 'dead', 'discarded')),
    attempts        INTEGER NOT NULL DEFAULT 0, -- since the last redrive
    redrives        INTEGER NOT NULL DEFAULT 0,
    not_before      INTEGER NOT NULL DEFAULT 0, -- unix ms
    last_error      TEXT,
    updated_at      INTEGER NOT NULL,
    UNIQUE (event_seq, handler)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (handler, id) WHERE status = 'pending';
-- The next pending deliveries of one ordering key, which the scheduler reads when a key's
-- deliveries in its window are done and it had read past the key's later ones.
CREATE INDEX IF NOT EXISTS deliveries_pending_by_key ON deliveries (handler, ordering_key, id)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event_seq);
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (handler, id) WHERE status = 'dead';

CREATE TABLE IF NOT EXISTS attempts (
    delivery_id     INTEGER NOT NULL REFERENCES deliveries (id),
    redrive         INTEGER NOT NULL, -- which round: 0 before any redrive
    attempt         INTEGER NOT NULL,
    error           TEXT NOT NULL,
    at              INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, redrive, attempt)
) WITHOUT ROWID;

-- A deleted key keeps its row with a NULL value, so that its version only ever grows: an
-- invocation that read an absent key conflicts with any write since, delete-and-recreate included.
CREATE TABLE IF NOT EXISTS state (
    handler         TEXT NOT NULL,
    key             TEXT NOT NULL,
    value           BLOB,
    version         INTEGER NOT NULL,
    PRIMARY KEY (handler, key)
) WITHOUT ROWID;
";

/// How long a connection waits for a lock another holds before it fails with `busy`.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes of WAL file kept after a checkpoint empties it (`journal_size_limit`): SQLite
/// truncates the file to this, not to zero, so that the next writes reuse the space instead
/// of growing the file (and its metadata, which each fsync then writes) from nothing.
pub(super) const WAL_KEEP_BYTES: i64 = 64 << 20;

/// Set up the writer's connection: WAL so readers never block the writer, and the durability
/// asked for.
pub(super) fn prepare_writer(conn: &Connection, durability: Durability) -> Result<()> {
    // Only a database without tables can take it (an older store keeps `none` until
    // `evhost compact --data` rewrites it): freed pages can then be handed back to the file
    // system a few at a time by `PRAGMA incremental_vacuum`, without rewriting the whole
    // file as `VACUUM` does. Pages freed by retention are reused by new rows either way.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Off => "OFF",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(SCHEMA)
        .context("failed to create the schema")?;
    Ok(())
}

pub(super) fn prepare_reader(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(())
}

/// Append one event and its deliveries, unless it is a duplicate. `caused_by` is the
/// delivery whose handler emitted it.
pub(super) fn append(
    tx: &Connection,
    routed: &Routed,
    caused_by: Option<i64>,
    now: i64,
) -> Result<Appended> {
    let event = &routed.event;
    let existing: Option<i64> = tx
        .prepare_cached("SELECT seq FROM events WHERE source = ?1 AND id = ?2")?
        .query_row(params![event.source(), event.id()], |row| row.get(0))
        .optional()?;
    if let Some(seq) = existing {
        return Ok(Appended::Duplicate { seq });
    }
    let extensions = serde_json::to_string(event.extensions())?;
    tx.prepare_cached(
        "INSERT INTO events (id, source, type, subject, time, datacontenttype, dataschema, \
         extensions, data, received_at, caused_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        event.id(),
        event.source(),
        event.ty(),
        event.subject(),
        event.time(),
        event.datacontenttype(),
        event.dataschema(),
        extensions,
        event.data(),
        now,
        caused_by
    ])?;
    let seq = tx.last_insert_rowid();
    let mut insert = tx.prepare_cached(
        "INSERT INTO deliveries (event_seq, handler, ordering_key, status, updated_at) \
         VALUES (?1, ?2, ?3, 'pending', ?4)",
    )?;
    for delivery in &routed.deliveries {
        let key = delivery.ordering_key.as_ref().map(stored_key);
        insert.execute(params![seq, delivery.handler.as_str(), key, now])?;
    }
    Ok(Appended::New { seq })
}

/// Apply an invocation's effects, if its delivery is still pending and the state it read is
/// unchanged.
pub(super) fn commit(tx: &Connection, commit: &Commit, now: i64) -> Result<Committed> {
    let mut version_of = tx.prepare_cached(
        "SELECT coalesce((SELECT version FROM state WHERE handler = ?1 AND key = ?2), 0)",
    )?;
    for (key, read_version) in &commit.state_reads {
        let current: i64 =
            version_of.query_row(params![commit.handler.as_str(), key], |row| row.get(0))?;
        if current != *read_version {
            return Ok(Committed::Conflict { key: key.clone() });
        }
    }
    let settled = tx
        .prepare_cached(
            "UPDATE deliveries SET status = 'done', attempts = attempts + 1, updated_at = ?2 \
             WHERE id = ?1 AND status = 'pending'",
        )?
        .execute(params![commit.delivery_id, now])?;
    if settled == 0 {
        return Ok(Committed::AlreadySettled);
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO state (handler, key, value, version) VALUES (?1, ?2, ?3, 1) \
         ON CONFLICT (handler, key) DO UPDATE SET value = excluded.value, version = version + 1",
    )?;
    let mut delete = tx.prepare_cached(
        "UPDATE state SET value = NULL, version = version + 1 WHERE handler = ?1 AND key = ?2",
    )?;
    for (key, value) in &commit.state_writes {
        match value {
            Some(value) => upsert.execute(params![commit.handler.as_str(), key, value])?,
            None => delete.execute(params![commit.handler.as_str(), key])?,
        };
    }
    let emitted = commit
        .emitted
        .iter()
        .map(|routed| append(tx, routed, Some(commit.delivery_id), now))
        .collect::<Result<Vec<_>>>()?;
    Ok(Committed::Done { emitted })
}

/// Record a failed attempt and either schedule the next one or dead-letter the delivery.
pub(super) fn fail(tx: &Connection, failure: &Failure, now: i64) -> Result<()> {
    let attempted: Option<(i64, i64)> = tx
        .prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?2, updated_at = ?3, \
             status = CASE WHEN ?4 IS NULL THEN 'dead' ELSE 'pending' END, \
             not_before = coalesce(?4, not_before) \
             WHERE id = ?1 AND status = 'pending' RETURNING redrives, attempts",
        )?
        .query_row(
            params![failure.delivery_id, failure.error, now, failure.retry_at_ms],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if let Some((redrive, attempt)) = attempted {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO attempts (delivery_id, redrive, attempt, error, at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            failure.delivery_id,
            redrive,
            attempt,
            failure.error,
            now
        ])?;
    }
    Ok(())
}

/// Put dead deliveries back to pending with a fresh attempt count: the one with `id`, or
/// all of `handler`'s. Returns the handlers of the redriven deliveries.
pub(super) fn redrive(
    tx: &Connection,
    target: &RedriveTarget,
    now: i64,
) -> Result<Vec<HandlerName>> {
    // Only deliveries of deployed handlers: a pending delivery of a removed handler would have
    // no worker and no queue to count it, and the next deploy of that name would inherit it
    // uncounted. Checked here, in the writer's transaction, so that a removal committed just
    // before cannot slip between a check and the update.
    let sql = "UPDATE deliveries SET status = 'pending', attempts = 0, not_before = 0, \
               redrives = redrives + 1, updated_at = ?3 \
               WHERE status = 'dead' AND (id = ?1 OR handler = ?2) \
               AND handler IN (SELECT handler FROM handlers WHERE active_version IS NOT NULL) \
               RETURNING handler";
    let (id, handler) = match target {
        RedriveTarget::Delivery(id) => (Some(*id), None),
        RedriveTarget::Handler(handler) => (None, Some(handler.as_str())),
    };
    let mut stmt = tx.prepare_cached(sql)?;
    let handlers = stmt
        .query_map(params![id, handler, now], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    handlers.into_iter().map(stored_name).collect()
}

/// Give up on a dead delivery for good; `false` when there is no dead delivery `id`.
pub(super) fn discard(tx: &Connection, id: i64, now: i64) -> Result<bool> {
    let changed = tx
        .prepare_cached(
            "UPDATE deliveries SET status = 'discarded', updated_at = ?2 \
             WHERE id = ?1 AND status = 'dead'",
        )?
        .execute(params![id, now])?;
    Ok(changed == 1)
}

const EVENT_COLUMNS: &str = "e.seq, e.id, e.source, e.type, e.subject, e.time, \
    e.datacontenttype, e.dataschema, e.extensions, e.data, e.received_at";

/// Read the event from a row that starts with [`EVENT_COLUMNS`] at `offset`.
fn event_from_row(row: &Row<'_>, offset: usize) -> rusqlite::Result<Event> {
    let extensions: String = row.get(offset + 8)?;
    let extensions: BTreeMap<String, String> =
        serde_json::from_str(&extensions).map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(
                offset + 8,
                rusqlite::types::Type::Text,
                Box::new(err),
            )
        })?;
    Ok(Event::from_stored(EventBuilder {
        id: row.get(offset + 1)?,
        source: row.get(offset + 2)?,
        ty: row.get(offset + 3)?,
        subject: row.get(offset + 4)?,
        time: row.get(offset + 5)?,
        datacontenttype: row.get(offset + 6)?,
        dataschema: row.get(offset + 7)?,
        extensions,
        data: row.get(offset + 9)?,
    }))
}

/// How an ordering key is stored: a key as itself, `serial` as the empty string. A keyed
/// handler's empty key reads back as `serial`, which orders the same (one line for the
/// handler's deliveries with that key), and both never meet in one handler's backlog but
/// across a redeploy that changed its ordering.
fn stored_key(key: &OrderingKey) -> &str {
    match key {
        OrderingKey::Serial => "",
        OrderingKey::Key(key) => key,
    }
}

fn key_from_stored(key: Option<String>) -> Option<OrderingKey> {
    key.map(|key| match key.is_empty() {
        true => OrderingKey::Serial,
        false => OrderingKey::Key(key),
    })
}

/// A handler name read from the store, which only ever wrote valid ones.
pub(super) fn stored_name(name: String) -> Result<HandlerName> {
    HandlerName::new(name).context("the store holds an invalid handler name")
}

const PENDING_COLUMNS: &str = "d.id, d.ordering_key, d.attempts, d.not_before";

/// Read a [`PendingDelivery`] from a row of [`PENDING_COLUMNS`] then [`EVENT_COLUMNS`].
fn pending_from_row(row: &Row<'_>, handler: &HandlerName) -> rusqlite::Result<PendingDelivery> {
    Ok(PendingDelivery {
        id: row.get(0)?,
        ordering_key: key_from_stored(row.get(1)?),
        attempts: row.get(2)?,
        not_before_ms: row.get(3)?,
        seq: row.get(4)?,
        event: event_from_row(row, 4)?,
        handler: handler.clone(),
    })
}

pub(super) fn pending(
    conn: &Connection,
    handler: &HandlerName,
    after_id: i64,
    limit: u32,
) -> Result<Vec<PendingDelivery>> {
    let sql = format!(
        "SELECT {PENDING_COLUMNS}, {EVENT_COLUMNS} \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.handler = ?1 AND d.status = 'pending' AND d.id > ?3 ORDER BY d.id LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![handler.as_str(), limit, after_id], |row| {
        pending_from_row(row, handler)
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn pending_delivery(
    conn: &Connection,
    handler: &HandlerName,
    id: i64,
) -> Result<Option<PendingDelivery>> {
    let sql = format!(
        "SELECT {PENDING_COLUMNS}, {EVENT_COLUMNS} \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.id = ?1 AND d.handler = ?2 AND d.status = 'pending'"
    );
    let delivery = conn
        .prepare_cached(&sql)?
        .query_row(params![id, handler.as_str()], |row| {
            pending_from_row(row, handler)
        })
        .optional()?;
    Ok(delivery)
}

/// A [`QueuedDelivery`] from a row of `id, ordering_key, not_before`.
fn queued_from_row(row: &Row<'_>) -> rusqlite::Result<QueuedDelivery> {
    Ok(QueuedDelivery {
        id: row.get(0)?,
        ordering_key: key_from_stored(row.get(1)?),
        not_before_ms: row.get(2)?,
    })
}

/// Rows are read one at a time, so that the read stops at its byte budget without having
/// read further (see [`Queued::take`]).
pub(super) fn queued(
    conn: &Connection,
    handler: &HandlerName,
    after_id: i64,
    limit: u32,
    bytes: usize,
) -> Result<Queued> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, ordering_key, not_before FROM deliveries \
         WHERE handler = ?1 AND status = 'pending' AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![handler.as_str(), after_id, limit], queued_from_row)?;
    Ok(Queued::take(rows, limit, bytes)?)
}

pub(super) fn queued_of_key(
    conn: &Connection,
    handler: &HandlerName,
    key: &OrderingKey,
    up_to_id: i64,
    limit: u32,
    bytes: usize,
) -> Result<Queued> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, ordering_key, not_before FROM deliveries \
         WHERE handler = ?1 AND status = 'pending' AND ordering_key = ?2 AND id <= ?3 \
         ORDER BY id LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![handler.as_str(), stored_key(key), up_to_id, limit],
        queued_from_row,
    )?;
    Ok(Queued::take(rows, limit, bytes)?)
}

pub(super) fn counts_by_handler(
    conn: &Connection,
    status: &str,
) -> Result<Vec<(HandlerName, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT handler, count(*) FROM deliveries WHERE status = ?1 GROUP BY handler",
    )?;
    let rows = stmt.query_map([status], |row| Ok((row.get::<_, String>(0)?, row.get(1)?)))?;
    rows.map(|row| {
        let (name, count) = row?;
        Ok((stored_name(name)?, count))
    })
    .collect()
}

pub(super) fn events(conn: &Connection, query: &EventQuery) -> Result<Vec<LoggedEvent>> {
    // Absent filters are NULL, which the `?n IS NULL OR` arms turn into "match anything", so
    // one cached statement serves every combination.
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         WHERE (?1 IS NULL OR e.type = ?1) AND (?2 IS NULL OR e.source = ?2) \
         AND (?3 IS NULL OR e.subject = ?3) AND e.seq > ?4 \
         ORDER BY e.seq LIMIT ?5"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![
            query.ty,
            query.source,
            query.subject,
            query.after.unwrap_or(0),
            query.limit
        ],
        |row| {
            Ok(LoggedEvent {
                seq: row.get(0)?,
                received_at_ms: row.get(10)?,
                event: event_from_row(row, 0)?,
                deliveries: Vec::new(),
            })
        },
    )?;
    let mut events = up_to_data_bytes(rows, query.data_bytes)?;
    for logged in &mut events {
        logged.deliveries = deliveries_of(conn, logged.seq)?;
    }
    Ok(events)
}

/// The rows of `rows` until their events' data reach `limit` bytes, the row that reaches it
/// included. Rows are read one at a time, so nothing past that row is read.
fn up_to_data_bytes(
    rows: impl Iterator<Item = rusqlite::Result<LoggedEvent>>,
    limit: Option<usize>,
) -> rusqlite::Result<Vec<LoggedEvent>> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        if bytes >= limit && !taken.is_empty() {
            break;
        }
        let row = row?;
        bytes = bytes.saturating_add(row.event.data().map_or(0, <[u8]>::len));
        taken.push(row);
    }
    Ok(taken)
}

/// Every delivery of the event at `seq`, with the events each one caused.
fn deliveries_of(conn: &Connection, seq: i64) -> Result<Vec<LoggedDelivery>> {
    let mut deliveries = conn.prepare_cached(
        "SELECT id, handler, status, attempts, redrives, not_before, last_error FROM deliveries \
         WHERE event_seq = ?1 ORDER BY id",
    )?;
    let mut caused =
        conn.prepare_cached("SELECT seq FROM events WHERE caused_by = ?1 ORDER BY seq")?;
    let mut all = deliveries
        .query_map(params![seq], |row| {
            let attempts = row.get(3)?;
            Ok(LoggedDelivery {
                id: row.get(0)?,
                handler: name_at(row, 1)?,
                status: status_at(row, 2, attempts)?,
                attempts,
                redrives: row.get(4)?,
                not_before_ms: row.get(5)?,
                last_error: row.get(6)?,
                caused: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for delivery in &mut all {
        if delivery.status == DeliveryStatus::Done {
            delivery.caused = caused
                .query_map(params![delivery.id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
        }
    }
    Ok(all)
}

/// The handler name in column `index`; the store only ever wrote valid ones.
fn name_at(row: &Row<'_>, index: usize) -> rusqlite::Result<HandlerName> {
    HandlerName::new(row.get::<_, String>(index)?).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
    })
}

/// The delivery status in column `index`, told apart from its attempt count.
fn status_at(row: &Row<'_>, index: usize, attempts: u32) -> rusqlite::Result<DeliveryStatus> {
    let stored: String = row.get(index)?;
    DeliveryStatus::from_stored(&stored, attempts).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown delivery status {stored:?}").into(),
        )
    })
}

pub(super) fn dead_letters(conn: &Connection, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT d.id, d.handler, d.attempts, d.redrives, d.updated_at, {EVENT_COLUMNS} \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.status = 'dead' AND (?1 IS NULL OR d.handler = ?1) \
         AND (?2 IS NULL OR e.type = ?2) AND (?3 IS NULL OR d.id = ?3) AND d.id > ?4 \
         ORDER BY d.id LIMIT ?5"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut letters = stmt
        .query_map(
            params![
                query.handler,
                query.ty,
                query.id,
                query.after.unwrap_or(0),
                query.limit
            ],
            |row| {
                Ok(DeadLetter {
                    id: row.get(0)?,
                    handler: name_at(row, 1)?,
                    attempts: row.get(2)?,
                    redrives: row.get(3)?,
                    died_at_ms: row.get(4)?,
                    seq: row.get(5)?,
                    event: event_from_row(row, 5)?,
                    errors: Vec::new(),
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut attempts = conn.prepare_cached(
        "SELECT redrive, attempt, error, at FROM attempts WHERE delivery_id = ?1 \
         ORDER BY redrive, attempt",
    )?;
    for letter in &mut letters {
        letter.errors = attempts
            .query_map(params![letter.id], |row| {
                Ok(Attempt {
                    redrive: row.get(0)?,
                    attempt: row.get(1)?,
                    error: row.get(2)?,
                    at_ms: row.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(letters)
}

/// The current time for a write transaction.
pub(super) fn tx_now() -> i64 {
    now_ms()
}
