//! The validated CloudEvent that moves through the pipeline.
//!
//! An [`Event`] can only be made by [`EventBuilder::build`], which checks every rule of
//! CloudEvents 1.0 that the event format can check (required attributes, URI, timestamp and
//! media type syntax, extension names, allowed characters) and the host's limits on
//! extensions (their count, name and value lengths). Ingress, the `emit` capability,
//! the conversion from the CloudEvents SDK and tests all build events through it, so the
//! router, the store and the runtime never validate again, and an event emitted by a handler
//! meets exactly the rules of one posted over HTTP. The one other way in is the store's read
//! of what it stored, which was built here before it was stored.
//!
//! `data` is kept as bytes, exactly as received (JSON text for JSON events), which is also
//! what a handler sees.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fluent_uri::{Uri, UriRef};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The only CloudEvents version evhost accepts.
pub const SPEC_VERSION: &str = "1.0";

/// Extension attributes one event may carry, those the host sets on emitted events
/// (`causationid`, `correlationid`, a carried `traceparent`) included; past it the event is
/// refused, naming the first extension over (in name order). Extensions are metadata, sent
/// as one header each in binary mode, and every one is stored and handed to each handler.
pub const MAX_EXTENSIONS: usize = 64;

/// Longest extension name, in bytes. CloudEvents asks for at most 20 characters; this takes
/// longer ones, but not names that are really data.
pub const MAX_EXTENSION_NAME_BYTES: usize = 64;

/// Longest extension value, in bytes; longer is refused, naming the extension. Room for any
/// trace context (`tracestate` is at most 512) or identifier; a value this long belongs in
/// `data`.
pub const MAX_EXTENSION_VALUE_BYTES: usize = 4096;

/// One CloudEvent (CloudEvents 1.0), validated: see [`EventBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    id: String,
    source: String,
    ty: String,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    extensions: BTreeMap<String, String>,
    data: Option<Vec<u8>>,
}

/// Why an event could not be built: the attribute at fault and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A REQUIRED attribute (`id`, `source`, `type`) is absent.
    #[error("missing required attribute `{attribute}`")]
    Missing { attribute: &'static str },
    /// An attribute is present but breaks a CloudEvents rule.
    #[error("invalid attribute `{attribute}`: {reason}")]
    Invalid { attribute: String, reason: String },
}

/// The parts of an event, checked together by [`EventBuilder::build`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventBuilder {
    pub id: Option<String>,
    pub source: Option<String>,
    pub ty: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub extensions: BTreeMap<String, String>,
    pub data: Option<Vec<u8>>,
}

impl EventBuilder {
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn time(mut self, time: impl Into<String>) -> Self {
        self.time = Some(time.into());
        self
    }

    pub fn dataschema(mut self, dataschema: impl Into<String>) -> Self {
        self.dataschema = Some(dataschema.into());
        self
    }

    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    /// `data` with its media type; `None` as the type means JSON, as CloudEvents reads it.
    pub fn data(mut self, datacontenttype: Option<&str>, data: impl Into<Vec<u8>>) -> Self {
        self.datacontenttype = datacontenttype.map(str::to_owned);
        self.data = Some(data.into());
        self
    }

    /// Another `type` (an upcast event is its next version).
    pub fn retype(mut self, ty: impl Into<String>) -> Self {
        self.ty = Some(ty.into());
        self
    }

    /// JSON `data`, with `datacontenttype = application/json`.
    pub fn json(self, data: &Value) -> Self {
        self.data(Some("application/json"), data.to_string())
    }

