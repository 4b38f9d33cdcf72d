//! Desired state: what each entry point wants ([`Plan`]) and what that means against what
//! is stored ([`diff`], a pure function).
//!
//! # Who owns a handler
//!
//! - A handler the manifest lists is the manifest's. The manifest's word about it (module and
//!   settings) is applied when it changes, or when the handler is not stored at all; a
//!   version deployed, rolled back or removed through the API since stays as it is until the
//!   manifest says something new about that handler.
//! - A handler the manifest created and no longer lists is removed (at start and with
//!   `--watch`), its pending work dead-lettered as on `DELETE`.
//! - A handler created through the API stays until it is removed through the API, whatever
//!   the manifest says, unless the manifest lists it: then the manifest adopts it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::DeployError;
use crate::config::{HandlerSettings, IngressPolicy, Manifest};
use crate::name::HandlerName;
use crate::runtime::module_sha256;
use crate::schemas::SchemaPolicy;
use crate::store::{Deployment, DeploymentChange, HandlerRecord, ManifestEntry, Origin};

/// A module's bytes, its digest, and where they came from (for messages).
#[derive(Clone)]
pub struct Module {
    pub sha256: String,
    pub bytes: Arc<[u8]>,
    /// E.g. the manifest's path for the file, `the uploaded module`.
    pub from: String,
}

/// Without the bytes: a module is megabytes, and its digest names it.
impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("sha256", &self.sha256)
            .field("bytes", &self.bytes.len())
            .field("from", &self.from)
            .finish()
    }
}

impl Module {
    pub fn new(bytes: Vec<u8>, from: impl Into<String>) -> Module {
        Module {
            sha256: module_sha256(&bytes),
            bytes: Arc::from(bytes),
            from: from.into(),
        }
    }
}

/// One handler as the manifest wants it.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub name: HandlerName,
    pub module: Module,
    pub settings: HandlerSettings,
}

/// What should change. Every entry point makes one; [`super::Deployer::apply`] carries it out.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Change nothing; make what is stored live (a host started without a manifest).
    Stored,
    /// The manifest's handlers, as it lists them now, and the problems of those whose module
    /// could not be read (reported with every other problem the plan finds).
    Manifest {
        wanted: Vec<Wanted>,
        unreadable: Vec<String>,
        /// What ingress takes from producers: live with the handlers.
        ingress: IngressPolicy,
        /// The `[[schema]]` entries, read, registered with the handlers unless they are.
        schemas: Vec<super::SchemaChange>,
        /// The `[schemas]` table.
        schema_policy: SchemaPolicy,
    },
    /// A new version of one handler through the API; without settings it keeps the live
    /// version's.
    Put {
        name: HandlerName,
        module: Module,
        settings: Option<HandlerSettings>,
    },
    /// The version before the live one, live again.
    Rollback { name: HandlerName },
    /// Nothing of the handler runs any more.
    Remove { name: HandlerName },
}

impl Plan {
    /// Read every module the manifest names (each file once, however many handlers share
    /// it). Blocking: call it off the async threads. Every unreadable file is a problem.
    pub fn from_manifest(manifest: &Manifest) -> Plan {
        let mut read: BTreeMap<&std::path::Path, Result<Module, String>> = BTreeMap::new();
        let mut wanted = Vec::new();
        let mut problems = Vec::new();
        for spec in &manifest.handlers {
            let module = read.entry(&spec.module).or_insert_with(|| {
                std::fs::read(&spec.module)
                    .map(|bytes| Module::new(bytes, format!("{:?}", spec.module)))
                    .map_err(|err| format!("failed to read module {:?}: {err}", spec.module))
            });
            match module {
                Ok(module) => wanted.push(Wanted {
                    name: spec.name.clone(),
                    module: module.clone(),
                    settings: spec.settings.clone(),
                }),
                Err(why) => problems.push(format!("handler `{}`: {why}", spec.name)),
            }
        }
        let (schemas, unreadable_schemas) =
            super::schemas::read_manifest_schemas(&manifest.schemas);
        problems.extend(unreadable_schemas);
        Plan::Manifest {
            wanted,
            unreadable: problems,
            ingress: manifest.ingress.clone(),
            schemas,
            schema_policy: manifest.schema_policy,
        }
    }

    /// The ingress policy a manifest plan makes live; other plans keep the live one.
    pub fn ingress_policy(&self) -> Option<&IngressPolicy> {
        match self {
            Plan::Manifest { ingress, .. } => Some(ingress),
            _ => None,
        }
    }

