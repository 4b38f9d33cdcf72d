//! The live registry: the book compiled, and what the pipeline asks of it.
//!
//! - Ingress [`admit`](Registry::admit)s each event: its `data` checked against its type's
//!   schema, its `dataschema` set to the schema's URL on the host.
//! - A handler's emitted events are [`checked`](Registry::check_emitted) the same way before
//!   they are committed.
//! - A delivery whose event is older than the version its handler reads is
//!   [`read_as`](Registry::read_as) that version, one step at a time.
//! - A change to the handlers or to the registry passes the [`gate`](Registry::gate).
//!
//! Like the live set, a registry is immutable and swapped whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::book::{Book, SchemaRecord};
use super::compat::{self, Compatibility, Direction};
use super::policy::SchemaPolicy;
use super::validate::{Compiled, Violation, describe};
use super::version::VersionedType;
use crate::capabilities::Staged;
use crate::config::HandlerSettings;
use crate::event::Event;
use crate::ingress::problem::IngressError;
use crate::name::HandlerName;
use crate::runtime::{DeployedHandler, InvokeError, LinkedUpcaster, Runtime};
use crate::store::StateReader;

/// How one version becomes the next.
#[derive(Clone)]
enum Step {
    /// A registered upcaster.
    Upcaster(Arc<LinkedUpcaster>),
    /// The next version reads this one as it is (backward compatible): only its defaults
    /// are filled in.
    Defaults,
}

/// The registry as it runs.
#[derive(Clone, Default)]
pub struct Registry {
    book: Arc<Book>,
    policy: SchemaPolicy,
    /// Where the host serves schemas: `{base_url}/admin/schemas/{type}`.
    base_url: Arc<str>,
    compiled: HashMap<String, Arc<Compiled>>,
    /// By the type a step starts from.
    steps: HashMap<String, Step>,
    /// Why there is no step from a type, for those that have a registered next version.
    no_step: HashMap<String, String>,
}

/// What a handler makes of an event's type.
enum Reading {
    /// It reads it as it is.
    AsIs,
    /// It reads it as version `to` of its family.
    Upcast { from: VersionedType, to: u32 },
    /// It subscribes to another version of the family, and does not take this one in.
    NotAccepted { subscribed: Vec<u32> },
}

