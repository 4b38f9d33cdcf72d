//! `evhost:handler/emit`: events a handler publishes.
//!
//! The host completes each event: `id` derived from the event being handled, the handler and
//! the emit index (so a re-run of the same delivery emits the same ids, and the store's
//! dedupe on `source` + `id` makes the re-run harmless); `source` names the handler; `time`
//! is now; `causationid` is the handled event's id, `correlationid` is carried from it (or
//! starts at it) and `causationdepth` is one more than its own (0 when it has none), which
//! the scheduler's hop limit reads to stop a loop of emits. Every other attribute must pass
//! the rules an event posted over HTTP does.
//! Emitted events are only staged here: they enter the log and the router when the invocation
//! commits.
//!
//! The ids also derive from the handled event's position in the log (its `seq`), which no
//! producer chooses or knows before its 202, and ingress refuses every event whose `source`
//! is in the app's own namespace (`/{app}/...`, see `ingress::check_producer`): no producer
//! can take the id a handler will emit next. The seq is fixed once stored, so a re-run or a
//! redrive of the delivery emits the same ids.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use wasmtime::Result;

use super::Invocation;
use crate::event::{CAUSATION_DEPTH, EventBuilder};
use crate::name::HandlerName;
use crate::wit::evhost::handler::emit::{Host, OutgoingEvent};

/// Largest `data` of an emitted event, in bytes. How many an invocation may emit, and their
/// total size, is its budget's (`max_emits`, `max_staged_mb`).
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// Extensions the host sets on every emitted event; a handler may not set them itself.
const HOST_EXTENSIONS: &[&str] = &["causationid", "correlationid", CAUSATION_DEPTH];

impl Host for Invocation {
    fn publish(&mut self, event: OutgoingEvent) -> Result<Result<String, String>> {
        // A bad event and one past the budget are both refused; past the budget, the
        // invocation fails too.
        if let Err(exceeded) = self.check_emit() {
            return Ok(Err(super::refusal(exceeded)));
        }
        let staged = self.complete(event).and_then(|event| {
            let id = event.id().to_owned();
            self.stage_emitted(event).map_err(super::refusal)?;
            Ok(id)
        });
        Ok(staged)
    }
}

impl Invocation {
    /// Complete `out` into the next event to emit. It must pass the rules every event does
    /// ([`EventBuilder::build`], the same as ingress); the error names the attribute.
    fn complete(&self, out: OutgoingEvent) -> Result<crate::event::Event, String> {
        let index = self.staged.emitted.len();
        crate::event::check_routable_type(&out.type_).map_err(|err| err.to_string())?;
        if let Some(data) = &out.data
            && data.len() > MAX_DATA_BYTES
        {
            return Err(format!(
                "`data` is {} bytes, over the limit of {MAX_DATA_BYTES}",
                data.len()
            ));
        }
        if let Some((name, _)) = out
            .extensions
            .iter()
            .find(|(name, _)| HOST_EXTENSIONS.contains(&name.as_str()))
        {
            return Err(format!(
                "extension `{name}` is set by the host, not by the handler"
            ));
        }
        let id = emitted_id(
            self.parent.seq,
            &self.parent.source,
            &self.parent.id,
            &self.handler,
            index,
        );
        let mut extensions: BTreeMap<String, String> = out.extensions.into_iter().collect();
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
        // Saturating, and within the 32-bit range the event rules allow: past the hop limit
        // the commit refuses the event anyway, whatever its exact depth.
        let depth = self
            .parent
            .depth
            .saturating_add(1)
            .min(i32::MAX.unsigned_abs());
        extensions.insert(CAUSATION_DEPTH.to_owned(), depth.to_string());
        let datacontenttype = match (out.datacontenttype, &out.data) {
            (None, Some(_)) => Some("application/json".to_owned()),
            (ct, _) => ct,
        };
        EventBuilder {
            id: Some(id),
            source: Some(self.emit_source.to_string()),
            ty: Some(out.type_),
            datacontenttype,
            dataschema: None,
            subject: out.subject,
            time: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            extensions,
            data: out.data,
        }
        .build()
        .map_err(|err| err.to_string())
    }
}

/// The id of the `index`th event `handler` emits while handling the event (`source`, `id`):
/// the same inputs always give the same id, different inputs practically never do. Shaped
/// like a UUID (version 8, "custom") so that tools expecting one are happy.
pub fn emitted_id(seq: i64, source: &str, id: &str, handler: &HandlerName, index: usize) -> String {
    let mut hash = Sha256::new();
    hash.update(seq.to_le_bytes());
    // Length-prefixed, so that ("ab", "c") and ("a", "bc") cannot collide.
    for part in [
        source.as_bytes(),
        id.as_bytes(),
        handler.as_str().as_bytes(),
    ] {
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
        let name = |n: &str| HandlerName::new(n).unwrap();
        let a = emitted_id(7, "/shop", "o-1", &name("inventory"), 0);
        assert_eq!(a, emitted_id(7, "/shop", "o-1", &name("inventory"), 0));
        assert_ne!(a, emitted_id(7, "/shop", "o-1", &name("inventory"), 1));
        assert_ne!(a, emitted_id(7, "/shop", "o-1", &name("payment"), 0));
        assert_ne!(a, emitted_id(7, "/shop", "o-2", &name("inventory"), 0));
        assert_ne!(
            emitted_id(7, "ab", "c", &name("h"), 0),
            emitted_id(7, "a", "bc", &name("h"), 0)
        );
        assert_eq!(a.len(), 36);
    }
}
