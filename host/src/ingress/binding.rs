//! The CloudEvents 1.0 HTTP protocol binding, receiving side: a request's headers and body
//! in, validated [`Event`]s out. The ingress handler reads (and size-limits) the body, calls
//! [`decode`], and hands the events to the router; it answers an [`IngressError`] as a
//! problem.
//!
//! The content mode follows `Content-Type`: `application/cloudevents+json` is one event in
//! the JSON format (structured), `application/cloudevents-batch+json` an array of them
//! (batch), another `application/cloudevents(-batch)+FORMAT` is a format we do not read
//! (415), and anything else is binary mode, where the attributes are `ce-*` headers and the
//! body is the data.
//!
//! Invariants:
//! - Every returned [`Event`] holds every rule of CloudEvents 1.0 that the event format can
//!   check (required attributes, types, URI, timestamp and media type syntax, extension
//!   names, allowed characters), so no later stage validates again.
//! - A batch is all or nothing: one invalid event refuses the request, naming its index.
//! - No input makes this module panic; parsing depth is bounded by `serde_json`'s recursion
//!   limit, and memory by the body limit the caller enforces.
//! - JSON `data` is kept as the producer wrote it (key order, number spelling), because a
//!   handler may hash or sign it; re-serialising a parsed value would not be the same bytes.
//!
//! Why by hand and not the CloudEvents SDK's HTTP binding (`cloudevents-sdk`, which the host
//! uses elsewhere: `evhost send` and the client send through it, and [`Event`] converts to
//! and from its event): the SDK's binding has no batch mode, decodes `ce-` headers without
//! the quoted-string and single percent-decoding rules of the HTTP binding, parses JSON
//! `data` into a tree (losing the producer's bytes), and checks less than CloudEvents asks
//! (extension names, control characters, `dataschema` as an absolute URI), with errors that
//! do not name the attribute. Every rule it checks is in [`Event`]'s builder, shared with
//! every other way an event is made.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use percent_encoding::percent_decode;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::problem::IngressError;
use crate::event::{
    CONTEXT_ATTRIBUTES, Event, EventBuilder, SPEC_VERSION, is_json_media_type, media_type_essence,
};

/// The structured content mode's media type, JSON event format.
pub const STRUCTURED_JSON: &str = "application/cloudevents+json";
/// The batched content mode's media type, JSON event format.
pub const BATCH_JSON: &str = "application/cloudevents-batch+json";
/// The methods the ingress resource answers: for `Allow` on OPTIONS and on 405.
pub const ALLOW: &str = "POST, OPTIONS";

const CE_PREFIX: &str = "ce-";
const WEBHOOK_REQUEST_ORIGIN: &str = "webhook-request-origin";
const WEBHOOK_ALLOWED_ORIGIN: HeaderName = HeaderName::from_static("webhook-allowed-origin");
const WEBHOOK_ALLOWED_RATE: HeaderName = HeaderName::from_static("webhook-allowed-rate");

/// RFC 4648 base64 for `data_base64`. Padding is optional because some encoders drop it and
/// the bytes are unambiguous either way.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The content mode of a request (CloudEvents HTTP binding, section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

impl Mode {
    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Binary => "binary",
            Self::Structured => "structured",
            Self::Batch => "batch",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The events of one request, in the order they came. Zero events is an empty batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub mode: Mode,
    pub events: Vec<Event>,
}

/// Decodes one HTTP request body (already read, already size-limited by the caller), a batch
/// of at most [`crate::config::DEFAULT_MAX_BATCH`] events.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Decoded, IngressError> {
    decode_limited(headers, body, crate::config::DEFAULT_MAX_BATCH)
}

/// [`decode`], a batch of at most `max_batch` events: a larger one is refused before any of
/// its events is decoded.
pub fn decode_limited(
    headers: &HeaderMap,
    body: &[u8],
    max_batch: usize,
) -> Result<Decoded, IngressError> {
    let mode = mode_of(headers)?;
    let events = match mode {
        Mode::Binary => vec![decode_binary(headers, body)?],
        Mode::Structured => vec![decode_structured(body)?],
        Mode::Batch => decode_batch(body, max_batch)?,
    };
    Ok(Decoded { mode, events })
}

/// The CloudEvents web hook validation handshake ("HTTP 1.1 Web Hooks for Event Delivery",
/// section 4): the headers of the 200 answer to an OPTIONS request.
///
/// evhost takes events from any origin at any rate (load is shed per handler queue with 429
/// instead), so it grants the origin asked for and an unlimited rate. The rate is granted
/// even unasked: the spec requires it when `WebHook-Request-Rate` is sent and recommends it
/// otherwise.
pub fn webhook_handshake(headers: &HeaderMap) -> Result<HeaderMap, IngressError> {
    let origin = headers
        .get(WEBHOOK_REQUEST_ORIGIN)
        .filter(|origin| !origin.is_empty())
        .ok_or(IngressError::MissingHeader {
            header: "WebHook-Request-Origin",
        })?;
    let mut answer = HeaderMap::new();
    answer.insert(WEBHOOK_ALLOWED_ORIGIN, origin.clone());
    answer.insert(WEBHOOK_ALLOWED_RATE, HeaderValue::from_static("*"));
    answer.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    Ok(answer)
}

