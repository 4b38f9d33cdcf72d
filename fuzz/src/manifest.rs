//! The manifest targets: what must hold of `Manifest::parse` and `HandlerSettings::parse_toml`,
//! and a generator of mostly-valid manifests that gets past the TOML syntax into the rules.

use std::path::Path;

use arbitrary::Arbitrary;
use evhost::config::{self, HandlerSettings, Manifest, ManifestError};
use toml::{Table, Value};

const MANIFEST_PATH: &str = "fuzz/evhost.toml";
const SETTINGS_ORIGIN: &str = "settings.toml";

/// Parses `text` as a manifest and as a deploy's settings, and checks:
///
/// - a manifest that parses is a plan the host may trust: unique handler names, and each
///   handler's settings valid (below);
/// - settings that parse are within their documented bounds, and read back to the same value
///   from the store's JSON (`to_json` / `from_json`, the same text again) and from the TOML
///   a deploy sends (`to_toml` / `parse_toml`);
/// - a refusal has at least one problem, each naming the file it is about;
/// - the store's reader of settings takes any text without panicking.
pub fn check_text(text: &str) {
    match Manifest::parse(text, Path::new(MANIFEST_PATH)) {
        Ok(manifest) => {
            let mut names: Vec<_> = manifest.handlers.iter().map(|h| h.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                manifest.handlers.len(),
                "duplicate names in {manifest:?}"
            );
            for handler in &manifest.handlers {
                assert!(
                    handler.module.starts_with(&manifest.dir) || handler.module.is_absolute(),
                    "{handler:?} is not resolved against {:?}",
                    manifest.dir
                );
                assert!(handler.build.as_deref() != Some(""), "{handler:?}");
                check_settings(&handler.settings);
            }
        }
        Err(error) => check_refusal(&error, MANIFEST_PATH),
    }
    match HandlerSettings::parse_toml(text, SETTINGS_ORIGIN) {
        Ok(settings) => check_settings(&settings),
        Err(error) => check_refusal(&error, SETTINGS_ORIGIN),
    }
    let _ = HandlerSettings::from_json(text);
}

fn check_refusal(error: &ManifestError, file: &str) {
    assert!(!error.problems.is_empty(), "a refusal without a problem");
    for problem in &error.problems {
        assert_eq!(problem.file, file, "{problem:?}");
        assert!(!problem.message.is_empty(), "{problem:?}");
    }
}

fn check_settings(settings: &HandlerSettings) {
    assert!(!settings.subscribe.is_empty(), "{settings:?}");
    assert!((1..=config::MAX_CONCURRENCY).contains(&settings.concurrency));
    assert!(settings.max_pending >= 1);
    assert!(!settings.timeout.is_zero() && settings.timeout <= config::MAX_TIMEOUT);
    assert!((1..=config::MAX_MEMORY_MB).contains(&settings.memory_mb));
    assert!(settings.max_attempts >= 1);
    assert!(!settings.backoff.initial.is_zero());
    assert!(settings.backoff.initial <= settings.backoff.max);
    assert!(settings.backoff.max <= config::MAX_BACKOFF);
    if let Some(rate) = settings.rate {
        assert!(rate.tokens >= 1);
    }

    let json = settings.to_json();
    let stored = HandlerSettings::from_json(&json)
        .unwrap_or_else(|error| panic!("{settings:?} as {json} does not read back: {error}"));
    assert_eq!(&stored, settings, "through {json}");
    assert_eq!(stored.to_json(), json);

    let toml = settings.to_toml();
    let sent = HandlerSettings::parse_toml(&toml, "to_toml")
        .unwrap_or_else(|error| panic!("{settings:?} as {toml} does not read back: {error}"));
    assert_eq!(&sent, settings, "through {toml}");
}

// The generator. Each value is usually one the rules accept, sometimes one at or past a
// bound, sometimes the wrong type, so that most manifests are valid or nearly so.

/// A manifest: the `[app]` table, the handlers, and a stray top-level key.
#[derive(Debug, Arbitrary)]
pub struct GenManifest {
    app: Option<GenApp>,
    handlers: Vec<GenHandler>,
    /// `[handler]` (one table) rather than `[[handler]]`, a common slip.
    handler_as_table: bool,
    stray: Option<(GenKey, GenValue)>,
}

#[derive(Debug, Arbitrary)]
struct GenApp {
    name: Option<GenName>,
    stray: Option<(GenKey, GenValue)>,
}

/// One handler, or a deploy's settings when rendered alone.
#[derive(Debug, Arbitrary)]
pub struct GenHandler {
    name: Option<GenName>,
    module: Option<GenText>,
    build: Option<GenText>,
    subscribe: Option<GenSubscribe>,
    concurrency: Option<GenInt>,
    ordering: Option<GenChoice>,
    key: Option<GenChoice>,
    max_pending: Option<GenInt>,
    timeout_ms: Option<GenInt>,
    memory_mb: Option<GenInt>,
    max_attempts: Option<GenInt>,
    backoff: Option<GenBackoff>,
    rate: Option<GenRate>,
    config: Option<Vec<(GenKey, GenValue)>>,
    stray: Option<(GenKey, GenValue)>,
}

