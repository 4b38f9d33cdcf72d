//! The application manifest (`evhost.toml`): its format, its defaults and its rules.
//!
//! [`Manifest::load`] reads the file and [`Manifest::parse`] turns it into a validated plan
//! ([`Manifest`], [`HandlerSpec`], [`HandlerSettings`]) that the rest of the host trusts without
//! checking again: the CLI runs each handler's `build`, the runtime loads its `module` under its
//! memory and time limits, the router takes its subscriptions, and the scheduler its
//! concurrency, ordering, queue, retry and rate rules. A hot deploy carries the same settings
//! keys on their own; [`HandlerSettings::parse_toml`] reads those with the same rules.
//!
//! Every problem is reported at once, each naming the file, the handler and the key, so that a
//! user fixes a manifest in one pass instead of one error per run. That is why the text is read
//! into a plain [`toml::Table`] and walked by hand rather than deserialized into
//! `#[serde(deny_unknown_fields)]` structs: serde stops at the first unknown key or bad value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::name::{AppName, HandlerName, NameError};
use crate::schemas::compat::Compatibility;
use crate::schemas::policy::SchemaPolicy;
use crate::schemas::version::{self, AcceptOlder, VersionedType};

/// The manifest's file name, looked up when `evhost up` is given a folder.
pub const MANIFEST_FILE: &str = "evhost.toml";

/// Invocations of one handler in flight when `concurrency` is not set.
pub const DEFAULT_CONCURRENCY: u32 = 16;

/// Upper bound for `concurrency`: each invocation in flight holds a Wasm instance and its memory.
pub const MAX_CONCURRENCY: u32 = 1024;

/// Deliveries waiting for one handler when `max_pending` is not set; beyond this, ingress
/// answers 429.
pub const DEFAULT_MAX_PENDING: u64 = 10_000;

/// Wall-clock budget of one invocation when `timeout_ms` is not set; past it the invocation is
/// interrupted and counts as a retryable failure.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5_000);

/// Upper bound for `timeout_ms`: a longer invocation holds its delivery, and for keyed or serial
/// handlers everything queued behind it, for too long to be an event handler.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// Linear memory one invocation may grow to when `memory_mb` is not set; past it, growth fails
/// and the invocation usually traps.
pub const DEFAULT_MEMORY_MB: u32 = 64;

/// Upper bound for `memory_mb`: all a 32-bit Wasm memory can address.
pub const MAX_MEMORY_MB: u32 = 4096;

/// Bytes one invocation may stage, in MiB, when `max_staged_mb` is not set: the state keys and
/// values it writes, the keys it reads (kept for the commit's conflict check) and the events
/// it emits. The host holds them in its own memory, outside `memory_mb`, until the commit
/// writes them in one transaction; the call that would pass the budget fails the invocation,
/// which counts as an attempt (retried, then dead-lettered).
pub const DEFAULT_MAX_STAGED_MB: u32 = 16;

/// Upper bound for `max_staged_mb`. A commit is one transaction on the store's single writer,
/// and every other append and commit waits while it lands; at a few hundred MiB that wait is
/// seconds.
pub const MAX_STAGED_MB: u32 = 256;

/// Distinct state keys one invocation may write or delete when `max_writes` is not set; the
/// write past it fails the invocation (an attempt, as for `max_staged_mb`).
pub const DEFAULT_MAX_WRITES: u32 = 10_000;

/// Upper bound for `max_writes`.
pub const MAX_WRITES: u32 = 1_000_000;

/// Events one invocation may emit when `max_emits` is not set; the emit past it fails the
/// invocation (an attempt, as for `max_staged_mb`).
pub const DEFAULT_MAX_EMITS: u32 = 1_000;

/// Upper bound for `max_emits`: each emitted event is a row and a routing in the commit.
pub const MAX_EMITS: u32 = 100_000;

/// Runs of one delivery, the first included, when `max_attempts` is not set; after the last
/// failure the delivery is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Delay before the first retry when `backoff.initial_ms` is not set; it doubles per attempt.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// Longest delay between retries when `backoff.max_ms` is not set.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(30_000);

/// Upper bound for either backoff delay. Keeps `Instant + delay` far from overflowing, and a
/// retry more than a day away is a dead letter in all but name.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

const TOP_KEYS: &[&str] = &[
    "app",
    "cluster",
    "handler",
    "ingress",
    "retention",
    "schema",
    "schemas",
];
const SCHEMAS_KEYS: &[&str] = &["require", "compatibility"];
const SCHEMA_KEYS: &[&str] = &["type", "file", "compatibility", "upcaster", "build"];
const CLUSTER_KEYS: &[&str] = &["stream", "replicas", "partitions"];
const APP_KEYS: &[&str] = &["name"];
const INGRESS_KEYS: &[&str] = &["accept", "unrouted", "max_batch"];
const RETENTION_KEYS: &[&str] = &["done_after", "max_log_bytes", "versions_kept", "interval"];

/// How long a settled event stays in the log when `[retention] done_after` is not set: the
/// week a producer's retry, an operator's look or a replay most often needs, and the least
/// time dedupe on (`source`, `id`) is promised for.
pub const DEFAULT_DONE_AFTER: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Versions of each handler kept, beyond the live one and the one a rollback returns to,
/// when `[retention] versions_kept` is not set; older ones are deleted, with every module
/// no kept version uses.
pub const DEFAULT_VERSIONS_KEPT: u32 = 10;

/// Upper bound for `versions_kept`: enough for any release history, small enough that the
/// pass that counts them stays cheap.
pub const MAX_VERSIONS_KEPT: u32 = 100_000;

/// How often retention runs when `[retention] interval` is not set.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Bounds for `interval`: below the lower one a pass would run back to back with the
/// next; above the upper one the log and the WAL could grow for too long unchecked.
pub const MIN_RETENTION_INTERVAL: Duration = Duration::from_millis(10);
pub const MAX_RETENTION_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// Lower bound for `max_log_bytes`: an empty store with a few modules takes about this much,
/// so a smaller limit could never be met.
pub const MIN_MAX_LOG_BYTES: u64 = 1 << 20;

/// Events one batch request may hold when `[ingress] max_batch` is not set; a larger batch is
/// refused with 413 before its events are decoded.
pub const DEFAULT_MAX_BATCH: usize = 1000;

/// Upper bound for `max_batch`: a batch is one transaction, and the commit's other requests
/// wait for it.
pub const MAX_MAX_BATCH: usize = 10_000;
/// Keys of a `[[handler]]` that describe the deployment unit rather than how it runs; a hot
/// deploy gets them from elsewhere (the URL and the uploaded module).
const HANDLER_KEYS: &[&str] = &["name", "module", "build"];
const SETTINGS_KEYS: &[&str] = &[
    "subscribe",
    "accept_older",
    "concurrency",
    "ordering",
    "key",
    "max_pending",
    "timeout_ms",
    "memory_mb",
    "max_staged_mb",
    "max_writes",
    "max_emits",
    "max_attempts",
    "backoff",
    "rate",
    "config",
];
const BACKOFF_KEYS: &[&str] = &["initial_ms", "max_ms"];

/// A validated `evhost.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest file, as the user named it.
    pub path: PathBuf,
    /// The folder holding the manifest: relative paths resolve against it and `build` commands
    /// run in it.
    pub dir: PathBuf,
    pub app: App,
    /// In manifest order; names are unique.
    pub handlers: Vec<HandlerSpec>,
    /// What ingress takes from producers.
    pub ingress: IngressPolicy,
    /// What the store deletes, and when.
    pub retention: RetentionPolicy,
    /// Where and how a cluster host keeps the app in JetStream; read only with `--cluster`.
    pub cluster: ClusterLayout,
    /// The `[schemas]` table.
    pub schema_policy: SchemaPolicy,
    /// The `[[schema]]` entries, in manifest order; types are unique.
    pub schemas: Vec<SchemaSpec>,
}

/// One `[[schema]]` entry: a version's schema, registered at start unless it is already
/// (registered schemas never change; an entry the manifest drops stays registered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSpec {
    /// `NAME.vN`.
    pub ty: String,
    /// The JSON Schema file, resolved against [`Manifest::dir`].
    pub file: PathBuf,
    /// The family's mode from this registration on.
    pub compatibility: Option<Compatibility>,
    /// A component upcasting the previous version into this one, resolved against
    /// [`Manifest::dir`]; it may not exist until `build` has run.
    pub upcaster: Option<PathBuf>,
    /// A shell command that produces `upcaster`, run by `evhost up --build`.
    pub build: Option<String>,
}

/// The `[cluster]` table: how the app is laid out in NATS JetStream when hosts run with
/// `--cluster` (see [`crate::cluster`]). Every host of one app must read the same table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    /// The name of the app's stream (and the prefix of its KV bucket and object store);
    /// `None`: `EVHOST_{app}`.
    pub stream: Option<String>,
    /// Copies JetStream keeps of everything (1, 3 or 5 servers).
    pub replicas: usize,
    /// The fixed number of partitions keys hash onto: at most this many deliveries of a
    /// key-ordered handler run at once across the cluster. Fixed for the app's life.
    pub partitions: u32,
}

/// Partitions when `[cluster] partitions` is not set.
pub const DEFAULT_PARTITIONS: u32 = 16;
/// Most partitions `[cluster] partitions` may ask for: a key-ordered handler's consumers
/// filter on each of its partitions by subject.
pub const MAX_PARTITIONS: u32 = 256;

impl Default for ClusterLayout {
    fn default() -> ClusterLayout {
        ClusterLayout {
            stream: None,
            replicas: 1,
            partitions: DEFAULT_PARTITIONS,
        }
    }
}