impl Registry {
    /// The registry of `book`: every schema compiled (or taken from `previous` when it is
    /// the same), every upcaster the book names found in `upcasters` (by digest).
    pub fn build(
        book: Book,
        policy: SchemaPolicy,
        base_url: &str,
        upcasters: &HashMap<String, Arc<LinkedUpcaster>>,
        previous: &Registry,
    ) -> Result<Registry, Vec<String>> {
        let mut problems = Vec::new();
        let mut compiled = HashMap::new();
        for (ty, record) in &book.schemas {
            let reused = previous
                .book
                .schemas
                .get(ty)
                .filter(|old| old.sha256 == record.sha256)
                .and_then(|_| previous.compiled.get(ty).cloned());
            match reused.map_or_else(|| Compiled::new(&record.schema).map(Arc::new), Ok) {
                Ok(schema) => {
                    compiled.insert(ty.clone(), schema);
                }
                Err(why) => problems.push(format!("the schema of `{ty}`: {why}")),
            }
        }
        let mut steps = HashMap::new();
        let mut no_step = HashMap::new();
        for (from, record) in &book.upcasters {
            match upcasters.get(&record.module_sha256) {
                Some(linked) => {
                    steps.insert(from.clone(), Step::Upcaster(linked.clone()));
                }
                None => problems.push(format!(
                    "the upcaster from `{from}` (module {}) is not built",
                    record.module_sha256
                )),
            }
        }
        for (ty, record) in &book.schemas {
            let Some(parsed) = VersionedType::parse(ty) else {
                continue;
            };
            let next = parsed.at(parsed.version() + 1).to_string();
            if steps.contains_key(ty) {
                continue;
            }
            let Some(next_record) = book.schemas.get(&next) else {
                continue;
            };
            let changes = compat::changes(
                Direction::Backward,
                parsed.version(),
                &record.schema,
                &next_record.schema,
            );
            match changes.is_empty() {
                true => {
                    steps.insert(ty.clone(), Step::Defaults);
                }
                false => {
                    let listed: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                    no_step.insert(
                        ty.clone(),
                        format!(
                            "`{next}` does not read `{ty}` as it is ({}) and no upcaster from \
                             `{ty}` is registered",
                            listed.join("; ")
                        ),
                    );
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Registry {
            book: Arc::new(book),
            policy,
            base_url: Arc::from(base_url.trim_end_matches('/')),
            compiled,
            steps,
            no_step,
        })
    }

    /// A registry with nothing registered, serving schemas at `base_url`.
    pub fn empty(base_url: &str, policy: SchemaPolicy) -> Registry {
        Registry {
            policy,
            base_url: Arc::from(base_url.trim_end_matches('/')),
            ..Registry::default()
        }
    }

    /// How events of `from` become the next version: `"upcaster"`, `"as is"` (the next
    /// version reads them, defaults filled in), or `None` (no way).
    pub fn step_kind(&self, from: &str) -> Option<&'static str> {
        match self.steps.get(from)? {
            Step::Upcaster(_) => Some("upcaster"),
            Step::Defaults => Some("as is"),
        }
    }

    /// The linked upcasters, by module digest: what the next registry reuses.
    pub fn upcasters(&self) -> HashMap<String, Arc<LinkedUpcaster>> {
        self.steps
            .values()
            .filter_map(|step| match step {
                Step::Upcaster(linked) => Some((linked.sha256().to_owned(), linked.clone())),
                Step::Defaults => None,
            })
            .collect()
    }

    pub fn book(&self) -> &Book {
        &self.book
    }

    pub fn policy(&self) -> SchemaPolicy {
        self.policy
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL the host serves the schema of `ty` at.
    pub fn schema_url(&self, ty: &str) -> String {
        format!("{}/admin/schemas/{ty}", self.base_url)
    }

    pub fn schema(&self, ty: &str) -> Option<&SchemaRecord> {
        self.book.schemas.get(ty)
    }

    /// The mode of `family` now.
    pub fn mode(&self, family: &str) -> Compatibility {
        self.book.mode(family, self.policy.compatibility)
    }

    /// Whether nothing is registered and nothing is required: then nothing is checked.
    fn is_idle(&self) -> bool {
        self.compiled.is_empty() && !self.policy.require
    }

    /// What is wrong with `event`'s data for its type's schema, as `violations` (`None`:
    /// nothing, or nothing to check against).
    fn violations(&self, event: &Event) -> Result<Option<(&'static str, Vec<Violation>)>, String> {
        let Some(schema) = self.compiled.get(event.ty()) else {
            if self.policy.require {
                return Err(format!(
                    "`{}` has no registered schema, and the app requires one for every type \
                     (`[schemas] require = true`)",
                    event.ty()
                ));
            }
            return Ok(None);
        };
        let data = match json_data(event) {
            Ok(data) => data,
            Err(why) => {
                return Ok(Some((
                    "data",
                    vec![Violation {
                        pointer: String::new(),
                        rule: why,
                    }],
                )));
            }
        };
        Ok(schema
            .check(&data)
            .err()
            .map(|violations| ("data", violations)))
    }

    /// Check a producer's event against its type's schema; set its `dataschema` to the
    /// schema's URL when it has one.
    pub fn admit(&self, event: Event) -> Result<Event, IngressError> {
        if self.is_idle() {
            return Ok(event);
        }
        match self.violations(&event) {
            Err(why) => Err(IngressError::NoSchema {
                ty: event.ty().to_owned(),
                reason: why,
            }),
            Ok(Some((_, violations))) => Err(IngressError::SchemaMismatch {
                ty: event.ty().to_owned(),
                schema: self.schema_url(event.ty()),
                violations,
            }),
            Ok(None) => Ok(self.with_dataschema(event)),
        }
    }

    fn with_dataschema(&self, event: Event) -> Event {
        match self.compiled.contains_key(event.ty()) {
            true => {
                let url = self.schema_url(event.ty());
                event.with_dataschema(url)
            }
            false => event,
        }
    }

    /// Check the events one invocation emitted, as [`Registry::admit`] does; the first
    /// that does not match fails the invocation with the message returned.
    pub fn check_emitted(&self, emitted: Vec<Event>) -> Result<Vec<Event>, String> {
        if self.is_idle() || emitted.is_empty() {
            return Ok(emitted);
        }
        let mut checked = Vec::with_capacity(emitted.len());
        for (index, event) in emitted.into_iter().enumerate() {
            match self.violations(&event) {
                Err(why) => return Err(format!("emitted event {index}: {why}")),
                Ok(Some((_, violations))) => {
                    return Err(format!(
                        "emitted event {index} (`{}`) does not match its schema: {}",
                        event.ty(),
                        describe(&violations)
                    ));
                }
                Ok(None) => checked.push(self.with_dataschema(event)),
            }
        }
        Ok(checked)
    }

    /// What a handler subscribed as `settings` makes of type `ty`.
    fn reading(&self, settings: &HandlerSettings, ty: &str) -> Reading {
        if settings.subscribe.iter().any(|s| s == ty) {
            return Reading::AsIs;
        }
        let Some(from) = VersionedType::parse(ty) else {
            return Reading::AsIs;
        };
        let subscribed: Vec<u32> = settings
            .subscribe
            .iter()
            .filter_map(|s| VersionedType::parse(s))
            .filter(|s| s.family() == from.family())
            .map(|s| s.version())
            .collect();
        // The nearest version above that takes it in: the fewest steps.
        let to = subscribed
            .iter()
            .copied()
            .filter(|&to| to > from.version() && settings.accept_older.oldest(to) <= from.version())
            .min();
        match to {
            Some(to) => Reading::Upcast { from, to },
            None if subscribed.is_empty() => Reading::AsIs,
            None => Reading::NotAccepted { subscribed },
        }
    }

    /// Why there is no way from `from` up to version `to`, if there is none.
    fn missing_step(&self, from: &VersionedType, to: u32) -> Option<String> {
        (from.version()..to).find_map(|version| {
            let at = from.at(version).to_string();
            if self.steps.contains_key(&at) {
                return None;
            }
            Some(self.no_step.get(&at).cloned().unwrap_or_else(|| {
                let next = from.at(version + 1);
                match (
                    self.book.schemas.contains_key(&at),
                    self.book.schemas.contains_key(&next.to_string()),
                ) {
                    (_, false) => format!("`{next}` has no registered schema"),
                    (false, true) => format!(
                        "`{at}` has no registered schema to prove `{next}` reads it, and no \
                         upcaster from `{at}` is registered"
                    ),
                    (true, true) => format!("no upcaster from `{at}` is registered"),
                }
            }))
        })
    }

    /// `event` as the handler subscribed as `settings` reads it: `None` when as it is, else
    /// upcast step by step, each step's output checked against its version's schema. An
    /// error names the step that failed; the delivery cannot succeed, and is dead-lettered.
    pub async fn read_as(
        &self,
        runtime: &Runtime,
        settings: &HandlerSettings,
        event: &Event,
    ) -> Result<Option<Event>, String> {
        let (from, to) = match self.reading(settings, event.ty()) {
            Reading::AsIs => return Ok(None),
            Reading::Upcast { from, to } => (from, to),
            Reading::NotAccepted { subscribed } => {
                return Err(format!(
                    "the handler reads `{}` only as {}; it does not take `{}` in",
                    from_family(event.ty()),
                    versions(&subscribed),
                    event.ty()
                ));
            }
        };
        let mut current = event.clone();
        for version in from.version()..to {
            let at = from.at(version);
            let next = from.at(version + 1);
            let next_ty = next.to_string();
            let step = self.steps.get(&at.to_string()).ok_or_else(|| {
                let why = self.missing_step(&at, version + 1).unwrap_or_default();
                format!("no way to upcast `{at}` to `{next}`: {why}")
            })?;
            current = match step {
                Step::Upcaster(upcaster) => runtime
                    .upcast(upcaster, &current, &next_ty)
                    .await
                    .map_err(|err| {
                        format!(
                            "upcasting `{at}` to `{next}` (upcaster {}) failed: {err}",
                            short(upcaster.sha256())
                        )
                    })?,
                Step::Defaults => self.fill_defaults(&current, &next_ty)?,
            };
            if let Some(schema) = self.compiled.get(&next_ty) {
                let data = json_data(&current)
                    .map_err(|why| format!("upcasting `{at}` to `{next}` gave data that {why}"))?;
                if let Err(violations) = schema.check(&data) {
                    return Err(format!(
                        "upcasting `{at}` to `{next}` gave data that does not match the schema \
                         of `{next}`: {}",
                        describe(&violations)
                    ));
                }
                current = current.with_dataschema(self.schema_url(&next_ty));
            }
        }
        Ok(Some(current))
    }

    /// Run `handler` on `event` as it reads it (upcast first, if it reads a newer version),
    /// and check what it emitted against the schemas: the delivery path both schedulers take.
    pub async fn invoke(
        &self,
        runtime: &Runtime,
        handler: &DeployedHandler,
        event: &Event,
        seq: i64,
        state: StateReader,
    ) -> Result<Staged, InvokeError> {
        let upcast = self
            .read_as(runtime, handler.settings(), event)
            .await
            .map_err(InvokeError::Upcast)?;
        let mut staged = runtime
            .invoke(handler, upcast.as_ref().unwrap_or(event), seq, state)
            .await?;
        staged.emitted = self
            .check_emitted(std::mem::take(&mut staged.emitted))
            .map_err(InvokeError::InvalidEmit)?;
        Ok(staged)
    }

    /// `event` relabelled as `to`, with the defaults of `to`'s schema filled in.
    fn fill_defaults(&self, event: &Event, to: &str) -> Result<Event, String> {
        let schema = self.book.schemas.get(to).map(|r| &r.schema);
        let mut data = json_data(event).map_err(|why| format!("`{}`'s data {why}", event.ty()))?;
        if let Some(schema) = schema {
            compat::fill_defaults(schema, &mut data);
        }
        let mut builder = event.clone().into_builder().retype(to);
        if event.data().is_some() || !data.is_null() {
            builder = builder.data(event.datacontenttype(), data.to_string());
        }
        builder.build().map_err(|err| err.to_string())
    }

    /// The deploy gate for one handler: what stops it from running as `settings` on this
    /// registry, given the deliveries `pending` for it by type (`None`: not known here).
    /// Empty when it may run.
    pub fn gate(
        &self,
        handler: &HandlerName,
        settings: &HandlerSettings,
        pending: Option<&[(String, u64)]>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for ty in &settings.subscribe {
            if self.policy.require && !self.book.schemas.contains_key(ty) {
                problems.push(format!(
                    "handler `{handler}` subscribes to `{ty}`, which has no registered schema, \
                     and the app requires one (`[schemas] require = true`)"
                ));
            }
            let Some(parsed) = VersionedType::parse(ty) else {
                continue;
            };
            let oldest = settings.accept_older.oldest(parsed.version());
            if oldest == parsed.version() {
                continue;
            }
            if !self.book.schemas.contains_key(ty) {
                problems.push(format!(
                    "handler `{handler}` reads older versions of `{}` as `{ty}` \
                     (`accept_older`), but `{ty}` has no registered schema to check upcast \
                     events against",
                    parsed.family()
                ));
                continue;
            }
            for (version, _) in self.book.versions(parsed.family()) {
                if version < oldest || version >= parsed.version() {
                    continue;
                }
                // Only versions no nearer subscription takes in are this one's to read.
                if !matches!(self.reading(settings, &parsed.at(version).to_string()), Reading::Upcast { to, .. } if to == parsed.version())
                {
                    continue;
                }
                if let Some(why) = self.missing_step(&parsed.at(version), parsed.version()) {
                    problems.push(format!(
                        "handler `{handler}` reads `{ty}`, and `{}` is registered with no \
                         upcast path to it: {why}",
                        parsed.at(version)
                    ));
                }
            }
        }
        for (ty, count) in pending.unwrap_or_default() {
            let why = match self.reading(settings, ty) {
                Reading::AsIs => continue,
                Reading::NotAccepted { subscribed } => format!(
                    "it reads `{}` only as {} (set `accept_older` to take older versions in)",
                    from_family(ty),
                    versions(&subscribed)
                ),
                Reading::Upcast { from, to } => match self.missing_step(&from, to) {
                    None => continue,
                    Some(why) => format!("there is no upcast path to `{}`: {why}", from.at(to)),
                },
            };
            problems.push(format!(
                "{count} pending deliver{} of `{ty}` would reach handler `{handler}`, which \
                 cannot read {}: {why}",
                if *count == 1 { "y" } else { "ies" },
                if *count == 1 { "it" } else { "them" },
            ));
        }
        problems
    }

    /// The registered versions of every family, for the admin API's listing.
    pub fn families(&self) -> BTreeMap<String, Vec<u32>> {
        let mut families: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for ty in self.book.schemas.keys() {
            if let Some(parsed) = VersionedType::parse(ty) {
                families
                    .entry(parsed.family().to_owned())
                    .or_default()
                    .push(parsed.version());
            }
        }
        families
    }
}

/// The family of `ty`, or `ty` itself when it has none.
fn from_family(ty: &str) -> String {
    VersionedType::parse(ty).map_or_else(|| ty.to_owned(), |t| t.family().to_owned())
}

fn versions(versions: &[u32]) -> String {
    let listed: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
    listed.join(", ")
}

fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// An event's data as JSON (absent data is `null`), or why it is not JSON.
fn json_data(event: &Event) -> Result<Value, String> {
    if let Some(media) = event.datacontenttype()
        && !crate::event::is_json_media_type(media)
    {
        return Err(format!(
            "is `{media}`, not JSON: a schema describes JSON data"
        ));
    }
    match event.data() {
        None => Ok(Value::Null),
        Some(bytes) => {
            serde_json::from_slice(bytes).map_err(|err| format!("is not valid JSON: {err}"))
        }
    }
}

#[cfg(test)]
impl Registry {
    /// A registry of `book` without upcasters, for tests of the rules.
    pub fn of_book(book: Book, policy: SchemaPolicy) -> Registry {
        Registry::build(
            book,
            policy,
            "http://host",
            &HashMap::new(),
            &Registry::default(),
        )
        .unwrap_or_else(|problems| panic!("{problems:?}"))
    }
}

/// How the settings read `ty`'s family, for tests.
#[cfg(test)]
fn accepts(settings: &HandlerSettings, registry: &Registry, ty: &str) -> &'static str {
    match registry.reading(settings, ty) {
        Reading::AsIs => "as is",
        Reading::Upcast { .. } => "upcast",
        Reading::NotAccepted { .. } => "not accepted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemas::book::Registration;
    use crate::schemas::version::AcceptOlder;
    use crate::store::Origin;
    use serde_json::json;

    const V1: &str = "com.example.order.placed.v1";
    const V2: &str = "com.example.order.placed.v2";
    const V3: &str = "com.example.order.placed.v3";

    fn settings(subscribe: &[&str], accept_older: AcceptOlder) -> HandlerSettings {
        HandlerSettings {
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            accept_older,
            ..HandlerSettings::default()
        }
    }

    fn book(versions: &[(&str, Value)]) -> Book {
        let mut book = Book::default();
        for (ty, schema) in versions {
            let with = Registration {
                compatibility: Some(Compatibility::None),
                ..Registration::default()
            };
            book.register(
                ty,
                schema.clone(),
                with,
                Compatibility::Backward,
                Origin::Api,
                1,
            )
            .unwrap();
        }
        book
    }

    /// Closed: a field added to an open schema could clash with one its events carry.
    fn sku() -> Value {
        json!({"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}},
            "additionalProperties": false})
    }

    fn sku_and_currency() -> Value {
        json!({"type": "object", "required": ["sku", "currency"],
            "properties": {"sku": {"type": "string"}, "currency": {"type": "string"}}})
    }

    fn with_default_currency() -> Value {
        json!({"type": "object", "required": ["sku", "currency"],
            "properties": {"sku": {"type": "string"}, "currency": {"type": "string", "default": "EUR"}}})
    }

    fn name() -> HandlerName {
        "inventory".parse().unwrap()
    }

    #[test]
    fn reads_older_versions_only_when_accepted() {
        let registry = Registry::of_book(Book::default(), SchemaPolicy::default());
        let exact = settings(&[V2], AcceptOlder::No);
        assert_eq!(accepts(&exact, &registry, V2), "as is");
        assert_eq!(accepts(&exact, &registry, V1), "not accepted");
        assert_eq!(accepts(&exact, &registry, "other.v1"), "as is");
        let older = settings(&[V3], AcceptOlder::From(2));
        assert_eq!(accepts(&older, &registry, V2), "upcast");
        assert_eq!(accepts(&older, &registry, V1), "not accepted");
    }

    #[test]
    fn the_gate_wants_a_path_from_every_registered_older_version() {
        let registry = Registry::of_book(
            book(&[(V1, sku()), (V2, sku_and_currency())]),
            SchemaPolicy::default(),
        );
        let problems = registry.gate(&name(), &settings(&[V2], AcceptOlder::All), None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("`com.example.order.placed.v1` is registered with no upcast path"),
            "{problems:?}"
        );
        assert!(problems[0].contains("/currency"), "{problems:?}");
        // Not reading older versions, it needs no path.
        assert!(
            registry
                .gate(&name(), &settings(&[V2], AcceptOlder::No), None)
                .is_empty()
        );
    }

    #[test]
    fn a_compatible_next_version_is_a_path_of_its_own() {
        let registry = Registry::of_book(
            book(&[(V1, sku()), (V2, with_default_currency())]),
            SchemaPolicy::default(),
        );
        assert!(
            registry
                .gate(&name(), &settings(&[V2], AcceptOlder::All), None)
                .is_empty()
        );
    }

    #[test]
    fn the_gate_wants_the_target_schema_and_readable_pending_deliveries() {
        let registry = Registry::of_book(book(&[(V1, sku())]), SchemaPolicy::default());
        let problems = registry.gate(&name(), &settings(&[V2], AcceptOlder::All), None);
        assert!(
            problems[0].contains("has no registered schema to check upcast events against"),
            "{problems:?}"
        );
        let pending = [(V1.to_owned(), 3)];
        let problems = registry.gate(&name(), &settings(&[V2], AcceptOlder::No), Some(&pending));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("3 pending deliveries of `com.example.order.placed.v1` would reach handler `inventory`"), "{problems:?}");
        assert!(problems[0].contains("set `accept_older`"), "{problems:?}");
        // A type of another family is not this handler's concern.
        let other = [("com.example.other.v1".to_owned(), 1)];
        assert!(
            registry
                .gate(&name(), &settings(&[V1], AcceptOlder::No), Some(&other))
                .is_empty()
        );
    }

    #[test]
    fn require_refuses_types_without_schemas() {
        let policy = SchemaPolicy {
            require: true,
            ..SchemaPolicy::default()
        };
        let registry = Registry::of_book(book(&[(V1, sku())]), policy);
        let problems = registry.gate(
            &name(),
            &settings(&[V1, "com.example.ping.v1"], AcceptOlder::No),
            None,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("`com.example.ping.v1`, which has no registered schema"));
        let ping = Event::builder("1", "/p", "com.example.ping.v1")
            .build()
            .unwrap();
        assert!(matches!(
            registry.admit(ping),
            Err(IngressError::NoSchema { .. })
        ));
    }

    #[test]
    fn admit_checks_data_and_sets_dataschema() {
        let registry = Registry::of_book(book(&[(V1, sku())]), SchemaPolicy::default());
        let good = Event::builder("1", "/p", V1)
            .json(&json!({"sku": "s"}))
            .build()
            .unwrap();
        let admitted = registry.admit(good).unwrap();
        assert_eq!(
            admitted.dataschema(),
            Some("http://host/admin/schemas/com.example.order.placed.v1")
        );
        let bad = Event::builder("2", "/p", V1)
            .json(&json!({"sku": 1}))
            .build()
            .unwrap();
        let Err(IngressError::SchemaMismatch { violations, .. }) = registry.admit(bad) else {
            panic!("not refused");
        };
        assert_eq!(violations[0].pointer, "/sku");
        let text = Event::builder("3", "/p", V1)
            .data(Some("text/plain"), "hi")
            .build()
            .unwrap();
        assert!(registry.admit(text).is_err());
        let unregistered = Event::builder("4", "/p", "x.v1").build().unwrap();
        assert_eq!(registry.admit(unregistered).unwrap().dataschema(), None);
    }

    #[test]
    fn emitted_events_are_checked_by_index() {
        let registry = Registry::of_book(book(&[(V1, sku())]), SchemaPolicy::default());
        let good = Event::builder("1", "/p", V1)
            .json(&json!({"sku": "s"}))
            .build()
            .unwrap();
        let bad = Event::builder("2", "/p", V1)
            .json(&json!({}))
            .build()
            .unwrap();
        let err = registry.check_emitted(vec![good, bad]).unwrap_err();
        assert!(err.starts_with("emitted event 1 (`com.example.order.placed.v1`) does not match its schema: \"\": required property \"sku\" is missing"), "{err}");
    }

    #[test]
    fn a_defaults_step_fills_the_next_versions_defaults() {
        let registry = Registry::of_book(
            book(&[(V1, sku()), (V2, with_default_currency())]),
            SchemaPolicy::default(),
        );
        let event = Event::builder("1", "/p", V1)
            .json(&json!({"sku": "s"}))
            .build()
            .unwrap();
        let up = registry.fill_defaults(&event, V2).unwrap();
        assert_eq!(up.ty(), V2);
        let data: Value = serde_json::from_slice(up.data().unwrap()).unwrap();
        assert_eq!(data, json!({"sku": "s", "currency": "EUR"}));
    }
}