#[derive(Debug, Arbitrary)]
enum GenName {
    Shop(u8),
    Text(String),
    Value(GenValue),
}

#[derive(Debug, Arbitrary)]
enum GenText {
    Path(u8),
    Text(String),
    Value(GenValue),
}

#[derive(Debug, Arbitrary)]
enum GenSubscribe {
    Types(Vec<GenType>),
    Value(GenValue),
}

#[derive(Debug, Arbitrary)]
enum GenType {
    Versioned(u8),
    Text(String),
    Value(GenValue),
}

#[derive(Debug, Arbitrary)]
enum GenInt {
    Small(u8),
    Edge(u8),
    Any(i64),
    Value(GenValue),
}

#[derive(Debug, Arbitrary)]
enum GenChoice {
    Known(u8),
    Text(String),
    Value(GenValue),
}

#[derive(Debug, Arbitrary)]
enum GenBackoff {
    Table {
        initial_ms: Option<GenInt>,
        max_ms: Option<GenInt>,
        stray: Option<(GenKey, GenValue)>,
    },
    Value(GenValue),
}

#[derive(Debug, Arbitrary)]
enum GenRate {
    Rate(GenInt, u8),
    Text(String),
    Value(GenValue),
}

#[derive(Debug, Arbitrary)]
enum GenKey {
    Known(u8),
    Text(String),
}

/// Any TOML value, shallow.
#[derive(Debug, Arbitrary)]
enum GenValue {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime,
    Array(Vec<GenScalar>),
    Table(Vec<(String, GenScalar)>),
}

#[derive(Debug, Arbitrary)]
enum GenScalar {
    String(String),
    Integer(i64),
    Boolean(bool),
}

const NAMES: &[&str] = &[
    "shop",
    "inventory",
    "payment",
    "a",
    "h-1",
    "x_y",
    "Shop",
    "",
    "a b",
];
const PATHS: &[&str] = &[
    "h.wasm",
    "../target/h.wasm",
    "/opt/h.wasm",
    "",
    "cargo build",
];
const TYPES: &[&str] = &[
    "com.example.shop.order.placed.v1",
    "com.example.shop.stock.added.v1",
    "t.v1",
    "",
    "a b",
    "\u{0}",
];
const CHOICES: &[&str] = &[
    "unordered",
    "key",
    "serial",
    "partitionkey",
    "subject",
    "source",
    "Key",
];
const KEYS: &[&str] = &[
    "subscribe",
    "accept_older",
    "concurrency",
    "ordering",
    "key",
    "max_pending",
    "timeout_ms",
    "memory_mb",
    "max_attempts",
    "backoff",
    "rate",
    "config",
    "name",
    "module",
    "build",
    "initial_ms",
    "max_ms",
    "",
];
/// The bounds the rules name, and one past each.
const EDGES: &[i64] = &[
    0,
    1,
    -1,
    1024,
    1025,
    4096,
    4097,
    600_000,
    600_001,
    86_400_000,
    86_400_001,
    u32::MAX as i64,
    u32::MAX as i64 + 1,
    i64::MAX,
    i64::MIN,
];

fn pick<'a>(items: &[&'a str], n: u8) -> &'a str {
    items[usize::from(n) % items.len()]
}

impl GenManifest {
    pub fn handlers(&self) -> &[GenHandler] {
        &self.handlers
    }

    /// The manifest's TOML text.
    pub fn render(&self) -> String {
        let mut root = Table::new();
        if let Some(app) = &self.app {
            let mut table = Table::new();
            if let Some(name) = &app.name {
                table.insert("name".into(), name.value());
            }
            insert_stray(&mut table, &app.stray);
            root.insert("app".into(), Value::Table(table));
        }
        let handlers: Vec<Value> = self
            .handlers
            .iter()
            .map(|h| Value::Table(h.table()))
            .collect();
        match (self.handler_as_table, handlers.first()) {
            (true, Some(first)) => {
                root.insert("handler".into(), first.clone());
            }
            (false, Some(_)) => {
                root.insert("handler".into(), Value::Array(handlers));
            }
            (_, None) => {}
        }
        insert_stray(&mut root, &self.stray);
        root.to_string()
    }
}

impl GenHandler {
    /// The handler's keys as a deploy's settings text.
    pub fn render(&self) -> String {
        self.table().to_string()
    }