/// The `[retention]` table: what the store deletes in the background, and when. Nothing
/// with a delivery still pending or dead is ever deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// An event whose deliveries all settled (done or discarded) this long ago, or that had
    /// none and was received this long ago, is deleted with its deliveries and their
    /// attempts; with it goes its dedupe key. `None` (`"never"`): settled events stay.
    pub done_after: Option<Duration>,
    /// When the database's pages in use pass this many bytes, the oldest settled events are
    /// deleted first, whatever their age, until it is under again; if what is left cannot go
    /// (pending or dead), the host says so in its log and on `/metrics` and takes events on.
    /// `None`: no limit.
    pub max_log_bytes: Option<u64>,
    /// Versions of each handler kept beyond the live one and the one a rollback returns to.
    pub versions_kept: u32,
    /// How often the background pass runs (and the WAL is checkpointed).
    pub interval: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> RetentionPolicy {
        RetentionPolicy {
            done_after: Some(DEFAULT_DONE_AFTER),
            max_log_bytes: None,
            versions_kept: DEFAULT_VERSIONS_KEPT,
            interval: DEFAULT_RETENTION_INTERVAL,
        }
    }
}

/// The `[ingress]` table: which events producers may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPolicy {
    /// The only types producers may send (403 for others); `None`: any type.
    pub accept: Option<std::collections::BTreeSet<String>>,
    /// What an event no handler subscribes to gets.
    pub unrouted: Unrouted,
    /// Events one batch may hold.
    pub max_batch: usize,
}

impl Default for IngressPolicy {
    fn default() -> IngressPolicy {
        IngressPolicy {
            accept: None,
            unrouted: Unrouted::Store,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

/// `[ingress] unrouted`: what becomes of an event whose type no live handler subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// Stored in the log (it is what happened, and a handler deployed later may be fed from
    /// the log); it runs nothing.
    Store,
    /// Refused with 422, naming the type: for apps where such an event is a producer's
    /// mistake.
    Refuse,
}

/// The `[app]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: AppName,
}

/// One `[[handler]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSpec {
    pub name: HandlerName,
    /// The Wasm component, resolved against [`Manifest::dir`]; it may not exist until `build`
    /// has run.
    pub module: PathBuf,
    /// A shell command that produces `module`, run by `evhost up --build` in [`Manifest::dir`].
    pub build: Option<String>,
    pub settings: HandlerSettings,
}

/// How a handler runs: every handler key except `name`, `module` and `build`. This is also what
/// a hot deploy sends as its `config` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSettings {
    /// Event types, matched exactly against an event's `type`; at least one, no duplicates.
    pub subscribe: Vec<String>,
    /// Which older versions of the subscribed types it reads, upcast by the host.
    pub accept_older: AcceptOlder,
    /// Invocations in flight at once, 1..=[`MAX_CONCURRENCY`].
    pub concurrency: u32,
    pub ordering: Ordering,
    /// Where the ordering key comes from; only used with [`Ordering::Key`].
    pub key: KeySource,
    /// Deliveries waiting for this handler before ingress sheds load with 429.
    pub max_pending: u64,
    /// Wall-clock budget of one invocation.
    pub timeout: Duration,
    /// Linear memory one invocation may use, in MiB.
    pub memory_mb: u32,
    /// Bytes one invocation may stage, in MiB (see [`DEFAULT_MAX_STAGED_MB`]).
    pub max_staged_mb: u32,
    /// Distinct state keys one invocation may write or delete.
    pub max_writes: u32,
    /// Events one invocation may emit.
    pub max_emits: u32,
    /// Runs of one delivery, the first included, before it is dead-lettered; at least 1.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Token-bucket limit on invocations started; `None` is unlimited.
    pub rate: Option<Rate>,
    /// Settings the handler reads at run time; TOML integers, floats and booleans are kept in
    /// their TOML spelling.
    pub config: BTreeMap<String, String>,
}

/// Defaults for every setting, and no subscriptions: a plan needs at least one, so this alone is
/// not a valid deployment.
impl Default for HandlerSettings {
    fn default() -> Self {
        Self {
            subscribe: Vec::new(),
            accept_older: AcceptOlder::No,
            concurrency: DEFAULT_CONCURRENCY,
            ordering: Ordering::default(),
            key: KeySource::default(),
            max_pending: DEFAULT_MAX_PENDING,
            timeout: DEFAULT_TIMEOUT,
            memory_mb: DEFAULT_MEMORY_MB,
            max_staged_mb: DEFAULT_MAX_STAGED_MB,
            max_writes: DEFAULT_MAX_WRITES,
            max_emits: DEFAULT_MAX_EMITS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
            rate: None,
            config: BTreeMap::new(),
        }
    }
}

impl HandlerSettings {
    /// Reads a standalone table of settings keys (a hot deploy's `config` part). `origin` names
    /// where the text came from in problems, e.g. the `--config` file.
    pub fn parse_toml(text: &str, origin: &str) -> Result<HandlerSettings, ManifestError> {
        let mut report = Report::new(origin.to_owned());
        let Some(table) = parse_document(text, &mut report) else {
            return report.finish(HandlerSettings::default());
        };
        let settings = read_settings(&table, &[], &mut report);
        report.finish(settings)
    }

    /// The settings as a standalone TOML table that [`HandlerSettings::parse_toml`] reads back
    /// to the same value, e.g. to send a manifest's settings with a deploy.
    pub fn to_toml(&self) -> String {
        fn int(n: impl TryInto<i64>) -> Value {
            Value::Integer(n.try_into().unwrap_or(i64::MAX))
        }
        let mut table = Table::new();
        let subscribe = self.subscribe.iter().cloned().map(Value::String).collect();
        table.insert("subscribe".into(), Value::Array(subscribe));
        match self.accept_older {
            AcceptOlder::No => {}
            AcceptOlder::All => {
                table.insert("accept_older".into(), Value::Boolean(true));
            }
            from @ AcceptOlder::From(_) => {
                table.insert("accept_older".into(), Value::String(from.as_setting()));
            }
        }
        table.insert("concurrency".into(), int(self.concurrency));
        table.insert("ordering".into(), Value::String(self.ordering.to_string()));
        // `key` next to `ordering = "unordered"` is rejected, so it is only written where it is
        // accepted; serial keeps it so that the round trip is exact.
        if self.ordering != Ordering::Unordered {
            table.insert("key".into(), Value::String(self.key.to_string()));
        }
        table.insert("max_pending".into(), int(self.max_pending));
        table.insert("timeout_ms".into(), int(self.timeout.as_millis()));
        table.insert("memory_mb".into(), int(self.memory_mb));
        table.insert("max_staged_mb".into(), int(self.max_staged_mb));
        table.insert("max_writes".into(), int(self.max_writes));
        table.insert("max_emits".into(), int(self.max_emits));
        table.insert("max_attempts".into(), int(self.max_attempts));
        let mut backoff = Table::new();
        backoff.insert("initial_ms".into(), int(self.backoff.initial.as_millis()));
        backoff.insert("max_ms".into(), int(self.backoff.max.as_millis()));
        table.insert("backoff".into(), Value::Table(backoff));
        if let Some(rate) = self.rate {
            table.insert("rate".into(), Value::String(rate.to_string()));
        }
        let config = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        table.insert("config".into(), Value::Table(config));
        table.to_string()
    }

    /// The settings as canonical JSON: the form the store keeps them in. Canonical, so that
    /// two equal settings always have the same text: fields in one fixed order, `config`
    /// sorted by key, durations in milliseconds, the rate as the manifest spells it. What is
    /// compared is the typed value, never the text; the text only has to read back.
    pub fn to_json(&self) -> String {
        let stored = StoredSettings {
            subscribe: self.subscribe.clone(),
            accept_older: (self.accept_older != AcceptOlder::No)
                .then(|| self.accept_older.as_setting()),
            concurrency: self.concurrency,
            ordering: self.ordering.as_str().to_owned(),
            key: self.key.as_str().to_owned(),
            max_pending: self.max_pending,
            timeout_ms: duration_ms(self.timeout),
            memory_mb: self.memory_mb,
            max_staged_mb: self.max_staged_mb,
            max_writes: self.max_writes,
            max_emits: self.max_emits,
            max_attempts: self.max_attempts,
            backoff: StoredBackoff {
                initial_ms: duration_ms(self.backoff.initial),
                max_ms: duration_ms(self.backoff.max),
            },
            rate: self.rate.map(|rate| rate.to_string()),
            config: self.config.clone(),
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Reads what [`HandlerSettings::to_json`] wrote. The store wrote it from settings that
    /// were valid when deployed; a value that no longer reads is named in the error.
    pub fn from_json(text: &str) -> Result<HandlerSettings, String> {
        let stored: StoredSettings =
            serde_json::from_str(text).map_err(|err| format!("unreadable settings: {err}"))?;
        let stored_value = |key: &str, why: String| format!("key `{key}`: {why}");
        Ok(HandlerSettings {
            subscribe: stored.subscribe,
            accept_older: stored
                .accept_older
                .as_deref()
                .map(AcceptOlder::from_setting)
                .transpose()
                .map_err(|why| stored_value("accept_older", why))?
                .unwrap_or_default(),
            concurrency: stored.concurrency,
            ordering: choice(&Value::String(stored.ordering), Ordering::CHOICES)
                .map_err(|why| stored_value("ordering", why))?,
            key: choice(&Value::String(stored.key), KeySource::CHOICES)
                .map_err(|why| stored_value("key", why))?,
            max_pending: stored.max_pending,
            timeout: Duration::from_millis(stored.timeout_ms),
            memory_mb: stored.memory_mb,
            max_staged_mb: stored.max_staged_mb,
            max_writes: stored.max_writes,
            max_emits: stored.max_emits,
            max_attempts: stored.max_attempts,
            backoff: Backoff {
                initial: Duration::from_millis(stored.backoff.initial_ms),
                max: Duration::from_millis(stored.backoff.max_ms),
            },
            rate: stored
                .rate
                .map(|text| rate(&Value::String(text)).map_err(|why| stored_value("rate", why)))
                .transpose()?,
            config: stored.config,
        })
    }

    /// [`HandlerSettings::memory_mb`] in bytes, as the store limiter counts.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mb) * 1024 * 1024
    }

    /// [`HandlerSettings::max_staged_mb`] in bytes.
    pub fn max_staged_bytes(&self) -> u64 {
        u64::from(self.max_staged_mb) * 1024 * 1024
    }
}

/// [`HandlerSettings`] as the store keeps them (see [`HandlerSettings::to_json`]).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSettings {
    subscribe: Vec<String>,
    // Left out when it is the default, so that settings stored before it read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accept_older: Option<String>,
    concurrency: u32,
    ordering: String,
    key: String,
    max_pending: u64,
    timeout_ms: u64,
    memory_mb: u32,
    // Versions stored before these settings existed read back with the defaults.
    #[serde(default = "default_max_staged_mb")]
    max_staged_mb: u32,
    #[serde(default = "default_max_writes")]
    max_writes: u32,
    #[serde(default = "default_max_emits")]
    max_emits: u32,
    max_attempts: u32,
    backoff: StoredBackoff,
    rate: Option<String>,
    config: BTreeMap<String, String>,
}

