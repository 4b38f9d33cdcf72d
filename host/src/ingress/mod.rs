//! Ingress: the CloudEvents HTTP binding, the front of the pipeline.
//!
//! [`binding`] decodes and validates a request (binary, structured or batch mode) into
//! [`Event`](crate::event::Event)s; [`problem`] answers every error as problem+json. The
//! handler here reads the body under the size limit, routes each event, refuses with 429
//! when a target handler's queue is full (or one downstream of it), appends to the store
//! and answers 202 only once the append is durable. Ingress never runs or touches handlers: it routes by the live set,
//! asks back-pressure ([`crate::pressure`]) for room, hands deliveries to the store and wakes
//! the handlers' workers.
//!
//! Each event whose type has a registered schema is checked against it
//! ([`crate::schemas`]): data that does not match is refused with 400, naming the JSON
//! pointer and the rule. A request is all or nothing: a batch with one bad event stores none,
//! and a 429 stores none.

pub mod binding;
pub mod problem;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::api::{AcceptedEvent, IngestAnswer};
use crate::config::{IngressPolicy, Unrouted};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::name::HandlerName;
use crate::store::{Appended, SharedBackend, StoreErrorKind};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use problem::{IngressError, Problem};

/// The smallest body limit allowed: the CloudEvents spec requires accepting 64 KiB events.
pub const MIN_BODY_LIMIT: usize = 64 * 1024;
/// The default body limit of a POST.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// What a 503 asks a client to wait when the store cannot take the events now.
const STORE_UNAVAILABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What ingress needs: the routes and queues (live set), the store, the metrics.
pub struct IngressState {
    /// The `source` prefix of the host's own handlers (`/{app}`), which producers may not use.
    pub namespace: String,
    pub live: Arc<Live>,
    pub store: SharedBackend,
    pub metrics: Arc<Metrics>,
    pub body_limit: usize,
    /// How long a body may take to arrive.
    pub body_read_timeout: std::time::Duration,
    /// Set once the host stops taking events.
    pub stopping: Arc<AtomicBool>,
}

/// `POST /` and `/events` (and their OPTIONS handshake).
pub fn router(state: Arc<IngressState>) -> Router {
    let ingress = post(ingest_post)
        .options(options)
        .fallback(method_not_allowed);
    Router::new()
        .route("/", ingress.clone())
        .route("/events", ingress)
        .with_state(state)
}

async fn ingest_post(
    State(app): State<Arc<IngressState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = read_body(body, app.body_limit, app.body_read_timeout).await;
    // A body refused before its end (too large, too slow) is left unread, so the server
    // closes the connection after answering: saying so keeps a client from sending its next
    // request on it (and getting a broken pipe).
    let unread = body.is_err();
    let mut response = ingest(&app, &headers, body).await;
    if unread {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    if response.status() != StatusCode::ACCEPTED {
        app.metrics
            .ingress_rejected
            .with_label_values(&[response.status().as_str()])
            .inc();
    }
    response
}

/// How long a request body may take to arrive in full when not configured; past it the
/// request is refused with 408, so a producer trickling its body holds a connection for a
/// bounded time.
pub const DEFAULT_BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The body, read to its end under the size limit and the read timeout.
async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, IngressError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => Err(IngressError::from_body_error(&err, limit)),
        Err(_) => Err(IngressError::BodyTimeout { after: timeout }),
    }
}

