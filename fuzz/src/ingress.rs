//! The ingress targets: the input format, and what must hold of the decoder and the router.
//!
//! An input is an HTTP request written as text, so that the seed corpus is readable and
//! libFuzzer's mutations (and its dictionary) act on headers and body alike:
//!
//! ```text
//! POST /events                                  optional: a first line without `:`
//! content-type: application/cloudevents+json    headers, `name: value`, one a line
//! ce-id: 1
//!                                               an empty line
//! {"specversion": "1.0", ...}                   the body: the rest, byte for byte
//! ```
//!
//! A header line that no HTTP server would pass on (a name or value with bytes a header
//! cannot hold) is dropped, as hyper would refuse the request before ingress saw it; a value
//! loses its surrounding spaces and tabs, as hyper strips them.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use cloudevents::message::StructuredDeserializer;
use evhost::api::IngestAnswer;
use evhost::event::{Event, is_json_media_type};
use evhost::ingress::IngressState;
use evhost::ingress::binding::{self, Decoded, Mode};
use evhost::ingress::problem::{IngressError, PROBLEM_JSON, PROBLEM_TYPE_PREFIX};
use evhost::live::Live;
use evhost::metrics::Metrics;
use evhost::store::{Durability, Store};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// One request, as the router would see it.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// `/events` unless the request line names `/`: the two paths are one resource.
    pub path: &'static str,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Reads an input in the format above; every input is some request.
pub fn request(data: &[u8]) -> Request {
    let mut request = Request {
        method: Method::POST,
        path: "/events",
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    let mut rest = data;
    let mut first = true;
    loop {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (&rest[..end], Some(&rest[end + 1..])),
            None => (rest, None),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && next.is_some() {
            request.body = Bytes::copy_from_slice(next.unwrap_or_default());
            break;
        }
        match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = trim(&line[colon + 1..]);
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(&line[..colon]),
                    HeaderValue::from_bytes(value),
                ) {
                    request.headers.append(name, value);
                }
            }
            None if first => {
                let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
                if let Some(method) = words.next().and_then(|m| Method::from_bytes(m).ok()) {
                    request.method = method;
                }
                if words.next() == Some(b"/") {
                    request.path = "/";
                }
            }
            None => {}
        }
        first = false;
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    request
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

// The decoder.

fn headers_of(content_type: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers
}

/// Decodes a request and checks the answer:
///
/// - accepted events mean the same once written in the JSON format and decoded again, one by
///   one (structured mode) and all together (batch mode);
/// - they convert to the CloudEvents SDK's event and back, and what the host's client sends
///   of them (the SDK's structured serializer) is accepted as the same event;
/// - a refusal is a 4xx whose problem names what the error names.
pub fn check_decode(headers: &HeaderMap, body: &[u8]) -> Result<Decoded, IngressError> {
    let result = binding::decode(headers, body);
    match &result {
        Ok(decoded) => {
            if decoded.mode != Mode::Batch {
                assert_eq!(
                    decoded.events.len(),
                    1,
                    "{:?} mode is one event",
                    decoded.mode
                );
            }
            check_json_format(&decoded.events);
            for event in &decoded.events {
                check_sdk(event);
            }
        }
        Err(error) => check_refusal(error),
    }
    result
}

fn check_json_format(events: &[Event]) {
    let structured = headers_of(binding::STRUCTURED_JSON);
    for event in events {
        let json = event.to_json().to_string();
        let again = binding::decode(&structured, json.as_bytes())
            .unwrap_or_else(|error| panic!("{event:?} as JSON {json} is refused: {error}"));
        assert_eq!(again.mode, Mode::Structured);
        assert_eq!(again.events.len(), 1);
        assert_same(event, &again.events[0], Time::Exact, &json);
    }
    let batch: Vec<Value> = events.iter().map(Event::to_json).collect();
    let batch = Value::Array(batch).to_string();
    let again = binding::decode(&headers_of(binding::BATCH_JSON), batch.as_bytes())
        .unwrap_or_else(|error| panic!("the events as a batch {batch} are refused: {error}"));
    assert_eq!(again.mode, Mode::Batch);
    assert_eq!(again.events.len(), events.len(), "{batch}");
    for (event, again) in events.iter().zip(&again.events) {
        assert_same(event, again, Time::Exact, &batch);
    }
}