fn default_max_staged_mb() -> u32 {
    DEFAULT_MAX_STAGED_MB
}

fn default_max_writes() -> u32 {
    DEFAULT_MAX_WRITES
}

fn default_max_emits() -> u32 {
    DEFAULT_MAX_EMITS
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredBackoff {
    initial_ms: u64,
    max_ms: u64,
}

/// Milliseconds of a duration the settings bound (at most a day), so the cast cannot wrap.
fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// In which order a handler's deliveries may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ordering {
    /// Any order, up to `concurrency` at once.
    #[default]
    Unordered,
    /// FIFO per key (see [`KeySource`]): one delivery per key at a time, different keys in
    /// parallel.
    Key,
    /// One delivery at a time, in order, whatever `concurrency` says.
    Serial,
}

impl Ordering {
    const CHOICES: &[(&str, Ordering)] = &[
        ("unordered", Ordering::Unordered),
        ("key", Ordering::Key),
        ("serial", Ordering::Serial),
    ];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::Unordered => "unordered",
            Ordering::Key => "key",
            Ordering::Serial => "serial",
        }
    }
}

impl fmt::Display for Ordering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event attribute that keys [`Ordering::Key`]. An event without it has no key and runs
/// unordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeySource {
    /// The `partitionkey` extension (CloudEvents partitioning).
    #[default]
    PartitionKey,
    Subject,
    Source,
}

impl KeySource {
    const CHOICES: &[(&str, KeySource)] = &[
        ("partitionkey", KeySource::PartitionKey),
        ("subject", KeySource::Subject),
        ("source", KeySource::Source),
    ];

    /// The manifest spelling, which is also the CloudEvents attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::PartitionKey => "partitionkey",
            KeySource::Subject => "subject",
            KeySource::Source => "source",
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Delays between retries: `initial`, doubling per attempt, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// At least 1 ms and at most `max`.
    pub initial: Duration,
    /// At most [`MAX_BACKOFF`].
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: DEFAULT_BACKOFF_INITIAL,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// A token-bucket rate: `tokens` invocations may start per `period`. Written `"200/s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// At least 1.
    pub tokens: u32,
    pub period: RatePeriod,
}

impl Rate {
    /// Tokens added to the bucket per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.tokens) / self.period.duration().as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tokens, self.period.as_str())
    }
}

/// The unit of a [`Rate`]; an enum rather than a `Duration` so that every rate can be written
/// back as the manifest spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RatePeriod {
    Second,
    Minute,
    Hour,
}

impl RatePeriod {
    pub fn duration(self) -> Duration {
        match self {
            RatePeriod::Second => Duration::from_secs(1),
            RatePeriod::Minute => Duration::from_secs(60),
            RatePeriod::Hour => Duration::from_secs(3600),
        }
    }

    /// The manifest spelling: `s`, `m` or `h`.
    pub fn as_str(self) -> &'static str {
        match self {
            RatePeriod::Second => "s",
            RatePeriod::Minute => "m",
            RatePeriod::Hour => "h",
        }
    }
}

/// Everything wrong with a manifest (or a deploy's settings), at least one problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub problems: Vec<ConfigProblem>,
}

/// One line per problem.
impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// One thing wrong, and where: ``evhost.toml: handler `inventory`: key `ordering`: ...``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The manifest path, or the origin given to [`HandlerSettings::parse_toml`].
    pub file: String,
    /// The handler's name; `#2` (its 1-based position) when it has no usable name.
    pub handler: Option<String>,
    /// The key, dotted below the top level: `backoff.max_ms`, `app.name`, `config.limit`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        match &self.handler {
            // A position, not a name: names never start with `#`.
            Some(handler) if handler.starts_with('#') => write!(f, ": handler {handler}")?,
            Some(handler) => write!(f, ": handler `{handler}`")?,
            None => {}
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Manifest {
    /// Reads and validates a manifest, given its path or the folder holding `evhost.toml`.
    pub fn load(path_or_dir: &Path) -> Result<Manifest, ManifestError> {
        let is_dir = path_or_dir.is_dir();
        let path = if is_dir {
            path_or_dir.join(MANIFEST_FILE)
        } else {
            path_or_dir.to_path_buf()
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Manifest::parse(&text, &path),
            Err(err) => {
                let message = match err.kind() {
                    std::io::ErrorKind::NotFound if is_dir => {
                        format!("no such file (the folder has no `{MANIFEST_FILE}`)")
                    }
                    std::io::ErrorKind::NotFound => format!(
                        "no such file or folder (expected an `{MANIFEST_FILE}` or a folder holding one)"
                    ),
                    _ => format!("cannot read the manifest: {err}"),
                };
                let mut report = Report::new(path.display().to_string());
                report.push(None, message);
                Err(report.into_error())
            }
        }
    }

    /// Validates manifest text; `path` names the file in problems and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let mut report = Report::new(path.display().to_string());
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(root) = parse_document(text, &mut report) else {
            return Err(report.into_error());
        };
        let mut app = None;
        let mut handlers = Vec::new();
        let mut ingress = IngressPolicy::default();
        let mut retention = RetentionPolicy::default();
        let mut cluster = ClusterLayout::default();
        let mut schema_policy = SchemaPolicy::default();
        let mut schemas = Vec::new();
        for (key, value) in sorted(&root) {
            match key.as_str() {
                "app" => app = read_app(value, &mut report),
                "handler" => handlers = read_handlers(value, &dir, &mut report),
                "ingress" => ingress = read_ingress(value, &mut report),
                "retention" => retention = read_retention(value, &mut report),
                "cluster" => cluster = read_cluster(value, &mut report),
                "schemas" => schema_policy = read_schema_policy(value, &mut report),
                "schema" => schemas = read_schemas(value, &dir, &mut report),
                _ => report.unknown_key(key, TOP_KEYS),
            }
        }
        if !root.contains_key("app") {
            report.problem(
                "app",
                "missing (every manifest needs an `[app]` table with a `name`)",
            );
        }
        match app {
            Some(app) if report.problems.is_empty() => Ok(Manifest {
                path: path.to_path_buf(),
                dir,
                app,
                handlers,
                ingress,
                retention,
                cluster,
                schema_policy,
                schemas,
            }),
            _ => Err(report.into_error()),
        }
    }

    /// The handler called `name`.
    pub fn handler(&self, name: &str) -> Option<&HandlerSpec> {
        self.handlers.iter().find(|h| h.name.as_str() == name)
    }
}

/// Collects problems while the walk goes on; `handler` is the entry being walked.
struct Report {
    file: String,
    handler: Option<String>,
    problems: Vec<ConfigProblem>,
}

impl Report {
    fn new(file: String) -> Self {
        Self {
            file,
            handler: None,
            problems: Vec::new(),
        }
    }

    fn push(&mut self, key: Option<&str>, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            file: self.file.clone(),
            handler: self.handler.clone(),
            key: key.map(str::to_owned),
            message: message.into(),
        });
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.push(Some(key), message);
    }

    /// The value if it is one, else records the problem at `key`.
    fn check<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.problem(key, message)).ok()
    }

    fn unknown_key(&mut self, key: &str, expected: &[&str]) {
        self.problem(
            key,
            format!("unknown key (expected one of: {})", expected.join(", ")),
        );
    }

    fn into_error(self) -> ManifestError {
        ManifestError {
            problems: self.problems,
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ManifestError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(self.into_error())
        }
    }
}