    /// The event, if every rule holds; else the first attribute that breaks one.
    pub fn build(self) -> Result<Event, EventError> {
        // Characters first, over every attribute in name order, as one rule for all.
        let mut named: Vec<(&str, &str)> = self
            .extensions
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let context = [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ];
        for (name, value) in context {
            if let Some(value) = value {
                named.push((name, value));
            }
        }
        named.sort_unstable();
        for (name, value) in named {
            check_characters(name, value)?;
        }

        let id = required("id", self.id)?;
        let source = required("source", self.source)?;
        if let Err(error) = UriRef::parse(source.as_str()) {
            return Err(invalid(
                "source",
                format!("is not a URI-reference (RFC 3986): {error}"),
            ));
        }
        let ty = required("type", self.ty)?;
        if let Some(content_type) = &self.datacontenttype
            && let Err(error) = content_type.parse::<mime::Mime>()
        {
            return Err(invalid(
                "datacontenttype",
                format!("is not a media type (RFC 2045 `type/subtype`): {error}"),
            ));
        }
        if let Some(schema) = &self.dataschema
            && let Err(error) = Uri::parse(schema.as_str())
        {
            let reason = if UriRef::parse(schema.as_str()).is_ok() {
                "must be an absolute URI, with a scheme".to_owned()
            } else {
                format!("is not a URI (RFC 3986): {error}")
            };
            return Err(invalid("dataschema", reason));
        }
        if self.subject.as_deref() == Some("") {
            return Err(invalid("subject", "must not be empty"));
        }
        if let Some(time) = &self.time {
            check_time(time)?;
        }
        for (index, (name, value)) in self.extensions.iter().enumerate() {
            check_extension_name(name)?;
            if index == MAX_EXTENSIONS {
                return Err(invalid(
                    name,
                    format!(
                        "is extension #{} of {}, over the limit of {MAX_EXTENSIONS} per event",
                        index + 1,
                        self.extensions.len()
                    ),
                ));
            }
            if value.len() > MAX_EXTENSION_VALUE_BYTES {
                return Err(invalid(
                    name,
                    format!(
                        "value is {} bytes, over the limit of {MAX_EXTENSION_VALUE_BYTES} (put \
                         large values in `data`)",
                        value.len()
                    ),
                ));
            }
        }
        if let Some(depth) = self.extensions.get(CAUSATION_DEPTH) {
            parse_causation_depth(depth).map_err(|reason| invalid(CAUSATION_DEPTH, reason))?;
        }
        Ok(Event {
            id,
            source,
            ty,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            subject: self.subject,
            time: self.time,
            extensions: self.extensions,
            data: self.data,
        })
    }
}

/// An RFC 3339 timestamp that is also one in UTC. RFC 3339 years have four digits, so
/// `0000-01-01T00:00:00+01:00` is a valid timestamp whose UTC form (year -1) is not: the
/// CloudEvents SDK, which keeps times in UTC, could neither give such an event back nor send
/// it, so it is refused here, where every event is made.
fn check_time(time: &str) -> Result<(), EventError> {
    use chrono::Datelike as _;
    let parsed = chrono::DateTime::parse_from_rfc3339(time)
        .map_err(|error| invalid("time", format!("is not an RFC 3339 timestamp: {error}")))?;
    if !(0..=9999).contains(&parsed.naive_utc().year()) {
        return Err(invalid(
            "time",
            "falls outside the years 0000 to 9999 in UTC, which RFC 3339 cannot write",
        ));
    }
    Ok(())
}

fn required(attribute: &'static str, value: Option<String>) -> Result<String, EventError> {
    match value {
        None => Err(EventError::Missing { attribute }),
        Some(value) if value.is_empty() => Err(invalid(attribute, "must not be empty")),
        Some(value) => Ok(value),
    }
}

