//! Reading a host's store from outside, read-only, to see when each event's work was
//! committed: SQLite in WAL mode lets a reader look while the host writes, and the store's
//! own timestamps (unix milliseconds) say when each delivery was settled and each emitted
//! event appended. A benchmark must not add load to the host it measures, so this is read
//! once after a run rather than polled through the admin API during it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, params};

pub struct HostDb {
    conn: Connection,
}

impl HostDb {
    pub fn open(data_dir: &Path) -> Result<HostDb> {
        let path: PathBuf = data_dir.join("evhost.db");
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("failed to open {path:?}"))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(HostDb { conn })
    }

    /// Deliveries not yet settled.
    pub fn pending(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM deliveries WHERE status = 'pending'",
            [],
            |row| row.get(0),
        )?)
    }

    /// Deliveries that ended dead (dead letters).
    pub fn dead(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM deliveries WHERE status = 'dead'",
            [],
            |row| row.get(0),
        )?)
    }

    /// Events of `ty` in the log.
    pub fn count_of_type(&self, ty: &str) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM events WHERE type = ?1",
            params![ty],
            |row| row.get(0),
        )?)
    }

    /// Wait until `done` holds (polling every 25 ms) or `timeout` passes; returns whether it
    /// held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&HostDb) -> Result<bool>,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self)? {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// (event id, unix ms when the delivery was settled) for every done delivery of
    /// `handler` whose event has type `ty`.
    pub fn done_deliveries(&self, handler: &str, ty: &str) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT e.id, d.updated_at FROM deliveries d JOIN events e ON e.seq = d.event_seq \
             WHERE d.handler = ?1 AND d.status = 'done' AND e.type = ?2",
        )?;
        let rows = stmt.query_map(params![handler, ty], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// (subject, unix ms when appended) of every event of type `ty`.
    pub fn appended_by_subject(&self, ty: &str) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT subject, received_at FROM events WHERE type = ?1 AND subject IS NOT NULL",
        )?;
        let rows = stmt.query_map(params![ty], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every done delivery (all handlers), for fan-out counts.
    pub fn done_count(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM deliveries WHERE status = 'done'",
            [],
            |row| row.get(0),
        )?)
    }

    /// The latest settle time of any done delivery, unix ms.
    pub fn last_done_ms(&self) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT max(updated_at) FROM deliveries WHERE status = 'done'",
            [],
            |row| row.get(0),
        )?)
    }
}
