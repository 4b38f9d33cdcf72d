//! Deploy: one path from what should run to what runs.
//!
//! The manifest at start, `--watch`, an API deploy, a rollback and a removal each make a
//! [`Plan`]. [`Deployer::apply`] carries out any plan the same way:
//!
//! 1. **diff** the plan against the stored deployment records ([`plan::diff`], pure);
//! 2. **build** what will run and is not running yet, off the async threads: each distinct
//!    module compiled once (by digest), linked per handler; every problem is collected and
//!    the plan fails whole, with nothing changed;
//! 3. **persist** every change in one store transaction (new versions are numbered here);
//! 4. **swap** the live set, routes and handlers together, in one step; then start the
//!    workers of new handlers and retire those of removed ones.
//!
//! Deliveries already running finish on the version they started with; every delivery not
//! yet started runs on the new one. If any step fails before the swap, the old versions stay.
//! The stored records are the desired state: a host that starts makes them live by the same
//! path (a plan that changes nothing still builds what is not running), which is also how a
//! deploy made elsewhere would reach this host.
//!
//! Ownership (who may remove a handler, what the manifest changes) is in [`plan`].

mod build;
pub mod plan;
mod schemas;
mod watch;

pub use plan::{Module, Plan, Wanted};
pub use schemas::{SchemaChange, SchemaChangeError};
pub use watch::watch;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Mutex;

use crate::clock::Clock;
use crate::config::Manifest;
use crate::live::{HandlerSlot, Live, LiveHandler, LiveSet, Workers};
use crate::name::{AppName, HandlerName};
use crate::runtime::{DeployedHandler, Runtime};
use crate::store::{Applied, Deployment, DeploymentChange, Origin, SharedBackend, StoreError};
use plan::{Step, Stored};

/// The error recorded on pending deliveries of a removed handler.
pub const REMOVED_REASON: &str = "handler removed";

/// Why a plan was not carried out. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Modules or settings are wrong: every problem, one line each, naming the handler.
    #[error("{}", problems(.0))]
    Invalid(Vec<String>),
    #[error("no handler `{0}` is deployed")]
    NotFound(HandlerName),
    #[error("handler `{0}` has no earlier version to roll back to")]
    NoEarlierVersion(HandlerName),
    /// The deploy gate: events could reach a handler in a version it cannot read.
    #[error("{}", gate_message(.0))]
    Gate(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn problems(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        many => format!(
            "{} handler(s) failed to load:\n  {}",
            many.len(),
            many.join("\n  ")
        ),
    }
}

/// The deploy gate's refusal, one problem per line.
fn gate_message(problems: &[String]) -> String {
    match problems {
        [one] => format!("refused by the deploy gate: {one}"),
        many => format!(
            "refused by the deploy gate ({} problems):\n  {}",
            many.len(),
            many.join("\n  ")
        ),
    }
}

/// What a plan changed, handler by handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Deployed {
        deployment: Deployment,
        /// No version of the handler was live before.
        created: bool,
    },
    /// Asked for, and already live.
    Unchanged(Deployment),
    /// The manifest took over a handler that runs as it lists it.
    Adopted(HandlerName),
    RolledBack(Deployment),
    Removed {
        handler: HandlerName,
        dead_lettered: usize,
    },
}

/// Carries out plans, one at a time.
pub struct Deployer {
    store: SharedBackend,
    runtime: Arc<Runtime>,
    live: Arc<Live>,
    workers: Arc<dyn Workers>,
    clock: Clock,
    /// The application: emitted events get the source `/{app}/{handler}`.
    app: AppName,
    /// One plan at a time: each reads the stored state and changes it.
    changes: Mutex<()>,
}

impl Deployer {
    pub fn new(
        store: SharedBackend,
        runtime: Arc<Runtime>,
        live: Arc<Live>,
        workers: Arc<dyn Workers>,
        clock: Clock,
        app: AppName,
    ) -> Deployer {
        Deployer {
            store,
            runtime,
            live,
            workers,
            clock,
            app,
            changes: Mutex::new(()),
        }
    }

