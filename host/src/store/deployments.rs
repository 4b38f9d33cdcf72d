//! Deployed handlers: their modules, numbered versions, which version is live, and who owns
//! each handler. These records are the desired state the deployer reconciles the running host
//! to (`deploy`); they change only through [`Store::apply_deployments`], one transaction per
//! change set, so a crash leaves a whole change or none of it.
//!
//! - A module is stored once per content hash (SHA-256, hex).
//! - Each deploy of a handler adds a version (module + settings, canonical JSON, and the
//!   version's origin) and makes it active; a rollback makes an earlier version active
//!   again; a removal leaves no version active and dead-letters what was still pending for
//!   the handler, so that nothing is silently lost (a redeploy and a redrive bring it back).
//! - A handler's owner is whoever created it: the manifest or the API. The manifest also
//!   adopts a handler it lists. What the manifest said about each handler the last time it
//!   was applied is kept beside it, so that a restart with an unchanged manifest changes
//!   nothing, and a version deployed over the API since stays live.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::schema::stored_name;
use super::{Store, StoreResult};
use crate::config::HandlerSettings;
use crate::name::{AppName, HandlerName};

/// The deployment tables' layout version (`PRAGMA user_version`). 0 is the layout before
/// origins and owners were recorded, with settings as TOML; [`prepare`] migrates it.
const LAYOUT_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS modules (
    sha256          TEXT PRIMARY KEY,
    bytes           BLOB NOT NULL,
    stored_at       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS handler_versions (
    handler         TEXT NOT NULL,
    version         INTEGER NOT NULL,
    module_sha256   TEXT NOT NULL REFERENCES modules (sha256),
    settings        TEXT NOT NULL,   -- canonical JSON, HandlerSettings::to_json
    deployed_at     INTEGER NOT NULL,
    origin          TEXT NOT NULL DEFAULT 'api', -- manifest | api
    PRIMARY KEY (handler, version)
) WITHOUT ROWID;

-- One row per handler ever deployed; a NULL active version means removed.
CREATE TABLE IF NOT EXISTS handlers (
    handler           TEXT PRIMARY KEY,
    active_version    INTEGER,
    changed_at        INTEGER NOT NULL,
    owner             TEXT NOT NULL DEFAULT 'api', -- manifest | api
    manifest_module   TEXT,            -- what the manifest said last: module and settings
    manifest_settings TEXT
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS meta (
    key             TEXT PRIMARY KEY,
    value           TEXT NOT NULL
) WITHOUT ROWID;
";

/// Who made a version, or owns a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The application manifest, at start or with `--watch`.
    Manifest,
    /// The admin API (`evhost deploy`, `PUT /admin/handlers/{name}`).
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Manifest => "manifest",
            Origin::Api => "api",
        }
    }

    fn from_stored(text: &str) -> Result<Origin> {
        match text {
            "manifest" => Ok(Origin::Manifest),
            "api" => Ok(Origin::Api),
            other => bail!("unknown origin {other:?}"),
        }
    }
}

/// One version of a handler, as deployed: created once, complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub handler: HandlerName,
    pub version: u32,
    pub module_sha256: String,
    pub settings: HandlerSettings,
    pub origin: Origin,
    /// Unix ms.
    pub deployed_at_ms: i64,
}

/// What the manifest said about a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub module_sha256: String,
    pub settings: HandlerSettings,
}

/// A handler ever deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerRecord {
    pub name: HandlerName,
    pub owner: Origin,
    /// The live version; `None` when removed.
    pub active: Option<Deployment>,
    /// What the manifest said about it when last applied; `None` when it never listed it (or
    /// dropped it since).
    pub manifest: Option<ManifestEntry>,
}

/// One change to the deployment records.
#[derive(Debug, Clone)]
pub enum DeploymentChange {
    /// A new version, made active. The module's bytes are stored unless the store has them
    /// (`None`: the caller knows it does). A version from the manifest also records what the
    /// manifest said, and the manifest becomes the handler's owner.
    Deploy {
        handler: HandlerName,
        module_sha256: String,
        module: Option<Arc<[u8]>>,
        settings: HandlerSettings,
        origin: Origin,
    },
    /// An existing version made active again (a rollback).
    Activate { handler: HandlerName, version: u32 },
    /// The manifest lists the handler as it runs already: record what it said and make it
    /// the owner, with no new version.
    Adopt {
        handler: HandlerName,
        entry: ManifestEntry,
    },
    /// No version active; pending deliveries dead-lettered with `reason`. Removed `by` the
    /// manifest, the handler's manifest entry goes too.
    Remove {
        handler: HandlerName,
        reason: String,
        by: Origin,
    },
}