fn mode_of(headers: &HeaderMap) -> Result<Mode, IngressError> {
    let Some(content_type) = content_type(headers)? else {
        return Ok(Mode::Binary);
    };
    let essence = media_type_essence(content_type);
    if essence == STRUCTURED_JSON {
        Ok(Mode::Structured)
    } else if essence == BATCH_JSON {
        Ok(Mode::Batch)
    } else if essence.starts_with("application/cloudevents+")
        || essence.starts_with("application/cloudevents-batch+")
    {
        Err(IngressError::UnsupportedFormat {
            media_type: essence,
        })
    } else {
        Ok(Mode::Binary)
    }
}

fn content_type(headers: &HeaderMap) -> Result<Option<&str>, IngressError> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid_header("content-type", "appears more than once"));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| invalid_header("content-type", "holds bytes other than visible ASCII"))
}

// Binary mode (HTTP binding, section 3.1).

fn decode_binary(headers: &HeaderMap, body: &[u8]) -> Result<Event, IngressError> {
    let mut attributes = BTreeMap::new();
    // `http` keeps header names lowercase, which is the case-insensitive match the binding
    // asks for, and yields a repeated header once per value.
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix(CE_PREFIX) else {
            continue;
        };
        if attribute.is_empty() {
            return Err(invalid_header(name.as_str(), "names no attribute"));
        }
        if attribute == "datacontenttype" {
            return Err(invalid(
                attribute,
                "in binary mode the content type is the `Content-Type` header, not \
                 `ce-datacontenttype`",
            ));
        }
        let value = header_value(attribute, value)?;
        if attributes.insert(attribute.to_owned(), value).is_some() {
            return Err(invalid(
                attribute,
                format!("header `{name}` appears more than once"),
            ));
        }
    }
    if let Some(content_type) = content_type(headers)? {
        attributes.insert("datacontenttype".to_owned(), content_type.to_owned());
    }
    let data = (!body.is_empty()).then(|| body.to_vec());
    build_event(attributes, data)
}

/// A `ce-*` header's value (HTTP binding, section 3.1.3.2): a quoted-string (RFC 9110
/// section 5.6.4) is unquoted and its backslash escapes undone, then the value is
/// percent-decoded exactly once and must be UTF-8.
fn header_value(attribute: &str, value: &HeaderValue) -> Result<String, IngressError> {
    let bytes = value.as_bytes();
    let unquoted = match bytes {
        [b'"', inner @ .., b'"'] if bytes.len() >= 2 => unescape_quoted(attribute, inner)?,
        _ => bytes.to_vec(),
    };
    String::from_utf8(percent_decode(&unquoted).collect())
        .map_err(|_| invalid(attribute, "is not UTF-8 once percent-decoded"))
}

/// The inside of a quoted-string, with each `\X` turned into `X`. An unescaped `"` or a
/// lone trailing backslash means the value was not a quoted-string.
fn unescape_quoted(attribute: &str, inner: &[u8]) -> Result<Vec<u8>, IngressError> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped) => out.push(escaped),
                None => {
                    return Err(invalid(
                        attribute,
                        "ends its quoted-string with a lone `\\`",
                    ));
                }
            },
            b'"' => {
                return Err(invalid(
                    attribute,
                    "has an unescaped `\"` inside its quotes",
                ));
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

// Structured and batched modes, JSON event format.

fn decode_structured(body: &[u8]) -> Result<Event, IngressError> {
    match parse(body)? {
        Shape::Object(members) => event_from_members(members),
        other => Err(IngressError::UnexpectedJson {
            expected: "a JSON object (one CloudEvent)",
            found: other.kind(),
        }),
    }
}

fn decode_batch(body: &[u8], max_batch: usize) -> Result<Vec<Event>, IngressError> {
    // Count first, without building anything per event: a body of 15,000 tiny events must
    // cost a scan, not 15,000 decoded events, before it is refused. A body that is not an
    // array of JSON values falls through to the full parse, which names what it is.
    if let Ok(items) = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body)
        && items.len() > max_batch
    {
        return Err(IngressError::TooManyEvents {
            count: items.len(),
            limit: max_batch,
        });
    }
    let items = match parse(body)? {
        Shape::Array(items) => items,
        other => {
            return Err(IngressError::UnexpectedJson {
                expected: "a JSON array (a batch of CloudEvents)",
                found: other.kind(),
            });
        }
    };
    let mut events = Vec::with_capacity(items.len());
    let mut batch_version: Option<String> = None;
    for (index, item) in items.into_iter().enumerate() {
        let Shape::Object(members) = item else {
            return Err(IngressError::UnexpectedJson {
                expected: "a JSON object (one CloudEvent)",
                found: item.kind(),
            }
            .at_index(index));
        };
        // The batch format requires one `specversion` for the whole batch; say so rather than
        // let the event's own check report it as merely unsupported.
        if let Some(version) = string_member(&members, "specversion") {
            match &batch_version {
                None => batch_version = Some(version.to_owned()),
                Some(first) if first != version => {
                    return Err(invalid(
                        "specversion",
                        format!(
                            "{} differs from {}, the `specversion` of the first event of the \
                             batch",
                            quoted(version),
                            quoted(first)
                        ),
                    )
                    .at_index(index));
                }
                Some(_) => {}
            }
        }
        events.push(event_from_members(members).map_err(|error| error.at_index(index))?);
    }
    Ok(events)
}

