//! The admin API's answers as types. The admin handlers build them and serialize them; the
//! client ([`crate::client`], which the CLI and the tests use) deserializes them: one
//! definition, so the API, the CLI and the tests cannot drift apart.
//!
//! Times are RFC 3339 strings in UTC with milliseconds; events are in the CloudEvents JSON
//! format.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::name::HandlerName;
use crate::store::{DeliveryStatus, Origin};

/// `GET /admin/handlers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerList {
    pub handlers: Vec<HandlerView>,
}

/// One deployed handler: its live version, its policy, its live counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerView {
    pub name: HandlerName,
    pub version: u32,
    pub module_sha256: String,
    pub deployed_at: Option<String>,
    /// Who made the live version.
    pub version_origin: Origin,
    /// Who owns the handler: the manifest (removed when the manifest drops it) or the API
    /// (removed only through the API).
    pub origin: Origin,
    pub subscribe: Vec<String>,
    pub concurrency: u32,
    pub ordering: String,
    pub key: String,
    pub max_pending: u64,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub max_attempts: u32,
    pub rate: Option<String>,
    /// Deliveries appended and not yet settled.
    pub pending: u64,
    /// Invocations running now.
    pub in_flight: usize,
    /// Every stored version, oldest first (`GET /admin/handlers/{name}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<VersionView>>,
}

/// One stored version of a handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionView {
    pub version: u32,
    pub module_sha256: String,
    pub deployed_at: Option<String>,
    pub origin: Origin,
}

/// `PUT /admin/handlers/{name}`: 201 for a new handler, 200 for a new version or the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployAnswer {
    pub name: HandlerName,
    pub version: u32,
    pub module_sha256: String,
    pub deployed_at: Option<String>,
    /// Same module and settings as the live version: nothing changed.
    pub unchanged: bool,
}

/// `POST /admin/handlers/{name}/rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackAnswer {
    pub name: HandlerName,
    pub version: u32,
    pub module_sha256: String,
}

/// `DELETE /admin/handlers/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoveAnswer {
    pub removed: HandlerName,
    /// Pending deliveries that became dead letters.
    pub dead_lettered: usize,
}

/// `GET /admin/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<LoggedEventView>,
    /// Pass as `after` for the next page.
    pub next_after: Option<i64>,
}

/// An event of the log with its deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEventView {
    pub seq: i64,
    pub received_at: Option<String>,
    /// The event, CloudEvents JSON format.
    pub event: Value,
    pub deliveries: Vec<DeliveryView>,
}

/// Where one delivery stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub id: i64,
    pub handler: HandlerName,
    pub status: DeliveryStatus,
    /// Attempts since the last redrive.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The log positions of the events this delivery's handler emitted.
    pub caused: Vec<i64>,
    /// When a retrying delivery is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redrives: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `GET /admin/deadletters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    pub deadletters: Vec<DeadLetterView>,
    pub next_after: Option<i64>,
}

/// A delivery that failed for good, with every attempt's error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// The delivery id, which redrive and discard take.
    pub id: i64,
    pub handler: HandlerName,
    pub seq: i64,
    pub attempts: u32,
    pub redrives: u32,
    pub died_at: Option<String>,
    pub event: Value,
    pub errors: Vec<AttemptView>,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub redrive: u32,
    pub attempt: u32,
    pub error: String,
    pub at: Option<String>,
}

/// `POST /admin/deadletters/{id}/redrive` and `POST /admin/deadletters/redrive?handler=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedriveAnswer {
    pub redriven: usize,
}

/// The 202 of `POST /events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestAnswer {
    pub mode: String,
    pub accepted: Vec<AcceptedEvent>,
}

/// One event of an accepted request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptedEvent {
    pub source: String,
    pub id: String,
    /// Its log position.
    pub seq: i64,
    /// It was in the log already (same `source` and `id`): nothing was stored again.
    pub duplicate: bool,
}

/// An error answer (RFC 9457 problem details), as far as a client reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemView {
    #[serde(rename = "type", default)]
    pub problem_type: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    pub status: u16,
    #[serde(default)]
    pub detail: Option<String>,
    /// Our own members: `attribute`, `handler`, `problems`...
    #[serde(flatten)]
    pub members: serde_json::Map<String, Value>,
}

/// A time in the API's format.
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}