fn check_sdk(event: &Event) {
    let sdk = match cloudevents::Event::try_from(event.clone()) {
        Ok(sdk) => sdk,
        // The one documented refusal: the SDK's `dataschema` must be a URL, where CloudEvents
        // takes any absolute URI.
        Err(error) => {
            assert!(
                event.dataschema().is_some(),
                "the SDK refuses {event:?}: {error}"
            );
            return;
        }
    };
    let back = Event::try_from(sdk.clone())
        .unwrap_or_else(|error| panic!("{event:?} does not come back from the SDK: {error}"));
    // The SDK keeps the time as an instant in UTC and the schema as a normalised URL.
    assert_eq!(back.dataschema().is_some(), event.dataschema().is_some());
    assert_same(event, &back, Time::Instant, "the SDK's event");

    // What `evhost::client::Client::send` posts.
    let post = http_client().post("http://127.0.0.1/events");
    let request = sdk
        .deserialize_structured(cloudevents::binding::reqwest::RequestSerializer::new(post))
        .unwrap_or_else(|error| panic!("the SDK cannot serialize {event:?}: {error}"))
        .build()
        .unwrap_or_else(|error| panic!("no request for {event:?}: {error}"));
    let body = request
        .body()
        .and_then(reqwest::Body::as_bytes)
        .unwrap_or_default();
    let sent = binding::decode(request.headers(), body).unwrap_or_else(|error| {
        panic!(
            "what the client sends of {event:?} is refused: {error}\n{}",
            String::from_utf8_lossy(body)
        )
    });
    assert_eq!(sent.mode, Mode::Structured);
    assert_eq!(sent.events.len(), 1);
    assert_same(
        &back,
        &sent.events[0],
        Time::Instant,
        "what the client sends",
    );
}

fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

#[derive(Clone, Copy)]
enum Time {
    /// As written.
    Exact,
    /// The same instant, however written.
    Instant,
}

/// `again` is `original` after a trip through some encoding (`how`). JSON data travels as a
/// JSON value, which is the same JSON, though not always the same text.
fn assert_same(original: &Event, again: &Event, time: Time, how: &str) {
    let context = || format!("{original:?} became {again:?} through {how}");
    assert_eq!(again.id(), original.id(), "{}", context());
    assert_eq!(again.source(), original.source(), "{}", context());
    assert_eq!(again.ty(), original.ty(), "{}", context());
    assert_eq!(
        again.datacontenttype(),
        original.datacontenttype(),
        "{}",
        context()
    );
    assert_eq!(again.subject(), original.subject(), "{}", context());
    assert_eq!(again.extensions(), original.extensions(), "{}", context());
    match time {
        Time::Exact => {
            assert_eq!(again.time(), original.time(), "{}", context());
            assert_eq!(again.dataschema(), original.dataschema(), "{}", context());
        }
        Time::Instant => {
            let instant = |event: &Event| {
                event
                    .time()
                    .map(|t| chrono::DateTime::parse_from_rfc3339(t).expect("a valid time"))
            };
            assert_eq!(instant(again), instant(original), "{}", context());
        }
    }
    match (original.data(), again.data()) {
        (Some(a), Some(b)) if a != b => {
            let json = original.datacontenttype().is_none_or(is_json_media_type);
            let a = serde_json::from_slice::<Value>(a);
            let b = serde_json::from_slice::<Value>(b);
            assert!(
                json && a.is_ok() && a.ok() == b.ok(),
                "{}: different data",
                context()
            );
        }
        (a, b) => assert_eq!(a.is_some(), b.is_some(), "{}: data", context()),
    }
}

fn check_refusal(error: &IngressError) {
    let status = error.status();
    assert!(
        matches!(status.as_u16(), 400 | 413 | 415),
        "{error:?} answers {status}"
    );
    let problem = error.to_problem();
    assert_eq!(problem.status(), status);
    let body = problem.body();
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with(PROBLEM_TYPE_PREFIX)),
        "{body}"
    );
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert_eq!(body["detail"].as_str(), Some(error.to_string().as_str()));
    assert_eq!(
        body.get("attribute").and_then(Value::as_str),
        error.attribute().as_deref(),
        "{body}"
    );
    assert_eq!(
        body.get("index").and_then(Value::as_u64),
        error.index().map(|i| i as u64),
        "{body}"
    );
}

// The router.

/// The body limit of the fuzzed router: far below the host's (64 KiB at least) so that
/// libFuzzer's inputs, 4 KiB by default, cross it and the 413 path is fuzzed too. Ingress
/// reads the limit from its state, so the code that runs is the same.
pub const BODY_LIMIT: usize = 2048;