    /// At start: apply the manifest (or, without one, what is stored), which makes every
    /// stored handler live, and dead-letter what is pending for handlers that are gone.
    pub async fn start(&self, manifest: Option<&Manifest>) -> anyhow::Result<()> {
        let plan = match manifest {
            Some(manifest) => {
                let manifest = manifest.clone();
                tokio::task::spawn_blocking(move || Plan::from_manifest(&manifest))
                    .await
                    .context("reading the manifest's modules panicked")?
            }
            None => {
                self.reload_schemas()
                    .await
                    .map_err(|err| anyhow::anyhow!("failed to load the schema registry: {err}"))?;
                Plan::Stored
            }
        };
        let changes = self
            .apply(plan)
            .await
            .map_err(|err| match (&err, manifest) {
                (DeployError::Invalid(problems), Some(manifest)) => anyhow::anyhow!(
                    "{}: {} handler(s) failed to load:\n  {}",
                    manifest.path.display(),
                    problems.len(),
                    problems.join("\n  ")
                ),
                _ => anyhow::Error::from(err),
            })?;
        for change in changes {
            log_change(&change, Origin::Manifest);
        }
        let orphans = self.store.dead_letter_orphans(REMOVED_REASON).await?;
        if orphans > 0 {
            tracing::warn!(
                dead_lettered = orphans,
                "pending deliveries of removed handlers"
            );
        }
        Ok(())
    }

    /// Deploy `module` as the next version of `name` (an API deploy).
    pub async fn deploy(
        &self,
        name: HandlerName,
        module: Vec<u8>,
        settings: Option<crate::config::HandlerSettings>,
    ) -> Result<Change, DeployError> {
        let module = Module::new(module, "the uploaded module");
        let plan = Plan::Put {
            name,
            module,
            settings,
        };
        self.apply_one(plan).await
    }

    /// Make the version before the live one live again.
    pub async fn rollback(&self, name: HandlerName) -> Result<Change, DeployError> {
        self.apply_one(Plan::Rollback { name }).await
    }

    /// Remove `name`: nothing routes to it any more, and what was pending for it is
    /// dead-lettered with the reason `handler removed`.
    pub async fn remove(&self, name: HandlerName) -> Result<Change, DeployError> {
        self.apply_one(Plan::Remove { name }).await
    }