fn parse(body: &[u8]) -> Result<Shape, IngressError> {
    serde_json::from_slice(body).map_err(|error| IngressError::InvalidJson {
        reason: error.to_string(),
    })
}

/// The top of a JSON document, read just deep enough to find events: objects keep their
/// members in order (so that a repeated name is seen), and `data` is kept as raw text.
enum Shape {
    Object(Vec<(String, Member)>),
    Array(Vec<Shape>),
    Other(&'static str),
}

enum Member {
    Data(Box<RawValue>),
    Value(Value),
}

impl Shape {
    fn kind(&self) -> &'static str {
        match self {
            Self::Object(_) => "an object",
            Self::Array(_) => "an array",
            Self::Other(kind) => kind,
        }
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Shape::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut members = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let member = if name == "data" {
                Member::Data(map.next_value()?)
            } else {
                Member::Value(map.next_value()?)
            };
            members.push((name, member));
        }
        Ok(Shape::Object(members))
    }
}

fn string_member<'a>(members: &'a [(String, Member)], name: &str) -> Option<&'a str> {
    members.iter().find_map(|(member, value)| match value {
        Member::Value(Value::String(value)) if member == name => Some(value.as_str()),
        _ => None,
    })
}

/// One event in the JSON event format (JSON format, section 3).
fn event_from_members(members: Vec<(String, Member)>) -> Result<Event, IngressError> {
    let mut seen = BTreeSet::new();
    let mut attributes = BTreeMap::new();
    let mut data = None;
    let mut data_base64 = None;
    for (name, member) in members {
        if !seen.insert(name.clone()) {
            return Err(invalid(&name, "appears more than once"));
        }
        let value = match member {
            // JSON `null` for data, as for any attribute, means absent.
            Member::Data(raw) if raw.get() == "null" => continue,
            Member::Data(raw) => {
                data = Some(raw);
                continue;
            }
            Member::Value(Value::Null) => continue,
            Member::Value(value) => value,
        };
        if name == "data_base64" {
            match value {
                Value::String(encoded) => data_base64 = Some(encoded),
                other => {
                    return Err(invalid(
                        &name,
                        format!("must be a base64 string, found {}", json_kind(&other)),
                    ));
                }
            }
        } else if CONTEXT_ATTRIBUTES.contains(&name.as_str()) {
            match value {
                Value::String(value) => {
                    attributes.insert(name, value);
                }
                other => {
                    return Err(invalid(
                        &name,
                        format!("must be a string, found {}", json_kind(&other)),
                    ));
                }
            }
        } else {
            let value = extension_value(&name, value)?;
            attributes.insert(name, value);
        }
    }
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "data_base64",
                "`data` and `data_base64` are mutually exclusive",
            ));
        }
        (Some(raw), None) => Some(data_bytes(
            attributes.get("datacontenttype").map(String::as_str),
            &raw,
        )?),
        (None, Some(encoded)) => Some(decode_base64(&encoded)?),
        (None, None) => None,
    };
    build_event(attributes, data)
}

/// The bytes `data` stands for (JSON format, section 3.1): with a JSON content type (or none)
/// the JSON text itself; with another content type, a JSON string's contents (the usual way
/// to send text) and any other value's JSON text.
fn data_bytes(datacontenttype: Option<&str>, raw: &RawValue) -> Result<Vec<u8>, IngressError> {
    let text = raw.get();
    if datacontenttype.is_none_or(is_json_media_type) || !text.starts_with('"') {
        return Ok(text.as_bytes().to_vec());
    }
    serde_json::from_str::<String>(text)
        .map(String::into_bytes)
        .map_err(|error| invalid("data", format!("is not a JSON string: {error}")))
}

fn decode_base64(encoded: &str) -> Result<Vec<u8>, IngressError> {
    use base64::DecodeError;
    BASE64.decode(encoded).map_err(|error| {
        let reason = match error {
            DecodeError::InvalidByte(offset, _) => {
                format!("is not base64: unexpected character at offset {offset}")
            }
            DecodeError::InvalidLastSymbol(offset, _) => {
                format!("is not base64: the symbol at offset {offset} has bits left over")
            }
            DecodeError::InvalidLength(_) => "is not base64: its length is impossible".to_owned(),
            DecodeError::InvalidPadding => "is not base64: wrong padding".to_owned(),
        };
        invalid("data_base64", reason)
    })
}

