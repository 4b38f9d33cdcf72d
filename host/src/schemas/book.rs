//! The registry's records (the *book*) and the rules for changing them, as pure functions.
//!
//! The book is small (a schema is kilobytes, an app has tens of types) and changes rarely, so
//! it is kept whole as one JSON document in the store, written with a compare-and-set on its
//! revision: in cluster mode several hosts may change it, and a change made on a book that is
//! no longer the stored one is made again on the new one. Upcaster modules are kept beside
//! it by digest.
//!
//! The rules ([`Book::register`] and the rest) decide everything but the deploy gate, which
//! needs the live handlers ([`super::Registry::gate`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::compat::{self, BreakingChange, Compatibility};
use super::validate::Compiled;
use super::version::{self, VersionedType};
use crate::store::Origin;

/// Every registered schema, upcaster and compatibility mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Book {
    /// By type (`NAME.vN`).
    #[serde(default)]
    pub schemas: BTreeMap<String, SchemaRecord>,
    /// Modes set explicitly, by family; a family not here has the app's default.
    #[serde(default)]
    pub families: BTreeMap<String, Compatibility>,
    /// By the type they upcast from; each goes to the next version.
    #[serde(default)]
    pub upcasters: BTreeMap<String, UpcasterRecord>,
}

/// One registered schema. Never changed once registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRecord {
    pub schema: Value,
    /// SHA-256 of the schema's canonical JSON text, hex: two registrations are the same
    /// exactly when their digests are.
    pub sha256: String,
    pub registered_at_ms: i64,
    pub origin: Origin,
}

/// One registered upcaster: a component turning `from` (its key in the book) into `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpcasterRecord {
    pub to: String,
    pub module_sha256: String,
    pub registered_at_ms: i64,
    pub origin: Origin,
}

/// Why a change to the book is refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BookError {
    /// The request itself is wrong (not a versioned type, not a schema...): 400.
    #[error("{0}")]
    Invalid(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// It contradicts what is registered (immutability, version order): 409.
    #[error("{0}")]
    Conflict(String),
    /// The schema breaks readers, and old events have no path to it: 409, each change named.
    #[error("{}", incompatible_message(.ty, *.mode, .changes))]
    Incompatible {
        ty: String,
        mode: Compatibility,
        changes: Vec<BreakingChange>,
    },
}

fn incompatible_message(ty: &str, mode: Compatibility, changes: &[BreakingChange]) -> String {
    let listed: Vec<String> = changes.iter().map(ToString::to_string).collect();
    format!(
        "the schema of `{ty}` is not {mode} compatible ({} breaking change{}: {}); register it \
         with an upcaster from the previous version, or set the family's compatibility to \
         \"none\"",
        changes.len(),
        if changes.len() == 1 { "" } else { "s" },
        listed.join("; ")
    )
}

/// What a registration brings with it besides the schema.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The family's mode from now on (`None`: as it is).
    pub compatibility: Option<Compatibility>,
    /// The digest of an upcaster from the previous version into this one.
    pub upcaster_sha256: Option<String>,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Asked for, and so already.
    Unchanged,
    Replaced,
    Removed,
}

/// The SHA-256 of a schema's canonical text (`serde_json` writes object keys sorted).
pub fn schema_sha256(schema: &Value) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(schema.to_string().as_bytes()))
}

fn versioned(ty: &str) -> Result<VersionedType, BookError> {
    VersionedType::parse(ty).ok_or_else(|| {
        BookError::Invalid(format!(
            "{}: schemas are registered per version",
            version::explain(ty)
        ))
    })
}

