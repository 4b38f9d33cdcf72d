//! The upcaster half of the evhost Rust SDK: the types and bindings of the upcaster contract
//! (`wit/upcaster-0.1.0`, world `upcaster`). Use it through `evhost_sdk`, which re-exports
//! it (`evhost_sdk::upcast`, `evhost_sdk::export_upcaster!`) and documents the contract.
//!
//! It is a crate of its own, not a module of `evhost_sdk`, for the linker. `wit-bindgen`
//! puts a description of each world it generates bindings for into a custom section of the
//! object file that holds them, and whatever of the handler world's description ends up in
//! a component is merged into its world: the handler world declares `handler-error` at
//! world level, so a component that links it imports `evhost:handler/types`. A linker loads
//! an object file of a library only for a symbol a component uses, and which object file
//! `rustc` puts which item into is not ours to choose: inside one crate, the upcaster's
//! bindings shared an object file with the handler world's description, and every upcaster
//! imported the handler's types. Here, an upcaster uses symbols of this crate only, and
//! nothing of `evhost_sdk` is linked into it.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The upcaster world's bindings; not part of the API (`evhost_sdk::export_upcaster!`
/// expands to what it needs of them).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/upcaster-0.1.0",
        world: "upcaster",
        // `export_upcaster!` expands in the user's crate, so the generated export macro must be
        // reachable from there (through `evhost_sdk::__private`); its name says it is not for
        // direct use. With `pub_export_macro`, the description of the world in this crate
        // lists only the world's imports, and the export macro adds the whole world to the
        // crate that uses it: a handler that links this crate exports no `upcast`.
        pub_export_macro: true,
        export_macro_name: "__evhost_export_upcaster_world",
        default_bindings_module: "evhost_sdk::__private::upcaster_bindings",
        // No `#[used]` reference that would link this crate's description into every
        // component that depends on it: the export macro's copy is the one that counts.
        disable_custom_section_link_helpers: true,
    });
}

use bindings as upcaster_bindings;

/// The body of the exported `upcast`: wrap the event, call the upcaster, unwrap its result.
/// Not part of the API (`evhost_sdk::export_upcaster!` calls it).
///
/// No panic hook, unlike a handler's: the handler's hook writes through the `log` import,
/// which the upcaster world does not have. A panic goes to stderr as usual.
#[doc(hidden)]
pub fn dispatch<U: Upcaster>(event: bindings::Event) -> Result<bindings::Event, String> {
    U::upcast(UpcastEvent::from_wit(event)).map(UpcastEvent::into_wit)
}

/// An upcaster: turns an event of one version of a type into the next version.
///
/// Export the implementing type with `evhost_sdk::export_upcaster!`. Like a handler, the type
/// holds nothing: each call runs in a fresh instance.
pub trait Upcaster {
    /// Turn `event` (version N) into version N+1.
    ///
    /// Change what the new version changes (usually the data, with
    /// [`UpcastEvent::set_json`]) and return the event; return `Err` with a reason when the
    /// event is not a valid version N, so that it cannot be upcast.
    fn upcast(event: UpcastEvent) -> Result<UpcastEvent, String>;
}

/// The event an [`Upcaster`] gets and gives back: one CloudEvent (CloudEvents 1.0).
///
/// It reads like a handler's `evhost_sdk::Event`; what an upcaster may change (data, subject,
/// extensions) has setters, and what the host fills itself (id, source, specversion, time,
/// type, dataschema) has none.
#[derive(Debug, Clone)]
pub struct UpcastEvent {
    inner: upcaster_bindings::Event,
}