/// What one [`DeploymentChange`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The new active version.
    Deployed(Deployment),
    /// The version made active again.
    Activated(Deployment),
    Adopted(HandlerName),
    Removed {
        handler: HandlerName,
        dead_lettered: usize,
    },
}

impl Store {
    /// Apply `changes` in one transaction, in order; returns once durable.
    pub async fn apply_deployments(
        &self,
        changes: Vec<DeploymentChange>,
    ) -> StoreResult<Vec<Applied>> {
        self.write(move |tx, now| {
            changes
                .into_iter()
                .map(|change| apply(tx, change, now))
                .collect()
        })
        .await
    }

    /// Every handler ever deployed, with its active version (no module bytes: many handlers
    /// may share one large module; fetch it once with [`Store::module`]).
    pub async fn handler_records(&self) -> StoreResult<Vec<HandlerRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT h.handler, h.owner, h.manifest_module, h.manifest_settings, \
                 v.version IS NOT NULL, {VERSION_COLUMNS} \
                 FROM handlers h LEFT JOIN handler_versions v \
                   ON v.handler = h.handler AND v.version = h.active_version \
                 ORDER BY h.handler"
            ))?;
            let rows = stmt.query_map([], |row| {
                let active = match row.get::<_, bool>(4)? {
                    true => Some(raw_deployment_at(row, 5)?),
                    false => None,
                };
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    active,
                ))
            })?;
            let mut records = Vec::new();
            for row in rows {
                let (name, owner, module, settings, active) = row?;
                let name = stored_name(name)?;
                let manifest = match (module, settings) {
                    (Some(module_sha256), Some(settings)) => Some(ManifestEntry {
                        module_sha256,
                        settings: read_settings(&name, &settings)?,
                    }),
                    _ => None,
                };
                records.push(HandlerRecord {
                    owner: Origin::from_stored(&owner)?,
                    active: active.map(RawDeployment::typed).transpose()?,
                    name,
                    manifest,
                });
            }
            Ok(records)
        })
        .await
    }

    /// Every version of `handler`, oldest first.
    pub async fn versions(&self, handler: &HandlerName) -> StoreResult<Vec<Deployment>> {
        let handler = handler.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM handler_versions \
                 WHERE handler = ?1 ORDER BY version"
            ))?;
            let rows = stmt.query_map(params![handler.as_str()], raw_deployment)?;
            rows.map(|row| row?.typed()).collect()
        })
        .await
    }

    /// A stored module's bytes.
    pub async fn module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        let sha256 = sha256.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT bytes FROM modules WHERE sha256 = ?1")?
                .query_row(params![sha256], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// Dead-letter pending deliveries of handlers that are not active (left behind by a
    /// removal that raced with ingress, or by a crash mid-removal).
    pub async fn dead_letter_orphans(&self, reason: &str) -> StoreResult<usize> {
        let reason = reason.to_owned();
        self.write(move |tx, now| dead_letter_pending(tx, None, &reason, now))
            .await
    }

    /// The application whose data this is, recording `proposed` when none is yet: the
    /// `source` of emitted events, and with it their dedupe, depends on it.
    pub async fn claim_app(&self, proposed: &AppName) -> StoreResult<AppName> {
        let proposed = proposed.clone();
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT OR IGNORE INTO meta (key, value) VALUES ('app', ?1)")?
                .execute(params![proposed.as_str()])?;
            let stored: String = tx
                .prepare_cached("SELECT value FROM meta WHERE key = 'app'")?
                .query_row([], |row| row.get(0))?;
            AppName::new(stored).context("the store holds an invalid app name")
        })
        .await
    }

    /// The application recorded by [`Store::claim_app`], if any.
    pub async fn app(&self) -> StoreResult<Option<AppName>> {
        self.read(|conn| {
            let stored: Option<String> = conn
                .prepare_cached("SELECT value FROM meta WHERE key = 'app'")?
                .query_row([], |row| row.get(0))
                .optional()?;
            stored
                .map(|name| AppName::new(name).context("the store holds an invalid app name"))
                .transpose()
        })
        .await
    }
}