impl Book {
    /// Read a stored book.
    pub fn from_json(text: &str) -> Result<Book, String> {
        serde_json::from_str(text)
            .map_err(|err| format!("the stored schema book is unreadable: {err}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The family's mode: set explicitly, or `default`.
    pub fn mode(&self, family: &str, default: Compatibility) -> Compatibility {
        self.families.get(family).copied().unwrap_or(default)
    }

    /// The registered versions of `family`, ascending, with their schemas.
    pub fn versions<'a>(&'a self, family: &str) -> Vec<(u32, &'a SchemaRecord)> {
        let mut versions: Vec<(u32, &SchemaRecord)> = self
            .schemas
            .iter()
            .filter_map(|(ty, record)| {
                let parsed = VersionedType::parse(ty)?;
                (parsed.family() == family).then_some((parsed.version(), record))
            })
            .collect();
        versions.sort_by_key(|(version, _)| *version);
        versions
    }

    /// Register `schema` for `ty` (module docs of [`super`] for the rules): a type's schema
    /// never changes; a family's versions come in order, each next one checked against the
    /// earlier ones by the family's mode, unless it brings an upcaster from the previous
    /// version (old events then have a path to it).
    pub fn register(
        &mut self,
        ty: &str,
        schema: Value,
        with: Registration,
        default_mode: Compatibility,
        origin: Origin,
        now_ms: i64,
    ) -> Result<Outcome, BookError> {
        let parsed = versioned(ty)?;
        Compiled::new(&schema)
            .map_err(|why| BookError::Invalid(format!("the schema of `{ty}`: {why}")))?;
        let sha256 = schema_sha256(&schema);
        if let Some(existing) = self.schemas.get(ty) {
            if existing.sha256 != sha256 {
                return Err(BookError::Conflict(format!(
                    "`{ty}` is registered with another schema (sha256 {}), and a registered \
                     schema never changes: register the change as `{}`",
                    existing.sha256,
                    parsed.at(self.latest(parsed.family()).unwrap_or(parsed.version()) + 1)
                )));
            }
            let mode_same = with
                .compatibility
                .is_none_or(|mode| mode == self.mode(parsed.family(), default_mode));
            let upcaster_same = with.upcaster_sha256.as_ref().is_none_or(|sha| {
                self.upcaster_into(&parsed)
                    .is_some_and(|(_, up)| &up.module_sha256 == sha)
            });
            if mode_same && upcaster_same {
                return Ok(Outcome::Unchanged);
            }
            // The same schema with a new mode or upcaster: those may change.
            self.set_mode(parsed.family(), with.compatibility);
            if let Some(sha256) = with.upcaster_sha256 {
                self.upcast_into(&parsed, sha256, origin, now_ms)?;
            }
            return Ok(Outcome::Replaced);
        }
        let earlier = self.versions(parsed.family());
        if let Some(&(latest, _)) = earlier.last() {
            if parsed.version() <= latest {
                return Err(BookError::Conflict(format!(
                    "`{}` is registered: the versions of a family are registered in order, and \
                     `{ty}` comes before it",
                    parsed.at(latest)
                )));
            }
            if parsed.version() != latest + 1 {
                return Err(BookError::Conflict(format!(
                    "the latest registered version of `{}` is v{latest}: register `{}` first",
                    parsed.family(),
                    parsed.at(latest + 1)
                )));
            }
        }
        if with.upcaster_sha256.is_some() && earlier.is_empty() {
            return Err(BookError::Invalid(format!(
                "an upcaster comes with a version that follows a registered one, and `{ty}` is \
                 the first registered version of `{}`",
                parsed.family()
            )));
        }
        let mode = with
            .compatibility
            .unwrap_or_else(|| self.mode(parsed.family(), default_mode));
        let earlier_schemas: Vec<(u32, &Value)> =
            earlier.iter().map(|(v, r)| (*v, &r.schema)).collect();
        let changes = compat::check(mode, &earlier_schemas, &schema);
        if !changes.is_empty() && with.upcaster_sha256.is_none() {
            return Err(BookError::Incompatible {
                ty: ty.to_owned(),
                mode,
                changes,
            });
        }
        self.set_mode(parsed.family(), with.compatibility);
        self.schemas.insert(
            ty.to_owned(),
            SchemaRecord {
                schema,
                sha256,
                registered_at_ms: now_ms,
                origin,
            },
        );
        if let Some(sha256) = with.upcaster_sha256 {
            self.upcast_into(&parsed, sha256, origin, now_ms)?;
        }
        Ok(Outcome::Created)
    }

    /// Remove the schema of `ty`, and the upcaster into it. Only a family's latest version
    /// goes: one below it is what later versions were checked against and upcast from.
    pub fn remove(&mut self, ty: &str) -> Result<Outcome, BookError> {
        let parsed = versioned(ty)?;
        if !self.schemas.contains_key(ty) {
            return Err(BookError::NotFound(format!(
                "no schema is registered for `{ty}`"
            )));
        }
        let latest = self.latest(parsed.family()).unwrap_or(parsed.version());
        if latest > parsed.version() {
            return Err(BookError::Conflict(format!(
                "`{}` is registered after `{ty}`: only the latest version of a family can be \
                 removed",
                parsed.at(latest)
            )));
        }
        self.schemas.remove(ty);
        if parsed.version() > 1 {
            self.upcasters
                .remove(&parsed.at(parsed.version() - 1).to_string());
        }
        if self.versions(parsed.family()).is_empty() {
            self.families.remove(parsed.family());
        }
        Ok(Outcome::Removed)
    }

    /// Register (or replace) the upcaster from `from` into the next version, whose schema
    /// must be registered: an upcaster's output is checked against it.
    pub fn put_upcaster(
        &mut self,
        from: &str,
        module_sha256: String,
        origin: Origin,
        now_ms: i64,
    ) -> Result<Outcome, BookError> {
        let parsed = versioned(from)?;
        let to = parsed.at(parsed.version() + 1).to_string();
        if !self.schemas.contains_key(&to) {
            return Err(BookError::Conflict(format!(
                "an upcaster from `{from}` makes `{to}`, which has no registered schema: \
                 register the schema of `{to}` with the upcaster"
            )));
        }
        let record = UpcasterRecord {
            to,
            module_sha256,
            registered_at_ms: now_ms,
            origin,
        };
        match self.upcasters.get(from) {
            Some(existing) if existing.module_sha256 == record.module_sha256 => {
                Ok(Outcome::Unchanged)
            }
            Some(_) => {
                self.upcasters.insert(from.to_owned(), record);
                Ok(Outcome::Replaced)
            }
            None => {
                self.upcasters.insert(from.to_owned(), record);
                Ok(Outcome::Created)
            }
        }
    }

    /// Register the upcaster from the version before `ty` into it: what a registration
    /// brings with it. The first version has no version before it.
    fn upcast_into(
        &mut self,
        ty: &VersionedType,
        module_sha256: String,
        origin: Origin,
        now_ms: i64,
    ) -> Result<Outcome, BookError> {
        let Some(previous) = ty.version().checked_sub(1).filter(|v| *v >= 1) else {
            return Err(BookError::Invalid(format!(
                "`{ty}` is version 1: no version comes before it to upcast from"
            )));
        };
        self.put_upcaster(&ty.at(previous).to_string(), module_sha256, origin, now_ms)
    }

    pub fn remove_upcaster(&mut self, from: &str) -> Result<Outcome, BookError> {
        match self.upcasters.remove(from) {
            Some(_) => Ok(Outcome::Removed),
            None => Err(BookError::NotFound(format!(
                "no upcaster from `{from}` is registered"
            ))),
        }
    }

    /// The latest registered version of `family`.
    pub fn latest(&self, family: &str) -> Option<u32> {
        self.versions(family).last().map(|(v, _)| *v)
    }

    /// The upcaster that makes `ty`, with the type it starts from.
    fn upcaster_into(&self, ty: &VersionedType) -> Option<(String, &UpcasterRecord)> {
        let from = ty.at(ty.version().checked_sub(1)?).to_string();
        let record = self.upcasters.get(&from)?;
        Some((from, record))
    }

    fn set_mode(&mut self, family: &str, mode: Option<Compatibility>) {
        if let Some(mode) = mode {
            self.families.insert(family.to_owned(), mode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const V1: &str = "com.example.order.placed.v1";
    const V2: &str = "com.example.order.placed.v2";
    const V3: &str = "com.example.order.placed.v3";

    /// Closed (`additionalProperties: false`): an open schema's events may carry any field
    /// under any name, so a field added with a type would break them already.
    fn v1() -> Value {
        json!({"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}},
            "additionalProperties": false})
    }

    fn register(
        book: &mut Book,
        ty: &str,
        schema: Value,
        with: Registration,
    ) -> Result<Outcome, BookError> {
        book.register(ty, schema, with, Compatibility::Backward, Origin::Api, 1)
    }

    #[test]
    fn a_schema_never_changes() {
        let mut book = Book::default();
        assert_eq!(
            register(&mut book, V1, v1(), Registration::default()),
            Ok(Outcome::Created)
        );
        assert_eq!(
            register(&mut book, V1, v1(), Registration::default()),
            Ok(Outcome::Unchanged)
        );
        let other = json!({"type": "object"});
        let err = register(&mut book, V1, other, Registration::default()).unwrap_err();
        assert!(
            matches!(&err, BookError::Conflict(m) if m.contains("register the change as `com.example.order.placed.v2`")),
            "{err}"
        );
    }

    #[test]
    fn versions_come_in_order() {
        let mut book = Book::default();
        register(&mut book, V2, v1(), Registration::default()).unwrap();
        let err = register(&mut book, V1, v1(), Registration::default()).unwrap_err();
        assert!(err.to_string().contains("comes before it"), "{err}");
        let v4 = "com.example.order.placed.v4";
        let err = register(&mut book, v4, v1(), Registration::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("register `com.example.order.placed.v3` first"),
            "{err}"
        );
        register(&mut book, V3, v1(), Registration::default()).unwrap();
    }

    #[test]
    fn an_incompatible_version_needs_an_upcaster_or_mode_none() {
        let mut book = Book::default();
        register(&mut book, V1, v1(), Registration::default()).unwrap();
        let v2 = json!({"type": "object", "required": ["sku", "currency"],
            "properties": {"sku": {"type": "string"}, "currency": {"type": "string"}}});
        let err = register(&mut book, V2, v2.clone(), Registration::default()).unwrap_err();
        let BookError::Incompatible { changes, mode, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*mode, Compatibility::Backward);
        assert_eq!(changes.len(), 1, "{err}");
        assert!(err.to_string().contains("/currency"), "{err}");
        let with = Registration {
            upcaster_sha256: Some("ab".into()),
            ..Registration::default()
        };
        assert_eq!(
            register(&mut book, V2, v2.clone(), with),
            Ok(Outcome::Created)
        );
        assert_eq!(book.upcasters[V1].to, V2);

        let mut loose = Book::default();
        register(&mut loose, V1, v1(), Registration::default()).unwrap();
        let none = Registration {
            compatibility: Some(Compatibility::None),
            ..Registration::default()
        };
        assert_eq!(register(&mut loose, V2, v2, none), Ok(Outcome::Created));
        assert_eq!(
            loose.mode("com.example.order.placed", Compatibility::Backward),
            Compatibility::None
        );
    }

    #[test]
    fn only_the_latest_version_is_removed_with_its_upcaster() {
        let mut book = Book::default();
        register(&mut book, V1, v1(), Registration::default()).unwrap();
        let with = Registration {
            upcaster_sha256: Some("ab".into()),
            ..Registration::default()
        };
        register(&mut book, V2, v1(), with).unwrap();
        assert!(
            book.remove(V1)
                .unwrap_err()
                .to_string()
                .contains("only the latest")
        );
        assert_eq!(book.remove(V2), Ok(Outcome::Removed));
        assert!(book.upcasters.is_empty());
        assert!(matches!(book.remove(V2), Err(BookError::NotFound(_))));
    }

    #[test]
    fn an_upcaster_needs_its_target_schema() {
        let mut book = Book::default();
        register(&mut book, V1, v1(), Registration::default()).unwrap();
        let err = book
            .put_upcaster(V1, "ab".into(), Origin::Api, 1)
            .unwrap_err();
        assert!(
            err.to_string().contains("has no registered schema"),
            "{err}"
        );
        register(&mut book, V2, v1(), Registration::default()).unwrap();
        assert_eq!(
            book.put_upcaster(V1, "ab".into(), Origin::Api, 1),
            Ok(Outcome::Created)
        );
        assert_eq!(
            book.put_upcaster(V1, "ab".into(), Origin::Api, 1),
            Ok(Outcome::Unchanged)
        );
        assert_eq!(
            book.put_upcaster(V1, "cd".into(), Origin::Api, 1),
            Ok(Outcome::Replaced)
        );
        assert_eq!(book.remove_upcaster(V1), Ok(Outcome::Removed));
    }

    #[test]
    fn a_first_version_takes_no_upcaster_even_registered_again() {
        let mut book = Book::default();
        register(&mut book, V1, v1(), Registration::default()).unwrap();
        let with = Registration {
            upcaster_sha256: Some("ab".into()),
            ..Registration::default()
        };
        let err = register(&mut book, V1, v1(), with).unwrap_err();
        assert!(
            err.to_string()
                .contains("is version 1: no version comes before it"),
            "{err}"
        );
        assert!(book.upcasters.is_empty());
    }

    #[test]
    fn refuses_unversioned_types_and_non_schemas() {
        let mut book = Book::default();
        let err =
            register(&mut book, "com.example.ping", v1(), Registration::default()).unwrap_err();
        assert!(matches!(err, BookError::Invalid(_)), "{err}");
        let err = register(&mut book, V1, json!({"type": 5}), Registration::default()).unwrap_err();
        assert!(matches!(err, BookError::Invalid(_)), "{err}");
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let mut book = Book::default();
        register(&mut book, V1, v1(), Registration::default()).unwrap();
        assert_eq!(Book::from_json(&book.to_json()).unwrap(), book);
    }
}