impl UpcastEvent {
    /// An event with only the required attributes, for testing an upcaster natively (the
    /// host builds the events a deployed upcaster gets). Add data with
    /// [`set_json`](Self::set_json).
    ///
    /// ```
    /// # use evhost_sdk_upcaster::UpcastEvent;
    /// let mut event = UpcastEvent::new("e-1", "/tests", "com.example.greeted.v1");
    /// event.set_json(&serde_json::json!({"name": "Ada"})).expect("JSON");
    /// assert_eq!(event.version(), Some(1));
    /// ```
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            inner: upcaster_bindings::Event {
                id: id.into(),
                source: source.into(),
                specversion: "1.0".to_owned(),
                type_: ty.into(),
                datacontenttype: None,
                dataschema: None,
                subject: None,
                time: None,
                extensions: Vec::new(),
                data: None,
            },
        }
    }

    fn from_wit(inner: upcaster_bindings::Event) -> Self {
        Self { inner }
    }

    fn into_wit(self) -> upcaster_bindings::Event {
        self.inner
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

    /// The versioned type of the event as it comes in, e.g.
    /// `com.example.shop.order.placed.v1` (the CloudEvents `type` attribute).
    pub fn ty(&self) -> &str {
        &self.inner.type_
    }

    /// The `N` of the type's `.vN` suffix (`Some(1)` for `com.example.shop.order.placed.v1`),
    /// or `None` when the type does not end in one.
    pub fn version(&self) -> Option<u32> {
        let (_, suffix) = self.ty().rsplit_once(".v")?;
        if suffix.is_empty() || !suffix.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        suffix.parse().ok()
    }

    /// The media type of [`data`](Self::data), e.g. `application/json`, if set.
    pub fn datacontenttype(&self) -> Option<&str> {
        self.inner.datacontenttype.as_deref()
    }

    /// The URI of the schema the incoming data adheres to, if any (the host replaces it on
    /// the result).
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

    /// The extension attribute `name` (e.g. `partitionkey`), in its CloudEvents string form.
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

    /// The `partitionkey` extension.
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

    /// The payload, parsed as JSON into `T`. Parse into a `serde_json::Map` to keep the
    /// fields a struct would drop.
    ///
    /// # Errors
    ///
    /// A message naming the event's type and id when the event has no data or the data is not
    /// JSON of the shape `T` expects; return it from [`Upcaster::upcast`] as it is (`?`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        let Some(data) = self.inner.data.as_deref() else {
            return Err(format!(
                "event `{}` (id `{}`) has no data",
                self.ty(),
                self.id()
            ));
        };
        serde_json::from_slice(data).map_err(|err| {
            format!(
                "event `{}` (id `{}`) has invalid data: {err}",
                self.ty(),
                self.id()
            )
        })
    }

    /// Replace the payload with `data` serialized as JSON, and the `datacontenttype` with
    /// `application/json`.
    ///
    /// # Errors
    ///
    /// A message naming the event when `data` does not serialize (a map with non-string
    /// keys, say); the event is left as it was.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, data: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(data).map_err(|err| {
            format!(
                "cannot serialize the upcast data of event `{}` (id `{}`) as JSON: {err}",
                self.ty(),
                self.id()
            )
        })?;
        self.set_data(bytes, "application/json");
        Ok(())
    }

    /// Replace the payload with `data`, of media type `content_type`.
    pub fn set_data(&mut self, data: impl Into<Vec<u8>>, content_type: impl Into<String>) {
        self.inner.data = Some(data.into());
        self.inner.datacontenttype = Some(content_type.into());
    }

    /// Remove the payload and its `datacontenttype`.
    pub fn clear_data(&mut self) {
        self.inner.data = None;
        self.inner.datacontenttype = None;
    }

    /// Set the `subject` attribute.
    pub fn set_subject(&mut self, subject: impl Into<String>) {
        self.inner.subject = Some(subject.into());
    }

    /// Remove the `subject` attribute.
    pub fn clear_subject(&mut self) {
        self.inner.subject = None;
    }

    /// Set the extension attribute `name` (lowercase a-z and 0-9, as CloudEvents requires)
    /// to `value`, replacing what it held. The extensions stay sorted by name, as the
    /// contract has them.
    pub fn set_extension(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        let extensions = &mut self.inner.extensions;
        match extensions.binary_search_by(|(key, _)| key.as_str().cmp(&name)) {
            Ok(at) => extensions[at].1 = value,
            Err(at) => extensions.insert(at, (name, value)),
        }
    }

    /// Remove the extension attribute `name`; returns what it held.
    pub fn remove_extension(&mut self, name: &str) -> Option<String> {
        let at = self
            .inner
            .extensions
            .iter()
            .position(|(key, _)| key == name)?;
        Some(self.inner.extensions.remove(at).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_number_after_the_last_dot_v() {
        let version = |ty: &str| UpcastEvent::new("e", "/t", ty).version();
        assert_eq!(version("com.example.shop.order.placed.v1"), Some(1));
        assert_eq!(version("x.v12"), Some(12));
        assert_eq!(version("com.example.v2.thing"), None);
        assert_eq!(version("x.v"), None);
        assert_eq!(version("x.v+1"), None);
        assert_eq!(version("x"), None);
    }

    #[test]
    fn set_json_replaces_the_data_and_its_content_type() {
        let mut event = UpcastEvent::new("e", "/t", "x.v1");
        event.set_data(b"<a/>".to_vec(), "application/xml");
        event.set_json(&serde_json::json!({"n": 1})).expect("JSON");
        assert_eq!(event.data(), br#"{"n":1}"#);
        assert_eq!(event.datacontenttype(), Some("application/json"));
        assert_eq!(
            event.json::<serde_json::Value>().expect("JSON"),
            serde_json::json!({"n": 1})
        );
        event.clear_data();
        assert!(!event.has_data());
        assert!(event.json::<serde_json::Value>().is_err());
    }

    #[test]
    fn extensions_stay_sorted_by_name() {
        let mut event = UpcastEvent::new("e", "/t", "x.v1");
        event.set_extension("partitionkey", "k-1");
        event.set_extension("causationid", "c-1");
        event.set_extension("tenant", "t-1");
        event.set_extension("partitionkey", "k-2");
        let names: Vec<_> = event.extensions().collect();
        assert_eq!(
            names,
            [
                ("causationid", "c-1"),
                ("partitionkey", "k-2"),
                ("tenant", "t-1")
            ]
        );
        assert_eq!(
            event.remove_extension("causationid").as_deref(),
            Some("c-1")
        );
        assert_eq!(event.remove_extension("causationid"), None);
        assert_eq!(event.partition_key(), Some("k-2"));
    }
}
