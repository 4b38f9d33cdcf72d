//! Publishing new events.
//!
//! Start from [`json`], [`bytes`] or [`empty`], add attributes, then [`send`](Builder::send).
//! Emitted events are staged: the host publishes them, routed exactly like events posted
//! over HTTP, only if the invocation succeeds. The host fills `id`, `source`, `specversion`,
//! `time` and the `causationid` / `correlationid` extensions; the id is derived from the
//! event being handled, the handler and the emit index, so a re-run cannot duplicate it.
//!
//! ```no_run
//! # fn handle() -> Result<(), evhost_sdk::HandlerError> {
//! use evhost_sdk::emit;
//!
//! #[derive(serde::Serialize)]
//! struct OrderPlaced<'a> {
//!     order_id: &'a str,
//!     sku: &'a str,
//! }
//!
//! let id = emit::json(
//!     "com.example.shop.order.placed.v1",
//!     &OrderPlaced { order_id: "o-1", sku: "sku-1" },
//! )
//! .subject("o-1")
//! .partition_key("sku-1")
//! .send()?;
//! evhost_sdk::info!("emitted {id}");
//! # Ok(())
//! # }
//! ```

use serde::Serialize;

use crate::__private::bindings::evhost::handler::emit::{OutgoingEvent, publish};
use crate::HandlerError;

/// An event of type `ty` whose data is `data` serialized as JSON (`application/json`).
///
/// A serialization failure is reported by [`send`](Builder::send).
pub fn json<T: Serialize + ?Sized>(ty: impl Into<String>, data: &T) -> Builder {
    let ty = ty.into();
    let (data, error) = match serde_json::to_vec(data) {
        Ok(bytes) => (Some(bytes), None),
        Err(err) => (
            None,
            Some(format!(
                "cannot serialize the data of `{ty}` as JSON: {err}"
            )),
        ),
    };
    Builder {
        event: outgoing(ty, data, Some("application/json".to_owned())),
        error,
    }
}

/// An event of type `ty` whose data is `data`, of media type `content_type`.
pub fn bytes(
    ty: impl Into<String>,
    data: impl Into<Vec<u8>>,
    content_type: impl Into<String>,
) -> Builder {
    Builder {
        event: outgoing(ty.into(), Some(data.into()), Some(content_type.into())),
        error: None,
    }
}

/// An event of type `ty` with no data.
pub fn empty(ty: impl Into<String>) -> Builder {
    Builder {
        event: outgoing(ty.into(), None, None),
        error: None,
    }
}

fn outgoing(ty: String, data: Option<Vec<u8>>, datacontenttype: Option<String>) -> OutgoingEvent {
    OutgoingEvent {
        type_: ty,
        data,
        datacontenttype,
        subject: None,
        partitionkey: None,
        extensions: Vec::new(),
    }
}

/// An event being put together; nothing is staged until [`send`](Self::send).
#[derive(Debug, Clone)]
#[must_use = "an event is only emitted by `send()`"]
pub struct Builder {
    event: OutgoingEvent,
    /// A failure found while building, reported by `send`, so that building stays chainable.
    error: Option<String>,
}

impl Builder {
    /// Set the `subject` attribute: what the event is about (the shop uses the order id).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = Some(subject.into());
        self
    }

    /// Set the `partitionkey` extension, which handlers with `ordering = "key"` (and
    /// `key = "partitionkey"`) are ordered by.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.event.partitionkey = Some(key.into());
        self
    }

    /// Add the extension attribute `name` (lowercase a-z and 0-9) with `value`.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.extensions.push((name.into(), value.into()));
        self
    }

    /// Stage the event for publishing; returns the id the host gave it.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Reject`] when the data did not serialize or the host refuses the
    /// event (empty type, bad extension name, too many emits; the message says why): the
    /// same event would make the same emit again, so retrying cannot help.
    pub fn send(self) -> Result<String, HandlerError> {
        let ty = &self.event.type_;
        if let Some(error) = self.error {
            return Err(HandlerError::reject(error));
        }
        publish(&self.event)
            .map_err(|err| HandlerError::reject(format!("cannot emit `{ty}`: {err}")))
    }
}