    fn table(&self) -> Table {
        let mut table = Table::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                table.insert(key.into(), value);
            }
        };
        put("name", self.name.as_ref().map(GenName::value));
        put("module", self.module.as_ref().map(GenText::value));
        put("build", self.build.as_ref().map(GenText::value));
        put(
            "subscribe",
            self.subscribe.as_ref().map(GenSubscribe::value),
        );
        put("concurrency", self.concurrency.as_ref().map(GenInt::value));
        put("ordering", self.ordering.as_ref().map(GenChoice::value));
        put("key", self.key.as_ref().map(GenChoice::value));
        put("max_pending", self.max_pending.as_ref().map(GenInt::value));
        put("timeout_ms", self.timeout_ms.as_ref().map(GenInt::value));
        put("memory_mb", self.memory_mb.as_ref().map(GenInt::value));
        put(
            "max_attempts",
            self.max_attempts.as_ref().map(GenInt::value),
        );
        put("backoff", self.backoff.as_ref().map(GenBackoff::value));
        put("rate", self.rate.as_ref().map(GenRate::value));
        put(
            "config",
            self.config.as_ref().map(|entries| {
                let table = entries.iter().map(|(k, v)| (k.key(), v.value())).collect();
                Value::Table(table)
            }),
        );
        insert_stray(&mut table, &self.stray);
        table
    }
}

fn insert_stray(table: &mut Table, stray: &Option<(GenKey, GenValue)>) {
    if let Some((key, value)) = stray {
        table.insert(key.key(), value.value());
    }
}

impl GenName {
    fn value(&self) -> Value {
        match self {
            Self::Shop(n) => Value::String(pick(NAMES, *n).to_owned()),
            Self::Text(text) => Value::String(text.clone()),
            Self::Value(value) => value.value(),
        }
    }
}

impl GenText {
    fn value(&self) -> Value {
        match self {
            Self::Path(n) => Value::String(pick(PATHS, *n).to_owned()),
            Self::Text(text) => Value::String(text.clone()),
            Self::Value(value) => value.value(),
        }
    }
}

impl GenSubscribe {
    fn value(&self) -> Value {
        match self {
            Self::Types(types) => Value::Array(types.iter().map(GenType::value).collect()),
            Self::Value(value) => value.value(),
        }
    }
}

impl GenType {
    fn value(&self) -> Value {
        match self {
            Self::Versioned(n) => Value::String(pick(TYPES, *n).to_owned()),
            Self::Text(text) => Value::String(text.clone()),
            Self::Value(value) => value.value(),
        }
    }
}

impl GenInt {
    fn value(&self) -> Value {
        match self {
            Self::Small(n) => Value::Integer(i64::from(*n)),
            Self::Edge(n) => Value::Integer(EDGES[usize::from(*n) % EDGES.len()]),
            Self::Any(n) => Value::Integer(*n),
            Self::Value(value) => value.value(),
        }
    }
}

impl GenChoice {
    fn value(&self) -> Value {
        match self {
            Self::Known(n) => Value::String(pick(CHOICES, *n).to_owned()),
            Self::Text(text) => Value::String(text.clone()),
            Self::Value(value) => value.value(),
        }
    }
}

impl GenBackoff {
    fn value(&self) -> Value {
        match self {
            Self::Table {
                initial_ms,
                max_ms,
                stray,
            } => {
                let mut table = Table::new();
                if let Some(initial) = initial_ms {
                    table.insert("initial_ms".into(), initial.value());
                }
                if let Some(max) = max_ms {
                    table.insert("max_ms".into(), max.value());
                }
                insert_stray(&mut table, stray);
                Value::Table(table)
            }
            Self::Value(value) => value.value(),
        }
    }
}

impl GenRate {
    fn value(&self) -> Value {
        match self {
            Self::Rate(tokens, unit) => {
                let tokens = match tokens.value() {
                    Value::Integer(n) => n.to_string(),
                    other => other.to_string(),
                };
                let unit = pick(&["s", "m", "h", "d", ""], *unit);
                Value::String(format!("{tokens}/{unit}"))
            }
            Self::Text(text) => Value::String(text.clone()),
            Self::Value(value) => value.value(),
        }
    }
}

impl GenKey {
    fn key(&self) -> String {
        match self {
            Self::Known(n) => pick(KEYS, *n).to_owned(),
            Self::Text(text) => text.clone(),
        }
    }
}

impl GenValue {
    fn value(&self) -> Value {
        match self {
            Self::String(s) => Value::String(s.clone()),
            Self::Integer(n) => Value::Integer(*n),
            Self::Float(x) => Value::Float(*x),
            Self::Boolean(b) => Value::Boolean(*b),
            Self::Datetime => "1979-05-27T07:32:00Z"
                .parse()
                .map_or_else(|_| Value::Boolean(false), Value::Datetime),
            Self::Array(items) => Value::Array(items.iter().map(GenScalar::value).collect()),
            Self::Table(entries) => Value::Table(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value()))
                    .collect(),
            ),
        }
    }
}

impl GenScalar {
    fn value(&self) -> Value {
        match self {
            Self::String(s) => Value::String(s.clone()),
            Self::Integer(n) => Value::Integer(*n),
            Self::Boolean(b) => Value::Boolean(*b),
        }
    }
}