fn apply(tx: &Connection, change: DeploymentChange, now: i64) -> Result<Applied> {
    match change {
        DeploymentChange::Deploy {
            handler,
            module_sha256,
            module,
            settings,
            origin,
        } => {
            if let Some(module) = module {
                store_module(tx, &module_sha256, &module, now)?;
            }
            let version: u32 = tx
                .prepare_cached(
                    "SELECT coalesce(max(version), 0) + 1 FROM handler_versions WHERE handler = ?1",
                )?
                .query_row(params![handler.as_str()], |row| row.get(0))?;
            let settings_json = settings.to_json();
            tx.prepare_cached(
                "INSERT INTO handler_versions (handler, version, module_sha256, settings, \
                 deployed_at, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                handler.as_str(),
                version,
                module_sha256,
                settings_json,
                now,
                origin.as_str()
            ])?;
            // The manifest's own deploys record what it said, and it owns what it deploys.
            let said = (origin == Origin::Manifest).then_some((&module_sha256, &settings_json));
            tx.prepare_cached(
                "INSERT INTO handlers (handler, active_version, changed_at, owner, \
                 manifest_module, manifest_settings) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (handler) DO UPDATE SET active_version = excluded.active_version, \
                 changed_at = excluded.changed_at, \
                 owner = CASE WHEN ?4 = 'manifest' THEN 'manifest' ELSE owner END, \
                 manifest_module = coalesce(excluded.manifest_module, manifest_module), \
                 manifest_settings = coalesce(excluded.manifest_settings, manifest_settings)",
            )?
            .execute(params![
                handler.as_str(),
                version,
                now,
                origin.as_str(),
                said.map(|(module, _)| module),
                said.map(|(_, settings)| settings),
            ])?;
            Ok(Applied::Deployed(Deployment {
                handler,
                version,
                module_sha256,
                settings,
                origin,
                deployed_at_ms: now,
            }))
        }
        DeploymentChange::Activate { handler, version } => {
            let deployment = deployment(tx, &handler, version)?
                .ok_or_else(|| anyhow!("handler `{handler}` has no version {version}"))?;
            tx.prepare_cached(
                "UPDATE handlers SET active_version = ?2, changed_at = ?3 WHERE handler = ?1",
            )?
            .execute(params![handler.as_str(), version, now])?;
            Ok(Applied::Activated(deployment))
        }
        DeploymentChange::Adopt { handler, entry } => {
            let changed = tx
                .prepare_cached(
                    "UPDATE handlers SET owner = 'manifest', manifest_module = ?2, \
                     manifest_settings = ?3 WHERE handler = ?1",
                )?
                .execute(params![
                    handler.as_str(),
                    entry.module_sha256,
                    entry.settings.to_json()
                ])?;
            if changed == 0 {
                bail!("handler `{handler}` is not deployed");
            }
            Ok(Applied::Adopted(handler))
        }
        DeploymentChange::Remove {
            handler,
            reason,
            by,
        } => {
            tx.prepare_cached(
                "UPDATE handlers SET active_version = NULL, changed_at = ?2, \
                 manifest_module = CASE WHEN ?3 THEN NULL ELSE manifest_module END, \
                 manifest_settings = CASE WHEN ?3 THEN NULL ELSE manifest_settings END \
                 WHERE handler = ?1",
            )?
            .execute(params![handler.as_str(), now, by == Origin::Manifest])?;
            let dead_lettered = dead_letter_pending(tx, Some(&handler), &reason, now)?;
            Ok(Applied::Removed {
                handler,
                dead_lettered,
            })
        }
    }
}

/// Store a module unless a module of that hash is there already (so that a thousand handlers
/// deployed from one file cost one copy, and no copying of its bytes past the first).
fn store_module(tx: &Connection, sha256: &str, bytes: &[u8], now: i64) -> Result<()> {
    let stored: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM modules WHERE sha256 = ?1)")?
        .query_row(params![sha256], |row| row.get(0))?;
    if !stored {
        tx.prepare_cached("INSERT INTO modules (sha256, bytes, stored_at) VALUES (?1, ?2, ?3)")?
            .execute(params![sha256, bytes, now])?;
    }
    Ok(())
}

