//! The records a cluster keeps beside its events, as JSON payloads: what a delivery did
//! (done), how its attempts failed, its dead letter; and how an event travels as a message
//! (the CloudEvents NATS binding's binary mode: attributes as `ce-` headers, `data` as the
//! payload).

use async_nats::HeaderMap;
use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventBuilder};
use crate::name::HandlerName;
use crate::store::Attempt;

/// Header of an event message: the handlers it was routed to at ingest, space-separated.
/// A handler's consumer takes every event of its types, and runs those naming it: as on a
/// single node, the deliveries of an event are fixed when it is accepted.
pub const ROUTES: &str = "Evh-Routes";
/// Header of an event message: when the host accepted it, unix ms.
pub const RECEIVED_MS: &str = "Evh-Received-Ms";
/// Header of a state message that deletes its key.
pub const DELETED: &str = "Evh-Deleted";

/// What is percent-encoded in a header value, as the CloudEvents HTTP binding does: controls
/// (no CR or LF can reach the protocol), space, `"` and `%`; non-ASCII always is.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// An event read back from the stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Its stream sequence: its position in the log.
    pub seq: u64,
    pub subject: String,
    pub event: Event,
    pub routes: Vec<HandlerName>,
    pub received_at_ms: i64,
}

impl StoredEvent {
    pub fn routes_to(&self, handler: &HandlerName) -> bool {
        self.routes.contains(handler)
    }
}

/// An event as a message: headers and payload.
pub fn encode_event(event: &Event, routes: &[HandlerName], received_ms: i64) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| {
        let encoded = utf8_percent_encode(value, HEADER_VALUE).to_string();
        headers.insert(name, encoded.as_str());
    };
    put("ce-specversion", "1.0");
    put("ce-id", event.id());
    put("ce-source", event.source());
    put("ce-type", event.ty());
    if let Some(ct) = event.datacontenttype() {
        put("content-type", ct);
    }
    if let Some(value) = event.dataschema() {
        put("ce-dataschema", value);
    }
    if let Some(value) = event.subject() {
        put("ce-subject", value);
    }
    if let Some(value) = event.time() {
        put("ce-time", value);
    }
    for (name, value) in event.extensions() {
        put(&format!("ce-{name}"), value);
    }
    let routes: Vec<&str> = routes.iter().map(HandlerName::as_str).collect();
    headers.insert(ROUTES, routes.join(" ").as_str());
    headers.insert(RECEIVED_MS, received_ms.to_string().as_str());
    // No data and empty data differ: an event without data has no `Evh-Data` mark.
    if event.data().is_some() {
        headers.insert("Evh-Data", "1");
    }
    let payload = Bytes::copy_from_slice(event.data().unwrap_or_default());
    (headers, payload)
}

/// An event message read back. It was built, and so validated, before it was stored.
pub fn decode_event(
    seq: u64,
    subject: &str,
    headers: &HeaderMap,
    payload: &Bytes,
) -> anyhow::Result<StoredEvent> {
    let mut parts = EventBuilder::default();
    let mut routes = Vec::new();
    let mut received_at_ms = 0;
    let mut has_data = false;
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        let Some(value) = values.first() else {
            continue;
        };
        let raw = value.as_str();
        let text = || -> anyhow::Result<String> {
            Ok(percent_decode_str(raw).decode_utf8()?.into_owned())
        };
        match name.to_ascii_lowercase().as_str() {
            "ce-specversion" => {}
            "ce-id" => parts.id = Some(text()?),
            "ce-source" => parts.source = Some(text()?),
            "ce-type" => parts.ty = Some(text()?),
            "content-type" => parts.datacontenttype = Some(text()?),
            "ce-dataschema" => parts.dataschema = Some(text()?),
            "ce-subject" => parts.subject = Some(text()?),
            "ce-time" => parts.time = Some(text()?),
            "evh-routes" => {
                routes = raw
                    .split(' ')
                    .filter(|name| !name.is_empty())
                    .filter_map(|name| HandlerName::new(name).ok())
                    .collect();
            }
            "evh-received-ms" => received_at_ms = raw.parse().unwrap_or(0),
            "evh-data" => has_data = true,
            other => {
                if let Some(extension) = other.strip_prefix("ce-") {
                    parts.extensions.insert(extension.to_owned(), text()?);
                }
            }
        }
    }
    if parts.id.is_none() || parts.source.is_none() || parts.ty.is_none() {
        anyhow::bail!("the message at {seq} ({subject}) is not an event");
    }
    if has_data {
        parts.data = Some(payload.to_vec());
    }
    Ok(StoredEvent {
        seq,
        subject: subject.to_owned(),
        event: Event::from_stored(parts),
        routes,
        received_at_ms,
    })
}

