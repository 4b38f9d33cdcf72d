//! Changes to the schema registry, carried out like deploys: one at a time with them, the
//! change decided on the stored book ([`crate::schemas::book`], pure), every new upcaster
//! compiled and checked against its world, the result passed through the deploy gate against
//! the live handlers, stored in one write, and the live registry swapped whole.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{Deployer, Module};
use crate::config::SchemaSpec;
use crate::runtime::LinkedUpcaster;
use crate::schemas::{
    Book, BookError, Compatibility, Outcome, Registration, Registry, SchemaPolicy,
};
use crate::store::{BookWrite, Origin, StoreError};

/// Times a change is made again on a book another host changed meanwhile.
const STALE_RETRIES: usize = 5;

/// One change to the registry.
#[derive(Debug, Clone)]
pub enum SchemaChange {
    /// Register the schema of `ty`, optionally setting its family's mode and bringing an
    /// upcaster from the previous version.
    Register {
        ty: String,
        schema: Value,
        compatibility: Option<Compatibility>,
        upcaster: Option<Module>,
    },
    /// Remove the schema of `ty` (its family's latest version) and the upcaster into it.
    Remove {
        ty: String,
    },
    /// Register or replace the upcaster from `from` into the next version.
    PutUpcaster {
        from: String,
        module: Module,
    },
    RemoveUpcaster {
        from: String,
    },
}

