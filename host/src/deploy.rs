//! Deploy: new handler versions, rollback and removal while events flow.
//!
//! Every change is build-then-swap: compile and type-check the module off the async threads
//! (a wrong module fails here, with the old version untouched), persist the module and its
//! settings as a new version in the store, then swap it into the scheduler, which changes
//! the routes with it. Deliveries already running finish on the version they started with;
//! every delivery not yet started runs on the new one. If any step fails, the old version
//! stays live.
//!
//! At start-up the host restores what is deployed in the store, after deploying the
//! manifest's handlers whose module or settings changed.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use tokio::sync::Mutex;

use crate::config::{HandlerSettings, Manifest};
use crate::runtime::{Compiled, DeployedHandler, Runtime, module_sha256};
use crate::scheduler::Scheduler;
use crate::store::{Store, StoredVersion, VersionInfo};

/// The error recorded on pending deliveries of a removed handler.
pub const REMOVED_REASON: &str = "handler removed";

/// Why a deploy, rollback or removal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The module or its settings are wrong; nothing changed.
    #[error("{0}")]
    Invalid(String),
    #[error("no handler `{0}` is deployed")]
    NotFound(String),
    #[error("handler `{0}` has no earlier version to roll back to")]
    NoEarlierVersion(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The outcome of a deploy.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub info: VersionInfo,
    /// The handler did not exist before.
    pub created: bool,
    /// Same module and settings as the live version: nothing changed.
    pub unchanged: bool,
}

/// Deploys, rolls back and removes handlers, one change at a time.
pub struct Deployer {
    scheduler: Arc<Scheduler>,
    /// The application's name: emitted events get the source `/{app}/{handler}`.
    app: String,
    /// One change at a time: each reads the live version and replaces it.
    changes: Mutex<()>,
}

impl Deployer {
    pub fn new(scheduler: Arc<Scheduler>, app: String) -> Deployer {
        Deployer {
            scheduler,
            app,
            changes: Mutex::new(()),
        }
    }

    fn store(&self) -> &Store {
        self.scheduler.store()
    }

    /// Deploy `module` with `settings` as the next version of `name`. Without settings, a
    /// new version keeps the live version's.
    pub async fn deploy(
        &self,
        name: &str,
        module: Vec<u8>,
        settings: Option<HandlerSettings>,
    ) -> Result<Deployed, DeployError> {
        crate::config::check_name(name)
            .map_err(|why| DeployError::Invalid(format!("handler name: {why}")))?;
        let _change = self.changes.lock().await;
        let live = self.scheduler.handler(name).map(|slot| slot.deployed());
        let settings = match (settings, &live) {
            (Some(settings), _) => settings,
            (None, Some(live)) => live.settings.clone(),
            (None, None) => {
                return Err(DeployError::Invalid(format!(
                    "handler `{name}` is new: its settings (`config`, with `subscribe`) are required"
                )));
            }
        };
        let sha = module_sha256(&module);
        if let Some(live) = &live
            && live.module_sha256 == sha
            && live.settings == settings
        {
            let (versions, _) = self.store().versions(name).await?;
            if let Some(info) = versions.into_iter().find(|v| v.version == live.version) {
                return Ok(Deployed {
                    info,
                    created: false,
                    unchanged: true,
                });
            }
        }
        let mut handler = self.compile(name, module.clone(), settings.clone()).await?;
        let info = self
            .store()
            .save_version(name, module, &sha, &settings.to_toml())
            .await?;
        stamp(&mut handler, &info);
        self.scheduler.deploy(handler);
        tracing::info!(
            handler = name,
            version = info.version,
            sha256 = sha,
            "deployed"
        );
        Ok(Deployed {
            info,
            created: live.is_none(),
            unchanged: false,
        })
    }