/// Parses TOML syntax; a syntax error is the one problem, since nothing after it is reliable.
fn parse_document(text: &str, report: &mut Report) -> Option<Table> {
    match text.parse::<Table>() {
        Ok(table) => Some(table),
        Err(err) => {
            // toml's own `Display` draws a multi-line snippet; problems are one line each.
            let mut message = err.message().trim().replace('\n', "; ");
            let message = match err.span() {
                Some(span) => {
                    // toml's "duplicate key" leaves the key to its snippet.
                    let culprit = text.get(span.clone()).filter(|s| !s.contains('\n'));
                    if let (Some(key), "duplicate key") = (culprit, message.as_str()) {
                        message = format!("duplicate key `{key}`");
                    }
                    let (line, column) = line_column(text, span.start);
                    format!("invalid TOML at line {line}, column {column}: {message}")
                }
                None => format!("invalid TOML: {message}"),
            };
            report.push(None, message);
            None
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn read_app(value: &Value, report: &mut Report) -> Option<App> {
    let Some(table) = value.as_table() else {
        report.problem("app", format!("expected a table, got {}", got(value)));
        return None;
    };
    let mut app = None;
    for (key, value) in sorted(table) {
        match key.as_str() {
            "name" => {
                app = report
                    .check("app.name", name(value))
                    .map(|name| App { name });
            }
            _ => report.unknown_key(&format!("app.{key}"), APP_KEYS),
        }
    }
    if !table.contains_key("name") {
        report.problem("app.name", "missing required key");
    }
    app
}

fn read_ingress(value: &Value, report: &mut Report) -> IngressPolicy {
    let mut policy = IngressPolicy::default();
    let Some(table) = value.as_table() else {
        report.problem("ingress", format!("expected a table, got {}", got(value)));
        return policy;
    };
    for (key, value) in sorted(table) {
        match key.as_str() {
            "accept" => {
                let Some(items) = value.as_array() else {
                    report.problem(
                        "ingress.accept",
                        format!("expected an array of event types, got {}", got(value)),
                    );
                    continue;
                };
                let mut accept = std::collections::BTreeSet::new();
                for item in items {
                    match item.as_str() {
                        Some(ty) if crate::event::check_routable_type(ty).is_ok() => {
                            if !accept.insert(ty.to_owned()) {
                                report.problem(
                                    "ingress.accept",
                                    format!("`{ty}` is listed more than once"),
                                );
                            }
                        }
                        _ => report.problem(
                            "ingress.accept",
                            format!(
                                "expected an event type (a string without whitespace), got {}",
                                got(item)
                            ),
                        ),
                    }
                }
                policy.accept = Some(accept);
            }
            "unrouted" => match value.as_str() {
                Some("store") => policy.unrouted = Unrouted::Store,
                Some("refuse") => policy.unrouted = Unrouted::Refuse,
                _ => report.problem(
                    "ingress.unrouted",
                    format!("expected \"store\" or \"refuse\", got {}", got(value)),
                ),
            },
            "max_batch" => match value.as_integer() {
                Some(n) if n >= 1 && n as u64 <= MAX_MAX_BATCH as u64 => {
                    policy.max_batch = n as usize;
                }
                _ => report.problem(
                    "ingress.max_batch",
                    format!(
                        "expected a whole number from 1 to {MAX_MAX_BATCH}, got {}",
                        got(value)
                    ),
                ),
            },
            _ => report.unknown_key(&format!("ingress.{key}"), INGRESS_KEYS),
        }
    }
    policy
}

fn read_retention(value: &Value, report: &mut Report) -> RetentionPolicy {
    let mut policy = RetentionPolicy::default();
    let Some(table) = value.as_table() else {
        report.problem("retention", format!("expected a table, got {}", got(value)));
        return policy;
    };
    for (key, value) in sorted(table) {
        let at = format!("retention.{key}");
        match key.as_str() {
            "done_after" => {
                if value.as_str() == Some("never") {
                    policy.done_after = None;
                } else if let Some(after) = report.check(&at, duration(value, Duration::MAX)) {
                    policy.done_after = Some(after);
                }
            }
            "max_log_bytes" => {
                policy.max_log_bytes = report.check(&at, byte_size(value, MIN_MAX_LOG_BYTES));
            }
            "versions_kept" => {
                if let Some(kept) = report.check(&at, integer(value, 0, MAX_VERSIONS_KEPT)) {
                    policy.versions_kept = kept;
                }
            }
            "interval" => match duration(value, MAX_RETENTION_INTERVAL) {
                Ok(every) if every >= MIN_RETENTION_INTERVAL => policy.interval = every,
                Ok(_) => report.problem(
                    &at,
                    format!(
                        "must be at least {}, got {}",
                        humantime::format_duration(MIN_RETENTION_INTERVAL),
                        got(value)
                    ),
                ),
                Err(why) => report.problem(&at, why),
            },
            _ => report.unknown_key(&at, RETENTION_KEYS),
        }
    }
    policy
}

fn read_schema_policy(value: &Value, report: &mut Report) -> SchemaPolicy {
    let mut policy = SchemaPolicy::default();
    let Some(table) = value.as_table() else {
        report.problem("schemas", format!("expected a table, got {}", got(value)));
        return policy;
    };
    for (key, value) in sorted(table) {
        let at = format!("schemas.{key}");
        match key.as_str() {
            "require" => match value.as_bool() {
                Some(require) => policy.require = require,
                None => report.problem(&at, format!("expected true or false, got {}", got(value))),
            },
            "compatibility" => {
                if let Some(mode) = report.check(&at, choice(value, Compatibility::CHOICES)) {
                    policy.compatibility = mode;
                }
            }
            _ => report.unknown_key(&at, SCHEMAS_KEYS),
        }
    }
    policy
}

fn read_schemas(value: &Value, dir: &Path, report: &mut Report) -> Vec<SchemaSpec> {
    let Some(entries) = value.as_array() else {
        let hint = if value.is_table() {
            " (write `[[schema]]`, with double brackets)"
        } else {
            ""
        };
        report.problem(
            "schema",
            format!("expected an array of tables, got {}{hint}", got(value)),
        );
        return Vec::new();
    };
    let mut specs: Vec<SchemaSpec> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let at = |key: &str| format!("schema #{}.{key}", index + 1);
        let Some(table) = entry.as_table() else {
            report.problem(
                "schema",
                format!("entry #{}: expected a table, got {}", index + 1, got(entry)),
            );
            continue;
        };
        for key in table.keys() {
            if !SCHEMA_KEYS.contains(&key.as_str()) {
                report.unknown_key(&at(key), SCHEMA_KEYS);
            }
        }
        let ty = match table.get("type") {
            Some(value) => report.check(
                &at("type"),
                non_empty_string(value).and_then(|ty| match VersionedType::parse(ty) {
                    Some(_) => Ok(ty.to_owned()),
                    None => Err(version::explain(ty)),
                }),
            ),
            None => {
                report.problem(&at("type"), "missing required key");
                None
            }
        };
        let file = match table.get("file") {
            Some(value) => report.check(&at("file"), non_empty_string(value)),
            None => {
                report.problem(&at("file"), "missing required key (the JSON Schema file)");
                None
            }
        };
        let compatibility = table.get("compatibility").and_then(|value| {
            report.check(&at("compatibility"), choice(value, Compatibility::CHOICES))
        });
        let upcaster = table
            .get("upcaster")
            .and_then(|value| report.check(&at("upcaster"), non_empty_string(value)));
        let build = table
            .get("build")
            .and_then(|value| report.check(&at("build"), non_empty_string(value)));
        if build.is_some() && upcaster.is_none() {
            report.problem(&at("build"), "builds the `upcaster`, and there is none");
        }
        let (Some(ty), Some(file)) = (ty, file) else {
            continue;
        };
        if specs.iter().any(|spec| spec.ty == ty) {
            report.problem(&at("type"), format!("`{ty}` is listed more than once"));
            continue;
        }
        specs.push(SchemaSpec {
            ty,
            file: dir.join(file),
            compatibility,
            upcaster: upcaster.map(|path| dir.join(path)),
            build: build.map(str::to_owned),
        });
    }
    specs
}

fn read_cluster(value: &Value, report: &mut Report) -> ClusterLayout {
    let mut layout = ClusterLayout::default();
    let Some(table) = value.as_table() else {
        report.problem("cluster", format!("expected a table, got {}", got(value)));
        return layout;
    };
    for (key, value) in sorted(table) {
        let at = format!("cluster.{key}");
        match key.as_str() {
            "stream" => match value.as_str() {
                Some(name) if is_stream_name(name) => layout.stream = Some(name.to_owned()),
                _ => report.problem(
                    &at,
                    format!(
                        "expected a stream name of letters, digits, `-` and `_` (at most 32), \
                         got {}",
                        got(value)
                    ),
                ),
            },
            "replicas" => match value.as_integer() {
                Some(n @ (1 | 3 | 5)) => layout.replicas = n as usize,
                _ => report.problem(&at, format!("expected 1, 3 or 5, got {}", got(value))),
            },
            "partitions" => {
                if let Some(n) = report.check(&at, integer(value, 1, MAX_PARTITIONS)) {
                    layout.partitions = n;
                }
            }
            _ => report.unknown_key(&at, CLUSTER_KEYS),
        }
    }
    layout
}

/// A JetStream stream name the host can also derive bucket names from: short, and only
/// characters every JetStream name allows.
pub fn is_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A duration as a person writes it (`"7d"`, `"12h 30m"`, `"100ms"`), from 1 ms to `max`.
fn duration(value: &Value, max: Duration) -> Result<Duration, String> {
    let expected = "expected a duration such as \"7d\", \"12h\" or \"100ms\"";
    let text = value
        .as_str()
        .ok_or_else(|| format!("{expected}, got {}", got(value)))?;
    let parsed = humantime::parse_duration(text)
        .map_err(|err| format!("{expected}, got {}: {err}", got(value)))?;
    if parsed < Duration::from_millis(1) {
        return Err(format!("must be at least 1ms, got {}", got(value)));
    }
    if parsed > max {
        return Err(format!(
            "must be at most {}, got {}",
            humantime::format_duration(max),
            got(value)
        ));
    }
    Ok(parsed)
}

/// A size in bytes: a whole number, or a string with a unit (`"512 MiB"`, `"10GB"`), at
/// least `min`.
fn byte_size(value: &Value, min: u64) -> Result<u64, String> {
    let expected = "expected a size in bytes, a whole number or a string such as \"10 GiB\"";
    let bytes = match value {
        Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{expected}, got {n}"))?,
        Value::String(text) => parse_size::parse_size(text)
            .map_err(|err| format!("{expected}, got {}: {err}", got(value)))?,
        _ => return Err(format!("{expected}, got {}", got(value))),
    };
    if bytes < min {
        return Err(format!("must be at least {min} bytes, got {}", got(value)));
    }
    Ok(bytes)
}

fn read_handlers(value: &Value, dir: &Path, report: &mut Report) -> Vec<HandlerSpec> {
    let Some(entries) = value.as_array() else {
        let hint = if value.is_table() {
            " (write `[[handler]]`, with double brackets)"
        } else {
            ""
        };
        report.problem(
            "handler",
            format!("expected an array of tables, got {}{hint}", got(value)),
        );
        return Vec::new();
    };
    let mut handlers = Vec::new();
    // First position of each name, to name both entries of a duplicate.
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let position = index + 1;
        let Some(table) = entry.as_table() else {
            report.problem(
                "handler",
                format!("entry #{position}: expected a table, got {}", got(entry)),
            );
            continue;
        };
        let given_name = table
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty());
        report.handler = Some(given_name.map_or_else(|| format!("#{position}"), str::to_owned));
        let spec = read_handler(table, dir, report);
        if let Some(name) = given_name {
            if let Some(first) = first_seen.get(name) {
                report.problem(
                    "name",
                    format!("handlers #{first} and #{position} are both named `{name}`"),
                );
            } else {
                first_seen.insert(name, position);
            }
        }
        report.handler = None;
        handlers.extend(spec);
    }
    handlers
}