struct Ingress {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

/// The ingress router on a real store, opened once per process in a temporary folder that
/// is removed at exit (libFuzzer ends with `exit`, which runs `atexit` hooks but no Rust
/// destructors of statics). No handler is live: every event is stored with no delivery,
/// which is the whole of ingress's own work.
fn ingress() -> &'static Ingress {
    static INGRESS: OnceLock<Ingress> = OnceLock::new();
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_dir() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    INGRESS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("evhost-fuzz-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        let dir = DIR.get_or_init(|| dir);
        // SAFETY: `remove_dir` is an `extern "C" fn()` that neither unwinds nor needs more
        // than the `DIR` it reads.
        unsafe { libc::atexit(remove_dir) };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let _context = runtime.enter();
        let store = Store::open(dir, Durability::Off).expect("a store");
        let metrics =
            Arc::new(Metrics::new(store.metric_collectors()).expect("the metrics registry"));
        let state = Arc::new(IngressState {
            namespace: NAMESPACE.to_owned(),
            live: Arc::new(Live::new()),
            store,
            metrics,
            body_limit: BODY_LIMIT,
            body_read_timeout: evhost::ingress::DEFAULT_BODY_READ_TIMEOUT,
            stopping: Arc::new(AtomicBool::new(false)),
        });
        let router = evhost::ingress::router(state);
        Ingress { runtime, router }
    })
}

/// The source namespace the fuzzed host's handlers would emit from (`/{app}`).
const NAMESPACE: &str = "/fuzzapp";

/// Whether ingress refuses `source` as the host's own.
fn is_reserved(source: &str) -> bool {
    source
        .strip_prefix(NAMESPACE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Sends `request` through the ingress router and checks the answer: never a 5xx; every
/// refusal a problem+json whose `status` is the answer's; a POST answered exactly as the
/// decoder decides (202 with every event, in order, or the decoder's own problem), unless
/// the body is over the limit (413); OPTIONS as the web hook handshake decides; any other
/// method 405 with `Allow`.
pub fn check_router(request: Request) {
    let ingress = ingress();
    let mut http = axum::http::Request::builder()
        .method(request.method.clone())
        .uri(request.path)
        .body(axum::body::Body::from(request.body.clone()))
        .expect("a request");
    *http.headers_mut() = request.headers.clone();
    let (status, headers, body) = ingress.runtime.block_on(async {
        let response = ingress
            .router
            .clone()
            .oneshot(http)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("a body").to_bytes();
        (parts.status, parts.headers, body)
    });
    let context = || {
        format!(
            "{request:?} answered {status} {headers:?} {}",
            String::from_utf8_lossy(&body)
        )
    };
    assert!(!status.is_server_error(), "{}", context());
    // HEAD answers carry no body.
    let problem = if status.is_success() || request.method == Method::HEAD {
        None
    } else {
        assert_eq!(
            headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
            Some(PROBLEM_JSON.as_bytes()),
            "{}",
            context()
        );
        let problem: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|error| panic!("{}: not JSON: {error}", context()));
        assert_eq!(problem["status"], status.as_u16(), "{}", context());
        Some(problem)
    };
    match request.method {
        Method::POST if request.body.len() > BODY_LIMIT => {
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", context());
        }
        Method::POST => match check_decode(&request.headers, &request.body) {
            // The host's own source namespace is refused after decoding (403 naming `source`).
            Ok(decoded) if decoded.events.iter().any(|e| is_reserved(e.source())) => {
                assert_eq!(status, StatusCode::FORBIDDEN, "{}", context());
                let problem = problem.expect("a problem");
                let attribute = problem["attribute"].as_str().unwrap_or_default();
                assert!(attribute.ends_with("source"), "{}", context());
            }
            Ok(decoded) => {
                assert_eq!(status, StatusCode::ACCEPTED, "{}", context());
                let answer: IngestAnswer = serde_json::from_slice(&body)
                    .unwrap_or_else(|error| panic!("{}: {error}", context()));
                assert_eq!(answer.mode, decoded.mode.as_str(), "{}", context());
                let sent: Vec<_> = decoded
                    .events
                    .iter()
                    .map(|e| (e.source(), e.id()))
                    .collect();
                let accepted: Vec<_> = answer
                    .accepted
                    .iter()
                    .map(|a| (a.source.as_str(), a.id.as_str()))
                    .collect();
                assert_eq!(accepted, sent, "{}", context());
            }
            Err(error) => {
                assert_eq!(status, error.status(), "{}", context());
                assert_eq!(problem, Some(error.to_problem().body()), "{}", context());
            }
        },
        Method::OPTIONS => match binding::webhook_handshake(&request.headers) {
            Ok(expected) => {
                assert_eq!(status, StatusCode::OK, "{}", context());
                for (name, value) in &expected {
                    assert_eq!(headers.get(name), Some(value), "{}", context());
                }
            }
            Err(error) => assert_eq!(status, error.status(), "{}", context()),
        },
        _ => {
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{}", context());
            assert_eq!(
                headers.get(header::ALLOW).map(HeaderValue::as_bytes),
                Some(binding::ALLOW.as_bytes()),
                "{}",
                context()
            );
        }
    }
}
