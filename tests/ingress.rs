//! The HTTP interface as a producer and an operator see it: a real host with the shop's
//! compiled handlers, driven over real HTTP.
//!
//! Every request that is refused is checked three ways: its status, a problem+json body that
//! names the offending attribute, and a log that holds nothing of it. Every request that is
//! accepted is checked in the log (`GET /admin/events`), attribute by attribute.

use std::time::Duration;

use cloudevents::binding::reqwest::{RequestBuilderExt as _, RequestSerializer};
use cloudevents::message::StructuredDeserializer as _;
use cloudevents::{AttributesReader as _, EventBuilder as _, EventBuilderV10};
use evhost_tests::{TestHost, event, open_shop_manifest, place_order, stock_added};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A type no handler of the shop subscribes to: the event is stored and goes nowhere, so
/// the log holds exactly what the test posted.
const UNROUTED: &str = "com.example.test.unrouted.v1";
const PLACE: &str = "com.example.shop.order.place.v1";
const PLACED: &str = "com.example.shop.order.placed.v1";

const WAIT: Duration = Duration::from_secs(15);

/// The shop, taking any type: these tests are about the binding, not the shop's policy.
async fn shop() -> TestHost {
    TestHost::start(open_shop_manifest()).await
}

/// POST `body` to `path` with exactly these headers.
async fn post_raw(
    host: &TestHost,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = host.http.post(host.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the host answers")
}

/// A refused request's answer, after checking what every error answer must be: the
/// problem+json media type and a body whose `status` is the HTTP status.
async fn problem(response: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    assert_eq!(
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "the content type of a {status} answer"
    );
    let body: Value = response.json().await.expect("a JSON problem body");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["type"].is_string(), "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    (status, headers, body)
}

/// A 202's body.
async fn accepted(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json().await.expect("a JSON body")
}

/// The logged event (CloudEvents JSON) with this source and id; fails if it is not there
/// exactly once.
async fn logged(host: &TestHost, source: &str, id: &str) -> Value {
    let matches: Vec<Value> = host
        .events(&[("source", source), ("limit", "1000")])
        .await
        .into_iter()
        .filter(|e| e["event"]["id"] == id)
        .collect();
    assert_eq!(
        matches.len(),
        1,
        "event {source} {id} in the log: {matches:?}"
    );
    matches[0]["event"].clone()
}

/// The `event` members of a page of the log.
fn ids(page: &[Value]) -> Vec<&str> {
    page.iter()
        .map(|e| e["event"]["id"].as_str().expect("an id"))
        .collect()
}

/// Standard base64 with padding, as the JSON event format writes `data_base64`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in vectors {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

// Accepted requests, one per content mode.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_is_accepted_and_logged_with_every_attribute_intact() {
    let host = shop().await;
    let data: Vec<u8> = (0..=255).collect();
    // Header values are percent-encoded by the producer (HTTP binding 3.1.3.2): `%25` is a
    // `%` that belongs to the value, so the source keeps its own percent-encoding.
    let response = post_raw(
        &host,
        "/",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "bin-1"),
            (
                "ce-source",
                "https://example.com/sensors/1?room=k%25C3%25BCche",
            ),
            ("ce-type", UNROUTED),
            ("ce-subject", "caf%C3%A9%20au%20lait"),
            ("ce-time", "2026-01-02T03:04:05.678+01:00"),
            ("ce-dataschema", "https://schemas.example.com/reading.json"),
            ("ce-partitionkey", "sku-1"),
            ("CE-TraceNote", "%22quoted%22 100%25"),
            ("content-type", "application/octet-stream"),
        ],
        data.clone(),
    )
    .await;
    let body = accepted(response).await;
    assert_eq!(body["mode"], "binary");
    let receipt = &body["accepted"][0];
    assert_eq!(receipt["id"], "bin-1");
    assert_eq!(
        receipt["source"],
        "https://example.com/sensors/1?room=k%C3%BCche"
    );
    assert_eq!(receipt["duplicate"], false);
    assert!(receipt["seq"].as_i64().is_some(), "{body}");

    let event = logged(
        &host,
        "https://example.com/sensors/1?room=k%C3%BCche",
        "bin-1",
    )
    .await;
    assert_eq!(
        event,
        json!({
            "specversion": "1.0",
            "id": "bin-1",
            "source": "https://example.com/sensors/1?room=k%C3%BCche",
            "type": UNROUTED,
            "subject": "café au lait",
            "time": "2026-01-02T03:04:05.678+01:00",
            "dataschema": "https://schemas.example.com/reading.json",
            "datacontenttype": "application/octet-stream",
            "partitionkey": "sku-1",
            "tracenote": "\"quoted\" 100%",
            "data_base64": base64(&data),
        })
    );

    // JSON data in binary mode, to `/events` this time.
    let response = host
        .post_binary(
            &[("id", "bin-2"), ("source", "/tests"), ("type", UNROUTED)],
            &json!({"sku": "sku-1", "quantity": [1, 2.5]}),
        )
        .await;
    assert_eq!(accepted(response).await["mode"], "binary");
    let event = logged(&host, "/tests", "bin-2").await;
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"], json!({"sku": "sku-1", "quantity": [1, 2.5]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_unescapes_quoted_header_values() {
    let host = shop().await;
    // RFC 7230 section 3.2.6, which the HTTP binding (3.1.3.2) requires before
    // percent-decoding: a quoted-string's backslash escapes are undone.
    let response = post_raw(
        &host,
        "/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "quoted-1"),
            ("ce-source", "/tests"),
            ("ce-type", UNROUTED),
            ("ce-subject", r#""o-1""#),
            ("ce-note", r#""say \"hi\" \\ bye""#),
        ],
        "",
    )
    .await;
    accepted(response).await;
    let event = logged(&host, "/tests", "quoted-1").await;
    assert_eq!(event["subject"], "o-1");
    assert_eq!(event["note"], r#"say "hi" \ bye"#, "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_is_accepted_and_logged_with_every_attribute_intact() {
    let host = shop().await;
    let full = json!({
        "specversion": "1.0",
        "id": "st-1",
        "source": "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "type": UNROUTED,
        "datacontenttype": "application/json",
        "dataschema": "https://schemas.example.com/order.json",
        "subject": "o-1",
        "time": "2026-01-02T03:04:05Z",
        "partitionkey": "sku-1",
        "attempt": 3,
        "urgent": true,
        "data": {"b": 1, "a": [1, 2], "nested": {"x": null}},
    });
    let body = accepted(host.post_structured(&full).await).await;
    assert_eq!(body["mode"], "structured");
    assert_eq!(body["accepted"][0]["id"], "st-1");
    let mut expected = full.clone();
    // Extensions are kept in their canonical string form.
    expected["attempt"] = json!("3");
    expected["urgent"] = json!("true");
    assert_eq!(
        logged(
            &host,
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "st-1"
        )
        .await,
        expected
    );

    // Text data and binary data (`data_base64`).
    let text = json!({
        "specversion": "1.0", "id": "st-2", "source": "/tests", "type": UNROUTED,
        "datacontenttype": "text/plain; charset=utf-8", "data": "café \"au\" lait",
    });
    accepted(host.post_structured(&text).await).await;
    assert_eq!(logged(&host, "/tests", "st-2").await, text);

    let bytes = json!({
        "specversion": "1.0", "id": "st-3", "source": "/tests", "type": UNROUTED,
        "datacontenttype": "application/octet-stream", "data_base64": base64(b"\x00\xff\x10 binary"),
    });
    accepted(host.post_structured(&bytes).await).await;
    assert_eq!(logged(&host, "/tests", "st-3").await, bytes);

    // Media type parameters and case do not change the mode (SDKs send a charset).
    let charset = event("st-5", UNROUTED, json!({"n": 5}));
    let response = post_raw(
        &host,
        "/events",
        &[(
            "content-type",
            "Application/CloudEvents+JSON; charset=UTF-8",
        )],
        charset.to_string(),
    )
    .await;
    assert_eq!(accepted(response).await["mode"], "structured");
    assert_eq!(logged(&host, "/tests", "st-5").await, charset);

    // No data at all.
    let bare = json!({"specversion": "1.0", "id": "st-4", "source": "/tests", "type": UNROUTED});
    accepted(host.post_structured(&bare).await).await;
    assert_eq!(logged(&host, "/tests", "st-4").await, bare);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_several_is_accepted_in_order() {
    let host = shop().await;
    let batch = [
        event("batch-1", UNROUTED, json!({"n": 1})),
        json!({
            "specversion": "1.0", "id": "batch-2", "source": "/tests", "type": UNROUTED,
            "subject": "s-2", "datacontenttype": "text/plain", "data": "two",
        }),
        json!({
            "specversion": "1.0", "id": "batch-3", "source": "/tests", "type": UNROUTED,
            "datacontenttype": "application/octet-stream", "data_base64": base64(&[3, 3, 3]),
        }),
    ];
    let body = accepted(host.post_batch(&batch).await).await;
    assert_eq!(body["mode"], "batch");
    let receipts = body["accepted"].as_array().expect("an array of receipts");
    assert_eq!(
        receipts.iter().map(|r| &r["id"]).collect::<Vec<_>>(),
        ["batch-1", "batch-2", "batch-3"]
    );
    let seqs: Vec<i64> = receipts
        .iter()
        .map(|r| r["seq"].as_i64().expect("a seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let log = host.all_events().await;
    assert_eq!(ids(&log), ["batch-1", "batch-2", "batch-3"]);
    assert_eq!(
        log.iter().map(|e| e["seq"].as_i64()).collect::<Vec<_>>(),
        seqs.iter().copied().map(Some).collect::<Vec<_>>()
    );
    for (logged, sent) in log.iter().zip(&batch) {
        assert_eq!(&logged["event"], sent);
    }
}

// Interoperability with the CloudEvents Rust SDK.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_sdk_can_send_in_binary_mode() {
    let host = shop().await;
    let event = EventBuilderV10::new()
        .id("sdk-bin-1")
        .source("https://sdk.example.com/rust")
        .ty(UNROUTED)
        .subject("o-1")
        .time("2026-01-02T03:04:05Z")
        .extension("partitionkey", "sku-1")
        .extension("attempt", 3_i64)
        .extension("urgent", true)
        .data("application/json", json!({"sku": "sku-1", "quantity": 2}))
        .build()
        .expect("a valid SDK event");
    let response = host
        .http
        .post(host.url("/events"))
        .event(event.clone())
        .expect("the SDK writes the request")
        .send()
        .await
        .expect("the host answers");
    assert_eq!(accepted(response).await["mode"], "binary");

    let logged = logged(&host, "https://sdk.example.com/rust", "sdk-bin-1").await;
    let time = event.time().expect("a time").to_rfc3339();
    assert_eq!(
        logged,
        json!({
            "specversion": "1.0",
            "id": "sdk-bin-1",
            "source": "https://sdk.example.com/rust",
            "type": UNROUTED,
            "subject": "o-1",
            "time": time,
            "datacontenttype": "application/json",
            "partitionkey": "sku-1",
            "attempt": "3",
            "urgent": "true",
            "data": {"sku": "sku-1", "quantity": 2},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_sdk_can_send_in_structured_and_batch_mode() {
    let host = shop().await;
    let json_event = EventBuilderV10::new()
        .id("sdk-st-1")
        .source("/sdk")
        .ty(UNROUTED)
        .subject("o-1")
        .time("2026-01-02T03:04:05Z")
        .extension("partitionkey", "sku-1")
        .data("application/json", json!({"sku": "sku-1"}))
        .build()
        .expect("a valid SDK event");
    let binary_event = EventBuilderV10::new()
        .id("sdk-st-2")
        .source("/sdk")
        .ty(UNROUTED)
        .data("application/octet-stream", vec![0_u8, 255, 16])
        .build()
        .expect("a valid SDK event");

    for event in [&json_event, &binary_event] {
        let request = event
            .clone()
            .deserialize_structured(RequestSerializer::new(host.http.post(host.url("/events"))))
            .expect("the SDK writes the request");
        let response = request.send().await.expect("the host answers");
        assert_eq!(accepted(response).await["mode"], "structured");
    }
    let logged_json = logged(&host, "/sdk", "sdk-st-1").await;
    let sent: Value = serde_json::to_value(&json_event).expect("the SDK's JSON");
    assert_eq!(logged_json["time"], sent["time"]);
    assert_eq!(logged_json["subject"], "o-1");
    assert_eq!(logged_json["partitionkey"], "sku-1");
    assert_eq!(logged_json["data"], json!({"sku": "sku-1"}));
    let logged_binary = logged(&host, "/sdk", "sdk-st-2").await;
    assert_eq!(logged_binary["datacontenttype"], "application/octet-stream");
    assert_eq!(logged_binary["data_base64"], base64(&[0, 255, 16]));

    // The SDK's batch mode.
    let batch: Vec<_> = ["sdk-batch-1", "sdk-batch-2"]
        .into_iter()
        .map(|id| {
            EventBuilderV10::new()
                .id(id)
                .source("/sdk")
                .ty(UNROUTED)
                .data("application/json", json!({"id": id}))
                .build()
                .expect("a valid SDK event")
        })
        .collect();
    let response = host
        .http
        .post(host.url("/events"))
        .events(batch)
        .expect("the SDK writes the request")
        .send()
        .await
        .expect("the host answers");
    assert_eq!(accepted(response).await["mode"], "batch");
    assert_eq!(
        ids(&host.all_events().await),
        ["sdk-st-1", "sdk-st-2", "sdk-batch-1", "sdk-batch-2"]
    );
}

// Batches are all or nothing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_batch_is_accepted_and_stores_nothing() {
    let host = shop().await;
    let body = accepted(host.post_batch(&[]).await).await;
    assert_eq!(body["mode"], "batch");
    assert_eq!(body["accepted"], json!([]));
    assert!(host.all_events().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_invalid_event_stores_none_of_it() {
    let host = shop().await;
    let mut invalid = place_order("o-3", "sku-1", 1, 25.0);
    invalid.as_object_mut().expect("an object").remove("source");
    let batch = [
        place_order("o-1", "sku-1", 1, 25.0),
        place_order("o-2", "sku-1", 1, 25.0),
        invalid,
        place_order("o-4", "sku-1", 1, 25.0),
    ];
    let (status, _, body) = problem(host.post_batch(&batch).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["attribute"], "[2].source", "{body}");
    assert_eq!(body["index"], 2, "{body}");

    // Nothing was stored, so nothing was delivered or emitted, even after a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(host.all_events().await.is_empty());

    // The same batch, fixed, goes through whole.
    let mut fixed = batch.clone();
    fixed[2] = place_order("o-3", "sku-1", 1, 25.0);
    let body = accepted(host.post_batch(&fixed).await).await;
    assert_eq!(body["accepted"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        ids(&host.events(&[("type", PLACE)]).await),
        ["place-o-1", "place-o-2", "place-o-3", "place-o-4"]
    );
}

// Malformed requests.

/// One malformed request and the problem it must get.
struct Case {
    name: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: StatusCode,
    /// The `attribute` member; `None` when no attribute is at fault (then there is none).
    attribute: Option<&'static str>,
}

const STRUCTURED: (&str, &str) = ("content-type", "application/cloudevents+json");
const BATCH: (&str, &str) = ("content-type", "application/cloudevents-batch+json");

fn structured(name: &'static str, body: &str, attribute: Option<&'static str>) -> Case {
    Case {
        name,
        headers: vec![STRUCTURED],
        body: body.as_bytes().to_vec(),
        status: StatusCode::BAD_REQUEST,
        attribute,
    }
}

fn batch(name: &'static str, body: &str, attribute: Option<&'static str>) -> Case {
    Case {
        name,
        headers: vec![BATCH],
        body: body.as_bytes().to_vec(),
        status: StatusCode::BAD_REQUEST,
        attribute,
    }
}

/// A binary-mode request: valid `ce-` headers with `changes` applied (`None` removes one).
fn binary(
    name: &'static str,
    changes: &[(&'static str, Option<&'static str>)],
    attribute: Option<&'static str>,
) -> Case {
    let mut headers = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "bad-1"),
        ("ce-source", "/tests"),
        ("ce-type", UNROUTED),
        ("content-type", "application/json"),
    ];
    for &(header, value) in changes {
        headers.retain(|(name, _)| *name != header);
        if let Some(value) = value {
            headers.push((header, value));
        }
    }
    Case {
        name,
        headers,
        body: br#"{"n": 1}"#.to_vec(),
        status: StatusCode::BAD_REQUEST,
        attribute,
    }
}

fn malformed_requests() -> Vec<Case> {
    let deep = "[".repeat(100_000);
    vec![
        // Required attributes.
        structured(
            "missing id",
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#,
            Some("id"),
        ),
        structured(
            "missing source",
            r#"{"specversion":"1.0","id":"1","type":"t"}"#,
            Some("source"),
        ),
        structured(
            "missing type",
            r#"{"specversion":"1.0","id":"1","source":"/s"}"#,
            Some("type"),
        ),
        structured(
            "null type",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":null}"#,
            Some("type"),
        ),
        structured(
            "empty id",
            r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
            Some("id"),
        ),
        structured(
            "id that is a number",
            r#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#,
            Some("id"),
        ),
        structured(
            "missing specversion",
            r#"{"id":"1","source":"/s","type":"t"}"#,
            Some("specversion"),
        ),
        binary("binary without ce-id", &[("ce-id", None)], Some("id")),
        binary(
            "binary without ce-source",
            &[("ce-source", None)],
            Some("source"),
        ),
        binary("binary without ce-type", &[("ce-type", None)], Some("type")),
        binary(
            "binary without ce-specversion",
            &[("ce-specversion", None)],
            Some("specversion"),
        ),
        // Attribute values.
        structured(
            "specversion 0.3",
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            Some("specversion"),
        ),
        binary(
            "binary specversion 2.0",
            &[("ce-specversion", Some("2.0"))],
            Some("specversion"),
        ),
        structured(
            "source that is not a URI-reference",
            r#"{"specversion":"1.0","id":"1","source":"my source","type":"t"}"#,
            Some("source"),
        ),
        binary(
            "binary source that is not a URI-reference",
            &[("ce-source", Some("http://exa%20mple.com/a b"))],
            Some("source"),
        ),
        structured(
            "time that is not RFC 3339",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
            Some("time"),
        ),
        binary(
            "binary time with month 13",
            &[("ce-time", Some("2026-13-01T00:00:00Z"))],
            Some("time"),
        ),
        structured(
            "relative dataschema",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"/schema.json"}"#,
            Some("dataschema"),
        ),
        structured(
            "empty subject",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":""}"#,
            Some("subject"),
        ),
        structured(
            "extension name with an uppercase letter",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","traceId":"x"}"#,
            Some("traceId"),
        ),
        structured(
            "extension that is an object",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","meta":{"a":1}}"#,
            Some("meta"),
        ),
        structured(
            "datacontenttype that is not a media type",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"json"}"#,
            Some("datacontenttype"),
        ),
        // Percent-encoding of ce- headers.
        binary(
            "percent-encoded bytes that are not UTF-8",
            &[("ce-subject", Some("caf%E9"))],
            Some("subject"),
        ),
        binary(
            "overlong UTF-8 once percent-decoded",
            &[("ce-subject", Some("a%C0%A0b"))],
            Some("subject"),
        ),
        binary(
            "percent-encoded control character",
            &[("ce-id", Some("a%00b"))],
            Some("id"),
        ),
        // Data.
        structured(
            "data and data_base64 together",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1},"data_base64":"AQ=="}"#,
            Some("data_base64"),
        ),
        structured(
            "data_base64 that is not base64",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"not base64!"}"#,
            Some("data_base64"),
        ),
        binary(
            "ce-datacontenttype header",
            &[("ce-datacontenttype", Some("application/json"))],
            Some("datacontenttype"),
        ),
        // JSON.
        structured("invalid JSON", r#"{"specversion":"1.0","id":"1","#, None),
        structured("empty structured body", "", None),
        Case {
            name: "structured body that is not UTF-8",
            headers: vec![STRUCTURED],
            body: b"\xff\xfe{}".to_vec(),
            status: StatusCode::BAD_REQUEST,
            attribute: None,
        },
        structured(
            "structured body that is an array",
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"}]"#,
            None,
        ),
        batch(
            "batch that is not an array",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
            None,
        ),
        batch(
            "batch element that is not an object",
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"}, 7]"#,
            None,
        ),
        batch(
            "mixed specversions in a batch",
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"0.3","id":"2","source":"/s","type":"t"}]"#,
            Some("[1].specversion"),
        ),
        batch("batch nested 100000 deep", &deep, None),
        // Formats.
        Case {
            name: "structured XML",
            headers: vec![("content-type", "application/cloudevents+xml")],
            body: b"<event/>".to_vec(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            attribute: None,
        },
        Case {
            name: "batch of protobuf",
            headers: vec![("content-type", "application/cloudevents-batch+protobuf")],
            body: b"\x0a\x00".to_vec(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            attribute: None,
        },
        Case {
            name: "a plain JSON body with no ce- headers",
            headers: vec![("content-type", "application/json")],
            body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#.to_vec(),
            status: StatusCode::BAD_REQUEST,
            attribute: Some("specversion"),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_is_a_4xx_problem_naming_the_attribute() {
    let host = shop().await;
    for case in malformed_requests() {
        let response = post_raw(&host, "/events", &case.headers, case.body.clone()).await;
        let (status, headers, body) = problem(response).await;
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(
            body.get("attribute").and_then(Value::as_str),
            case.attribute,
            "{}: {body}",
            case.name
        );
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            let accept = headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                accept.contains("application/cloudevents+json"),
                "{}: a 415 says what is accepted, got Accept: {accept:?}",
                case.name
            );
        }
    }
    assert!(
        host.all_events().await.is_empty(),
        "a refused request stores nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413_and_a_64_kib_event_is_accepted() {
    let host = shop().await;
    // Over the default limit of 1 MiB.
    let mut huge = event("huge-1", UNROUTED, json!(null));
    huge["datacontenttype"] = json!("text/plain");
    huge["data"] = json!("x".repeat(2 << 20));
    let response = host.post_structured(&huge).await;
    // The rest of the body is not read: the connection closes, and the answer says so.
    assert_eq!(response.headers()["connection"], "close");
    let (status, _, body) = problem(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(host.all_events().await.is_empty());

    // CloudEvents requires accepting events of 64 KiB: a 60 KiB structured event...
    let mut big = event("big-1", UNROUTED, json!(null));
    big["datacontenttype"] = json!("text/plain");
    big["data"] = json!("y".repeat(60 << 10));
    let body = big.to_string();
    assert!(body.len() > 60 << 10 && body.len() < 64 << 10);
    accepted(post_raw(&host, "/events", &[STRUCTURED], body).await).await;
    assert_eq!(logged(&host, "/tests", "big-1").await, big);

    // ... and 64 KiB of binary data, byte for byte.
    let data: Vec<u8> = (0..64 << 10).map(|i: u32| (i * 7 % 251) as u8).collect();
    let response = post_raw(
        &host,
        "/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "big-2"),
            ("ce-source", "/tests"),
            ("ce-type", UNROUTED),
            ("content-type", "application/octet-stream"),
        ],
        data.clone(),
    )
    .await;
    accepted(response).await;
    assert_eq!(
        logged(&host, "/tests", "big-2").await["data_base64"],
        base64(&data)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_is_exact_in_every_mode() {
    const LIMIT: usize = 1 << 20; // the default
    let host = shop().await;
    let binary_headers = |id: &'static str| {
        [
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/tests"),
            ("ce-type", UNROUTED),
            ("content-type", "application/octet-stream"),
        ]
    };
    // A body of exactly the limit is read whole; one byte more is refused.
    let response = post_raw(
        &host,
        "/events",
        &binary_headers("at-limit"),
        vec![7_u8; LIMIT],
    )
    .await;
    accepted(response).await;
    let response = post_raw(
        &host,
        "/events",
        &binary_headers("over-limit"),
        vec![7_u8; LIMIT + 1],
    )
    .await;
    let (status, _, body) = problem(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let mut big = event("over-batch", UNROUTED, json!(null));
    big["datacontenttype"] = json!("text/plain");
    big["data"] = json!("z".repeat(LIMIT));
    let (status, _, body) = problem(host.post_batch(&[big]).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    // Without a `Content-Length` (chunked), the limit holds too.
    let chunk = "x".repeat(64 << 10);
    let mut request = format!(
        "POST /events HTTP/1.1\r\nhost: evhost\r\nconnection: close\r\n\
         content-type: text/plain\r\nce-specversion: 1.0\r\nce-id: chunked\r\n\
         ce-source: /tests\r\nce-type: {UNROUTED}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    for _ in 0..(LIMIT / chunk.len() + 1) {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let answer = raw_http(&host, request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        first_line(&answer)
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );

    assert_eq!(ids(&host.all_events().await), ["at-limit"]);
}

/// Sends `request` as is on a fresh connection and reads the answer to its end (the request
/// should say `connection: close`).
async fn raw_http(host: &TestHost, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = host.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("a connection");
    // The host may answer (and stop reading) before the whole request is written.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_are_each_stored_once() {
    let host = shop().await;
    let post = |body: Value| {
        let request = host
            .http
            .post(host.url("/events"))
            .header(STRUCTURED.0, STRUCTURED.1)
            .body(body.to_string());
        tokio::spawn(async move {
            let response = request.send().await.expect("the host answers");
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            response.json::<Value>().await.expect("a JSON body")
        })
    };

    // Many different events at once: every one stored, each with its own position.
    let tasks: Vec<_> = (0..64)
        .map(|i| post(event(&format!("c-{i}"), UNROUTED, json!({"i": i}))))
        .collect();
    for task in tasks {
        task.await.expect("the request task");
    }
    let log = host.all_events().await;
    let mut stored: Vec<&str> = ids(&log);
    stored.sort_unstable();
    let mut expected: Vec<String> = (0..64).map(|i| format!("c-{i}")).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected);

    // One command posted many times at once: exactly one copy is new, and it runs once.
    let order = place_order("o-race", "sku-1", 1, 25.0);
    let tasks: Vec<_> = (0..16).map(|_| post(order.clone())).collect();
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.push(task.await.expect("the request task")["accepted"][0].clone());
    }
    let new = receipts.iter().filter(|r| r["duplicate"] == false).count();
    assert_eq!(new, 1, "{receipts:?}");
    assert!(receipts.iter().all(|r| r["seq"] == receipts[0]["seq"]));
    host.eventually("the order is placed", WAIT, || async {
        !host.events_of_type(PLACED).await.is_empty()
    })
    .await;
    host.wait_idle(WAIT).await;
    assert_eq!(host.events_of_type(PLACE).await.len(), 1);
    assert_eq!(host.events_of_type(PLACED).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_are_405_with_allow() {
    let host = shop().await;
    for path in ["/", "/events"] {
        for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
            let response = host
                .http
                .request(method.clone(), host.url(path))
                .body(event("m-1", UNROUTED, json!(1)).to_string())
                .send()
                .await
                .expect("the host answers");
            let (status, headers, body) = problem(response).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(headers["allow"], "POST, OPTIONS", "{method} {path}: {body}");
        }
    }
    assert!(host.all_events().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_is_the_webhook_handshake() {
    let host = shop().await;
    for path in ["/", "/events"] {
        let response = host
            .http
            .request(Method::OPTIONS, host.url(path))
            .header("WebHook-Request-Origin", "eventemitter.example.com")
            .header("WebHook-Request-Rate", "120")
            .send()
            .await
            .expect("the host answers");
        assert_eq!(response.status(), StatusCode::OK, "OPTIONS {path}");
        let headers = response.headers();
        assert_eq!(
            headers["webhook-allowed-origin"],
            "eventemitter.example.com"
        );
        assert!(headers.contains_key("webhook-allowed-rate"), "{headers:?}");
        assert_eq!(headers["allow"], "POST, OPTIONS");
    }

    // Without an origin there is nothing to grant.
    let response = host
        .http
        .request(Method::OPTIONS, host.url("/events"))
        .send()
        .await
        .expect("the host answers");
    let (status, _, body) = problem(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["header"], "WebHook-Request-Origin", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_problems() {
    let host = shop().await;
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::POST, "/event"),
        (Method::POST, "/events/extra"),
        (Method::GET, "/admin/nothing"),
        (Method::GET, "/admin/state/inventory"),
    ] {
        let response = host
            .http
            .request(method.clone(), host.url(path))
            .header(STRUCTURED.0, STRUCTURED.1)
            .body(event("p-1", UNROUTED, json!(1)).to_string())
            .send()
            .await
            .expect("the host answers");
        let (status, _, body) = problem(response).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    assert!(host.all_events().await.is_empty());
}

// Duplicates and routing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_post_is_accepted_twice_stored_once_and_delivered_once() {
    let host = shop().await;
    let order = place_order("o-dup", "sku-1", 1, 25.0);
    let first = accepted(host.post_structured(&order).await).await;
    let second = accepted(host.post_structured(&order).await).await;
    assert_eq!(first["accepted"][0]["duplicate"], false);
    assert_eq!(second["accepted"][0]["duplicate"], true);
    assert_eq!(second["accepted"][0]["seq"], first["accepted"][0]["seq"]);

    host.eventually("the order is placed", WAIT, || async {
        !host.events_of_type(PLACED).await.is_empty()
    })
    .await;
    host.wait_idle(WAIT).await;
    // A third copy after the first was handled is still a duplicate.
    let third = accepted(host.post_structured(&order).await).await;
    assert_eq!(third["accepted"][0]["duplicate"], true);
    host.wait_idle(WAIT).await;

    let commands = host.events(&[("type", PLACE)]).await;
    assert_eq!(ids(&commands), ["place-o-dup"]);
    let deliveries = commands[0]["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["handler"], "order");
    assert_eq!(deliveries[0]["status"], "done", "{deliveries:?}");
    let placed = host.events_of_type(PLACED).await;
    assert_eq!(placed.len(), 1, "{placed:?}");
    assert_eq!(placed[0]["subject"], "o-dup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_recognised_across_modes_and_within_a_batch() {
    let host = shop().await;
    let body = accepted(
        host.post_binary(
            &[("id", "d-1"), ("source", "/dup"), ("type", UNROUTED)],
            &json!({"copy": 1}),
        )
        .await,
    )
    .await;
    assert_eq!(body["accepted"][0]["duplicate"], false);

    // The same source and id in structured mode, with other data: a duplicate, and the
    // first copy wins.
    let mut again = event("d-1", UNROUTED, json!({"copy": 2}));
    again["source"] = json!("/dup");
    let body = accepted(host.post_structured(&again).await).await;
    assert_eq!(body["accepted"][0]["duplicate"], true);

    // In one batch: an old duplicate, a new event, the new event again, and the same id
    // from another source (which is another event).
    let mut new = event("d-2", UNROUTED, json!({"copy": 1}));
    new["source"] = json!("/dup");
    let mut other_source = event("d-1", UNROUTED, json!({"copy": 1}));
    other_source["source"] = json!("/dup-elsewhere");
    let body = accepted(
        host.post_batch(&[again.clone(), new.clone(), new, other_source])
            .await,
    )
    .await;
    let duplicate: Vec<&Value> = body["accepted"]
        .as_array()
        .expect("receipts")
        .iter()
        .map(|r| &r["duplicate"])
        .collect();
    assert_eq!(duplicate, [true, false, true, false], "{body}");
    assert_eq!(body["accepted"][2]["seq"], body["accepted"][1]["seq"]);

    let log = host.all_events().await;
    let keys: Vec<(&str, &str)> = log
        .iter()
        .map(|e| {
            (
                e["event"]["source"].as_str().expect("a source"),
                e["event"]["id"].as_str().expect("an id"),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [("/dup", "d-1"), ("/dup", "d-2"), ("/dup-elsewhere", "d-1")]
    );
    assert_eq!(log[0]["event"]["data"], json!({"copy": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_nobody_subscribes_to_is_kept_with_no_deliveries() {
    let host = shop().await;
    accepted(
        host.post_structured(&event("lonely-1", UNROUTED, json!({"x": 1})))
            .await,
    )
    .await;
    // A type that differs from a subscribed one only by its version is another type.
    accepted(
        host.post_structured(&event(
            "lonely-2",
            "com.example.shop.order.place.v2",
            json!({"order_id": "o-1"}),
        ))
        .await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = host.all_events().await;
    assert_eq!(ids(&log), ["lonely-1", "lonely-2"]);
    for logged in &log {
        assert_eq!(logged["deliveries"], json!([]), "{logged}");
    }
}

// The read side.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_filters_and_pages_oldest_first() {
    let host = shop().await;
    const A: &str = "com.example.test.a.v1";
    const B: &str = "com.example.test.b.v1";
    let made = |id: &str, ty: &str, source: &str, subject: &str| {
        let mut e = event(id, ty, json!({"id": id}));
        e["source"] = json!(source);
        e["subject"] = json!(subject);
        e
    };
    // One at a time, so that log order is posting order.
    for e in [
        made("f-1", A, "/f/a", "s-1"),
        made("f-2", B, "/f/a", "s-2"),
        made("f-3", A, "/f/b", "s-1"),
        made("f-4", A, "/f/a", "s-2"),
        made("f-5", B, "/f/b", "s-1"),
    ] {
        accepted(host.post_structured(&e).await).await;
    }

    let all = host.events(&[]).await;
    assert_eq!(ids(&all), ["f-1", "f-2", "f-3", "f-4", "f-5"]);
    let seqs: Vec<i64> = all
        .iter()
        .map(|e| e["seq"].as_i64().expect("a seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(all.iter().all(|e| e["received_at"].is_string()));

    for (query, expected) in [
        (vec![("type", A)], vec!["f-1", "f-3", "f-4"]),
        (vec![("type", B)], vec!["f-2", "f-5"]),
        (vec![("source", "/f/a")], vec!["f-1", "f-2", "f-4"]),
        (vec![("subject", "s-1")], vec!["f-1", "f-3", "f-5"]),
        (
            vec![("type", A), ("source", "/f/a"), ("subject", "s-2")],
            vec!["f-4"],
        ),
        (vec![("type", "com.example.test.none.v1")], vec![]),
        (vec![("limit", "2")], vec!["f-1", "f-2"]),
    ] {
        assert_eq!(ids(&host.events(&query).await), expected, "{query:?}");
    }
    let after_second = seqs[1].to_string();
    assert_eq!(
        ids(&host.events(&[("after", &after_second)]).await),
        ["f-3", "f-4", "f-5"]
    );
    assert_eq!(
        ids(&host.events(&[("after", &after_second), ("type", A)]).await),
        ["f-3", "f-4"]
    );

    // Paging with `next_after`, two at a time, then one of type A at a time.
    for (filter, expected_pages) in [
        (
            None,
            vec![vec!["f-1", "f-2"], vec!["f-3", "f-4"], vec!["f-5"]],
        ),
        (Some(A), vec![vec!["f-1", "f-3"], vec!["f-4"]]),
    ] {
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", "2")];
            if let Some(ty) = filter {
                query.push(("type", ty));
            }
            if let Some(after) = &after {
                query.push(("after", after));
            }
            let body = host.events_page(&query).await;
            let page: Vec<String> = body["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["event"]["id"].as_str().expect("an id").to_owned())
                .collect();
            let next = body["next_after"].as_i64().map(|n| n.to_string());
            if page.is_empty() {
                // An exhausted listing keeps its place, so that a poller can wait there.
                assert_eq!(next, after, "{body}");
                break;
            }
            assert_eq!(
                body["next_after"],
                body["events"][page.len() - 1]["seq"],
                "{body}"
            );
            pages.push(page);
            after = next;
            assert!(pages.len() < 10, "the listing does not end");
        }
        assert_eq!(pages, expected_pages, "{filter:?}");
    }

    // A bad query is a problem, not an empty list and not everything.
    for query in [
        vec![("limit", "0")],
        vec![("limit", "1001")],
        vec![("limit", "-1")],
        vec![("limit", "ten")],
        vec![("after", "yesterday")],
        vec![("tpye", A)],
    ] {
        let response = host
            .http
            .get(host.url("/admin/events"))
            .query(&query)
            .send()
            .await
            .expect("the host answers");
        let (status, _, body) = problem(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_state_is_readable_by_key_with_slashes() {
    let host = shop().await;
    accepted(
        host.post_structured(&stock_added("stock-1", "sku-1", 7))
            .await,
    )
    .await;
    host.eventually("the stock is recorded", WAIT, || async {
        host.state("inventory", "stock/sku-1").await == Some(json!(7))
    })
    .await;

    let get = |path: String| {
        let request = host.http.get(host.url(&path));
        async move { request.send().await.expect("the host answers") }
    };
    let response = get("/admin/state/inventory/stock/sku-1".into()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(response.text().await.expect("a body").trim(), "7");

    // The slash may also come percent-encoded.
    let response = get("/admin/state/inventory/stock%2Fsku-1".into()).await;
    assert_eq!(response.status(), StatusCode::OK);

    for path in [
        "/admin/state/nobody/stock/sku-1",
        "/admin/state/inventory/stock/sku-404",
        // Another handler's key is not this handler's.
        "/admin/state/order/stock/sku-1",
    ] {
        let (status, _, body) = problem(get(path.into()).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_are_200() {
    let host = shop().await;
    for path in ["/healthz", "/readyz"] {
        let response = host
            .http
            .get(host.url(path))
            .send()
            .await
            .expect("the host answers");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}