/// An extension's value in its canonical string form (CloudEvents type system): a JSON
/// string as is, a boolean as `true`/`false`, an integer in decimal if it fits in 32 bits.
fn extension_value(name: &str, value: Value) -> Result<String, IngressError> {
    match value {
        Value::String(value) => Ok(value),
        Value::Bool(value) => Ok(value.to_string()),
        Value::Number(number) => match number.as_i64().map(i32::try_from) {
            Some(Ok(integer)) => Ok(integer.to_string()),
            _ if number.is_f64() => Err(invalid(
                name,
                format!("must be a string, an integer or a boolean, found the number {number}"),
            )),
            _ => Err(invalid(
                name,
                format!("the integer {number} is outside the 32-bit range CloudEvents allows"),
            )),
        },
        other => Err(invalid(
            name,
            format!(
                "must be a string, an integer or a boolean, found {}",
                json_kind(&other)
            ),
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// The rules every event meets, whatever its mode, are the event's own
// (`EventBuilder::build`); here is only what is particular to a request: its
// `specversion` and the attributes as named members or headers.

fn build_event(
    mut attributes: BTreeMap<String, String>,
    data: Option<Vec<u8>>,
) -> Result<Event, IngressError> {
    let specversion = attributes
        .remove("specversion")
        .ok_or(IngressError::MissingAttribute {
            attribute: "specversion",
        })?;
    if specversion != SPEC_VERSION {
        return Err(invalid(
            "specversion",
            format!(
                "unsupported version {}, evhost reads `{SPEC_VERSION}`",
                quoted(&specversion)
            ),
        ));
    }
    let mut take = |name: &str| attributes.remove(name);
    let builder = EventBuilder {
        id: take("id"),
        source: take("source"),
        ty: take("type"),
        datacontenttype: take("datacontenttype"),
        dataschema: take("dataschema"),
        subject: take("subject"),
        time: take("time"),
        extensions: BTreeMap::new(),
        data,
    };
    Ok(EventBuilder {
        extensions: attributes,
        ..builder
    }
    .build()?)
}

fn invalid(attribute: &str, reason: impl Into<String>) -> IngressError {
    IngressError::InvalidAttribute {
        attribute: attribute.to_owned(),
        reason: reason.into(),
    }
}

fn invalid_header(header: &str, reason: &str) -> IngressError {
    IngressError::InvalidHeader {
        header: header.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A client's value quoted in a message, cut short so that a huge value cannot make a huge
/// answer.
fn quoted(value: &str) -> String {
    const MAX_CHARS: usize = 40;
    match value.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("`{}...`", &value[..end]),
        None => format!("`{value}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    type Headers = &'static [(&'static str, &'static str)];

    /// One request and what decoding it must give.
    struct Case {
        name: &'static str,
        headers: Headers,
        body: &'static [u8],
        expect: Expect,
    }

    enum Expect {
        /// Decoded in this mode; the function checks the events.
        Ok(Mode, fn(&[Event])),
        /// Refused with this status, naming this attribute (if any).
        Err(u16, Option<&'static str>),
    }

    const BINARY: Headers = &[
        ("ce-specversion", "1.0"),
        ("ce-id", "e-1"),
        ("ce-source", "/shop/orders"),
        ("ce-type", "com.example.shop.order.place.v1"),
    ];
    const STRUCTURED: Headers = &[("content-type", STRUCTURED_JSON)];
    const BATCH: Headers = &[("content-type", BATCH_JSON)];

    /// The minimal binary-mode headers plus `extra`; leaked so that a case can hold them.
    fn with(extra: Headers) -> Headers {
        BINARY
            .iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>()
            .leak()
    }

    fn one(events: &[Event]) -> &Event {
        assert_eq!(events.len(), 1, "{events:?}");
        &events[0]
    }

    #[rustfmt::skip]
    fn cases() -> Vec<Case> {
        use Expect::{Err, Ok};
        vec![
            // Content mode.
            Case { name: "structured, media type case-insensitive, parameters ignored",
                headers: &[("content-type", "Application/CloudEvents+JSON; charset=utf-8")],
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!(one(e).id(), "1")) },
            Case { name: "batch",
                headers: &[("content-type", "application/cloudevents-batch+json")],
                body: br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"}]"#,
                expect: Ok(Mode::Batch, |e| assert_eq!(e.len(), 1)) },
            Case { name: "other structured format is 415",
                headers: &[("content-type", "application/cloudevents+xml")],
                body: b"<event/>", expect: Err(415, None) },
            Case { name: "other batch format is 415",
                headers: &[("content-type", "Application/CloudEvents-Batch+Avro; x=1")],
                body: b"", expect: Err(415, None) },
            Case { name: "no content type is binary, without datacontenttype",
                headers: BINARY, body: b"",
                expect: Ok(Mode::Binary, |e| {
                    let event = one(e);
                    assert_eq!((event.id(), event.source()), ("e-1", "/shop/orders"));
                    assert_eq!(event.ty(), "com.example.shop.order.place.v1");
                    assert_eq!((event.datacontenttype(), event.data()), (None, None));
                }) },
            Case { name: "binary without ce-specversion names specversion",
                headers: &[("content-type", "text/plain"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")],
                body: b"hi", expect: Err(400, Some("specversion")) },
            Case { name: "plain JSON body without ce- headers is binary missing specversion",
                headers: &[("content-type", "application/json")],
                body: br#"{"specversion":"1.0"}"#, expect: Err(400, Some("specversion")) },
            Case { name: "two content-type headers",
                headers: &[("content-type", STRUCTURED_JSON), ("content-type", "text/plain")],
                body: b"{}", expect: Err(400, None) },

            // Binary mode.
            Case { name: "ce- header names are case-insensitive, extensions lowercased",
                headers: &[("CE-SpecVersion", "1.0"), ("Ce-Id", "1"), ("cE-Source", "/s"), ("ce-TYPE", "t"), ("Ce-PartitionKey", "sku-1")],
                body: b"",
                expect: Ok(Mode::Binary, |e| {
                    assert_eq!(one(e).extension("partitionkey"), Some("sku-1"));
                }) },
            Case { name: "a quoted-string is unquoted and unescaped",
                headers: with(&[("ce-subject", "\"o-1\""), ("ce-note", "\"say \\\"hi\\\" \\\\ x\"")]), body: b"",
                expect: Ok(Mode::Binary, |e| {
                    assert_eq!(one(e).subject(), Some("o-1"));
                    assert_eq!(one(e).extension("note"), Some("say \"hi\" \\ x"));
                }) },
            Case { name: "a broken quoted-string is refused",
                headers: with(&[("ce-note", "\"\"x\"\"")]), body: b"",
                expect: Err(400, Some("note")) },
            Case { name: "percent-decoded exactly once",
                headers: with(&[("ce-subject", "100%2525%20caf%C3%A9"), ("ce-quoted", "\"a%22b\"")]), body: b"",
                expect: Ok(Mode::Binary, |e| {
                    assert_eq!(one(e).subject(), Some("100%25 café"));
                    assert_eq!(one(e).extension("quoted"), Some("a\"b"));
                }) },
            Case { name: "invalid UTF-8 after percent-decoding names the attribute",
                headers: with(&[("ce-subject", "caf%E9")]), body: b"", expect: Err(400, Some("subject")) },
            Case { name: "Content-Type becomes datacontenttype, the body is data as is",
                headers: with(&[("content-type", "application/octet-stream")]), body: b"\x00\xff\x10",
                expect: Ok(Mode::Binary, |e| {
                    assert_eq!(one(e).datacontenttype(), Some("application/octet-stream"));
                    assert_eq!(one(e).data(), Some(&b"\x00\xff\x10"[..]));
                }) },
            Case { name: "JSON data in binary mode is kept byte for byte",
                headers: with(&[("content-type", "application/json")]), body: b"{ \"b\": 1, \"a\": 2 }",
                expect: Ok(Mode::Binary, |e| assert_eq!(one(e).data(), Some(&b"{ \"b\": 1, \"a\": 2 }"[..]))) },
            Case { name: "ce-datacontenttype is refused",
                headers: with(&[("ce-datacontenttype", "text/plain")]), body: b"x", expect: Err(400, Some("datacontenttype")) },
            Case { name: "repeated ce- header",
                headers: &[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-id", "2"), ("ce-source", "/s"), ("ce-type", "t")],
                body: b"", expect: Err(400, Some("id")) },
            Case { name: "ce-data is not an extension",
                headers: with(&[("ce-data", "x")]), body: b"", expect: Err(400, Some("data")) },
            Case { name: "extension name with a dash",
                headers: with(&[("ce-my-ext", "x")]), body: b"", expect: Err(400, Some("my-ext")) },
            Case { name: "ce- with no attribute name",
                headers: with(&[("ce-", "x")]), body: b"", expect: Err(400, None) },
            Case { name: "decoded control character",
                headers: with(&[("ce-note", "a%0Ab")]), body: b"", expect: Err(400, Some("note")) },
            Case { name: "binary specversion other than 1.0",
                headers: &[("ce-specversion", "0.3"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")],
                body: b"", expect: Err(400, Some("specversion")) },
            Case { name: "binary with an invalid Content-Type",
                headers: with(&[("content-type", "plain text")]), body: b"x", expect: Err(400, Some("datacontenttype")) },

            // Structured mode.
            Case { name: "every attribute, extensions in canonical form",
                headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"o-1","source":"https://shop.example.com/orders","type":"com.example.shop.order.place.v1",
                    "datacontenttype":"application/json","dataschema":"https://schemas.example.com/order.json","subject":"o-1",
                    "time":"2026-01-02T03:04:05.123+01:00","partitionkey":"sku-1","attempt":3,"negative":-2147483648,"urgent":true,"gone":null,
                    "data":{"b":1, "a":[1.50,12345678901234567890123]}}"#,
                expect: Ok(Mode::Structured, |e| {
                    let event = one(e);
                    assert_eq!(event.dataschema(), Some("https://schemas.example.com/order.json"));
                    assert_eq!(event.subject(), Some("o-1"));
                    assert_eq!(event.time(), Some("2026-01-02T03:04:05.123+01:00"));
                    let extensions: Vec<_> = event.extensions().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    assert_eq!(extensions, [("attempt", "3"), ("negative", "-2147483648"), ("partitionkey", "sku-1"), ("urgent", "true")]);
                    // As written: member order, spacing and number spelling survive.
                    assert_eq!(event.data(), Some(&br#"{"b":1, "a":[1.50,12345678901234567890123]}"#[..]));
                }) },
            Case { name: "not JSON", headers: STRUCTURED, body: b"{\"id\":", expect: Err(400, None) },
            Case { name: "empty body", headers: STRUCTURED, body: b"", expect: Err(400, None) },
            Case { name: "not an object", headers: STRUCTURED, body: b"[]", expect: Err(400, None) },
            Case { name: "context attribute that is not a string",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#, expect: Err(400, Some("id")) },
            Case { name: "null context attribute is absent",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":null,"type":"t"}"#, expect: Err(400, Some("source")) },
            Case { name: "null optional attribute is absent",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":null,"data":null}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!((one(e).subject(), one(e).data()), (None, None))) },
            Case { name: "extension that is an object",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","meta":{}}"#, expect: Err(400, Some("meta")) },
            Case { name: "extension that is an array",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","tags":["a"]}"#, expect: Err(400, Some("tags")) },
            Case { name: "extension integer beyond 32 bits",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","count":2147483648}"#, expect: Err(400, Some("count")) },
            Case { name: "extension that is a fraction",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ratio":0.5}"#, expect: Err(400, Some("ratio")) },
            Case { name: "member that appears twice",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","id":"2"}"#, expect: Err(400, Some("id")) },
            Case { name: "data and data_base64 together",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AQ=="}"#,
                expect: Err(400, Some("data_base64")) },
            Case { name: "data string without datacontenttype is JSON text",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"hi"}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!(one(e).data(), Some(&b"\"hi\""[..]))) },
            Case { name: "data string with a +json content type is JSON text",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"Application/Vnd.Order+JSON; v=1","data":"hi"}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!(one(e).data(), Some(&b"\"hi\""[..]))) },
            Case { name: "data string with a text content type is the string's contents",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"caf\u00e9 \"x\""}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!(one(e).data(), Some("café \"x\"".as_bytes()))) },
            Case { name: "data object with a text content type is JSON text",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":{"a":1}}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!(one(e).data(), Some(&br#"{"a":1}"#[..]))) },
            Case { name: "data_base64 is decoded, padding optional",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AP8Q"}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!(one(e).data(), Some(&b"\x00\xff\x10"[..]))) },
            Case { name: "data_base64 without padding",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"aGk"}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!(one(e).data(), Some(&b"hi"[..]))) },
            Case { name: "invalid base64",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!!"}"#,
                expect: Err(400, Some("data_base64")) },
            Case { name: "data_base64 that is not a string",
                headers: STRUCTURED, body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":12}"#,
                expect: Err(400, Some("data_base64")) },
            Case { name: "structured mode ignores ce- headers",
                headers: &[("content-type", STRUCTURED_JSON), ("ce-id", "from-header")],
                body: br#"{"specversion":"1.0","id":"from-body","source":"/s","type":"t"}"#,
                expect: Ok(Mode::Structured, |e| assert_eq!(one(e).id(), "from-body")) },

            // Batch mode.
            Case { name: "batch of two keeps the order",
                headers: BATCH,
                body: br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t","data_base64":"aGk="}]"#,
                expect: Ok(Mode::Batch, |e| {
                    assert_eq!(e.iter().map(|e| e.id()).collect::<Vec<_>>(), ["1", "2"]);
                    assert_eq!(e[1].data(), Some(&b"hi"[..]));
                }) },
            Case { name: "empty batch", headers: BATCH, body: b" [ ] ", expect: Ok(Mode::Batch, |e| assert!(e.is_empty())) },
            Case { name: "batch that is not an array", headers: BATCH,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#, expect: Err(400, None) },
            Case { name: "batch element that is not an object", headers: BATCH,
                body: br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},"x"]"#, expect: Err(400, None) },
            Case { name: "invalid event names its index", headers: BATCH,
                body: br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"},{"specversion":"1.0","id":"3","type":"t"}]"#,
                expect: Err(400, Some("[2].source")) },
            Case { name: "mixed specversions", headers: BATCH,
                body: br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"0.3","id":"2","source":"/s","type":"t"}]"#,
                expect: Err(400, Some("[1].specversion")) },
            Case { name: "batch of an unsupported specversion", headers: BATCH,
                body: br#"[{"specversion":"0.3","id":"1","source":"/s","type":"t"}]"#, expect: Err(400, Some("[0].specversion")) },

            // Rules for every event.
            Case { name: "missing specversion", headers: STRUCTURED,
                body: br#"{"id":"1","source":"/s","type":"t"}"#, expect: Err(400, Some("specversion")) },
            Case { name: "specversion other than 1.0", headers: STRUCTURED,
                body: br#"{"specversion":"1.1","id":"1","source":"/s","type":"t"}"#, expect: Err(400, Some("specversion")) },
            Case { name: "missing id", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","source":"/s","type":"t"}"#, expect: Err(400, Some("id")) },
            Case { name: "empty id in binary mode",
                headers: &[("ce-specversion", "1.0"), ("ce-id", ""), ("ce-source", "/s"), ("ce-type", "t")],
                body: b"", expect: Err(400, Some("id")) },
            Case { name: "missing type", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s"}"#, expect: Err(400, Some("type")) },
            Case { name: "empty type", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":""}"#, expect: Err(400, Some("type")) },
            Case { name: "empty source", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"","type":"t"}"#, expect: Err(400, Some("source")) },
            Case { name: "source that is not a URI-reference", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"my source","type":"t"}"#, expect: Err(400, Some("source")) },
            Case { name: "source: URN, relative and absolute references", headers: BATCH,
                body: br#"[{"specversion":"1.0","id":"1","source":"urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66","type":"t"},
                           {"specversion":"1.0","id":"2","source":"sensors/1?x=%20","type":"t"},
                           {"specversion":"1.0","id":"3","source":"https://example.com:8080/a#b","type":"t"}]"#,
                expect: Ok(Mode::Batch, |e| assert_eq!(e.len(), 3)) },
            Case { name: "relative dataschema", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"/schemas/order.json"}"#,
                expect: Err(400, Some("dataschema")) },
            Case { name: "dataschema that is not a URI", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"https://exa mple.com"}"#,
                expect: Err(400, Some("dataschema")) },
            Case { name: "time that is not RFC 3339", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-01-02 03:04"}"#,
                expect: Err(400, Some("time")) },
            Case { name: "time in UTC with fractional seconds", headers: with(&[("ce-time", "2026-01-02T03:04:05.999999999Z")]),
                body: b"", expect: Ok(Mode::Binary, |e| assert_eq!(one(e).time(), Some("2026-01-02T03:04:05.999999999Z"))) },
            Case { name: "empty subject", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":""}"#, expect: Err(400, Some("subject")) },
            Case { name: "extension name with an uppercase letter", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","myExt":"x"}"#, expect: Err(400, Some("myExt")) },
            Case { name: "extension name with an underscore", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","my_ext":"x"}"#, expect: Err(400, Some("my_ext")) },
            Case { name: "datacontenttype that is not a media type", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"json"}"#,
                expect: Err(400, Some("datacontenttype")) },
            Case { name: "noncharacter in a string", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"a\uFFFEb"}"#, expect: Err(400, Some("subject")) },
            Case { name: "control character in a string", headers: STRUCTURED,
                body: br#"{"specversion":"1.0","id":"1\u0000","source":"/s","type":"t"}"#, expect: Err(400, Some("id")) },
        ]
    }

    fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid test header name");
            let value = HeaderValue::from_str(value).expect("a valid test header value");
            map.append(name, value);
        }
        map
    }

    #[test]
    fn binding_rules() {
        for case in cases() {
            let result = decode(&header_map(case.headers), case.body);
            match (case.expect, result) {
                (Expect::Ok(mode, check), Ok(decoded)) => {
                    assert_eq!(decoded.mode, mode, "{}", case.name);
                    check(&decoded.events);
                }
                (Expect::Err(status, attribute), Err(error)) => {
                    assert_eq!(error.status().as_u16(), status, "{}: {error}", case.name);
                    assert_eq!(
                        error.attribute().as_deref(),
                        attribute,
                        "{}: {error}",
                        case.name
                    );
                    let problem = error.to_problem().body();
                    assert_eq!(problem["attribute"].as_str(), attribute, "{}", case.name);
                }
                (Expect::Ok(..), Err(error)) => panic!("{}: refused: {error}", case.name),
                (Expect::Err(..), Ok(decoded)) => panic!("{}: accepted: {decoded:?}", case.name),
            }
        }
    }

    #[test]
    fn batch_errors_carry_the_index() {
        let body = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","type":"t"}]"#;
        let error = decode(&header_map(BATCH), body).expect_err("a missing source");
        assert_eq!(error.index(), Some(1));
        let problem = error.to_problem().body();
        assert_eq!(problem["index"], 1);
        assert_eq!(problem["attribute"], "[1].source");
    }

    #[test]
    fn messages_follow_the_house_style() {
        let error =
            decode(&header_map(with(&[("ce-subject", "caf%E9")])), b"").expect_err("bad UTF-8");
        assert_eq!(
            error.to_string(),
            "invalid attribute `subject`: is not UTF-8 once percent-decoded"
        );
        let error = decode(
            &header_map(&[("content-type", "application/cloudevents+protobuf")]),
            b"",
        )
        .expect_err("unsupported format");
        assert!(
            matches!(&error, IngressError::UnsupportedFormat { media_type } if media_type == "application/cloudevents+protobuf")
        );
        let long = format!(
            r#"{{"specversion":"{}","id":"1","source":"/s","type":"t"}}"#,
            "9".repeat(1000)
        );
        let error = decode(&header_map(STRUCTURED), long.as_bytes()).expect_err("a long version");
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn decoded_events_round_trip_through_the_json_format() {
        let bodies: [&[u8]; 4] = [
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"o-1","time":"2026-01-02T03:04:05Z","count":7,"flag":false,"data":{"a":[1,2],"b":"x"}}"#,
            br#"{"specversion":"1.0","id":"2","source":"/s","type":"t","datacontenttype":"text/plain","data":"caf\u00e9"}"#,
            br#"{"specversion":"1.0","id":"3","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AP8Q"}"#,
            br#"{"specversion":"1.0","id":"4","source":"/s","type":"t","datacontenttype":"application/xml","dataschema":"https://example.com/s.xsd","data":"<a/>"}"#,
        ];
        for body in bodies {
            let first = decode(&header_map(STRUCTURED), body).expect("a valid event");
            let event = one(&first.events);
            let json = event.to_json();
            let again = decode(&header_map(STRUCTURED), json.to_string().as_bytes())
                .expect("to_json gives a valid event");
            assert_eq!(one(&again.events), event, "{json}");
            let original: Value = serde_json::from_slice(body).expect("JSON");
            let mut expected = original.clone();
            // Extensions come back in their canonical string form.
            for name in ["count", "flag"] {
                if let Some(value) = expected.get_mut(name) {
                    *value = value.to_string().into();
                }
            }
            assert_eq!(json, expected);
        }
    }

    #[test]
    fn binary_events_come_out_in_the_json_format() {
        let headers = header_map(with(&[
            ("content-type", "application/json"),
            ("ce-partitionkey", "sku-1"),
        ]));
        let decoded = decode(&headers, br#"{"sku": "sku-1"}"#).expect("a valid event");
        assert_eq!(
            one(&decoded.events).to_json(),
            serde_json::json!({
                "specversion": "1.0",
                "id": "e-1",
                "source": "/shop/orders",
                "type": "com.example.shop.order.place.v1",
                "datacontenttype": "application/json",
                "partitionkey": "sku-1",
                "data": {"sku": "sku-1"},
            })
        );
    }

    #[test]
    fn webhook_handshake_grants_the_origin() {
        let headers = header_map(&[
            ("WebHook-Request-Origin", "eventemitter.example.com"),
            ("WebHook-Request-Rate", "120"),
        ]);
        let answer = webhook_handshake(&headers).expect("a handshake");
        assert_eq!(answer["webhook-allowed-origin"], "eventemitter.example.com");
        assert_eq!(answer["webhook-allowed-rate"], "*");
        assert_eq!(answer[header::ALLOW], "POST, OPTIONS");

        let answer = webhook_handshake(&header_map(&[("webhook-request-origin", "a.example")]))
            .expect("a handshake without a rate");
        assert_eq!(answer["webhook-allowed-origin"], "a.example");
    }

    #[test]
    fn webhook_handshake_needs_an_origin() {
        for headers in [&[][..], &[("webhook-request-origin", "")][..]] {
            let error = webhook_handshake(&header_map(headers)).expect_err("no origin");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            assert_eq!(
                error.to_problem().body()["header"],
                "WebHook-Request-Origin"
            );
        }
    }

    /// Decoding never panics: mutations of valid requests in every mode, with a small
    /// deterministic generator so that a failure can be replayed.
    #[test]
    fn decoding_garbage_never_panics() {
        let seeds: [(Headers, &[u8]); 3] = [
            (STRUCTURED, br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":1,"data":{"a":[1,"\u00e9"]},"data_base64":"aGk="}"#),
            (BATCH, br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-01-02T03:04:05Z"},{"dataschema":"h:x"}]"#),
            (&[("ce-specversion", "1.0"), ("ce-id", "%FF%2"), ("ce-source", "\"/s"), ("ce-type", "t"), ("content-type", "text/plain; a=\"b")], b"\xff"),
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % 1_000_003).unwrap_or_default()
        };
        let alphabet = b"{}[]\",:\\0123456789.eE+-aAtrufnl \x00\xff%u/;";
        let mut mutate = |bytes: &mut Vec<u8>| {
            for _ in 0..=(next() % 4) {
                let at = next() % (bytes.len() + 1);
                let byte = alphabet[next() % alphabet.len()];
                match (next() % 3, at < bytes.len()) {
                    (0, true) => bytes[at] = byte,
                    (1, true) => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, byte),
                }
            }
        };
        for (headers, body) in seeds {
            let mut headers = header_map(headers);
            for _ in 0..3000 {
                let mut body = body.to_vec();
                mutate(&mut body);
                // In binary mode the headers are the input too.
                let mut id = headers
                    .get("ce-id")
                    .map_or(Vec::new(), |id| id.as_bytes().to_vec());
                mutate(&mut id);
                if let Ok(id) = HeaderValue::from_bytes(&id) {
                    headers.insert("ce-id", id);
                }
                let _ = decode(&headers, &body);
            }
        }
        let deep = "[".repeat(100_000);
        assert!(decode(&header_map(BATCH), deep.as_bytes()).is_err());
    }
}