    /// Make the version before the live one live again.
    pub async fn rollback(&self, name: &str) -> Result<VersionInfo, DeployError> {
        let _change = self.changes.lock().await;
        let live = self
            .scheduler
            .handler(name)
            .ok_or_else(|| DeployError::NotFound(name.to_owned()))?
            .deployed();
        let (versions, _) = self.store().versions(name).await?;
        let earlier = versions
            .iter()
            .rev()
            .find(|v| v.version < live.version)
            .ok_or_else(|| DeployError::NoEarlierVersion(name.to_owned()))?;
        let stored = self
            .store()
            .version(name, earlier.version)
            .await?
            .ok_or_else(|| anyhow!("version {} of `{name}` vanished", earlier.version))?;
        let mut handler = self.compile_stored(&stored).await?;
        self.store().activate_version(name, earlier.version).await?;
        stamp(&mut handler, &stored.info);
        self.scheduler.deploy(handler);
        tracing::info!(handler = name, version = earlier.version, "rolled back");
        Ok(stored.info)
    }

    /// Remove `name`: nothing routes to it any more, and what was pending for it is
    /// dead-lettered with the reason `handler removed`. Returns how many.
    pub async fn remove(&self, name: &str) -> Result<usize, DeployError> {
        let _change = self.changes.lock().await;
        self.scheduler
            .remove(name)
            .ok_or_else(|| DeployError::NotFound(name.to_owned()))?;
        let dead = self.store().remove_handler(name, REMOVED_REASON).await?;
        tracing::info!(handler = name, dead_lettered = dead, "removed");
        Ok(dead)
    }

    /// At start-up: deploy the manifest's handlers whose module or settings changed since the
    /// last start, then
    /// load every live version from the store and start scheduling. `compiled` holds the
    /// manifest's handlers, already compiled (so a broken module fails before anything).
    pub async fn restore(
        &self,
        manifest: Option<&Manifest>,
        compiled: Vec<DeployedHandler>,
    ) -> Result<()> {
        // The manifest's handlers, already compiled: a live version with the same module
        // and settings uses them instead of compiling again from the store.
        let mut ready: HashMap<String, DeployedHandler> = HashMap::new();
        if let Some(manifest) = manifest {
            for (spec, handler) in manifest.handlers.iter().zip(compiled) {
                // What the manifest said at the last start. Deploy only when that changed, so
                // that a version deployed over the API is not undone by every restart.
                let said = format!("{}\n{}", handler.module_sha256, spec.settings.to_toml());
                let key = format!("manifest/{}", spec.name);
                if self.store().meta(&key).await?.as_deref() == Some(said.as_str()) {
                    ready.insert(spec.name.clone(), handler);
                    continue;
                }
                let module = std::fs::read(&spec.module).with_context(|| {
                    format!("handler `{}`: failed to read {:?}", spec.name, spec.module)
                })?;
                let info = self
                    .store()
                    .save_version(
                        &spec.name,
                        module,
                        &handler.module_sha256,
                        &spec.settings.to_toml(),
                    )
                    .await?;
                self.store().set_meta(&key, &said).await?;
                tracing::info!(
                    handler = spec.name,
                    version = info.version,
                    "deployed from the manifest"
                );
                ready.insert(spec.name.clone(), handler);
            }
        }
        // Every other live version is compiled from the store, once per distinct module.
        let mut modules: HashMap<String, Compiled> = HashMap::new();
        let mut handlers = Vec::new();
        for info in self.store().active_versions().await? {
            let mut handler = match ready.remove(&info.handler) {
                Some(mut handler)
                    if handler.module_sha256 == info.module_sha256
                        && handler.settings.to_toml() == info.settings_toml =>
                {
                    stamp(&mut handler, &info);
                    handler
                }
                _ => {
                    if !modules.contains_key(&info.module_sha256) {
                        let compiled = self.compile_stored_module(&info).await?;
                        modules.insert(info.module_sha256.clone(), compiled);
                    }
                    let settings = stored_settings(&info)?;
                    let mut handler = self
                        .scheduler
                        .runtime()
                        .link(
                            &info.handler,
                            &modules[&info.module_sha256],
                            settings,
                            String::new(),
                        )
                        .with_context(|| {
                            format!("handler `{}` version {}", info.handler, info.version)
                        })?;
                    stamp(&mut handler, &info);
                    handler
                }
            };
            // Compiled before the store told the app's name.
            handler.source = self.source_of(&handler.name);
            handlers.push(handler);
        }
        let orphans = self.store().dead_letter_orphans(REMOVED_REASON).await?;
        if orphans > 0 {
            tracing::warn!(
                dead_lettered = orphans,
                "pending deliveries of removed handlers"
            );
        }
        self.scheduler.start(handlers).await
    }