async fn ingest(
    app: &IngressState,
    headers: &HeaderMap,
    body: Result<Bytes, IngressError>,
) -> Response {
    if app.stopping.load(Ordering::Relaxed) {
        return Problem::service_unavailable(None, "the host is shutting down").into_response();
    }
    // `read_body` stopped reading at the limit (declared or not) or the deadline.
    let body = match body {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    let policy = app.live.ingress_policy();
    let decoded = match binding::decode_limited(headers, &body, policy.max_batch) {
        Ok(decoded) => decoded,
        Err(err) => return err.into_response(),
    };
    let at = |index: usize, err: IngressError| match decoded.mode {
        binding::Mode::Batch => err.at_index(index),
        _ => err,
    };
    for (index, event) in decoded.events.iter().enumerate() {
        if let Err(err) = check_producer(event, &app.namespace, &policy) {
            return at(index, err).into_response();
        }
    }
    // Each event's data against its type's schema: one that does not match refuses the
    // whole request, before anything is stored.
    let registry = app.live.registry();
    let mut events = Vec::with_capacity(decoded.events.len());
    for (index, event) in decoded.events.into_iter().enumerate() {
        match registry.admit(event) {
            Ok(event) => events.push(event),
            Err(err) => return at(index, err).into_response(),
        }
    }

    let live = app.live.current();
    let routed: Vec<_> = events.into_iter().map(|e| live.route(e)).collect();
    if policy.unrouted == Unrouted::Refuse
        && let Some((index, unrouted)) = routed
            .iter()
            .enumerate()
            .find(|(_, r)| r.deliveries.is_empty())
    {
        let ty = unrouted.event.ty().to_owned();
        return at(index, IngressError::Unrouted { ty }).into_response();
    }
    // Back-pressure: room in every target handler's queue, and none full downstream of them,
    // or the whole request is refused.
    let admission = match live.admit(&routed) {
        Ok(admission) => admission,
        Err(full) => {
            return Problem::too_many_requests(full.retry_after, full.to_string())
                .with_member("handler", full.handler.to_string())
                .into_response();
        }
    };

    // The append and its accounting run to the end even if the client goes away meanwhile:
    // dropped halfway, the events could be stored with their room given back, and the queue
    // would count fewer deliveries than it holds.
    let store = app.store.clone();
    let accounted = tokio::spawn(async move {
        let appended = store.append(routed).await?;
        // Duplicates were not stored again: their room goes back; the rest is kept.
        let mut duplicates: HashMap<HandlerName, u64> = HashMap::new();
        for (routed, outcome) in &appended {
            if !outcome.is_new() {
                for delivery in &routed.deliveries {
                    *duplicates.entry(delivery.handler.clone()).or_default() += 1;
                }
            }
        }
        admission.keep(|handler| duplicates.get(handler).copied().unwrap_or(0));
        Ok::<_, crate::store::StoreError>(appended)
    });
    let appended = match accounted.await {
        Ok(Ok(appended)) => appended,
        // A failed append stored nothing (its admission gave its room back): the client is
        // told to come back, never that the event is lost or kept.
        Ok(Err(err)) => return store_refused(&err).into_response(),
        Err(_) => {
            // Whether the append was durable is unknown: a retry is safe (the store dedupes
            // on source and id), so that is what the client is told to do.
            tracing::error!("the append task panicked");
            return Problem::service_unavailable(
                Some(STORE_UNAVAILABLE_WAIT),
                "the host failed to store the events; send them again",
            )
            .into_response();
        }
    };
    let received = &app.metrics.events_received;
    let mut accepted = Vec::with_capacity(appended.len());
    for (routed, outcome) in &appended {
        // Only subscribed types get a label of their own: producers must not be able to grow
        // the metric series without bound.
        let label = match routed.deliveries.is_empty() {
            true => crate::metrics::OTHER_TYPE,
            false => routed.event.ty(),
        };
        received
            .with_label_values(&[label, decoded.mode.as_str()])
            .inc();
        if outcome.is_new() {
            for delivery in &routed.deliveries {
                if let Some(handler) = live.handler(delivery.handler.as_str()) {
                    handler.slot.wake.notify_one();
                }
            }
        }
        let (seq, duplicate) = match *outcome {
            Appended::New { seq } => (seq, false),
            Appended::Duplicate { seq } => (seq, true),
        };
        accepted.push(AcceptedEvent {
            source: routed.event.source().to_owned(),
            id: routed.event.id().to_owned(),
            seq,
            duplicate,
        });
    }
    let body = IngestAnswer {
        mode: decoded.mode.as_str().to_owned(),
        accepted,
    };
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// What a producer may send: not from the host's own `source` namespace (only its handlers
/// emit from there, and their dedupe keys live there), and only the types `[ingress] accept`
/// lists, when it lists any.
fn check_producer(
    event: &crate::event::Event,
    namespace: &str,
    policy: &IngressPolicy,
) -> Result<(), IngressError> {
    let source = event.source();
    let reserved = source
        .strip_prefix(namespace)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if reserved {
        return Err(IngressError::ReservedSource {
            given: source.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    if let Some(accept) = &policy.accept
        && !accept.contains(event.ty())
    {
        return Err(IngressError::NotAccepted {
            ty: event.ty().to_owned(),
        });
    }
    Ok(())
}

/// The answer to an append the store refused: 507 when the disk (or the database's size
/// limit) is full, 503 otherwise; both with `Retry-After`, since nothing was stored and the
/// same request may succeed later.
fn store_refused(err: &crate::store::StoreError) -> Problem {
    match err.kind() {
        StoreErrorKind::Full => {
            tracing::warn!(error = %err, "the store is full");
            Problem::new(StatusCode::INSUFFICIENT_STORAGE)
                .with_detail("the store is full: nothing was stored, send the events again later")
                .with_retry_after(STORE_UNAVAILABLE_WAIT)
        }
        StoreErrorKind::Busy => {
            tracing::warn!(error = %err, "the store cannot take events now");
            // Why, for an operator reading a client's error: the database was busy, or (a
            // cluster host) JetStream could not be reached.
            Problem::service_unavailable(
                Some(STORE_UNAVAILABLE_WAIT),
                format!(
                    "the store cannot take events now ({err}): nothing was stored, send them \
                     again later"
                ),
            )
        }
        StoreErrorKind::Broken => {
            tracing::error!(error = %err, "failed to append events");
            Problem::service_unavailable(
                Some(STORE_UNAVAILABLE_WAIT),
                "the host failed to store the events: nothing was stored, see its log",
            )
        }
    }
}

/// `OPTIONS /` and `/events`: the CloudEvents web hook handshake.
async fn options(headers: HeaderMap) -> Response {
    match binding::webhook_handshake(&headers) {
        Ok(answer) => (StatusCode::OK, answer).into_response(),
        Err(err) => err.into_response(),
    }
}

/// Any other method on an ingress path.
async fn method_not_allowed(method: Method) -> Response {
    Problem::method_not_allowed(&method, &[Method::POST, Method::OPTIONS]).into_response()
}