    /// The schemas a manifest plan registers, with its `[schemas]` policy.
    pub fn schemas(&self) -> Option<(&[super::SchemaChange], SchemaPolicy)> {
        match self {
            Plan::Manifest {
                schemas,
                schema_policy,
                ..
            } => Some((schemas, *schema_policy)),
            _ => None,
        }
    }

    /// Problems the plan carries from where it was made.
    pub fn problems(&self) -> &[String] {
        match self {
            Plan::Manifest { unreadable, .. } => unreadable,
            _ => &[],
        }
    }
}

/// What the diff knows of the store.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub records: BTreeMap<HandlerName, HandlerRecord>,
    /// Every version of the handlers a plan rolls back.
    pub versions: BTreeMap<HandlerName, Vec<Deployment>>,
}

impl Stored {
    pub(super) fn live(&self, name: &HandlerName) -> Option<&Deployment> {
        self.records.get(name)?.active.as_ref()
    }
}

/// One thing to do.
#[derive(Debug, Clone)]
pub enum Step {
    /// A new version, live.
    Deploy {
        name: HandlerName,
        module: Module,
        settings: HandlerSettings,
        origin: Origin,
        /// No version of it was live.
        created: bool,
    },
    /// The manifest lists it as it runs: record that, no new version.
    Adopt {
        name: HandlerName,
        entry: ManifestEntry,
    },
    /// An earlier version, live again.
    Activate { target: Deployment },
    /// Removed `by` the manifest or the API; `was_live` tells whether anything ran.
    Remove {
        name: HandlerName,
        by: Origin,
        was_live: bool,
    },
    /// Asked for, and already so.
    Unchanged { deployment: Deployment },
}

impl Step {
    /// The handler it is about.
    pub fn name(&self) -> &HandlerName {
        match self {
            Step::Deploy { name, .. } | Step::Adopt { name, .. } | Step::Remove { name, .. } => {
                name
            }
            Step::Activate { target } => &target.handler,
            Step::Unchanged { deployment } => &deployment.handler,
        }
    }

    /// The change to the stored records it makes; `None` for a step that changes nothing.
    pub fn store_change(&self) -> Option<DeploymentChange> {
        Some(match self {
            Step::Deploy {
                name,
                module,
                settings,
                origin,
                ..
            } => DeploymentChange::Deploy {
                handler: name.clone(),
                module_sha256: module.sha256.clone(),
                module: Some(module.bytes.clone()),
                settings: settings.clone(),
                origin: *origin,
            },
            Step::Adopt { name, entry } => DeploymentChange::Adopt {
                handler: name.clone(),
                entry: entry.clone(),
            },
            Step::Activate { target } => DeploymentChange::Activate {
                handler: target.handler.clone(),
                version: target.version,
            },
            Step::Remove { name, by, .. } => DeploymentChange::Remove {
                handler: name.clone(),
                reason: super::REMOVED_REASON.to_owned(),
                by: *by,
            },
            Step::Unchanged { .. } => return None,
        })
    }
}

/// The steps that take `stored` to what `plan` wants, or why the plan cannot be carried out.
pub fn diff(stored: &Stored, plan: Plan) -> Result<Vec<Step>, DeployError> {
    match plan {
        Plan::Stored => Ok(Vec::new()),
        Plan::Manifest { wanted, .. } => Ok(manifest_steps(stored, wanted)),
        Plan::Put {
            name,
            module,
            settings,
        } => {
            let live = stored.live(&name);
            let settings = match (settings, live) {
                (Some(settings), _) => settings,
                (None, Some(live)) => live.settings.clone(),
                (None, None) => {
                    return Err(DeployError::Invalid(vec![format!(
                        "handler `{name}` is new: its settings (`config`, with `subscribe`) \
                         are required"
                    )]));
                }
            };
            if let Some(live) = live
                && live.module_sha256 == module.sha256
                && live.settings == settings
            {
                return Ok(vec![Step::Unchanged {
                    deployment: live.clone(),
                }]);
            }
            Ok(vec![Step::Deploy {
                created: live.is_none(),
                name,
                module,
                settings,
                origin: Origin::Api,
            }])
        }
        Plan::Rollback { name } => {
            let live = stored
                .live(&name)
                .ok_or_else(|| DeployError::NotFound(name.clone()))?;
            let earlier = stored
                .versions
                .get(&name)
                .into_iter()
                .flatten()
                .filter(|v| v.version < live.version)
                .max_by_key(|v| v.version)
                .ok_or_else(|| DeployError::NoEarlierVersion(name.clone()))?;
            Ok(vec![Step::Activate {
                target: earlier.clone(),
            }])
        }
        Plan::Remove { name } => {
            if stored.live(&name).is_none() {
                return Err(DeployError::NotFound(name));
            }
            Ok(vec![Step::Remove {
                name,
                by: Origin::Api,
                was_live: true,
            }])
        }
    }
}

