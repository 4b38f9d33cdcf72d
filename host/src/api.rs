//! The admin API's answers as types. The admin handlers build them and serialize them; the
//! client ([`crate::client`], which the CLI and the tests use) deserializes them: one
//! definition, so the API, the CLI and the tests cannot drift apart.
//!
//! Times are RFC 3339 strings in UTC with milliseconds; events are in the CloudEvents JSON
//! format. An answer that carries events is generic in how it holds them: the host writes
//! each as an [`EventJson`], straight from the stored event, and a client reads it back as
//! a [`Value`] (the default).

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::event::{DataForm, Event, SPEC_VERSION};
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

/// `POST /admin/compact`: the store's sizes before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactAnswer {
    pub before: StoreSizes,
    pub after: StoreSizes,
    /// Free pages handed back to the file system.
    pub vacuumed_pages: u64,
    /// The WAL was checkpointed whole and emptied; `false` when a reader kept part of it.
    pub wal_truncated: bool,
}

/// The store's sizes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSizes {
    /// The database file, free pages included.
    pub database_bytes: u64,
    pub wal_bytes: u64,
    /// Pages in use: what `[retention] max_log_bytes` bounds.
    pub used_bytes: u64,
    /// Free pages inside the file, which new rows reuse.
    pub free_bytes: u64,
    /// Whether free pages can be handed back while the host runs (`evhost compact --data`
    /// turns it on for a store created without it).
    pub incremental_vacuum: bool,
}

impl From<crate::store::Sizes> for StoreSizes {
    fn from(sizes: crate::store::Sizes) -> StoreSizes {
        StoreSizes {
            database_bytes: sizes.database_bytes,
            wal_bytes: sizes.wal_bytes,
            used_bytes: sizes.used_bytes,
            free_bytes: sizes.free_bytes,
            incremental_vacuum: sizes.incremental_vacuum,
        }
    }
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
pub struct EventsPage<E = Value> {
    pub events: Vec<LoggedEventView<E>>,
    /// Pass as `after` for the next page.
    pub next_after: Option<i64>,
}

/// An event of the log with its deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEventView<E = Value> {
    pub seq: i64,
    pub received_at: Option<String>,
    /// The event, CloudEvents JSON format.
    pub event: E,
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
    /// The event as this delivery's handler reads it, when that is a newer version than the
    /// stored one (upcast; the stored event never changes), CloudEvents JSON format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_as: Option<Value>,
    /// Why the event cannot be upcast to the version the handler reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upcast_error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `GET /admin/deadletters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterPage<E = Value> {
    pub deadletters: Vec<DeadLetterView<E>>,
    pub next_after: Option<i64>,
}

/// A delivery that failed for good, with every attempt's error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView<E = Value> {
    /// The delivery id, which redrive and discard take.
    pub id: i64,
    pub handler: HandlerName,
    pub seq: i64,
    pub attempts: u32,
    pub redrives: u32,
    pub died_at: Option<String>,
    /// The event, CloudEvents JSON format.
    pub event: E,
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

/// An event in the CloudEvents JSON format, written as it is serialized: the same document
/// as [`Event::to_json`], member for member and in the same order, but JSON `data` goes out
/// as the text stored ([`DataForm::Json`]) rather than through a tree of it, which costs
/// many times the event's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventJson(pub Event);

impl Serialize for EventJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        enum Member<'a> {
            Text(&'a str),
            Data(DataForm<'a>),
        }
        let event = &self.0;
        let mut members = vec![
            ("specversion", Member::Text(SPEC_VERSION)),
            ("id", Member::Text(event.id())),
            ("source", Member::Text(event.source())),
            ("type", Member::Text(event.ty())),
        ];
        let optional = [
            ("datacontenttype", event.datacontenttype()),
            ("dataschema", event.dataschema()),
            ("subject", event.subject()),
            ("time", event.time()),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                members.push((name, Member::Text(value)));
            }
        }
        for (name, value) in event.extensions() {
            members.push((name.as_str(), Member::Text(value.as_str())));
        }
        if let Some(form) = event.data_form() {
            members.push((form.member(), Member::Data(form)));
        }
        // `to_json` builds a map sorted by name; the same order gives the same bytes.
        members.sort_unstable_by_key(|(name, _)| *name);
        let mut map = serializer.serialize_map(Some(members.len()))?;
        for (name, member) in members {
            match member {
                Member::Text(text) | Member::Data(DataForm::Text(text)) => {
                    map.serialize_entry(name, text)?
                }
                Member::Data(DataForm::Json(raw)) => map.serialize_entry(name, raw)?,
                Member::Data(DataForm::Base64(bytes)) => {
                    use base64::engine::general_purpose::STANDARD;
                    let encoded = base64::display::Base64Display::new(bytes, &STANDARD);
                    map.serialize_key(name)?;
                    map.serialize_value(&Collected(&encoded))?;
                }
            }
        }
        map.end()
    }
}

/// A value serialized as the string its `Display` writes, without building that string.
struct Collected<'a, T>(&'a T);