    async fn apply_one(&self, plan: Plan) -> Result<Change, DeployError> {
        let changes = self.apply(plan).await?;
        let change = changes
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::broken("a plan of one change changed nothing"))?;
        log_change(&change, Origin::Api);
        Ok(change)
    }

    /// Carry out `plan` (module docs): diff, build, persist, swap.
    pub async fn apply(&self, plan: Plan) -> Result<Vec<Change>, DeployError> {
        let _one_at_a_time = self.changes.lock().await;
        let stored = self.stored(&plan).await?;
        let mut early_problems = plan.problems().to_vec();
        let ingress_policy = plan.ingress_policy().cloned();
        // The manifest's schemas are decided and built now, and stored with its handlers.
        let schemas = match plan.schemas() {
            Some((changes, policy)) => {
                match self
                    .prepare_schemas(changes.to_vec(), Origin::Manifest, Some(policy))
                    .await
                {
                    Ok(prepared) => Some(prepared),
                    Err(SchemaChangeError::Store(err)) => return Err(err.into()),
                    Err(SchemaChangeError::Gate(problems)) => {
                        return Err(DeployError::Gate(problems));
                    }
                    Err(other) => {
                        early_problems.push(other.to_string());
                        None
                    }
                }
            }
            None => None,
        };
        let gated = !matches!(plan, Plan::Stored);
        let steps = plan::diff(&stored, plan)?;
        let live = self.live.current();
        let items = build_items(&stored, &steps, &live);
        let linked = match build::build(&self.runtime, self.store.as_ref(), &live, items).await {
            Ok(linked) if early_problems.is_empty() => linked,
            Ok(_) => return Err(DeployError::Invalid(early_problems)),
            Err(problems) => {
                return Err(DeployError::Invalid([early_problems, problems].concat()));
            }
        };
        if gated {
            let registry = match &schemas {
                Some(prepared) => Arc::new(prepared.next.clone()),
                None => self.live.registry(),
            };
            let problems = self
                .gate_plan(&stored, &steps, &registry, schemas.is_some())
                .await?;
            if !problems.is_empty() {
                return Err(DeployError::Gate(problems));
            }
        }
        if let Some(prepared) = schemas
            && self.commit_schemas(prepared).await?.is_none()
        {
            return Err(StoreError::unavailable(
                "the schema registry changed on another host meanwhile; try again",
            )
            .into());
        }
        let (changes, next) = self.persist(&stored, steps).await?;
        let handlers = self.next_handlers(&live, next, linked).await?;
        self.swap(LiveSet::new(handlers));
        if let Some(policy) = ingress_policy {
            self.live.set_ingress_policy(policy);
        }
        Ok(changes)
    }

    /// The deploy gate for `steps` on `registry`: the problems of the handlers live after
    /// them that the handlers live now do not have on the live registry (a problem there
    /// already is not this plan's doing, and does not hold it up).
    ///
    /// Only the handlers `steps` change are checked, unless `registry` is another than the
    /// live one (`every`): then every handler.
    async fn gate_plan(
        &self,
        stored: &Stored,
        steps: &[Step],
        registry: &crate::schemas::Registry,
        every: bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut next: BTreeMap<HandlerName, crate::config::HandlerSettings> = stored
            .records
            .values()
            .filter_map(|r| Some((r.name.clone(), r.active.as_ref()?.settings.clone())))
            .collect();
        for step in steps {
            match step {
                Step::Deploy { name, settings, .. } => {
                    next.insert(name.clone(), settings.clone());
                }
                Step::Activate { target } => {
                    next.insert(target.handler.clone(), target.settings.clone());
                }
                Step::Remove { name, .. } => {
                    next.remove(name);
                }
                Step::Adopt { .. } | Step::Unchanged { .. } => {}
            }
        }
        let changed: BTreeSet<&HandlerName> = steps
            .iter()
            .filter(|s| matches!(s, Step::Deploy { .. } | Step::Activate { .. }))
            .map(Step::name)
            .collect();
        let current = self.live.registry();
        let mut problems = Vec::new();
        for (name, settings) in next.iter().filter(|(n, _)| every || changed.contains(n)) {
            let pending = self.store.pending_types(name).await?;
            let known = match stored.live(name) {
                Some(live) => current.gate(name, &live.settings, pending.as_deref()),
                None => Vec::new(),
            };
            problems.extend(
                registry
                    .gate(name, settings, pending.as_deref())
                    .into_iter()
                    .filter(|p| !known.contains(p)),
            );
        }
        Ok(problems)
    }

    /// What the diff needs to know of the store for `plan`.
    async fn stored(&self, plan: &Plan) -> Result<Stored, StoreError> {
        let records = self.store.handler_records().await?;
        let mut versions = BTreeMap::new();
        if let Plan::Rollback { name } = plan {
            versions.insert(name.clone(), self.store.versions(name).await?);
        }
        Ok(Stored {
            records: records
                .into_iter()
                .map(|record| (record.name.clone(), record))
                .collect(),
            versions,
        })
    }

    /// Store the steps in one transaction; what changed, and the version of each handler that
    /// is live once they are applied.
    async fn persist(
        &self,
        stored: &Stored,
        steps: Vec<Step>,
    ) -> Result<(Vec<Change>, BTreeMap<HandlerName, Deployment>), DeployError> {
        let store_changes: Vec<DeploymentChange> =
            steps.iter().filter_map(Step::store_change).collect();
        let mut applied = match store_changes.is_empty() {
            true => Vec::new(),
            false => self.store.apply_deployments(store_changes).await?,
        }
        .into_iter();
        let mut live_next: BTreeMap<HandlerName, Deployment> = stored
            .records
            .values()
            .filter_map(|r| Some((r.name.clone(), r.active.clone()?)))
            .collect();
        let mut changes = Vec::new();
        for step in steps {
            if let Step::Unchanged { deployment } = step {
                changes.push(Change::Unchanged(deployment));
                continue;
            }
            // One applied change per stored step, in order (`Store::apply_deployments`).
            let change = match (step, applied.next()) {
                (Step::Deploy { created, .. }, Some(Applied::Deployed(deployment))) => {
                    live_next.insert(deployment.handler.clone(), deployment.clone());
                    Change::Deployed {
                        deployment,
                        created,
                    }
                }
                (Step::Activate { .. }, Some(Applied::Activated(deployment))) => {
                    live_next.insert(deployment.handler.clone(), deployment.clone());
                    Change::RolledBack(deployment)
                }
                (Step::Adopt { .. }, Some(Applied::Adopted(handler))) => Change::Adopted(handler),
                (
                    Step::Remove { was_live, .. },
                    Some(Applied::Removed {
                        handler,
                        dead_lettered,
                    }),
                ) => {
                    live_next.remove(&handler);
                    if !was_live {
                        continue; // nothing ran: only the manifest's word went
                    }
                    Change::Removed {
                        handler,
                        dead_lettered,
                    }
                }
                (step, applied) => {
                    let why = format!("the store answered {applied:?} to {step:?}");
                    return Err(StoreError::broken(why).into());
                }
            };
            changes.push(change);
        }
        Ok((changes, live_next))
    }

    /// The live handlers once `next` is live: a handler whose version was built gets it,
    /// one that runs its version already keeps it; each keeps its slot, a new one gets one.
    async fn next_handlers(
        &self,
        live: &LiveSet,
        next: BTreeMap<HandlerName, Deployment>,
        mut linked: BTreeMap<HandlerName, crate::runtime::Linked>,
    ) -> Result<BTreeMap<HandlerName, LiveHandler>, StoreError> {
        let is_new = |name: &HandlerName| live.handler(name.as_str()).is_none();
        let pending: BTreeMap<HandlerName, u64> = match next.keys().any(is_new) {
            true => self.store.pending_counts().await?.into_iter().collect(),
            false => BTreeMap::new(),
        };
        let mut handlers = BTreeMap::new();
        for (name, deployment) in next {
            let running = live.handler(name.as_str());
            let deployed = match (linked.remove(&name), running) {
                (Some(linked), _) => Arc::new(DeployedHandler::new(deployment, linked, &self.app)),
                (None, Some(running)) => running.deployed.clone(),
                (None, None) => {
                    let why = format!("handler `{name}` was neither built nor running");
                    return Err(StoreError::broken(why));
                }
            };
            let slot = match running {
                Some(running) => running.slot.clone(),
                None => Arc::new(HandlerSlot::new(
                    deployed.settings().concurrency,
                    pending.get(&name).copied().unwrap_or(0),
                    self.clock,
                )),
            };
            handlers.insert(name, LiveHandler { deployed, slot });
        }
        Ok(handlers)
    }

    /// Make `next` what runs, then let the workers follow: new handlers get one, a new
    /// version resizes its handler's permits, a removed handler's worker stops.
    fn swap(&self, next: LiveSet) {
        let before = self.live.replace(next);
        let after = self.live.current();
        for (name, handler) in after.handlers() {
            match before.handler(name.as_str()) {
                None => self
                    .workers
                    .start_worker(name.clone(), handler.slot.clone()),
                Some(old) if !Arc::ptr_eq(&old.deployed, &handler.deployed) => {
                    handler.slot.resize(handler.deployed.settings().concurrency);
                }
                Some(_) => {}
            }
        }
        for (name, old) in before.handlers() {
            if after.handler(name.as_str()).is_none() {
                old.slot.retire();
            }
        }
    }
}