/// CloudEvents strings exclude control characters (which also keeps every value safe to
/// send on as an HTTP header) and Unicode noncharacters; Rust strings already exclude
/// surrogates.
fn check_characters(attribute: &str, value: &str) -> Result<(), EventError> {
    match value
        .chars()
        .find(|&c| c.is_control() || is_noncharacter(c))
    {
        Some(c) => Err(invalid(
            attribute,
            format!(
                "contains the character U+{:04X}, which CloudEvents forbids",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

fn is_noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

/// Extension names (CloudEvents 1.0, section 3.1.1): lowercase letters and digits, at most
/// [`MAX_EXTENSION_NAME_BYTES`], and not one of the names the event's own attributes and data
/// use.
pub fn check_extension_name(name: &str) -> Result<(), EventError> {
    if name == "data" || name == "data_base64" {
        return Err(invalid(
            name,
            "is reserved for the event data, which binary mode carries in the body",
        ));
    }
    if CONTEXT_ATTRIBUTES.contains(&name) {
        return Err(invalid(name, "is a context attribute, not an extension"));
    }
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        return Err(invalid(
            name,
            "extension names are made of lowercase letters `a-z` and digits `0-9` only",
        ));
    }
    if name.len() > MAX_EXTENSION_NAME_BYTES {
        // The whole name would make the problem as long as the name: its start says which.
        return Err(invalid(
            &format!("{}...", &name[..MAX_EXTENSION_NAME_BYTES]),
            format!(
                "extension name is {} bytes, over the limit of {MAX_EXTENSION_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// The extension that counts an event's causes: 0 (or absent) for an event a producer
/// started, the parent's depth + 1 for an event a handler emitted (the host sets it). A
/// producer may pass on a depth from another system, but only as a whole number, since the
/// hop limit reads it.
pub const CAUSATION_DEPTH: &str = "causationdepth";

/// A `causationdepth` value: a CloudEvents Integer (decimal, 32-bit) that is not negative.
fn parse_causation_depth(value: &str) -> Result<u32, String> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<i32>() {
        Ok(depth) if digits => Ok(depth.unsigned_abs()),
        _ => Err(format!(
            "must be a whole number from 0 to {}, the count of the event's causes, got `{value}`",
            i32::MAX
        )),
    }
}

/// Whether `ty` is a type evhost routes: what a subscription names and a handler emits. Any
/// CloudEvents string is a valid `type` (ingress takes it, and keeps it in the log), but one
/// with whitespace is a typo far more often than a name, so no subscription may name one,
/// and a handler that emits one, which nothing could ever receive, is told so.
pub fn check_routable_type(ty: &str) -> Result<(), EventError> {
    check_characters("type", ty)?;
    required("type", Some(ty.to_owned()))?;
    if ty.chars().any(char::is_whitespace) {
        return Err(invalid(
            "type",
            format!("`{ty}` has whitespace, which no subscription can name"),
        ));
    }
    Ok(())
}

fn invalid(attribute: &str, reason: impl Into<String>) -> EventError {
    EventError::Invalid {
        attribute: attribute.to_owned(),
        reason: reason.into(),
    }
}

impl Event {
    /// A builder with the three required attributes set.
    pub fn builder(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
    ) -> EventBuilder {
        EventBuilder {
            id: Some(id.into()),
            source: Some(source.into()),
            ty: Some(ty.into()),
            ..EventBuilder::default()
        }
    }

    /// The builder holding this event's parts, to change some and build again.
    pub fn into_builder(self) -> EventBuilder {
        EventBuilder {
            id: Some(self.id),
            source: Some(self.source),
            ty: Some(self.ty),
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            subject: self.subject,
            time: self.time,
            extensions: self.extensions,
            data: self.data,
        }
    }

    /// The same event with `dataschema` set to `url`: the registered schema its data was
    /// checked against ([`crate::schemas`]). The URL is the host's own, made of a checked
    /// type, so it needs no check of its own.
    pub fn with_dataschema(mut self, url: String) -> Event {
        self.dataschema = Some(url);
        self
    }

    /// An event the store read back: it was built (and so validated) before it was stored,
    /// and checking it again on every read would cost the hot path for nothing.
    pub(crate) fn from_stored(parts: EventBuilder) -> Event {
        Event {
            id: parts.id.unwrap_or_default(),
            source: parts.source.unwrap_or_default(),
            ty: parts.ty.unwrap_or_default(),
            datacontenttype: parts.datacontenttype,
            dataschema: parts.dataschema,
            subject: parts.subject,
            time: parts.time,
            extensions: parts.extensions,
            data: parts.data,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A non-empty URI-reference.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The versioned type, e.g. `com.example.shop.order.placed.v1`.
    pub fn ty(&self) -> &str {
        &self.ty
    }

    pub fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }

    /// An absolute URI.
    pub fn dataschema(&self) -> Option<&str> {
        self.dataschema.as_deref()
    }

    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// RFC 3339, as the producer wrote it.
    pub fn time(&self) -> Option<&str> {
        self.time.as_deref()
    }

    /// Extension attributes in their canonical string form; names are lowercase a-z0-9.
    pub fn extensions(&self) -> &BTreeMap<String, String> {
        &self.extensions
    }

    /// An extension attribute's value.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).map(String::as_str)
    }

    /// How many causes the event has ([`CAUSATION_DEPTH`]): 0 when the extension is absent.
    /// An event stored before the extension was checked reads as 0 when its value is not a
    /// number.
    pub fn causation_depth(&self) -> u32 {
        self.extension(CAUSATION_DEPTH)
            .and_then(|depth| parse_causation_depth(depth).ok())
            .unwrap_or(0)
    }

    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    /// The event in the CloudEvents JSON format (structured mode), e.g. for the admin API or
    /// for delivery to an HTTP sink.
    ///
    /// `data` goes out as JSON when the content type is JSON (or absent) and the bytes are
    /// JSON, as a string when they are text, and as `data_base64` otherwise, which is the
    /// only form that carries any bytes unchanged.
    pub fn to_json(&self) -> Value {
        let mut json = Map::new();
        json.insert("specversion".into(), SPEC_VERSION.into());
        json.insert("id".into(), self.id.clone().into());
        json.insert("source".into(), self.source.clone().into());
        json.insert("type".into(), self.ty.clone().into());
        let optional = [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                json.insert(name.into(), value.clone().into());
            }
        }
        // The builder refuses extensions named like a context attribute or the data, so
        // none can overwrite another member.
        for (name, value) in &self.extensions {
            json.insert(name.clone(), value.clone().into());
        }
        if let (Some(form), Some(data)) = (self.data_form(), &self.data) {
            let (member, value) = match form {
                DataForm::Json(raw) => match serde_json::from_str(raw.get()) {
                    Ok(value) => (form.member(), value),
                    // Not reached: `data_form` checked that it parses. Base64 carries any bytes.
                    Err(_) => ("data_base64", BASE64.encode(data).into()),
                },
                DataForm::Text(text) => (form.member(), text.into()),
                DataForm::Base64(bytes) => (form.member(), BASE64.encode(bytes).into()),
            };
            json.insert(member.into(), value);
        }
        Value::Object(json)
    }

    /// How the CloudEvents JSON format carries `data`, decided without building a tree of it
    /// (see [`Event::to_json`]), so that a large event can be written out as it is.
    pub fn data_form(&self) -> Option<DataForm<'_>> {
        let data = self.data.as_deref()?;
        let json = self
            .datacontenttype
            .as_deref()
            .is_none_or(is_json_media_type);
        if json
            && serde_json::from_slice::<JsonValueCheck>(data).is_ok()
            && let Ok(raw) = serde_json::from_slice::<&RawValue>(data)
            // A JSON `null` would read back as "no data", so it travels as base64 to come
            // back as the four bytes it is.
            && raw.get() != "null"
        {
            return Some(DataForm::Json(raw));
        }
        // With a JSON content type (`text/json` is text too) a `data` string is read as the JSON
        // string it is, not as the text inside it, so bytes that are not JSON go as base64.
        if !json
            && self
                .datacontenttype
                .as_deref()
                .is_some_and(is_text_media_type)
            && let Ok(text) = std::str::from_utf8(data)
        {
            return Some(DataForm::Text(text));
        }
        Some(DataForm::Base64(data))
    }
}

/// How the CloudEvents JSON format carries an event's `data` ([`Event::data_form`]).
#[derive(Debug, Clone, Copy)]
pub enum DataForm<'a> {
    /// As `data`, a JSON value: this JSON text, the stored bytes without the whitespace
    /// around them.
    Json(&'a RawValue),
    /// As `data`, a JSON string of this text.
    Text(&'a str),
    /// As `data_base64`, the only form that carries any bytes unchanged.
    Base64(&'a [u8]),
}

impl DataForm<'_> {
    /// The member of the JSON format that carries it.
    pub fn member(&self) -> &'static str {
        match self {
            DataForm::Json(_) | DataForm::Text(_) => "data",
            DataForm::Base64(_) => "data_base64",
        }
    }
}

/// Accepts exactly the JSON text that parses into a [`Value`] (the same parser, so the same
/// nesting limit, number range and string rules) and builds nothing: JSON `data` is
/// written out as its text only when a client can read it back as a value.
struct JsonValueCheck;

impl<'de> Deserialize<'de> for JsonValueCheck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonValueCheck)
    }
}

impl<'de> Visitor<'de> for JsonValueCheck {
    type Value = JsonValueCheck;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<JsonValueCheck>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<JsonValueCheck>()?.is_some() {
            map.next_value::<JsonValueCheck>()?;
        }
        Ok(self)
    }
}

/// The context attributes of CloudEvents 1.0; any other attribute is an extension.
pub(crate) const CONTEXT_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// Whether a media type is JSON: `application/json`, `text/json` or any `+json` structured
/// syntax suffix, compared case-insensitively and without parameters. For these the JSON
/// format carries `data` as a JSON value rather than a string.
pub fn is_json_media_type(ct: &str) -> bool {
    let essence = media_type_essence(ct);
    match essence.split_once('/') {
        Some(("application", "json") | ("text", "json")) => true,
        Some((ty, subtype)) => {
            !ty.is_empty() && subtype.len() > "+json".len() && subtype.ends_with("+json")
        }
        None => false,
    }
}

/// Text that can go in a JSON string as it is: `text/*` and XML.
fn is_text_media_type(ct: &str) -> bool {
    let essence = media_type_essence(ct);
    match essence.split_once('/') {
        Some(("text", subtype)) => !subtype.is_empty(),
        Some(("application", "xml")) => true,
        Some((ty, subtype)) => {
            !ty.is_empty() && subtype.len() > "+xml".len() && subtype.ends_with("+xml")
        }
        None => false,
    }
}

/// `type/subtype` of a media type, lowercased, parameters dropped.
pub(crate) fn media_type_essence(ct: &str) -> String {
    let essence = ct.split_once(';').map_or(ct, |(essence, _)| essence);
    essence.trim().to_ascii_lowercase()
}

// The CloudEvents SDK's event, for Rust users of the client library and for `evhost send`.
// The SDK's HTTP binding is not the ingress decoder (see `ingress::binding`), but its event
// type is the common currency of Rust CloudEvents code, so ours converts both ways.

impl TryFrom<cloudevents::Event> for Event {
    type Error = EventError;

    /// The SDK's event, checked by the same rules as any other. `time` is written in RFC 3339
    /// UTC; extensions take their canonical string form (`true`, `42`); `data` becomes bytes
    /// (JSON text for JSON data).
    fn try_from(mut event: cloudevents::Event) -> Result<Event, EventError> {
        use cloudevents::AttributesReader;
        let (datacontenttype, dataschema, data) = event.take_data();
        let data = data.map(|data| match data {
            cloudevents::Data::Binary(bytes) => bytes,
            cloudevents::Data::String(text) => text.into_bytes(),
            cloudevents::Data::Json(value) => value.to_string().into_bytes(),
        });
        let extensions = event
            .iter_extensions()
            .map(|(name, value)| (name.to_owned(), value.to_string()))
            .collect();
        EventBuilder {
            id: Some(event.id().to_owned()),
            source: Some(event.source().to_string()),
            ty: Some(event.ty().to_owned()),
            datacontenttype,
            dataschema: dataschema.map(|url| url.to_string()),
            subject: event.subject().map(str::to_owned),
            time: event
                .time()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            extensions,
            data,
        }
        .build()
    }
}

impl TryFrom<Event> for cloudevents::Event {
    type Error = cloudevents::event::EventBuilderError;

    /// Our event as the SDK's, `data` as bytes (so that they stay exactly as they are) and
    /// extensions as strings. It only fails where the SDK reads an attribute more strictly
    /// than CloudEvents does (its `dataschema` must be a URL).
    fn try_from(event: Event) -> Result<cloudevents::Event, Self::Error> {
        use cloudevents::event::{EventBuilderError, TryIntoUrl};
        use cloudevents::{AttributesWriter, EventBuilder as _};
        let mut builder = cloudevents::EventBuilderV10::new()
            .id(event.id)
            .source(event.source)
            .ty(event.ty);
        if let Some(subject) = event.subject {
            builder = builder.subject(subject);
        }
        if let Some(time) = event.time {
            builder = builder.time(time);
        }
        for (name, value) in event.extensions {
            builder = builder.extension(&name, value);
        }
        let mut sdk = builder.build()?;
        if let Some(data) = event.data {
            sdk.set_data_unchecked(data);
        }
        sdk.set_datacontenttype(event.datacontenttype);
        if let Some(schema) = event.dataschema {
            let url = schema
                .into_url()
                .map_err(|source| EventBuilderError::ParseUrlError {
                    attribute_name: "dataschema",
                    source,
                })?;
            sdk.set_dataschema(Some(url));
        }
        Ok(sdk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(datacontenttype: Option<&str>, data: Option<&[u8]>) -> Event {
        let mut builder = Event::builder("e-1", "/shop", "com.example.shop.stock.added.v1");
        if let Some(data) = data {
            builder = builder.data(datacontenttype, data);
        }
        builder.build().expect("a valid event")
    }

    fn data_of(datacontenttype: Option<&str>, data: &[u8]) -> (Option<Value>, Option<Value>) {
        let json = event(datacontenttype, Some(data)).to_json();
        (json.get("data").cloned(), json.get("data_base64").cloned())
    }

    #[test]
    fn json_media_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/json",
            "application/cloudevents+json",
            "application/vnd.example.order+json ; v=2",
        ] {
            assert!(is_json_media_type(ct), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/jsonx",
            "application/+json",
            "json",
            "",
            "application/json-seq",
        ] {
            assert!(!is_json_media_type(ct), "{ct}");
        }
    }

    #[test]
    fn the_attributes_and_extensions_are_top_level_members() {
        let event = event(None, None)
            .into_builder()
            .subject("o-1")
            .time("2026-01-02T03:04:05Z")
            .dataschema("https://example.com/schema")
            .extension("partitionkey", "sku-1")
            .build()
            .expect("a valid event");
        assert_eq!(
            event.to_json(),
            json!({
                "specversion": "1.0",
                "id": "e-1",
                "source": "/shop",
                "type": "com.example.shop.stock.added.v1",
                "subject": "o-1",
                "time": "2026-01-02T03:04:05Z",
                "dataschema": "https://example.com/schema",
                "partitionkey": "sku-1",
            })
        );
    }

    #[test]
    fn data_is_json_text_or_base64() {
        let json_data = br#"{"sku":"sku-1","quantity":10}"#;
        assert_eq!(
            data_of(None, json_data),
            (Some(json!({"sku": "sku-1", "quantity": 10})), None)
        );
        assert_eq!(
            data_of(Some("application/json"), b"\"hi\""),
            (Some(json!("hi")), None)
        );
        // JSON content type, but not JSON bytes: only base64 keeps them.
        assert_eq!(
            data_of(Some("application/json"), b"{oops"),
            (None, Some(json!("e29vcHM=")))
        );
        // JSON and text at once: as a string these bytes would read back as the JSON string
        // `"{oops"`, quotes included (found by the `ingress_decode` fuzz target).
        for ct in ["text/json", "text/vnd.example+json"] {
            assert_eq!(
                data_of(Some(ct), b"{oops"),
                (None, Some(json!("e29vcHM="))),
                "{ct}"
            );
        }
        assert_eq!(data_of(None, b"plain"), (None, Some(json!("cGxhaW4="))));
        assert_eq!(
            data_of(Some("text/plain; charset=utf-8"), "café".as_bytes()),
            (Some(json!("café")), None)
        );
        assert_eq!(
            data_of(Some("text/plain"), b"123"),
            (Some(json!("123")), None)
        );
        assert_eq!(
            data_of(Some("application/xml"), b"<a/>"),
            (Some(json!("<a/>")), None)
        );
        assert_eq!(
            data_of(Some("image/svg+xml"), b"<svg/>"),
            (Some(json!("<svg/>")), None)
        );
        assert_eq!(
            data_of(Some("text/plain"), b"\xff"),
            (None, Some(json!("/w==")))
        );
        assert_eq!(
            data_of(Some("application/octet-stream"), b"hi"),
            (None, Some(json!("aGk=")))
        );
        assert_eq!(
            data_of(Some("application/json"), b"null"),
            (None, Some(json!("bnVsbA==")))
        );
        assert_eq!(data_of(None, b""), (None, Some(json!(""))));
        assert!(event(None, None).to_json().get("data").is_none());
    }

    /// `to_json` writes JSON `data` as a parsed value; read back (as the client reads the
    /// admin API) it must be the numbers the producer wrote. serde_json's default float
    /// parser read `1.999e+47` as `1.9990000000000004e+47` (found by the `ingress_decode`
    /// fuzz target), hence its `float_roundtrip` feature.
    #[test]
    fn json_data_keeps_its_numbers() {
        for number in [
            "199900000000000000000000000000080237960548581374",
            "2.2250738585072011e-308",
            "0.30000000000000004",
            "1e23",
        ] {
            let data = format!(r#"{{"n":{number}}}"#);
            let (data, _) = data_of(None, data.as_bytes());
            let written = data.expect("JSON data")["n"].to_string();
            let read_back: Value = serde_json::from_str(&written).expect("a number");
            let original: Value = serde_json::from_str(number).expect("a number");
            assert_eq!(read_back, original, "{number} went out as {written}");
        }
    }

    #[test]
    fn the_builder_names_the_attribute_that_breaks_a_rule() {
        let base = || Event::builder("e-1", "/shop", "t.v1");
        let attribute = |builder: EventBuilder| match builder.build() {
            Err(EventError::Invalid { attribute, .. }) => attribute,
            Err(EventError::Missing { attribute }) => format!("missing {attribute}"),
            Ok(event) => panic!("built {event:?}"),
        };
        assert_eq!(attribute(EventBuilder::default()), "missing id");
        assert_eq!(attribute(Event::builder("", "/s", "t")), "id");
        assert_eq!(attribute(Event::builder("e", "a b", "t")), "source");
        assert_eq!(attribute(Event::builder("e", "/s", "")), "type");
        assert_eq!(attribute(base().subject("")), "subject");
        assert_eq!(attribute(base().subject("a\u{7}b")), "subject");
        assert_eq!(attribute(base().time("yesterday")), "time");
        // Valid RFC 3339, but years -1 and 10000 in UTC (caught by the `ingress_decode` fuzz
        // target's SDK round trip: the SDK's event could not be converted back, nor sent).
        assert_eq!(attribute(base().time("0000-01-01T00:00:00+01:00")), "time");
        assert_eq!(attribute(base().time("9999-12-31T23:59:59-00:01")), "time");
        for edge in [
            "0000-01-01T00:00:00Z",
            "0000-01-01T01:00:00+01:00",
            "9999-12-31T23:59:59.999Z",
        ] {
            let event = base()
                .time(edge)
                .build()
                .expect("a time within the years 0000 to 9999");
            let sdk = cloudevents::Event::try_from(event.clone()).expect("an SDK event");
            let back = Event::try_from(sdk).expect("the SDK's event comes back");
            assert!(back.time().is_some(), "{edge}");
        }
        assert_eq!(attribute(base().dataschema("/relative")), "dataschema");
        assert_eq!(
            attribute(base().data(Some("not a type"), "x")),
            "datacontenttype"
        );
        assert_eq!(attribute(base().extension("Upper", "v")), "Upper");
        assert_eq!(attribute(base().extension("id", "v")), "id");
        assert_eq!(attribute(base().extension("data", "v")), "data");
        assert_eq!(attribute(base().extension("key", "\u{FFFE}")), "key");
        assert_eq!(attribute(base().extension("big", "x".repeat(4097))), "big");
        assert!(base().extension("big", "x".repeat(4096)).build().is_ok());
        assert_eq!(attribute(base().extension("bell", "a\u{7}")), "bell");
        let long_name = "n".repeat(65);
        assert_eq!(
            attribute(base().extension(long_name, "v")),
            format!("{}...", "n".repeat(64))
        );
        let many = |n: usize| {
            (0..n).fold(base(), |builder, i| {
                builder.extension(format!("x{i:03}"), "v")
            })
        };
        assert!(many(MAX_EXTENSIONS).build().is_ok());
        assert_eq!(attribute(many(MAX_EXTENSIONS + 1)), "x064");
        assert!(check_routable_type("com.example.shop.order.placed.v1").is_ok());
        assert!(check_routable_type("").is_err());
        assert!(check_routable_type("a type").is_err());
        // A valid CloudEvents type all the same.
        assert!(Event::builder("e", "/s", "a type").build().is_ok());
    }

    #[test]
    fn a_causation_depth_is_a_whole_number_or_absent() {
        let with = |depth: &str| {
            Event::builder("e-1", "/shop", "t.v1")
                .extension(CAUSATION_DEPTH, depth)
                .build()
        };
        assert_eq!(with("7").map(|e| e.causation_depth()), Ok(7));
        assert_eq!(with("0").map(|e| e.causation_depth()), Ok(0));
        for bad in ["-1", "+3", "1.5", "", "many", "2147483648"] {
            match with(bad) {
                Err(EventError::Invalid { attribute, .. }) => {
                    assert_eq!(attribute, CAUSATION_DEPTH, "{bad:?}");
                }
                other => panic!("`{bad}` gave {other:?}"),
            }
        }
        let started = Event::builder("e-1", "/shop", "t.v1").build();
        assert_eq!(started.map(|e| e.causation_depth()), Ok(0));
    }

    #[test]
    fn sdk_events_convert_both_ways_unchanged() {
        use cloudevents::{AttributesReader, EventBuilder as _};
        let sdk = cloudevents::EventBuilderV10::new()
            .id("place-o-1")
            .source("/web")
            .ty("com.example.shop.order.place.v1")
            .subject("o-1")
            .time("2026-01-02T03:04:05.123Z")
            .extension("partitionkey", "sku-1")
            .data_with_schema(
                "application/json",
                "https://example.com/place.json",
                json!({"order_id": "o-1", "quantity": 1}),
            )
            .build()
            .expect("a valid SDK event");
        let ours = Event::try_from(sdk.clone()).expect("the SDK event is valid here too");
        assert_eq!(ours.id(), "place-o-1");
        assert_eq!(ours.subject(), Some("o-1"));
        assert_eq!(ours.time(), Some("2026-01-02T03:04:05.123Z"));
        assert_eq!(ours.extension("partitionkey"), Some("sku-1"));
        assert_eq!(ours.dataschema(), Some("https://example.com/place.json"));
        assert_eq!(
            serde_json::from_slice::<Value>(ours.data().expect("data")).expect("JSON"),
            json!({"order_id": "o-1", "quantity": 1})
        );
        let back = cloudevents::Event::try_from(ours.clone()).expect("converts back");
        // The SDK holds the data as bytes now, so compare what both say it is.
        assert_eq!(back.id(), sdk.id());
        assert_eq!(back.source(), sdk.source());
        assert_eq!(back.ty(), sdk.ty());
        assert_eq!(back.subject(), sdk.subject());
        assert_eq!(back.time(), sdk.time());
        assert_eq!(back.dataschema(), sdk.dataschema());
        assert_eq!(back.datacontenttype(), sdk.datacontenttype());
        assert_eq!(
            back.extension("partitionkey"),
            sdk.extension("partitionkey")
        );
        assert_eq!(
            serde_json::Value::try_from(back.data().cloned().expect("data")).expect("JSON"),
            json!({"order_id": "o-1", "quantity": 1})
        );
        // And ours -> SDK -> ours is the identity.
        assert_eq!(Event::try_from(back).expect("valid"), ours);

        // Typed SDK extensions take their canonical string form.
        let typed = cloudevents::EventBuilderV10::new()
            .id("e")
            .source("/s")
            .ty("t")
            .extension("count", 42i64)
            .extension("flag", true)
            .build()
            .expect("a valid SDK event");
        let ours = Event::try_from(typed).expect("valid");
        assert_eq!(ours.extension("count"), Some("42"));
        assert_eq!(ours.extension("flag"), Some("true"));

        // The same rules hold for SDK events as for any other.
        let bad = cloudevents::EventBuilderV10::new()
            .id("e")
            .source("/s")
            .ty("t")
            .extension("BadName", "v")
            .build()
            .expect("the SDK does not check extension names");
        assert!(matches!(
            Event::try_from(bad),
            Err(EventError::Invalid { attribute, .. }) if attribute == "BadName"
        ));
    }
}