const DEPLOYMENT_COLUMNS: &str = "handler, version, module_sha256, settings, origin, deployed_at";
/// [`DEPLOYMENT_COLUMNS`] of the `handler_versions` table joined as `v`.
const VERSION_COLUMNS: &str =
    "v.handler, v.version, v.module_sha256, v.settings, v.origin, v.deployed_at";

/// A row of [`DEPLOYMENT_COLUMNS`], before its text is read into types.
struct RawDeployment {
    handler: String,
    version: u32,
    module_sha256: String,
    settings: String,
    origin: String,
    deployed_at_ms: i64,
}

fn raw_deployment(row: &Row<'_>) -> rusqlite::Result<RawDeployment> {
    raw_deployment_at(row, 0)
}

/// The [`DEPLOYMENT_COLUMNS`] of a row, from column `offset` on.
fn raw_deployment_at(row: &Row<'_>, offset: usize) -> rusqlite::Result<RawDeployment> {
    Ok(RawDeployment {
        handler: row.get(offset)?,
        version: row.get(offset + 1)?,
        module_sha256: row.get(offset + 2)?,
        settings: row.get(offset + 3)?,
        origin: row.get(offset + 4)?,
        deployed_at_ms: row.get(offset + 5)?,
    })
}

impl RawDeployment {
    fn typed(self) -> Result<Deployment> {
        let handler = stored_name(self.handler)?;
        Ok(Deployment {
            settings: read_settings(&handler, &self.settings)
                .with_context(|| format!("version {}", self.version))?,
            origin: Origin::from_stored(&self.origin)?,
            handler,
            version: self.version,
            module_sha256: self.module_sha256,
            deployed_at_ms: self.deployed_at_ms,
        })
    }
}

fn deployment(
    conn: &Connection,
    handler: &HandlerName,
    version: u32,
) -> Result<Option<Deployment>> {
    conn.prepare_cached(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM handler_versions WHERE handler = ?1 AND version = ?2"
    ))?
    .query_row(params![handler.as_str(), version], raw_deployment)
    .optional()?
    .map(RawDeployment::typed)
    .transpose()
}

fn read_settings(handler: &HandlerName, json: &str) -> Result<HandlerSettings> {
    HandlerSettings::from_json(json)
        .map_err(|why| anyhow!("the stored settings of `{handler}` do not read: {why}"))
}

/// Dead-letter the pending deliveries of `handler` (or of every inactive handler), recording
/// `reason` as their error.
fn dead_letter_pending(
    tx: &Connection,
    handler: Option<&HandlerName>,
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
        .query_map(
            params![handler.map(HandlerName::as_str), reason, now],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )?
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

/// Create the tables, or bring an older layout up to [`LAYOUT_VERSION`].
pub(super) fn prepare(conn: &Connection) -> Result<()> {
    let layout: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if layout > LAYOUT_VERSION {
        bail!(
            "the store was written by a newer evhost (layout {layout}; this one reads up to \
             {LAYOUT_VERSION})"
        );
    }
    let had_versions: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'handler_versions')",
        [],
        |row| row.get(0),
    )?;
    if layout == 0 && had_versions {
        migrate_from_toml(conn).context("failed to migrate the deployment records")?;
    } else {
        conn.execute_batch(SCHEMA)?;
    }
    conn.pragma_update(None, "user_version", LAYOUT_VERSION)?;
    Ok(())
}