/// What to build for `steps`: each new version, each version rolled back to, and every
/// stored live version that is not running (all of them at start).
fn build_items(stored: &Stored, steps: &[Step], live: &LiveSet) -> Vec<build::Item> {
    let mut items = Vec::new();
    let mut decided = BTreeSet::new();
    for step in steps {
        match step {
            Step::Deploy {
                name,
                module,
                settings,
                ..
            } => items.push(build::Item {
                name: name.clone(),
                sha256: module.sha256.clone(),
                settings: settings.clone(),
                bytes: Some(module.bytes.clone()),
                from: module.from.clone(),
            }),
            Step::Activate { target } => items.push(stored_item(target)),
            // What these leave live is what is stored: built below if it is not running.
            Step::Adopt { .. } | Step::Unchanged { .. } => continue,
            Step::Remove { .. } => {}
        }
        decided.insert(step.name().clone());
    }
    for record in stored.records.values() {
        if let Some(active) = &record.active
            && !decided.contains(&record.name)
            && live
                .handler(record.name.as_str())
                .is_none_or(|h| h.deployed.version() != active.version)
        {
            items.push(stored_item(active));
        }
    }
    items
}

/// A stored version to build, its module read from the store.
fn stored_item(deployment: &Deployment) -> build::Item {
    build::Item {
        name: deployment.handler.clone(),
        sha256: deployment.module_sha256.clone(),
        settings: deployment.settings.clone(),
        bytes: None,
        from: format!("of version {}", deployment.version),
    }
}

fn log_change(change: &Change, by: Origin) {
    let by = by.as_str();
    match change {
        Change::Deployed { deployment, .. } => tracing::info!(
            handler = deployment.handler.as_str(),
            version = deployment.version,
            sha256 = deployment.module_sha256,
            by,
            "deployed"
        ),
        Change::RolledBack(deployment) => tracing::info!(
            handler = deployment.handler.as_str(),
            version = deployment.version,
            by,
            "rolled back"
        ),
        Change::Removed {
            handler,
            dead_lettered,
        } => tracing::info!(handler = handler.as_str(), dead_lettered, by, "removed"),
        Change::Adopted(handler) => {
            tracing::info!(handler = handler.as_str(), "now owned by the manifest")
        }
        Change::Unchanged(_) => {}
    }
}
