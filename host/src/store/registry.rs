//! The schema registry's records in the embedded store: the book, one JSON document
//! ([`crate::schemas::book`]), and the upcasters' modules by digest. Kept apart from the
//! handlers' modules: retention deletes a handler module no version refers to, and knows
//! nothing of upcasters.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreResult};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_book (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    revision        INTEGER NOT NULL,
    book            TEXT NOT NULL,     -- JSON, schemas::Book
    changed_at      INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS upcaster_modules (
    sha256          TEXT PRIMARY KEY,
    bytes           BLOB NOT NULL,
    stored_at       INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The stored book: its text and its revision (which each write raises by one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBook {
    pub text: String,
    pub revision: u64,
}

/// What a compare-and-set write of the book did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookWrite {
    /// Written; its new revision.
    Written(u64),
    /// The stored book is not the revision the change was made on.
    Stale,
}

/// Create the tables (a store from before the registry gets them empty).
pub(super) fn prepare(conn: &Connection) -> anyhow::Result<()> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

impl Store {
    /// The registry's book, if one was ever written.
    pub async fn schema_book(&self) -> StoreResult<Option<StoredBook>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT book, revision FROM schema_book WHERE id = 1")?
                .query_row([], |row| {
                    Ok(StoredBook {
                        text: row.get(0)?,
                        revision: row.get::<_, i64>(1)? as u64,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Write `text` as the book if the stored one is still at `expected` (0: none yet),
    /// with the upcaster modules it names that are new, in one transaction.
    pub async fn put_schema_book(
        &self,
        text: String,
        expected: u64,
        modules: Vec<(String, Arc<[u8]>)>,
    ) -> StoreResult<BookWrite> {
        self.write(move |tx, now| {
            let stored: u64 = tx
                .prepare_cached("SELECT revision FROM schema_book WHERE id = 1")?
                .query_row([], |row| row.get::<_, i64>(0))
                .optional()?
                .map_or(0, |r| r as u64);
            if stored != expected {
                return Ok(BookWrite::Stale);
            }
            let mut put_module = tx.prepare_cached(
                "INSERT OR IGNORE INTO upcaster_modules (sha256, bytes, stored_at) \
                 VALUES (?1, ?2, ?3)",
            )?;
            for (sha256, bytes) in &modules {
                put_module.execute(params![sha256, &bytes[..], now])?;
            }
            let revision = expected + 1;
            tx.prepare_cached(
                "INSERT INTO schema_book (id, revision, book, changed_at) VALUES (1, ?1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET revision = ?1, book = ?2, changed_at = ?3",
            )?
            .execute(params![revision as i64, text, now])?;
            // A module no upcaster names any more goes with the change that dropped it.
            let book: serde_json::Value = serde_json::from_str(&text)?;
            let named: Vec<String> = book
                .get("upcasters")
                .and_then(|u| u.as_object())
                .into_iter()
                .flat_map(|u| u.values())
                .filter_map(|r| r.get("module_sha256")?.as_str().map(str::to_owned))
                .collect();
            let stored_modules: Vec<String> = tx
                .prepare_cached("SELECT sha256 FROM upcaster_modules")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut delete = tx.prepare_cached("DELETE FROM upcaster_modules WHERE sha256 = ?1")?;
            for sha256 in stored_modules.iter().filter(|s| !named.contains(s)) {
                delete.execute([sha256])?;
            }
            Ok(BookWrite::Written(revision))
        })
        .await
    }

    /// An upcaster's module.
    pub async fn upcaster_module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        let sha256 = sha256.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT bytes FROM upcaster_modules WHERE sha256 = ?1")?
                .query_row(params![sha256], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// The types of `handler`'s deliveries not yet settled (pending or retrying), with how
    /// many of each: what the deploy gate checks a new version can read.
    pub async fn pending_types(
        &self,
        handler: &crate::name::HandlerName,
    ) -> StoreResult<Vec<(String, u64)>> {
        let handler = handler.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.type, count(*) FROM deliveries d JOIN events e ON e.seq = d.event_seq \
                 WHERE d.handler = ?1 AND d.status = 'pending' GROUP BY e.type ORDER BY e.type",
            )?;
            let rows = stmt.query_map(params![handler], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
}
