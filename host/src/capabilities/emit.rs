//! `evhost:handler/emit`: events a handler publishes.
//!
//! The host completes each event: `id` derived from the event being handled, the handler and
//! the emit index (so a re-run of the same delivery emits the same ids, and the store's
//! dedupe on `source` + `id` makes the re-run harmless); `source` names the handler; `time`
//! is now; `causationid` is the handled event's id and `correlationid` is carried from it (or
//! starts at it). Emitted events are only staged here: they enter the log and the router
//! when the invocation commits.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use wasmtime::Result;

use super::Invocation;
use crate::event::Event;
use crate::runtime::bindings::evhost::handler::emit::{Host, OutgoingEvent};

/// Events one invocation may emit; past this, `publish` fails.
pub const MAX_EMITS: usize = 1000;
/// Largest `data` of an emitted event, in bytes.
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// Attribute names a handler may not set as extensions: the host owns them or they are
/// CloudEvents context attributes.
const RESERVED: &[&str] = &[
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
    "causationid",
    "correlationid",
];

impl Host for Invocation {
    fn publish(&mut self, event: OutgoingEvent) -> Result<Result<String, String>> {
        Ok(self.stage_emit(event))
    }
}

impl Invocation {
    fn stage_emit(&mut self, out: OutgoingEvent) -> Result<String, String> {
        let index = self.staged.emitted.len();
        if index >= MAX_EMITS {
            return Err(format!(
                "more than {MAX_EMITS} events emitted by one invocation"
            ));
        }
        if out.type_.is_empty() || out.type_.chars().any(char::is_whitespace) {
            return Err(format!(
                "event type `{}` is empty or has whitespace",
                out.type_
            ));
        }
        if out.subject.as_deref() == Some("") {
            return Err("`subject` is empty".to_owned());
        }
        if let Some(data) = &out.data
            && data.len() > MAX_DATA_BYTES
        {
            return Err(format!(
                "`data` is {} bytes, over the limit of {MAX_DATA_BYTES}",
                data.len()
            ));
        }
        let datacontenttype = match (out.datacontenttype, &out.data) {
            (Some(ct), _) => {
                if ct.parse::<mime::Mime>().is_err() {
                    return Err(format!("`datacontenttype` `{ct}` is not a media type"));
                }
                Some(ct)
            }
            (None, Some(_)) => Some("application/json".to_owned()),
            (None, None) => None,
        };
        let mut extensions = BTreeMap::new();
        for (name, value) in out.extensions {
            if !is_extension_name(&name) {
                return Err(format!(
                    "extension name `{name}` must be lowercase a-z and 0-9 and not a reserved \
                     attribute"
                ));
            }
            extensions.insert(name, value);
        }
        if let Some(key) = out.partitionkey {
            extensions.insert("partitionkey".to_owned(), key);
        }
        if let Some(traceparent) = &self.parent.traceparent {
            extensions
                .entry("traceparent".to_owned())
                .or_insert_with(|| traceparent.clone());
        }
        extensions.insert("causationid".to_owned(), self.parent.id.clone());
        extensions.insert(
            "correlationid".to_owned(),
            self.parent.correlation_id.clone(),
        );

        let id = emitted_id(&self.parent.source, &self.parent.id, &self.handler, index);
        self.staged.emitted.push(Event {
            id: id.clone(),
            source: self.emit_source.clone(),
            ty: out.type_,
            datacontenttype,
            dataschema: None,
            subject: out.subject,
            time: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            extensions,
            data: out.data,
        });
        Ok(id)
    }
}

fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !RESERVED.contains(&name)
}

/// The id of the `index`th event `handler` emits while handling the event (`source`, `id`):
/// the same inputs always give the same id, different inputs practically never do. Shaped
/// like a UUID (version 8, "custom") so that tools expecting one are happy.
pub fn emitted_id(source: &str, id: &str, handler: &str, index: usize) -> String {
    let mut hash = Sha256::new();
    // Length-prefixed, so that ("ab", "c") and ("a", "bc") cannot collide.
    for part in [source.as_bytes(), id.as_bytes(), handler.as_bytes()] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.update((index as u64).to_le_bytes());
    let mut bytes: [u8; 16] = hash.finalize()[..16].try_into().unwrap_or_default();
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_ids_are_deterministic_and_distinct() {
        let a = emitted_id("/shop", "o-1", "inventory", 0);
        assert_eq!(a, emitted_id("/shop", "o-1", "inventory", 0));
        assert_ne!(a, emitted_id("/shop", "o-1", "inventory", 1));
        assert_ne!(a, emitted_id("/shop", "o-1", "payment", 0));
        assert_ne!(a, emitted_id("/shop", "o-2", "inventory", 0));
        assert_ne!(emitted_id("ab", "c", "h", 0), emitted_id("a", "bc", "h", 0));
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn extension_names_are_checked() {
        assert!(is_extension_name("partitionkey"));
        assert!(is_extension_name("x1"));
        assert!(!is_extension_name("Upper"));
        assert!(!is_extension_name("with-dash"));
        assert!(!is_extension_name("id"));
        assert!(!is_extension_name(""));
    }
}