impl<T: std::fmt::Display> Serialize for Collected<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// A time in the API's format.
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(datacontenttype: Option<&str>, data: &[u8]) -> Event {
        Event::builder("e-1", "/shop", "com.example.t.v1")
            .data(datacontenttype, data)
            .build()
            .expect("a valid event")
    }

    /// What the answer holds, as bytes, and what it held before it was written as it goes.
    fn written(event: &Event) -> (String, String) {
        let streamed = serde_json::to_string(&EventJson(event.clone())).unwrap();
        let tree = serde_json::to_string(&event.to_json()).unwrap();
        (streamed, tree)
    }

    #[test]
    fn an_event_is_written_byte_for_byte_as_its_tree_was() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let events = [
            event(
                Some("application/json"),
                br#"{"a":1,"b":[true,null,"x\"y"],"c":{"d":-0.5}}"#,
            ),
            event(None, br#"[1,2,3]"#),
            event(
                Some("text/plain; charset=utf-8"),
                "h\u{e9}llo \"there\"\n".as_bytes(),
            ),
            event(Some("application/octet-stream"), &[0, 159, 146, 150, 255]),
            // JSON content types whose bytes a client could not read back as a value travel
            // as base64, as before: not JSON, `null`, out of range, too deep, a lone
            // surrogate, not UTF-8.
            event(Some("application/json"), b"{not json"),
            event(Some("application/json"), b"null"),
            event(Some("application/json"), b"1e400"),
            event(Some("application/json"), deep.as_bytes()),
            event(Some("application/json"), br#""\ud800""#),
            event(Some("application/json"), &[b'"', 0xff, b'"']),
            Event::builder("e-2", "/shop", "com.example.t.v1")
                .subject("s-1")
                .time("2026-01-02T03:04:05Z")
                .dataschema("https://example.com/schema")
                .extension("aaa", "first")
                .extension("partitionkey", "k-1")
                .extension("zzz", "last")
                .build()
                .unwrap(),
        ];
        for event in &events {
            let (streamed, tree) = written(event);
            assert_eq!(streamed, tree, "{event:?}");
        }
    }

    /// JSON data as the producer wrote it (spacing, member order, digits) is written as it
    /// is: the same document for a client, which reads it back to the same value.
    #[test]
    fn json_data_is_written_as_stored_and_reads_back_the_same() {
        let data = br#" { "z": 1, "a": [ 1.0, 12345678901234567890123 ],
            "m": {"k": "v"} } "#;
        let event = event(None, data);
        let (streamed, tree) = written(&event);
        let trimmed = std::str::from_utf8(data).unwrap().trim();
        assert!(
            streamed.contains(&format!(r#""data":{trimmed}"#)),
            "{streamed}"
        );
        let streamed: Value = serde_json::from_str(&streamed).unwrap();
        let tree: Value = serde_json::from_str(&tree).unwrap();
        assert_eq!(streamed, tree);

        // And the page around it reads back as the client's type.
        let page = EventsPage {
            events: vec![LoggedEventView {
                seq: 1,
                received_at: rfc3339(0),
                event: EventJson(event.clone()),
                deliveries: Vec::new(),
            }],
            next_after: Some(1),
        };
        let read: EventsPage = serde_json::from_slice(&serde_json::to_vec(&page).unwrap()).unwrap();
        assert_eq!(read.events[0].event, event.to_json());
    }
}

/// `GET /admin/schemas`: every registered schema by family, and the app's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaList {
    /// `[schemas] require`: types without a schema are refused.
    pub require: bool,
    /// The mode of a family that has none set.
    pub default_compatibility: String,
    pub families: Vec<FamilyView>,
}

/// One family: its mode and its registered versions, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyView {
    pub family: String,
    pub compatibility: String,
    pub versions: Vec<SchemaView>,
}

/// One registered schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaView {
    #[serde(rename = "type")]
    pub ty: String,
    pub version: u32,
    pub sha256: String,
    /// Where the host serves it (what accepted events' `dataschema` says).
    pub url: String,
    pub registered_at: Option<String>,
    pub origin: Origin,
    /// How events of the previous version become this one: `"upcaster"`, `"as is"` (this
    /// version reads the previous one, with its defaults filled in), or `null` (no way: a
    /// handler of this version cannot read them).
    pub from_previous: Option<String>,
    /// The upcaster from the previous version, if one is registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upcaster: Option<UpcasterView>,
}

/// One registered upcaster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpcasterView {
    pub from: String,
    pub to: String,
    pub module_sha256: String,
    pub registered_at: Option<String>,
    pub origin: Origin,
}

/// `GET /admin/upcasters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpcasterList {
    pub upcasters: Vec<UpcasterView>,
}

/// `PUT /admin/schemas/{type}`, `PUT /admin/upcasters/{from}` and their `DELETE`s: what the
/// change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaChangeAnswer {
    /// The type registered or removed, or the type an upcaster starts from.
    #[serde(rename = "type")]
    pub ty: String,
    /// `created`, `unchanged`, `replaced` or `removed`.
    pub outcome: String,
    /// The schema's digest and URL (a schema registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}