fn manifest_steps(stored: &Stored, wanted: Vec<Wanted>) -> Vec<Step> {
    let mut steps = Vec::new();
    for record in stored.records.values() {
        let listed = wanted.iter().any(|w| w.name == record.name);
        // Only the manifest's own handlers go with it; what it never spoke for stays.
        if !listed && record.owner == Origin::Manifest && record.manifest.is_some() {
            steps.push(Step::Remove {
                name: record.name.clone(),
                by: Origin::Manifest,
                was_live: record.active.is_some(),
            });
        }
    }
    for want in wanted {
        let said = ManifestEntry {
            module_sha256: want.module.sha256.clone(),
            settings: want.settings.clone(),
        };
        let record = stored.records.get(&want.name);
        if record.and_then(|r| r.manifest.as_ref()) == Some(&said) {
            continue; // the manifest says what it said last time: whatever is live stays
        }
        let live = record.and_then(|r| r.active.as_ref());
        if let Some(live) = live
            && live.module_sha256 == said.module_sha256
            && live.settings == said.settings
        {
            steps.push(Step::Adopt {
                name: want.name,
                entry: said,
            });
            continue;
        }
        steps.push(Step::Deploy {
            created: live.is_none(),
            name: want.name,
            module: want.module,
            settings: want.settings,
            origin: Origin::Manifest,
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> HandlerName {
        HandlerName::new(n).unwrap()
    }

    fn settings(ty: &str) -> HandlerSettings {
        HandlerSettings {
            subscribe: vec![ty.to_owned()],
            ..HandlerSettings::default()
        }
    }

    fn module(bytes: &str) -> Module {
        Module::new(bytes.as_bytes().to_vec(), "test")
    }

    fn deployment(
        handler: &str,
        version: u32,
        bytes: &str,
        ty: &str,
        origin: Origin,
    ) -> Deployment {
        Deployment {
            handler: name(handler),
            version,
            module_sha256: module(bytes).sha256,
            settings: settings(ty),
            origin,
            deployed_at_ms: 0,
        }
    }

    fn record(
        active: Option<Deployment>,
        owner: Origin,
        said: Option<(&str, &str)>,
    ) -> HandlerRecord {
        let name = active
            .as_ref()
            .map_or_else(|| name("gone"), |d| d.handler.clone());
        HandlerRecord {
            name,
            owner,
            active,
            manifest: said.map(|(bytes, ty)| ManifestEntry {
                module_sha256: module(bytes).sha256,
                settings: settings(ty),
            }),
        }
    }

    fn stored(records: Vec<HandlerRecord>) -> Stored {
        Stored {
            records: records.into_iter().map(|r| (r.name.clone(), r)).collect(),
            versions: BTreeMap::new(),
        }
    }

    fn wanted(handler: &str, bytes: &str, ty: &str) -> Wanted {
        Wanted {
            name: name(handler),
            module: module(bytes),
            settings: settings(ty),
        }
    }

    fn manifest(wanted: Vec<Wanted>) -> Plan {
        Plan::Manifest {
            wanted,
            unreadable: Vec::new(),
            ingress: IngressPolicy::default(),
            schemas: Vec::new(),
            schema_policy: SchemaPolicy::default(),
        }
    }

    /// The steps in words: `deploy inventory`, `remove erp by manifest`...
    fn words(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|step| match step {
                Step::Deploy {
                    name,
                    origin,
                    created,
                    ..
                } => {
                    format!("deploy {name} by {} created={created}", origin.as_str())
                }
                Step::Adopt { name, .. } => format!("adopt {name}"),
                Step::Activate { target } => {
                    format!("activate {} v{}", target.handler, target.version)
                }
                Step::Remove { name, by, was_live } => {
                    format!("remove {name} by {} was_live={was_live}", by.as_str())
                }
                Step::Unchanged { deployment } => format!("unchanged {}", deployment.handler),
            })
            .collect()
    }

    #[test]
    fn the_manifest_applies_what_changed_and_removes_only_its_own() {
        let live_inventory = deployment("inventory", 1, "inv", "a.v1", Origin::Manifest);
        let api_version = deployment("payment", 3, "pay-hotfix", "p.v1", Origin::Api);
        let stored = stored(vec![
            // Unchanged in the manifest: stays, even on an API version.
            record(Some(api_version), Origin::Manifest, Some(("pay", "p.v1"))),
            // Changed in the manifest: a new version.
            record(
                Some(live_inventory),
                Origin::Manifest,
                Some(("inv", "a.v1")),
            ),
            // The manifest's, dropped from it: removed.
            record(
                Some(deployment("old", 1, "old", "o.v1", Origin::Manifest)),
                Origin::Manifest,
                Some(("old", "o.v1")),
            ),
            // The API's, not in the manifest: stays.
            record(
                Some(deployment("erp", 1, "erp", "e.v1", Origin::Api)),
                Origin::Api,
                None,
            ),
            // The API's, now listed as it runs: adopted.
            record(
                Some(deployment("audit", 1, "audit", "x.v1", Origin::Api)),
                Origin::Api,
                None,
            ),
        ]);
        let plan = manifest(vec![
            wanted("payment", "pay", "p.v1"),
            wanted("inventory", "inv-2", "a.v1"),
            wanted("audit", "audit", "x.v1"),
            wanted("shipping", "ship", "s.v1"),
        ]);
        let steps = diff(&stored, plan).unwrap();
        assert_eq!(
            words(&steps),
            [
                "remove old by manifest was_live=true",
                "deploy inventory by manifest created=false",
                "adopt audit",
                "deploy shipping by manifest created=true",
            ]
        );
    }

    #[test]
    fn a_manifest_handler_removed_through_the_api_stays_removed_until_the_manifest_changes() {
        let removed = HandlerRecord {
            name: name("inventory"),
            owner: Origin::Manifest,
            active: None,
            manifest: Some(ManifestEntry {
                module_sha256: module("inv").sha256,
                settings: settings("a.v1"),
            }),
        };
        let stored = stored(vec![removed]);
        let same = manifest(vec![wanted("inventory", "inv", "a.v1")]);
        assert!(diff(&stored, same).unwrap().is_empty());
        let changed = manifest(vec![wanted("inventory", "inv", "a.v2")]);
        assert_eq!(
            words(&diff(&stored, changed).unwrap()),
            ["deploy inventory by manifest created=true"]
        );
        // Dropped from the manifest as well: its word is forgotten, nothing was live.
        assert_eq!(
            words(&diff(&stored, manifest(vec![])).unwrap()),
            ["remove inventory by manifest was_live=false"]
        );
    }

    #[test]
    fn an_api_deploy_needs_settings_for_a_new_handler_and_changes_nothing_when_equal() {
        let live = deployment("worker", 2, "w", "t.v1", Origin::Api);
        let stored = stored(vec![record(Some(live), Origin::Api, None)]);
        let put = |handler: &str, bytes: &str, settings: Option<HandlerSettings>| Plan::Put {
            name: name(handler),
            module: module(bytes),
            settings,
        };
        assert_eq!(
            words(&diff(&stored, put("worker", "w", None)).unwrap()),
            ["unchanged worker"]
        );
        assert_eq!(
            words(&diff(&stored, put("worker", "w2", None)).unwrap()),
            ["deploy worker by api created=false"]
        );
        assert_eq!(
            words(&diff(&stored, put("worker", "w", Some(settings("t.v2")))).unwrap()),
            ["deploy worker by api created=false"]
        );
        let DeployError::Invalid(problems) = diff(&stored, put("newcomer", "n", None)).unwrap_err()
        else {
            panic!("a new handler without settings is invalid")
        };
        assert!(problems[0].contains("`newcomer` is new"), "{problems:?}");
    }

    #[test]
    fn a_rollback_takes_the_latest_earlier_version() {
        let live = deployment("worker", 3, "w3", "t.v1", Origin::Api);
        let mut stored = stored(vec![record(Some(live.clone()), Origin::Api, None)]);
        let rollback = || Plan::Rollback {
            name: name("worker"),
        };
        assert!(matches!(
            diff(&stored, rollback()),
            Err(DeployError::NoEarlierVersion(_))
        ));
        stored.versions.insert(
            name("worker"),
            vec![
                deployment("worker", 1, "w1", "t.v1", Origin::Api),
                deployment("worker", 2, "w2", "t.v1", Origin::Api),
                live,
            ],
        );
        assert_eq!(
            words(&diff(&stored, rollback()).unwrap()),
            ["activate worker v2"]
        );
        let unknown = Plan::Rollback {
            name: name("nobody"),
        };
        assert!(matches!(
            diff(&stored, unknown),
            Err(DeployError::NotFound(_))
        ));
        let remove = Plan::Remove {
            name: name("nobody"),
        };
        assert!(matches!(
            diff(&stored, remove),
            Err(DeployError::NotFound(_))
        ));
    }
}
