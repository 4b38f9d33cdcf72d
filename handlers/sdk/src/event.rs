//! The event a handler is called with.

use serde::de::DeserializeOwned;

use crate::__private::bindings;
use crate::HandlerError;

/// One CloudEvent (CloudEvents 1.0), as the host stored it.
///
/// ```no_run
/// # use evhost_sdk::{Event, HandlerError};
/// # fn handle(event: Event) -> Result<(), HandlerError> {
/// #[derive(serde::Deserialize)]
/// struct StockAdded {
///     sku: String,
///     quantity: u64,
/// }
///
/// let added: StockAdded = event.json()?;
/// let key = event.partition_key().unwrap_or(&added.sku);
/// # let _ = (key, added.quantity);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    inner: bindings::Event,
}

impl Event {
    pub(crate) fn from_wit(inner: bindings::Event) -> Self {
        Self { inner }
    }

    /// The event's id, unique within its [`source`](Self::source).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// A URI-reference naming the producer.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The CloudEvents version; always `"1.0"`.
    pub fn specversion(&self) -> &str {
        &self.inner.specversion
    }

    /// The versioned event type, e.g. `com.example.shop.order.placed.v1` (the CloudEvents
    /// `type` attribute).
    pub fn ty(&self) -> &str {
        &self.inner.type_
    }

    /// The media type of [`data`](Self::data), e.g. `application/json`, if the producer set it.
    pub fn datacontenttype(&self) -> Option<&str> {
        self.inner.datacontenttype.as_deref()
    }

    /// The URI of the schema the data adheres to, if any.
    pub fn dataschema(&self) -> Option<&str> {
        self.inner.dataschema.as_deref()
    }

    /// What the event is about within its source (the shop uses the order id).
    pub fn subject(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }

    /// When it happened (RFC 3339), if the producer said.
    pub fn time(&self) -> Option<&str> {
        self.inner.time.as_deref()
    }

    /// The extension attribute `name` (e.g. `causationid`), in its CloudEvents string form.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.inner
            .extensions
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// All extension attributes as `(name, value)`, sorted by name.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner
            .extensions
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// The `partitionkey` extension: the key the host orders deliveries by when a handler
    /// uses `ordering = "key"` with `key = "partitionkey"`.
    pub fn partition_key(&self) -> Option<&str> {
        self.extension("partitionkey")
    }

    /// The payload, as bytes; empty when the event has none (see [`has_data`](Self::has_data)).
    pub fn data(&self) -> &[u8] {
        self.inner.data.as_deref().unwrap_or_default()
    }

    /// Whether the event carries a payload at all (an empty payload counts).
    pub fn has_data(&self) -> bool {
        self.inner.data.is_some()
    }

    /// The payload, parsed as JSON into `T`.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Reject`], naming the event's type, when the event has no data or the
    /// data is not JSON of the shape `T` expects: a bad event never heals by retrying.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        let Some(data) = self.inner.data.as_deref() else {
            return Err(HandlerError::reject(format!(
                "event `{}` (id `{}`) has no data",
                self.ty(),
                self.id()
            )));
        };
        serde_json::from_slice(data).map_err(|err| {
            HandlerError::reject(format!(
                "event `{}` (id `{}`) has invalid data: {err}",
                self.ty(),
                self.id()
            ))
        })
    }
}
