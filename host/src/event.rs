//! The validated CloudEvent that moves through the pipeline.
//!
//! Ingress produces an [`Event`] only after every CloudEvents 1.0 rule holds, so the router,
//! the store and the runtime never re-validate. `data` is kept as bytes, exactly as received
//! (JSON text for JSON events), which is also what a handler sees.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

/// The only CloudEvents version evhost accepts.
pub const SPEC_VERSION: &str = "1.0";

/// One CloudEvent (CloudEvents 1.0), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    /// A non-empty URI-reference.
    pub source: String,
    /// The versioned type, e.g. `com.example.shop.order.placed.v1`.
    pub ty: String,
    pub datacontenttype: Option<String>,
    /// An absolute URI.
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    /// RFC 3339, as the producer wrote it.
    pub time: Option<String>,
    /// Extension attributes in their canonical string form; names are lowercase a-z0-9.
    pub extensions: BTreeMap<String, String>,
    pub data: Option<Vec<u8>>,
}

impl Event {
    /// An extension attribute's value.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).map(String::as_str)
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
        for (name, value) in &self.extensions {
            // An event built by other code than ingress could hold an extension named like a
            // context attribute; the real attribute wins.
            let reserved = CONTEXT_ATTRIBUTES.contains(&name.as_str())
                || name == "data"
                || name == "data_base64";
            if !reserved {
                json.entry(name.clone())
                    .or_insert_with(|| value.clone().into());
            }
        }
        if let Some(data) = &self.data {
            let (member, value) = data_member(self.datacontenttype.as_deref(), data);
            json.insert(member.into(), value);
        }
        Value::Object(json)
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

fn data_member(datacontenttype: Option<&str>, data: &[u8]) -> (&'static str, Value) {
    if datacontenttype.is_none_or(is_json_media_type) {
        match serde_json::from_slice::<Value>(data) {
            // A JSON `null` would read back as "no data", so it travels as base64 to come
            // back as the four bytes it is.
            Ok(Value::Null) | Err(_) => {}
            Ok(value) => return ("data", value),
        }
    }
    if datacontenttype.is_some_and(is_text_media_type)
        && let Ok(text) = std::str::from_utf8(data)
    {
        return ("data", text.into());
    }
    ("data_base64", BASE64.encode(data).into())
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(datacontenttype: Option<&str>, data: Option<&[u8]>) -> Event {
        Event {
            id: "e-1".into(),
            source: "/shop".into(),
            ty: "com.example.shop.stock.added.v1".into(),
            datacontenttype: datacontenttype.map(Into::into),
            dataschema: None,
            subject: None,
            time: None,
            extensions: BTreeMap::new(),
            data: data.map(<[u8]>::to_vec),
        }
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
        let mut event = event(None, None);
        event.subject = Some("o-1".into());
        event.time = Some("2026-01-02T03:04:05Z".into());
        event.dataschema = Some("https://example.com/schema".into());
        event
            .extensions
            .insert("partitionkey".into(), "sku-1".into());
        // Only code that bypasses ingress could do this; the context attribute wins.
        event.extensions.insert("id".into(), "other".into());
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
}