/// A delivery done: written in the commit of its effects, once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneRecord {
    /// The handler version that ran it.
    pub version: u32,
    pub at_ms: i64,
    /// Failed attempts before the one that succeeded, since the last redrive.
    pub attempts: u32,
    pub redrives: u32,
    /// The subjects of the events it emitted.
    pub emitted: Vec<String>,
}

/// The failed attempts of one delivery, over all its redrives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttemptsRecord {
    /// Times it was redriven.
    pub redrives: u32,
    pub failures: Vec<StoredAttempt>,
    /// When the next attempt is due, unix ms (0: now).
    pub next_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAttempt {
    pub redrive: u32,
    pub attempt: u32,
    pub error: String,
    pub at_ms: i64,
}

impl AttemptsRecord {
    /// Failed attempts since the last redrive.
    pub fn since_redrive(&self) -> u32 {
        self.failures
            .iter()
            .filter(|f| f.redrive == self.redrives)
            .count() as u32
    }

    pub fn last_error(&self) -> Option<&str> {
        self.failures.last().map(|f| f.error.as_str())
    }

    /// One more failure, now.
    pub fn failed(&mut self, error: &str, at_ms: i64, next_at_ms: i64) {
        let attempt = self.since_redrive() + 1;
        self.failures.push(StoredAttempt {
            redrive: self.redrives,
            attempt,
            error: error.to_owned(),
            at_ms,
        });
        self.next_at_ms = next_at_ms;
    }

    pub fn errors(&self) -> Vec<Attempt> {
        self.failures
            .iter()
            .map(|f| Attempt {
                redrive: f.redrive,
                attempt: f.attempt,
                error: f.error.clone(),
                at_ms: f.at_ms,
            })
            .collect()
    }
}

/// A dead letter, or what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadRecord {
    pub event_subject: String,
    pub event_seq: u64,
    pub died_at_ms: i64,
    pub reason: String,
    /// `None` while dead; `redriven` or `discarded` once an operator acted on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<Cleared>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cleared {
    Redriven,
    Discarded,
}

/// A record's JSON payload.
pub fn to_payload<T: Serialize>(record: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(record).expect("records serialize"))
}

/// A record from its JSON payload.
pub fn from_payload<T: for<'de> Deserialize<'de>>(what: &str, payload: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(payload)
        .map_err(|err| anyhow::anyhow!("unreadable {what} record: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_comes_back_as_it_went() {
        let event = Event::builder("id 1%\"", "/web", "order.placed.v1")
            .subject("o 1: \"quoted\", 100% é")
            .time("2026-12-04T10:00:00Z")
            .extension("partitionkey", "sku é")
            .data(Some("application/json"), br#"{"a": 1}"#.to_vec())
            .build()
            .unwrap();
        let routes = vec![HandlerName::new("inventory").unwrap()];
        let (headers, payload) = encode_event(&event, &routes, 42);
        // Every value travels as printable ASCII without spaces or quotes.
        for (_, values) in headers.iter() {
            for value in values {
                assert!(
                    value
                        .as_str()
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"'),
                    "{value:?}"
                );
            }
        }
        let back = decode_event(7, "s", &headers, &payload).unwrap();
        assert_eq!(back.event, event);
        assert_eq!(back.routes, routes);
        assert_eq!(back.received_at_ms, 42);
        assert_eq!(back.seq, 7);

        let empty = Event::builder("2", "/web", "t.v1").build().unwrap();
        let (headers, payload) = encode_event(&empty, &[], 0);
        assert_eq!(
            decode_event(1, "s", &headers, &payload).unwrap().event,
            empty
        );
        let blank = Event::builder("3", "/web", "t.v1")
            .data(Some("text/plain"), Vec::new())
            .build()
            .unwrap();
        let (headers, payload) = encode_event(&blank, &[], 0);
        assert_eq!(
            decode_event(1, "s", &headers, &payload).unwrap().event,
            blank
        );
    }

    #[test]
    fn attempts_count_from_the_last_redrive() {
        let mut record = AttemptsRecord::default();
        record.failed("one", 1, 0);
        record.failed("two", 2, 0);
        assert_eq!(record.since_redrive(), 2);
        record.redrives = 1;
        assert_eq!(record.since_redrive(), 0);
        record.failed("three", 3, 0);
        assert_eq!(record.since_redrive(), 1);
        assert_eq!(record.errors().last().unwrap().attempt, 1);
        assert_eq!(record.last_error(), Some("three"));
    }
}
