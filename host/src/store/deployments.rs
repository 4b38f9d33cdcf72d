//! Deployed handlers: their modules, numbered versions and which version is live.
//!
//! A module is stored once per content hash. Each deploy of a handler adds a version
//! (module + settings) and makes it the active one; a rollback makes an earlier version
//! active again; a removal leaves no version active and dead-letters what was still
//! pending for the handler, so that nothing is silently lost (a redeploy and a redrive
//! bring it back).

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};

use super::Store;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS modules (
    sha256          TEXT PRIMARY KEY,
    bytes           BLOB NOT NULL,
    stored_at       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS handler_versions (
    handler         TEXT NOT NULL,
    version         INTEGER NOT NULL,
    module_sha256   TEXT NOT NULL REFERENCES modules (sha256),
    settings        TEXT NOT NULL,   -- TOML, as HandlerSettings::to_toml writes it
    deployed_at     INTEGER NOT NULL,
    PRIMARY KEY (handler, version)
) WITHOUT ROWID;

-- One row per handler ever deployed; a NULL active version means removed.
CREATE TABLE IF NOT EXISTS handlers (
    handler         TEXT PRIMARY KEY,
    active_version  INTEGER,
    changed_at      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS meta (
    key             TEXT PRIMARY KEY,
    value           TEXT NOT NULL
) WITHOUT ROWID;
";

/// One version of a handler, without its module bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub handler: String,
    pub version: u32,
    pub module_sha256: String,
    pub settings_toml: String,
    pub deployed_at_ms: i64,
}

/// A version with its module, ready to compile.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub info: VersionInfo,
    pub module: Vec<u8>,
}