fn read_handler(table: &Table, dir: &Path, report: &mut Report) -> Option<HandlerSpec> {
    let name = match table.get("name") {
        Some(value) => report.check("name", name(value)),
        None => {
            report.problem("name", "missing required key");
            None
        }
    };
    let module = match table.get("module") {
        Some(value) => report.check("module", non_empty_string(value)),
        None => {
            report.problem("module", "missing required key");
            None
        }
    };
    let build = table.get("build").map(|value| {
        report.check(
            "build",
            non_empty_string(value).map_err(|message| {
                format!("{message} (leave `build` out when the module is prebuilt)")
            }),
        )
    });
    let settings = read_settings(table, HANDLER_KEYS, report);
    Some(HandlerSpec {
        name: name?,
        module: dir.join(module?),
        build: build.flatten().map(str::to_owned),
        settings,
    })
}

/// Reads the settings keys of `table`. Keys in `own_keys` belong to the caller and are skipped;
/// any other key is unknown. Bad values leave their default in place, so the result is only
/// meaningful if `report` stayed empty.
fn read_settings(table: &Table, own_keys: &[&str], report: &mut Report) -> HandlerSettings {
    let mut settings = HandlerSettings::default();
    // `None` when `ordering` is absent or bad; a bad one is not cross-checked, that would be noise.
    let mut ordering_given = None;
    for (key, value) in sorted(table) {
        let key = key.as_str();
        match key {
            _ if own_keys.contains(&key) => {}
            "subscribe" => settings.subscribe = read_subscribe(value, report),
            "accept_older" => {
                let read = match value {
                    Value::Boolean(true) => Ok(AcceptOlder::All),
                    Value::Boolean(false) => Ok(AcceptOlder::No),
                    Value::String(text) if text != "true" && text != "false" => {
                        AcceptOlder::from_setting(text)
                    }
                    other => Err(format!(
                        "expected true, false or the oldest version to read (\"v1\", \"v2\", \
                         ...), got {}",
                        got(other)
                    )),
                };
                if let Some(accept) = report.check(key, read) {
                    settings.accept_older = accept;
                }
            }
            "concurrency" => {
                if let Some(n) = report.check(key, integer(value, 1, MAX_CONCURRENCY)) {
                    settings.concurrency = n;
                }
            }
            "ordering" => {
                ordering_given = report.check(key, choice(value, Ordering::CHOICES));
                settings.ordering = ordering_given.unwrap_or_default();
            }
            "key" => {
                if let Some(source) = report.check(key, choice(value, KeySource::CHOICES)) {
                    settings.key = source;
                }
            }
            "max_pending" => {
                if let Some(n) = report.check(key, integer(value, 1, u64::MAX)) {
                    settings.max_pending = n;
                }
            }
            "timeout_ms" => {
                if let Some(d) = report.check(key, millis(value, MAX_TIMEOUT)) {
                    settings.timeout = d;
                }
            }
            "memory_mb" => {
                if let Some(n) = report.check(key, integer(value, 1, MAX_MEMORY_MB)) {
                    settings.memory_mb = n;
                }
            }
            "max_staged_mb" => {
                if let Some(n) = report.check(key, integer(value, 1, MAX_STAGED_MB)) {
                    settings.max_staged_mb = n;
                }
            }
            "max_writes" => {
                if let Some(n) = report.check(key, integer(value, 0, MAX_WRITES)) {
                    settings.max_writes = n;
                }
            }
            "max_emits" => {
                if let Some(n) = report.check(key, integer(value, 0, MAX_EMITS)) {
                    settings.max_emits = n;
                }
            }
            "max_attempts" => {
                if let Some(n) = report.check(key, integer(value, 1, u32::MAX)) {
                    settings.max_attempts = n;
                }
            }
            "backoff" => settings.backoff = read_backoff(value, report),
            "rate" => settings.rate = report.check(key, rate(value)),
            "config" => settings.config = read_config(value, report),
            _ => {
                let expected: Vec<&str> = own_keys.iter().chain(SETTINGS_KEYS).copied().collect();
                report.unknown_key(key, &expected);
            }
        }
    }
    if !table.contains_key("subscribe") {
        report.problem(
            "subscribe",
            "missing required key (a handler needs at least one event type)",
        );
    }
    if settings.accept_older != AcceptOlder::No
        && !settings.subscribe.is_empty()
        && !settings
            .subscribe
            .iter()
            .any(|ty| VersionedType::parse(ty).is_some())
    {
        report.problem(
            "accept_older",
            "has no effect: no subscribed type is versioned (`NAME.vN`)",
        );
    }
    let ordering_written = table.contains_key("ordering");
    let ordering_known = ordering_given.is_some() || !ordering_written;
    if table.contains_key("key") && ordering_known && settings.ordering == Ordering::Unordered {
        let default = if ordering_written {
            ""
        } else {
            " (the default)"
        };
        report.problem(
            "key",
            format!(
                "has no effect unless `ordering = \"key\"`, and ordering is \"unordered\"{default}"
            ),
        );
    }
    settings
}

fn read_subscribe(value: &Value, report: &mut Report) -> Vec<String> {
    const KEY: &str = "subscribe";
    let Some(items) = value.as_array() else {
        report.problem(
            KEY,
            format!("expected an array of event types, got {}", got(value)),
        );
        return Vec::new();
    };
    if items.is_empty() {
        report.problem(KEY, "expected at least one event type, got []");
    }
    let mut seen = HashSet::new();
    let mut types = Vec::new();
    for item in items {
        match item.as_str() {
            None => report.problem(
                KEY,
                format!("expected an event type (a string), got {}", got(item)),
            ),
            Some("") => report.problem(KEY, "expected an event type, got \"\""),
            Some(ty) if crate::event::check_routable_type(ty).is_err() => report.problem(
                KEY,
                format!("expected an event type without whitespace, got {ty:?}"),
            ),
            Some(ty) if !seen.insert(ty) => {
                report.problem(KEY, format!("`{ty}` is listed more than once"));
            }
            Some(ty) => types.push(ty.to_owned()),
        }
    }
    types
}

fn read_backoff(value: &Value, report: &mut Report) -> Backoff {
    let mut backoff = Backoff::default();
    let Some(table) = value.as_table() else {
        report.problem(
            "backoff",
            format!(
                "expected a table such as {{ initial_ms = 100, max_ms = 30000 }}, got {}",
                got(value)
            ),
        );
        return backoff;
    };
    // Both bounds must be known to compare them.
    let mut both_valid = true;
    for (key, value) in sorted(table) {
        let path = format!("backoff.{key}");
        let slot = match key.as_str() {
            "initial_ms" => &mut backoff.initial,
            "max_ms" => &mut backoff.max,
            _ => {
                report.unknown_key(&path, BACKOFF_KEYS);
                continue;
            }
        };
        match report.check(&path, millis(value, MAX_BACKOFF)) {
            Some(delay) => *slot = delay,
            None => both_valid = false,
        }
    }
    if both_valid && backoff.initial > backoff.max {
        let default = if table.contains_key("max_ms") {
            ""
        } else {
            ", the default"
        };
        report.problem(
            "backoff",
            format!(
                "`initial_ms` ({}) must not exceed `max_ms` ({}{default})",
                backoff.initial.as_millis(),
                backoff.max.as_millis()
            ),
        );
    }
    backoff
}

fn read_config(value: &Value, report: &mut Report) -> BTreeMap<String, String> {
    let mut config = BTreeMap::new();
    let Some(table) = value.as_table() else {
        report.problem("config", format!("expected a table, got {}", got(value)));
        return config;
    };
    for (key, value) in sorted(table) {
        if key.is_empty() {
            report.problem("config", "setting names must not be empty");
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => value.to_string(),
            _ => {
                report.problem(
                    &format!("config.{key}"),
                    format!(
                        "expected a string, integer, float or boolean, got {}",
                        got(value)
                    ),
                );
                continue;
            }
        };
        config.insert(key.clone(), text);
    }
    config
}