/// Why a registry change was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaChangeError {
    #[error(transparent)]
    Book(#[from] BookError),
    /// An upcaster's module is not an upcaster (400).
    #[error("{}", .0.join("; "))]
    Module(Vec<String>),
    /// Handlers would get events they cannot read (409).
    #[error("{}", super::gate_message(.0))]
    Gate(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A registry change decided and built, not yet stored.
pub(super) struct PreparedSchemas {
    /// The registry it makes.
    pub next: Registry,
    /// What to store; `None` when the book stays as it is.
    write: Option<BookToWrite>,
    outcomes: Vec<Outcome>,
}

struct BookToWrite {
    text: String,
    revision: u64,
    modules: Vec<(String, Arc<[u8]>)>,
}

/// The manifest's `[[schema]]` entries read from their files, or each problem with one.
pub(super) fn read_manifest_schemas(specs: &[SchemaSpec]) -> (Vec<SchemaChange>, Vec<String>) {
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    for spec in specs {
        let schema = std::fs::read(&spec.file)
            .map_err(|err| format!("failed to read {:?}: {err}", spec.file))
            .and_then(|bytes| {
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|err| format!("{:?} is not JSON: {err}", spec.file))
            });
        let upcaster = spec.upcaster.as_ref().map(|path| {
            std::fs::read(path)
                .map(|bytes| Module::new(bytes, format!("{path:?}")))
                .map_err(|err| format!("failed to read upcaster {path:?}: {err}"))
        });
        match (schema, upcaster.transpose()) {
            (Ok(schema), Ok(upcaster)) => changes.push(SchemaChange::Register {
                ty: spec.ty.clone(),
                schema,
                compatibility: spec.compatibility,
                upcaster,
            }),
            (Err(why), _) | (_, Err(why)) => problems.push(format!("schema `{}`: {why}", spec.ty)),
        }
    }
    (changes, problems)
}

impl Deployer {
    /// Carry out `changes` together, as made by `origin`.
    pub async fn change_schemas(
        &self,
        changes: Vec<SchemaChange>,
        origin: Origin,
    ) -> Result<Vec<Outcome>, SchemaChangeError> {
        let _one_at_a_time = self.changes.lock().await;
        self.change_schemas_locked(changes, origin, None).await
    }

    /// Make the stored book live again (at start, and when another host changed it).
    pub async fn reload_schemas(&self) -> Result<(), SchemaChangeError> {
        let _one_at_a_time = self.changes.lock().await;
        self.change_schemas_locked(Vec::new(), Origin::Api, None)
            .await?;
        Ok(())
    }

    /// [`Deployer::change_schemas`] under the lock; `policy` replaces the live one (the
    /// manifest's `[schemas]`).
    pub(super) async fn change_schemas_locked(
        &self,
        changes: Vec<SchemaChange>,
        origin: Origin,
        policy: Option<SchemaPolicy>,
    ) -> Result<Vec<Outcome>, SchemaChangeError> {
        for _ in 0..STALE_RETRIES {
            let prepared = self
                .prepare_schemas(changes.clone(), origin, policy)
                .await?;
            let current = self.live.registry();
            let fresh = self.gate_problems(&prepared.next).await?;
            if !fresh.is_empty() {
                let known = self.gate_problems(&current).await?;
                let new: Vec<String> = fresh.into_iter().filter(|p| !known.contains(p)).collect();
                if !new.is_empty() {
                    return Err(SchemaChangeError::Gate(new));
                }
            }
            if let Some(outcomes) = self.commit_schemas(prepared).await? {
                return Ok(outcomes);
            }
        }
        Err(StoreError::unavailable(
            "the schema registry kept changing on other hosts meanwhile; try again",
        )
        .into())
    }

    /// Decide `changes` on the stored book and build the registry they make, storing nothing.
    pub(super) async fn prepare_schemas(
        &self,
        changes: Vec<SchemaChange>,
        origin: Origin,
        policy: Option<SchemaPolicy>,
    ) -> Result<PreparedSchemas, SchemaChangeError> {
        let current = self.live.registry();
        let policy = policy.unwrap_or(current.policy());
        let (mut book, revision) = match self.store.schema_book().await? {
            Some(stored) => (
                Book::from_json(&stored.text).map_err(StoreError::broken)?,
                stored.revision,
            ),
            None => (Book::default(), 0),
        };
        let before = book.clone();
        let now = self.clock.now_ms();
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut modules: HashMap<String, Module> = HashMap::new();
        for change in changes {
            let outcome = match change {
                SchemaChange::Register {
                    ty,
                    schema,
                    compatibility,
                    upcaster,
                } => {
                    let with = Registration {
                        compatibility,
                        upcaster_sha256: upcaster.as_ref().map(|m| m.sha256.clone()),
                    };
                    if let Some(module) = upcaster {
                        modules.insert(module.sha256.clone(), module);
                    }
                    book.register(&ty, schema, with, policy.compatibility, origin, now)?
                }
                SchemaChange::Remove { ty } => book.remove(&ty)?,
                SchemaChange::PutUpcaster { from, module } => {
                    let sha256 = module.sha256.clone();
                    modules.insert(sha256.clone(), module);
                    book.put_upcaster(&from, sha256, origin, now)?
                }
                SchemaChange::RemoveUpcaster { from } => book.remove_upcaster(&from)?,
            };
            outcomes.push(outcome);
        }
        let upcasters = self.upcasters(&book, &current, &modules).await?;
        let next = Registry::build(
            book.clone(),
            policy,
            current.base_url(),
            &upcasters,
            &current,
        )
        .map_err(SchemaChangeError::Module)?;
        let write = (book != before).then(|| BookToWrite {
            text: book.to_json(),
            revision,
            modules: book
                .upcasters
                .values()
                .filter_map(|r| modules.get(&r.module_sha256))
                .map(|m| (m.sha256.clone(), m.bytes.clone()))
                .collect(),
        });
        Ok(PreparedSchemas {
            next,
            write,
            outcomes,
        })
    }

    /// Store a prepared change and make its registry live; `None` when the stored book
    /// changed since it was read (nothing was written: prepare it again).
    pub(super) async fn commit_schemas(
        &self,
        prepared: PreparedSchemas,
    ) -> Result<Option<Vec<Outcome>>, StoreError> {
        if let Some(write) = prepared.write {
            let written = self
                .store
                .put_schema_book(write.text, write.revision, write.modules)
                .await?;
            if written == BookWrite::Stale {
                return Ok(None);
            }
        }
        self.live.set_registry(prepared.next);
        Ok(Some(prepared.outcomes))
    }

    /// Every upcaster `book` names, linked: from the live registry's, from `new` (this
    /// change's uploads), or from the store; each new module compiled off the async threads.
    async fn upcasters(
        &self,
        book: &Book,
        current: &Registry,
        new: &HashMap<String, Module>,
    ) -> Result<HashMap<String, Arc<LinkedUpcaster>>, SchemaChangeError> {
        let mut linked = current.upcasters();
        let mut problems = Vec::new();
        for (from, record) in &book.upcasters {
            let sha256 = &record.module_sha256;
            if linked.contains_key(sha256) {
                continue;
            }
            let (bytes, what) = match new.get(sha256) {
                Some(module) => (module.bytes.clone(), module.from.clone()),
                None => match self.store.upcaster_module(sha256).await? {
                    Some(bytes) => (Arc::from(bytes), format!("module {sha256}")),
                    None => {
                        problems.push(format!(
                            "the upcaster from `{from}`: its module {sha256} is missing from the \
                             store"
                        ));
                        continue;
                    }
                },
            };
            let runtime = self.runtime.clone();
            let built = tokio::task::spawn_blocking(move || {
                let artifact = runtime.compile(&bytes)?;
                runtime.link_upcaster(&artifact)
            })
            .await;
            match built {
                Ok(Ok(upcaster)) => {
                    linked.insert(sha256.clone(), Arc::new(upcaster));
                }
                Ok(Err(err)) => problems.push(format!(
                    "the upcaster from `{from}` ({what}) cannot be used: {err:#}"
                )),
                Err(_) => problems.push(format!("compiling the upcaster from `{from}` panicked")),
            }
        }
        match problems.is_empty() {
            true => Ok(linked),
            false => Err(SchemaChangeError::Module(problems)),
        }
    }

    /// What the gate says of every live handler on `registry`.
    pub(super) async fn gate_problems(
        &self,
        registry: &Registry,
    ) -> Result<Vec<String>, StoreError> {
        let live = self.live.current();
        let mut problems = Vec::new();
        for (name, handler) in live.handlers() {
            let pending = self.store.pending_types(name).await?;
            problems.extend(registry.gate(name, handler.deployed.settings(), pending.as_deref()));
        }
        Ok(problems)
    }
}