impl Store {
    /// Store `module` (once per hash) and a new version of `handler` with `settings_toml`,
    /// and make it active; returns it.
    pub async fn save_version(
        &self,
        handler: &str,
        module: Vec<u8>,
        module_sha256: &str,
        settings_toml: &str,
    ) -> Result<VersionInfo> {
        let (handler, sha, settings) = (
            handler.to_owned(),
            module_sha256.to_owned(),
            settings_toml.to_owned(),
        );
        self.write(move |tx, now| {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO modules (sha256, bytes, stored_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![sha, module, now])?;
            let version: u32 = tx
                .prepare_cached(
                    "SELECT coalesce(max(version), 0) + 1 FROM handler_versions WHERE handler = ?1",
                )?
                .query_row(params![handler], |row| row.get(0))?;
            tx.prepare_cached(
                "INSERT INTO handler_versions (handler, version, module_sha256, settings, \
                 deployed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![handler, version, sha, settings, now])?;
            activate(tx, &handler, Some(version), now)?;
            Ok(VersionInfo {
                handler,
                version,
                module_sha256: sha,
                settings_toml: settings,
                deployed_at_ms: now,
            })
        })
        .await
    }

    /// Make `version` of `handler` the active one again (a rollback).
    pub async fn activate_version(&self, handler: &str, version: u32) -> Result<()> {
        let handler = handler.to_owned();
        self.write(move |tx, now| activate(tx, &handler, Some(version), now))
            .await
    }

    /// Mark `handler` removed and dead-letter its pending deliveries with `reason`; returns
    /// how many were dead-lettered.
    pub async fn remove_handler(&self, handler: &str, reason: &str) -> Result<usize> {
        let (handler, reason) = (handler.to_owned(), reason.to_owned());
        self.write(move |tx, now| {
            activate(tx, &handler, None, now)?;
            dead_letter_pending(tx, Some(&handler), &reason, now)
        })
        .await
    }

    /// Dead-letter pending deliveries of handlers that are not active (left behind by a
    /// removal that raced with ingress, or by a crash mid-removal).
    pub async fn dead_letter_orphans(&self, reason: &str) -> Result<usize> {
        let reason = reason.to_owned();
        self.write(move |tx, now| dead_letter_pending(tx, None, &reason, now))
            .await
    }

    /// The active version of every deployed handler (without module bytes: many handlers
    /// may share one large module; fetch it once with [`Store::module`]).
    pub async fn active_versions(&self) -> Result<Vec<VersionInfo>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT v.handler, v.version, v.module_sha256, v.settings, v.deployed_at \
                 FROM handlers h JOIN handler_versions v \
                   ON v.handler = h.handler AND v.version = h.active_version \
                 ORDER BY v.handler",
            )?;
            let rows = stmt.query_map([], version_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    /// A stored module's bytes.
    pub async fn module(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let sha256 = sha256.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT bytes FROM modules WHERE sha256 = ?1")?
                .query_row(params![sha256], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// One version of a handler, with its module.
    pub async fn version(&self, handler: &str, version: u32) -> Result<Option<StoredVersion>> {
        let handler = handler.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT v.handler, v.version, v.module_sha256, v.settings, v.deployed_at, \
                     m.bytes FROM handler_versions v JOIN modules m ON m.sha256 = v.module_sha256 \
                     WHERE v.handler = ?1 AND v.version = ?2",
                )?
                .query_row(params![handler, version], |row| {
                    Ok(StoredVersion {
                        info: version_from_row(row)?,
                        module: row.get(5)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Every version of `handler`, oldest first, and the active one.
    pub async fn versions(&self, handler: &str) -> Result<(Vec<VersionInfo>, Option<u32>)> {
        let handler = handler.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT handler, version, module_sha256, settings, deployed_at \
                 FROM handler_versions WHERE handler = ?1 ORDER BY version",
            )?;
            let versions = stmt
                .query_map(params![handler], version_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let active: Option<u32> = conn
                .prepare_cached("SELECT active_version FROM handlers WHERE handler = ?1")?
                .query_row(params![handler], |row| row.get(0))
                .optional()?
                .flatten();
            Ok((versions, active))
        })
        .await
    }

    /// The application's name as first recorded (so that the `source` of emitted events,
    /// and with it their dedupe, stays stable across restarts); records `proposed` when
    /// none is.
    pub async fn app_name(&self, proposed: &str) -> Result<String> {
        let proposed = proposed.to_owned();
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT OR IGNORE INTO meta (key, value) VALUES ('app', ?1)")?
                .execute(params![proposed])?;
            Ok(tx
                .prepare_cached("SELECT value FROM meta WHERE key = 'app'")?
                .query_row([], |row| row.get(0))?)
        })
        .await
    }
}

impl Store {
    /// A value the host keeps about itself (`meta` table).
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row(params![key], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |tx, _| {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
            Ok(())
        })
        .await
    }
}

fn version_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionInfo> {
    Ok(VersionInfo {
        handler: row.get(0)?,
        version: row.get(1)?,
        module_sha256: row.get(2)?,
        settings_toml: row.get(3)?,
        deployed_at_ms: row.get(4)?,
    })
}

fn activate(tx: &Connection, handler: &str, version: Option<u32>, now: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO handlers (handler, active_version, changed_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (handler) DO UPDATE SET active_version = excluded.active_version, \
         changed_at = excluded.changed_at",
    )?
    .execute(params![handler, version, now])?;
    Ok(())
}

/// Dead-letter the pending deliveries of `handler` (or of every inactive handler), recording
/// `reason` as their error.
fn dead_letter_pending(
    tx: &Connection,
    handler: Option<&str>,
    reason: &str,
    now: i64,
) -> Result<usize> {
    let mut stmt = tx.prepare_cached(
        "UPDATE deliveries SET status = 'dead', last_error = ?2, updated_at = ?3, \
         attempts = attempts + 1 \
         WHERE status = 'pending' AND (handler = ?1 OR (?1 IS NULL AND handler NOT IN \
           (SELECT handler FROM handlers WHERE active_version IS NOT NULL))) \
         RETURNING id, redrives, attempts",
    )?;
    let killed = stmt
        .query_map(params![handler, reason, now], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut attempt = tx.prepare_cached(
        "INSERT OR REPLACE INTO attempts (delivery_id, redrive, attempt, error, at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (id, redrive, n) in &killed {
        attempt.execute(params![id, redrive, n, reason, now])?;
    }
    Ok(killed.len())
}