/// A table's entries by key. Problems then come in one order whether or not some crate in the
/// build turns on toml's `preserve_order` (which would make iteration follow the document).
fn sorted(table: &Table) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| *key);
    entries
}

/// How a value appears after "got" in messages: scalars as written, containers by kind.
fn got(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => value.to_string(),
        Value::Datetime(_) => "a datetime".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

fn non_empty_string(value: &Value) -> Result<&str, String> {
    match value.as_str() {
        Some("") => Err("expected a non-empty string, got \"\"".to_owned()),
        Some(s) => Ok(s),
        None => Err(format!("expected a string, got {}", got(value))),
    }
}

/// An app or handler name.
fn name<N: std::str::FromStr<Err = NameError>>(value: &Value) -> Result<N, String> {
    non_empty_string(value)?
        .parse()
        .map_err(|err: NameError| err.to_string())
}

fn integer<T>(value: &Value, min: T, max: T) -> Result<T, String>
where
    T: TryFrom<i64> + Into<i128> + PartialOrd + fmt::Display + Copy,
{
    // Every TOML integer fits an i64, so a `max` beyond it is no bound worth mentioning.
    let bounded = max.into() <= i128::from(i64::MAX);
    let expected = if bounded {
        format!("expected an integer from {min} to {max}")
    } else {
        format!("expected an integer of at least {min}")
    };
    let n = value
        .as_integer()
        .ok_or_else(|| format!("{expected}, got {}", got(value)))?;
    match T::try_from(n) {
        Ok(n) if min <= n && n <= max => Ok(n),
        _ => Err(format!("{expected}, got {n}")),
    }
}

/// A whole number of milliseconds in `1..=max`.
fn millis(value: &Value, max: Duration) -> Result<Duration, String> {
    let max = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    integer(value, 1, max).map(Duration::from_millis)
}

fn choice<T: Copy>(value: &Value, choices: &[(&str, T)]) -> Result<T, String> {
    let found = value
        .as_str()
        .and_then(|s| choices.iter().find(|(name, _)| *name == s));
    match found {
        Some((_, choice)) => Ok(*choice),
        None => {
            let names: Vec<String> = choices
                .iter()
                .map(|(name, _)| format!("{name:?}"))
                .collect();
            Err(format!(
                "expected one of {}, got {}",
                names.join(", "),
                got(value)
            ))
        }
    }
}

/// `N/s`, `N/m` or `N/h`, N >= 1.
fn rate(value: &Value) -> Result<Rate, String> {
    let parsed = value.as_str().and_then(|s| {
        let (tokens, unit) = s.split_once('/')?;
        if tokens.is_empty() || !tokens.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let tokens = tokens.parse::<u32>().ok().filter(|&n| n >= 1)?;
        let period = match unit {
            "s" => RatePeriod::Second,
            "m" => RatePeriod::Minute,
            "h" => RatePeriod::Hour,
            _ => return None,
        };
        Some(Rate { tokens, period })
    });
    parsed.ok_or_else(|| {
        format!(
            "expected a rate \"N/s\", \"N/m\" or \"N/h\" with N from 1 to {}, got {}",
            u32::MAX,
            got(value)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
[app]
name = "shop"

[[handler]]
name = "inventory"
module = "../../target/wasm32-wasip2/release/inventory.wasm"   # relative to the manifest's folder
build = "cargo build --release --target wasm32-wasip2 -p inventory"
subscribe = ["com.example.shop.order.placed.v1", "com.example.shop.stock.added.v1"]
concurrency = 8
ordering = "key"
key = "partitionkey"
max_pending = 10000
timeout_ms = 2000
memory_mb = 64
max_attempts = 5
backoff = { initial_ms = 100, max_ms = 30000 }
rate = "200/s"
config = { decline_over = "1000" }

[[handler]]
name = "notification"
module = "/opt/handlers/notification.wasm"
subscribe = ["com.example.shop.shipment.created.v1"]
"#;

    fn manifest_path() -> &'static Path {
        Path::new("examples/shop/evhost.toml")
    }

    fn problems(text: &str) -> Vec<String> {
        match Manifest::parse(text, manifest_path()) {
            Ok(manifest) => panic!("expected problems, got {manifest:#?}"),
            Err(err) => err.problems.iter().map(ToString::to_string).collect(),
        }
    }

    /// One problem from a handler made of `extra` plus the required keys.
    fn handler_problem(extra: &str) -> String {
        let text = format!(
            "[app]\nname = \"a\"\n[[handler]]\nname = \"h\"\nmodule = \"h.wasm\"\nsubscribe = [\"t.v1\"]\n{extra}\n"
        );
        let problems = problems(&text);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        problems.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn example_parses_to_the_plan_with_defaults_filled_in() {
        let manifest = Manifest::parse(SHOP, manifest_path()).unwrap();
        let expected = Manifest {
            path: PathBuf::from("examples/shop/evhost.toml"),
            dir: PathBuf::from("examples/shop"),
            app: App {
                name: AppName::new("shop").unwrap(),
            },
            handlers: vec![
                HandlerSpec {
                    name: HandlerName::new("inventory").unwrap(),
                    module: PathBuf::from(
                        "examples/shop/../../target/wasm32-wasip2/release/inventory.wasm",
                    ),
                    build: Some("cargo build --release --target wasm32-wasip2 -p inventory".into()),
                    settings: HandlerSettings {
                        subscribe: vec![
                            "com.example.shop.order.placed.v1".into(),
                            "com.example.shop.stock.added.v1".into(),
                        ],
                        accept_older: AcceptOlder::No,
                        concurrency: 8,
                        ordering: Ordering::Key,
                        key: KeySource::PartitionKey,
                        max_pending: 10_000,
                        timeout: Duration::from_millis(2000),
                        memory_mb: 64,
                        max_staged_mb: DEFAULT_MAX_STAGED_MB,
                        max_writes: DEFAULT_MAX_WRITES,
                        max_emits: DEFAULT_MAX_EMITS,
                        max_attempts: 5,
                        backoff: Backoff {
                            initial: Duration::from_millis(100),
                            max: Duration::from_millis(30_000),
                        },
                        rate: Some(Rate {
                            tokens: 200,
                            period: RatePeriod::Second,
                        }),
                        config: BTreeMap::from([("decline_over".into(), "1000".into())]),
                    },
                },
                HandlerSpec {
                    name: HandlerName::new("notification").unwrap(),
                    module: PathBuf::from("/opt/handlers/notification.wasm"),
                    build: None,
                    settings: HandlerSettings {
                        subscribe: vec!["com.example.shop.shipment.created.v1".into()],
                        ..HandlerSettings::default()
                    },
                },
            ],
            ingress: IngressPolicy::default(),
            retention: RetentionPolicy::default(),
            cluster: ClusterLayout::default(),
            schema_policy: SchemaPolicy::default(),
            schemas: Vec::new(),
        };
        assert_eq!(manifest, expected);

        let defaults = &manifest.handlers[1].settings;
        assert_eq!(defaults.concurrency, 16);
        assert_eq!(defaults.ordering, Ordering::Unordered);
        assert_eq!(defaults.max_pending, 10_000);
        assert_eq!(defaults.timeout, Duration::from_secs(5));
        assert_eq!(defaults.memory_bytes(), 64 * 1024 * 1024);
        assert_eq!(defaults.max_attempts, 5);
        assert_eq!(defaults.backoff, Backoff::default());
        assert_eq!(defaults.rate, None);
        assert_eq!(
            manifest.handler("notification"),
            Some(&manifest.handlers[1])
        );
    }

    #[test]
    fn a_bare_file_name_resolves_against_the_current_folder() {
        let manifest = Manifest::parse(SHOP, Path::new("evhost.toml")).unwrap();
        assert_eq!(manifest.dir, PathBuf::from("."));
    }

    #[test]
    fn every_problem_in_every_handler_is_reported_with_its_location() {
        let text = r#"
[app]
name = "Shop"
owner = "me"

[[handler]]
name = "inventory"
module = "inventory.wasm"
subscribe = ["com.example.a.v1"]
concurency = 8
ordering = "keyed"

[[handler]]
name = "payment"
subscribe = []
timeout_ms = 0
backoff = { initial_ms = 100, max = 5 }

[[handler]]
module = "x.wasm"
subscribe = ["com.example.a.v1"]

[[handler]]
name = "inventory"
module = "again.wasm"
subscribe = ["com.example.a.v1"]

[handlers]
"#;
        assert_eq!(
            problems(text),
            [
                "examples/shop/evhost.toml: key `app.name`: expected a name of lowercase letters a-z, digits 0-9, `-` and `_`, got \"Shop\"",
                "examples/shop/evhost.toml: key `app.owner`: unknown key (expected one of: name)",
                "examples/shop/evhost.toml: handler `inventory`: key `concurency`: unknown key (expected one of: name, module, build, subscribe, accept_older, concurrency, ordering, key, max_pending, timeout_ms, memory_mb, max_staged_mb, max_writes, max_emits, max_attempts, backoff, rate, config)",
                "examples/shop/evhost.toml: handler `inventory`: key `ordering`: expected one of \"unordered\", \"key\", \"serial\", got \"keyed\"",
                "examples/shop/evhost.toml: handler `payment`: key `module`: missing required key",
                "examples/shop/evhost.toml: handler `payment`: key `backoff.max`: unknown key (expected one of: initial_ms, max_ms)",
                "examples/shop/evhost.toml: handler `payment`: key `subscribe`: expected at least one event type, got []",
                "examples/shop/evhost.toml: handler `payment`: key `timeout_ms`: expected an integer from 1 to 600000, got 0",
                "examples/shop/evhost.toml: handler #3: key `name`: missing required key",
                "examples/shop/evhost.toml: handler `inventory`: key `name`: handlers #1 and #4 are both named `inventory`",
                "examples/shop/evhost.toml: key `handlers`: unknown key (expected one of: app, cluster, handler, ingress, retention, schema, schemas)",
            ]
        );
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases = [
            (
                "concurrency = 0",
                "key `concurrency`: expected an integer from 1 to 1024, got 0",
            ),
            (
                "concurrency = 2000",
                "key `concurrency`: expected an integer from 1 to 1024, got 2000",
            ),
            (
                "concurrency = \"8\"",
                "key `concurrency`: expected an integer from 1 to 1024, got \"8\"",
            ),
            (
                "concurrency = 8.5",
                "key `concurrency`: expected an integer from 1 to 1024, got 8.5",
            ),
            (
                "ordering = 1",
                "key `ordering`: expected one of \"unordered\", \"key\", \"serial\", got 1",
            ),
            (
                "ordering = \"key\"\nkey = \"id\"",
                "key `key`: expected one of \"partitionkey\", \"subject\", \"source\", got \"id\"",
            ),
            (
                "key = \"subject\"",
                "key `key`: has no effect unless `ordering = \"key\"`, and ordering is \"unordered\" (the default)",
            ),
            (
                "ordering = \"unordered\"\nkey = \"subject\"",
                "key `key`: has no effect unless `ordering = \"key\"`, and ordering is \"unordered\"",
            ),
            (
                "max_pending = 0",
                "key `max_pending`: expected an integer of at least 1, got 0",
            ),
            (
                "max_pending = -5",
                "key `max_pending`: expected an integer of at least 1, got -5",
            ),
            (
                "timeout_ms = 600001",
                "key `timeout_ms`: expected an integer from 1 to 600000, got 600001",
            ),
            (
                "memory_mb = 4097",
                "key `memory_mb`: expected an integer from 1 to 4096, got 4097",
            ),
            (
                "max_staged_mb = 0",
                "key `max_staged_mb`: expected an integer from 1 to 256, got 0",
            ),
            (
                "max_writes = 1000001",
                "key `max_writes`: expected an integer from 0 to 1000000, got 1000001",
            ),
            (
                "max_emits = -1",
                "key `max_emits`: expected an integer from 0 to 100000, got -1",
            ),
            (
                "max_attempts = 0",
                "key `max_attempts`: expected an integer from 1 to 4294967295, got 0",
            ),
            (
                "max_attempts = 5000000000",
                "key `max_attempts`: expected an integer from 1 to 4294967295, got 5000000000",
            ),
            (
                "backoff = 100",
                "key `backoff`: expected a table such as { initial_ms = 100, max_ms = 30000 }, got 100",
            ),
            (
                "backoff = { initial_ms = 0 }",
                "key `backoff.initial_ms`: expected an integer from 1 to 86400000, got 0",
            ),
            (
                "backoff = { initial_ms = 500, max_ms = 100 }",
                "key `backoff`: `initial_ms` (500) must not exceed `max_ms` (100)",
            ),
            (
                "backoff = { initial_ms = 60000 }",
                "key `backoff`: `initial_ms` (60000) must not exceed `max_ms` (30000, the default)",
            ),
            (
                "rate = \"0/s\"",
                "key `rate`: expected a rate \"N/s\", \"N/m\" or \"N/h\" with N from 1 to 4294967295, got \"0/s\"",
            ),
            (
                "rate = \"10/d\"",
                "key `rate`: expected a rate \"N/s\", \"N/m\" or \"N/h\" with N from 1 to 4294967295, got \"10/d\"",
            ),
            (
                "rate = \"+10/s\"",
                "key `rate`: expected a rate \"N/s\", \"N/m\" or \"N/h\" with N from 1 to 4294967295, got \"+10/s\"",
            ),
            (
                "rate = 200",
                "key `rate`: expected a rate \"N/s\", \"N/m\" or \"N/h\" with N from 1 to 4294967295, got 200",
            ),
            (
                "config = { limit = [1, 2] }",
                "key `config.limit`: expected a string, integer, float or boolean, got an array",
            ),
            (
                "config = \"limit=1\"",
                "key `config`: expected a table, got \"limit=1\"",
            ),
            (
                "build = \"\"",
                "key `build`: expected a non-empty string, got \"\" (leave `build` out when the module is prebuilt)",
            ),
        ];
        for (extra, expected) in cases {
            let problem = handler_problem(extra);
            assert_eq!(
                problem,
                format!("examples/shop/evhost.toml: handler `h`: {expected}"),
                "for {extra:?}"
            );
        }
    }

    #[test]
    fn bad_subscriptions_are_named() {
        let text = r#"
[app]
name = "a"
[[handler]]
name = "h"
module = "h.wasm"
subscribe = ["t.v1", "", "two words", 3, "t.v1"]
[[handler]]
name = "g"
module = "g.wasm"
subscribe = "t.v1"
[[handler]]
name = "f"
module = "f.wasm"
"#;
        assert_eq!(
            problems(text),
            [
                "examples/shop/evhost.toml: handler `h`: key `subscribe`: expected an event type, got \"\"",
                "examples/shop/evhost.toml: handler `h`: key `subscribe`: expected an event type without whitespace, got \"two words\"",
                "examples/shop/evhost.toml: handler `h`: key `subscribe`: expected an event type (a string), got 3",
                "examples/shop/evhost.toml: handler `h`: key `subscribe`: `t.v1` is listed more than once",
                "examples/shop/evhost.toml: handler `g`: key `subscribe`: expected an array of event types, got \"t.v1\"",
                "examples/shop/evhost.toml: handler `f`: key `subscribe`: missing required key (a handler needs at least one event type)",
            ]
        );
    }

    #[test]
    fn bad_names_are_named() {
        let long = "a".repeat(65);
        let text = format!(
            r#"
[[handler]]
name = "{long}"
module = "h.wasm"
subscribe = ["t.v1"]
[[handler]]
name = "Order Flow"
module = "h.wasm"
subscribe = ["t.v1"]
[[handler]]
name = ""
module = ""
subscribe = ["t.v1"]
[[handler]]
name = 7
module = "h.wasm"
subscribe = ["t.v1"]
"#
        );
        assert_eq!(
            problems(&text),
            [
                format!(
                    "examples/shop/evhost.toml: handler `{long}`: key `name`: expected at most 64 characters, got 65 (\"{long}\")"
                ),
                "examples/shop/evhost.toml: handler `Order Flow`: key `name`: expected a name of lowercase letters a-z, digits 0-9, `-` and `_`, got \"Order Flow\"".to_owned(),
                "examples/shop/evhost.toml: handler #3: key `name`: expected a non-empty string, got \"\"".to_owned(),
                "examples/shop/evhost.toml: handler #3: key `module`: expected a non-empty string, got \"\"".to_owned(),
                "examples/shop/evhost.toml: handler #4: key `name`: expected a string, got 7".to_owned(),
                "examples/shop/evhost.toml: key `app`: missing (every manifest needs an `[app]` table with a `name`)".to_owned(),
            ]
        );
    }

    #[test]
    fn serial_ordering_ignores_key() {
        let text = "[app]\nname = \"a\"\n[[handler]]\nname = \"h\"\nmodule = \"h.wasm\"\nsubscribe = [\"t.v1\"]\nordering = \"serial\"\nkey = \"subject\"\n";
        let manifest = Manifest::parse(text, manifest_path()).unwrap();
        assert_eq!(manifest.handlers[0].settings.ordering, Ordering::Serial);
    }

    #[test]
    fn a_manifest_without_handlers_is_valid() {
        let manifest = Manifest::parse("[app]\nname = \"empty\"\n", manifest_path()).unwrap();
        assert!(manifest.handlers.is_empty());
    }

    #[test]
    fn single_bracket_handler_gets_a_hint() {
        assert_eq!(
            problems("[app]\nname = \"a\"\n[handler]\nname = \"h\"\n"),
            [
                "examples/shop/evhost.toml: key `handler`: expected an array of tables, got a table (write `[[handler]]`, with double brackets)"
            ]
        );
    }

    #[test]
    fn toml_syntax_errors_carry_line_and_column() {
        let text = "[app]\nname = \"shop\"\n\n[[handler]]\nname = \"inventory\nmodule = \"x\"\n";
        assert_eq!(
            problems(text),
            [
                "examples/shop/evhost.toml: invalid TOML at line 5, column 18: invalid basic string, expected `\"`"
            ]
        );
        assert_eq!(
            problems("[app]\nname = \"a\"\nname = \"b\"\n"),
            ["examples/shop/evhost.toml: invalid TOML at line 3, column 1: duplicate key `name`"]
        );
    }

    #[test]
    fn config_values_are_kept_as_strings() {
        let settings = HandlerSettings::parse_toml(
            "subscribe = [\"t.v1\"]\nconfig = { s = \"x\", i = 1000, f = 1.0, g = 2.5, b = true }\n",
            "deploy",
        )
        .unwrap();
        let expected = [
            ("b", "true"),
            ("f", "1.0"),
            ("g", "2.5"),
            ("i", "1000"),
            ("s", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(settings.config, BTreeMap::from(expected));
    }

    #[test]
    fn standalone_settings_parse_with_the_same_rules() {
        let settings = HandlerSettings::parse_toml(
            r#"
subscribe = ["com.example.shop.stock.reserved.v1"]
ordering = "serial"
rate = "30/m"
backoff = { max_ms = 1000 }
"#,
            "payment.toml",
        )
        .unwrap();
        assert_eq!(
            settings,
            HandlerSettings {
                subscribe: vec!["com.example.shop.stock.reserved.v1".into()],
                ordering: Ordering::Serial,
                rate: Some(Rate {
                    tokens: 30,
                    period: RatePeriod::Minute
                }),
                backoff: Backoff {
                    initial: DEFAULT_BACKOFF_INITIAL,
                    max: Duration::from_millis(1000),
                },
                ..HandlerSettings::default()
            }
        );
        assert_eq!(settings.rate.map(|r| r.per_second()), Some(0.5));

        let err =
            HandlerSettings::parse_toml("name = \"payment\"\nconcurrency = 0\n", "payment.toml")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "payment.toml: key `concurrency`: expected an integer from 1 to 1024, got 0\n\
             payment.toml: key `name`: unknown key (expected one of: subscribe, accept_older, concurrency, ordering, key, max_pending, timeout_ms, memory_mb, max_staged_mb, max_writes, max_emits, max_attempts, backoff, rate, config)\n\
             payment.toml: key `subscribe`: missing required key (a handler needs at least one event type)"
        );
    }

    #[test]
    fn settings_round_trip_through_toml() {
        let manifest = Manifest::parse(SHOP, manifest_path()).unwrap();
        for handler in &manifest.handlers {
            let text = handler.settings.to_toml();
            let back = HandlerSettings::parse_toml(&text, "round trip").unwrap();
            assert_eq!(back, handler.settings, "{text}");
        }
        let serial = HandlerSettings {
            subscribe: vec!["t.v1".into()],
            ordering: Ordering::Serial,
            key: KeySource::Source,
            rate: Some(Rate {
                tokens: 7,
                period: RatePeriod::Hour,
            }),
            ..HandlerSettings::default()
        };
        let back = HandlerSettings::parse_toml(&serial.to_toml(), "round trip").unwrap();
        assert_eq!(back, serial);
    }

    #[test]
    fn settings_round_trip_through_canonical_json() {
        let manifest = Manifest::parse(SHOP, manifest_path()).unwrap();
        for handler in &manifest.handlers {
            let text = handler.settings.to_json();
            assert_eq!(HandlerSettings::from_json(&text).unwrap(), handler.settings);
            // Canonical: the same settings, written again, are the same text.
            assert_eq!(HandlerSettings::from_json(&text).unwrap().to_json(), text);
        }
        let inventory = manifest.handler("inventory").unwrap();
        let json: serde_json::Value = serde_json::from_str(&inventory.settings.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "subscribe": ["com.example.shop.order.placed.v1", "com.example.shop.stock.added.v1"],
                "concurrency": 8, "ordering": "key", "key": "partitionkey",
                "max_pending": 10000, "timeout_ms": 2000, "memory_mb": 64,
                "max_staged_mb": 16, "max_writes": 10000, "max_emits": 1000, "max_attempts": 5,
                "backoff": {"initial_ms": 100, "max_ms": 30000}, "rate": "200/s",
                "config": {"decline_over": "1000"},
            })
        );
        let sideways = json
            .to_string()
            .replace(r#""ordering":"key""#, r#""ordering":"sideways""#);
        let problem = HandlerSettings::from_json(&sideways).unwrap_err();
        assert!(problem.starts_with("key `ordering`"), "{problem}");
        assert!(HandlerSettings::from_json("{}").is_err());

        // A version stored before the invocation budget existed runs with its defaults.
        let mut older = json.clone();
        for key in ["max_staged_mb", "max_writes", "max_emits"] {
            older.as_object_mut().unwrap().remove(key);
        }
        let read = HandlerSettings::from_json(&older.to_string()).unwrap();
        assert_eq!(read, inventory.settings);
    }

    #[test]
    fn the_invocation_budget_is_set_per_handler() {
        let settings = HandlerSettings::parse_toml(
            "subscribe = [\"t.v1\"]\nmax_staged_mb = 2\nmax_writes = 0\nmax_emits = 10\n",
            "budget.toml",
        )
        .unwrap();
        assert_eq!(
            (
                settings.max_staged_bytes(),
                settings.max_writes,
                settings.max_emits
            ),
            (2 << 20, 0, 10)
        );
        let back = HandlerSettings::parse_toml(&settings.to_toml(), "round trip").unwrap();
        assert_eq!(back, settings);
        let defaults = HandlerSettings::default();
        assert_eq!(
            (
                defaults.max_staged_bytes(),
                defaults.max_writes,
                defaults.max_emits
            ),
            (16 << 20, 10_000, 1_000)
        );
    }

    #[test]
    fn load_takes_a_file_or_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        std::fs::write(&path, SHOP).unwrap();

        let from_dir = Manifest::load(dir.path()).unwrap();
        let from_file = Manifest::load(&path).unwrap();
        assert_eq!(from_dir, from_file);
        assert_eq!(from_dir.path, path);
        assert_eq!(from_dir.dir, dir.path());
        assert_eq!(
            from_dir.handlers[0].module,
            dir.path()
                .join("../../target/wasm32-wasip2/release/inventory.wasm")
        );
    }

    #[test]
    fn a_missing_manifest_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no such file (the folder has no `evhost.toml`)",
                dir.path().join(MANIFEST_FILE).display()
            )
        );

        let missing = dir.path().join("nope.toml");
        let err = Manifest::load(&missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no such file or folder (expected an `evhost.toml` or a folder holding one)",
                missing.display()
            )
        );
    }

    #[test]
    fn the_ingress_table_is_read_and_its_mistakes_named() {
        let manifest = Manifest::parse(
            "[app]\nname = \"a\"\n[ingress]\naccept = [\"x.v1\", \"y.v1\"]\n\
             unrouted = \"refuse\"\nmax_batch = 10\n",
            Path::new("evhost.toml"),
        )
        .unwrap();
        let accept: Vec<&str> = manifest
            .ingress
            .accept
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        assert_eq!(accept, ["x.v1", "y.v1"]);
        assert_eq!(manifest.ingress.unrouted, Unrouted::Refuse);
        assert_eq!(manifest.ingress.max_batch, 10);

        let error = Manifest::parse(
            "[app]\nname = \"a\"\n[ingress]\naccept = [\"x y\", 3, \"z\", \"z\"]\n\
             unrouted = \"drop\"\nmax_batch = 0\nlimit = 1\n",
            Path::new("evhost.toml"),
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "key `ingress.accept`: expected an event type (a string without whitespace), got \"x y\"",
            "key `ingress.accept`: expected an event type (a string without whitespace), got 3",
            "key `ingress.accept`: `z` is listed more than once",
            "key `ingress.unrouted`: expected \"store\" or \"refuse\", got \"drop\"",
            "key `ingress.max_batch`: expected a whole number from 1 to 10000, got 0",
            "key `ingress.limit`: unknown key (expected one of: accept, unrouted, max_batch)",
        ] {
            assert!(error.contains(expected), "{expected}\nnot in\n{error}");
        }
    }

    #[test]
    fn the_retention_table_is_read_and_its_mistakes_named() {
        let read = |table: &str| {
            Manifest::parse(
                &format!("[app]\nname = \"a\"\n[retention]\n{table}\n"),
                manifest_path(),
            )
            .map(|m| m.retention)
        };
        assert_eq!(read("").unwrap(), RetentionPolicy::default());
        let policy = read(
            "done_after = \"100ms\"\nmax_log_bytes = \"64 MiB\"\nversions_kept = 2\ninterval = \"2s\"",
        )
        .unwrap();
        assert_eq!(
            policy,
            RetentionPolicy {
                done_after: Some(Duration::from_millis(100)),
                max_log_bytes: Some(64 << 20),
                versions_kept: 2,
                interval: Duration::from_secs(2),
            }
        );
        let policy = read("done_after = \"never\"\nmax_log_bytes = 10485760").unwrap();
        assert_eq!(policy.done_after, None);
        assert_eq!(policy.max_log_bytes, Some(10 << 20));
        assert_eq!(
            read("done_after = \"7d\"").unwrap().done_after,
            Some(Duration::from_secs(7 * 86_400))
        );

        let error = read(
            "done_after = \"soon\"\nmax_log_bytes = \"1 KiB\"\nversions_kept = -1\n\
             interval = \"1ms\"\nkeep = 3",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "key `retention.done_after`: expected a duration such as \"7d\", \"12h\" or \"100ms\", got \"soon\"",
            "key `retention.max_log_bytes`: must be at least 1048576 bytes, got \"1 KiB\"",
            "key `retention.versions_kept`: expected an integer from 0 to 100000, got -1",
            "key `retention.interval`: must be at least 10ms, got \"1ms\"",
            "key `retention.keep`: unknown key (expected one of: done_after, max_log_bytes, versions_kept, interval)",
        ] {
            assert!(error.contains(expected), "{expected}\nnot in\n{error}");
        }
        let error = read("done_after = 7\nmax_log_bytes = \"lots\"\ninterval = \"2d\"")
            .unwrap_err()
            .to_string();
        for expected in [
            "key `retention.done_after`: expected a duration such as \"7d\", \"12h\" or \"100ms\", got 7",
            "key `retention.max_log_bytes`: expected a size in bytes, a whole number or a string such as \"10 GiB\", got \"lots\"",
            "key `retention.interval`: must be at most 1day, got \"2d\"",
        ] {
            assert!(error.contains(expected), "{expected}\nnot in\n{error}");
        }
    }
}