    async fn compile_stored(&self, stored: &StoredVersion) -> Result<DeployedHandler, DeployError> {
        let settings = stored_settings(&stored.info)?;
        self.compile(&stored.info.handler, stored.module.clone(), settings)
            .await
    }

    /// Compile the module of a stored version, off the async threads.
    async fn compile_stored_module(&self, info: &VersionInfo) -> Result<Compiled> {
        let bytes = self
            .store()
            .module(&info.module_sha256)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "the module of `{}` version {} is missing",
                    info.handler,
                    info.version
                )
            })?;
        let runtime = self.scheduler.runtime().clone();
        tokio::task::spawn_blocking(move || runtime.compile(&bytes))
            .await
            .context("a compile panicked")?
            .with_context(|| format!("handler `{}` version {}", info.handler, info.version))
    }

    /// Compile and type-check on the blocking pool: compiling takes milliseconds to
    /// seconds of CPU, which must not stall the async threads.
    async fn compile(
        &self,
        name: &str,
        module: Vec<u8>,
        settings: HandlerSettings,
    ) -> Result<DeployedHandler, DeployError> {
        let runtime: Arc<Runtime> = self.scheduler.runtime().clone();
        let (name, source) = (name.to_owned(), self.source_of(name));
        tokio::task::spawn_blocking(move || runtime.load_bytes(&name, &module, settings, source))
            .await
            .context("a compile panicked")?
            .map_err(|err| DeployError::Invalid(format!("{err:#}")))
    }

    /// The `source` of the events `handler` emits.
    pub fn source_of(&self, handler: &str) -> String {
        format!("/{}/{handler}", self.app)
    }
}

/// The settings a version was stored with.
fn stored_settings(info: &VersionInfo) -> Result<HandlerSettings> {
    HandlerSettings::parse_toml(&info.settings_toml, &info.handler)
        .map_err(|err| anyhow!("stored settings of `{}` are invalid: {err}", info.handler))
}

/// Record on a compiled handler which stored version it is.
fn stamp(handler: &mut DeployedHandler, info: &VersionInfo) {
    handler.version = info.version;
    handler.deployed_at_ms = info.deployed_at_ms;
}

/// How often `--watch` looks at the manifest's module files.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Redeploy a manifest handler whenever its module file changes (the dev loop: rebuild in
/// another terminal, and the new version goes live). Polls modification times: portable,
/// and cheap for a handful of files.
pub fn watch(deployer: Arc<Deployer>, manifest: Manifest) {
    tokio::spawn(async move {
        let modified =
            |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut seen: HashMap<String, Option<std::time::SystemTime>> = manifest
            .handlers
            .iter()
            .map(|h| (h.name.clone(), modified(&h.module)))
            .collect();
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        loop {
            ticks.tick().await;
            for spec in &manifest.handlers {
                let now = modified(&spec.module);
                if seen.get(&spec.name) == Some(&now) {
                    continue;
                }
                seen.insert(spec.name.clone(), now);
                let Ok(module) = std::fs::read(&spec.module) else {
                    continue; // mid-write or deleted: look again next tick
                };
                match deployer
                    .deploy(&spec.name, module, Some(spec.settings.clone()))
                    .await
                {
                    Ok(deployed) if deployed.unchanged => {}
                    Ok(deployed) => tracing::info!(
                        handler = spec.name,
                        version = deployed.info.version,
                        "module changed: redeployed"
                    ),
                    Err(err) => tracing::warn!(
                        handler = spec.name,
                        error = %err,
                        "module changed but did not deploy; the previous version stays live"
                    ),
                }
            }
        }
    });
}