/// Layout 0 kept settings as TOML text (so a change in the TOML writer's formatting would
/// have redeployed everything) and what the manifest said under `meta` keys
/// `manifest/{handler}`, as `sha256\nTOML`. Rewrite both as typed columns, in one
/// transaction. Handlers the manifest had spoken for are its own; versions that match what
/// it said are its; the rest came from the API.
fn migrate_from_toml(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE handler_versions ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
         ALTER TABLE handlers ADD COLUMN owner TEXT NOT NULL DEFAULT 'api';
         ALTER TABLE handlers ADD COLUMN manifest_module TEXT;
         ALTER TABLE handlers ADD COLUMN manifest_settings TEXT;",
    )?;
    let result = (|| -> Result<()> {
        let versions: Vec<(String, u32, String)> = conn
            .prepare("SELECT handler, version, settings FROM handler_versions")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (handler, version, toml) in versions {
            let settings = HandlerSettings::parse_toml(&toml, &handler).map_err(|err| {
                anyhow!("settings of `{handler}` version {version} do not read: {err}")
            })?;
            conn.execute(
                "UPDATE handler_versions SET settings = ?3 WHERE handler = ?1 AND version = ?2",
                params![handler, version, settings.to_json()],
            )?;
        }
        let said: Vec<(String, String)> = conn
            .prepare("SELECT key, value FROM meta WHERE key LIKE 'manifest/%'")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (key, value) in said {
            let handler = &key["manifest/".len()..];
            let (sha256, toml) = value
                .split_once('\n')
                .ok_or_else(|| anyhow!("meta `{key}` is not `sha256\\nTOML`"))?;
            let settings = HandlerSettings::parse_toml(toml, handler)
                .map_err(|err| anyhow!("meta `{key}` does not read: {err}"))?
                .to_json();
            conn.execute(
                "UPDATE handlers SET owner = 'manifest', manifest_module = ?2, \
                 manifest_settings = ?3 WHERE handler = ?1",
                params![handler, sha256, settings],
            )?;
            conn.execute(
                "UPDATE handler_versions SET origin = 'manifest' \
                 WHERE handler = ?1 AND module_sha256 = ?2 AND settings = ?3",
                params![handler, sha256, settings],
            )?;
            conn.execute("DELETE FROM meta WHERE key = ?1", params![key])?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(Into::into),
        Err(err) => {
            drop(conn.execute_batch("ROLLBACK"));
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Ordering, Rate, RatePeriod};
    use crate::store::Durability;

    fn name(name: &str) -> HandlerName {
        HandlerName::new(name).unwrap()
    }

    fn settings(ty: &str) -> HandlerSettings {
        HandlerSettings {
            subscribe: vec![ty.to_owned()],
            ..HandlerSettings::default()
        }
    }

    fn deploy(handler: &str, sha: &str, ty: &str, origin: Origin) -> DeploymentChange {
        DeploymentChange::Deploy {
            handler: name(handler),
            module_sha256: sha.to_owned(),
            module: Some(Arc::from(sha.as_bytes())),
            settings: settings(ty),
            origin,
        }
    }

    #[tokio::test]
    async fn versions_owners_and_what_the_manifest_said_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        let applied = store
            .apply_deployments(vec![
                deploy("inventory", "aa", "a.v1", Origin::Manifest),
                deploy("erp", "bb", "b.v1", Origin::Api),
                deploy("inventory", "cc", "a.v1", Origin::Api),
            ])
            .await
            .unwrap();
        assert!(matches!(&applied[2], Applied::Deployed(d) if d.version == 2));
        let records = store.handler_records().await.unwrap();
        let [erp, inventory] = records.as_slice() else {
            panic!("{records:?}")
        };
        assert_eq!((erp.owner, erp.manifest.is_none()), (Origin::Api, true));
        assert_eq!(inventory.owner, Origin::Manifest);
        let live = inventory.active.as_ref().unwrap();
        assert_eq!((live.version, live.origin), (2, Origin::Api));
        // The API version is live; the manifest's word stays what it was.
        assert_eq!(inventory.manifest.as_ref().unwrap().module_sha256, "aa");

        // A rollback, then the manifest adopts the API's handler.
        store
            .apply_deployments(vec![
                DeploymentChange::Activate {
                    handler: name("inventory"),
                    version: 1,
                },
                deploy("erp", "bb", "b.v2", Origin::Manifest),
            ])
            .await
            .unwrap();
        let records = store.handler_records().await.unwrap();
        assert_eq!(records[0].owner, Origin::Manifest);
        assert_eq!(records[1].active.as_ref().unwrap().version, 1);
        assert_eq!(store.versions(&name("erp")).await.unwrap().len(), 2);

        // Removed by the manifest: its word goes too; by the API: it stays.
        store
            .apply_deployments(vec![
                DeploymentChange::Remove {
                    handler: name("erp"),
                    reason: "gone".into(),
                    by: Origin::Manifest,
                },
                DeploymentChange::Remove {
                    handler: name("inventory"),
                    reason: "gone".into(),
                    by: Origin::Api,
                },
            ])
            .await
            .unwrap();
        let records = store.handler_records().await.unwrap();
        assert!(records.iter().all(|r| r.active.is_none()));
        assert!(records[0].manifest.is_none());
        assert!(records[1].manifest.is_some());
        // One copy per module.
        assert_eq!(store.module("bb").await.unwrap().unwrap(), b"bb");
    }

    #[tokio::test]
    async fn a_failed_change_set_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        let failed = store
            .apply_deployments(vec![
                deploy("inventory", "aa", "a.v1", Origin::Manifest),
                DeploymentChange::Activate {
                    handler: name("inventory"),
                    version: 7,
                },
            ])
            .await;
        assert!(failed.is_err());
        assert!(store.handler_records().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_app_name_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        assert_eq!(store.app().await.unwrap(), None);
        let shop = AppName::new("shop").unwrap();
        assert_eq!(store.claim_app(&shop).await.unwrap(), shop);
        let other = AppName::new("other").unwrap();
        assert_eq!(store.claim_app(&other).await.unwrap(), shop);
        assert_eq!(store.app().await.unwrap(), Some(shop));
    }

    /// The tables as the first released layout wrote them, settings as TOML.
    const LAYOUT_0: &str = "
        CREATE TABLE modules (sha256 TEXT PRIMARY KEY, bytes BLOB NOT NULL,
            stored_at INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE handler_versions (handler TEXT NOT NULL, version INTEGER NOT NULL,
            module_sha256 TEXT NOT NULL REFERENCES modules (sha256), settings TEXT NOT NULL,
            deployed_at INTEGER NOT NULL, PRIMARY KEY (handler, version)) WITHOUT ROWID;
        CREATE TABLE handlers (handler TEXT PRIMARY KEY, active_version INTEGER,
            changed_at INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    ";

    #[tokio::test]
    async fn a_store_of_the_toml_layout_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let old = HandlerSettings {
            subscribe: vec!["a.v1".into()],
            ordering: Ordering::Serial,
            rate: Some(Rate {
                tokens: 5,
                period: RatePeriod::Minute,
            }),
            ..HandlerSettings::default()
        };
        {
            let conn = Connection::open(dir.path().join("evhost.db")).unwrap();
            conn.execute_batch(LAYOUT_0).unwrap();
            conn.execute_batch(
                "INSERT INTO modules VALUES ('aa', x'00', 1), ('bb', x'01', 1);
                 INSERT INTO handlers VALUES ('inventory', 2, 1), ('erp', 1, 1);
                 INSERT INTO meta VALUES ('app', 'shop');",
            )
            .unwrap();
            for (handler, version, sha) in [
                ("inventory", 1, "aa"),
                ("inventory", 2, "bb"),
                ("erp", 1, "aa"),
            ] {
                conn.execute(
                    "INSERT INTO handler_versions VALUES (?1, ?2, ?3, ?4, 1)",
                    params![handler, version, sha, old.to_toml()],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO meta VALUES ('manifest/inventory', ?1)",
                params![format!("aa\n{}", old.to_toml())],
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        let records = store.handler_records().await.unwrap();
        let [erp, inventory] = records.as_slice() else {
            panic!("{records:?}")
        };
        assert_eq!(erp.owner, Origin::Api);
        assert_eq!(erp.active.as_ref().unwrap().settings, old);
        assert_eq!(inventory.owner, Origin::Manifest);
        assert_eq!(
            inventory.manifest,
            Some(ManifestEntry {
                module_sha256: "aa".into(),
                settings: old.clone(),
            })
        );
        let versions = store.versions(&name("inventory")).await.unwrap();
        let origins: Vec<Origin> = versions.iter().map(|v| v.origin).collect();
        assert_eq!(origins, [Origin::Manifest, Origin::Api]);
        assert_eq!(
            store.app().await.unwrap(),
            Some(AppName::new("shop").unwrap())
        );
        drop(store);
        // Opening it again finds it migrated.
        let store = Store::open(dir.path(), Durability::Off).unwrap();
        assert_eq!(store.handler_records().await.unwrap().len(), 2);
    }
}
