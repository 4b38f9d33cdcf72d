//! Ingress: the CloudEvents HTTP binding, the front of the pipeline.
//!
//! [`binding`] decodes and validates a request (binary, structured or batch mode) into
//! [`Event`](crate::event::Event)s; [`problem`] answers every error as problem+json. The
//! handler here reads the body under the size limit, routes each event, refuses with 429
//! when a target handler's queue is full, appends to the store and answers 202 only once
//! the append is durable. Ingress never runs or touches handlers: it hands deliveries to
//! the store and wakes the scheduler.
//!
//! A request is all or nothing: a batch with one bad event stores none, and a 429 stores
//! none.

pub mod binding;
pub mod problem;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::AppState;
use problem::{IngressError, Problem};

/// The smallest body limit allowed: the CloudEvents spec requires accepting 64 KiB events.
pub const MIN_BODY_LIMIT: usize = 64 * 1024;
/// The default body limit of a POST.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// `POST /` and `/events`.
pub(crate) async fn post(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = ingest(&app, &headers, body).await;
    if response.status() != StatusCode::ACCEPTED {
        app.scheduler
            .metrics()
            .ingress_rejected
            .with_label_values(&[response.status().as_str()])
            .inc();
    }
    response
}

async fn ingest(
    app: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if app.is_shutting_down() {
        return Problem::service_unavailable(None, "the host is shutting down").into_response();
    }
    // The router's `DefaultBodyLimit` stops reading at the limit (declared or not).
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return IngressError::from_body_rejection(&rejection, app.body_limit).into_response();
        }
    };
    let decoded = match binding::decode(headers, &body) {
        Ok(decoded) => decoded,
        Err(err) => return err.into_response(),
    };

    let scheduler = &app.scheduler;
    let routes = scheduler.routes();
    let routed: Vec<_> = decoded
        .events
        .into_iter()
        .map(|e| routes.route(e))
        .collect();

    // Back-pressure: refuse the whole request if any target handler would pass its limit.
    let mut per_handler: HashMap<&str, u64> = HashMap::new();
    for delivery in routed.iter().flat_map(|r| &r.deliveries) {
        *per_handler.entry(delivery.handler.as_str()).or_default() += 1;
    }
    for (handler, incoming) in &per_handler {
        if let Some(slot) = scheduler.handler(handler) {
            let max = slot.deployed().settings.max_pending;
            let waiting = slot.pending() + incoming;
            if waiting > max {
                return Problem::too_many_requests(
                    slot.time_to_drain(waiting - max),
                    format!("handler `{handler}` has {max} deliveries waiting, its limit"),
                )
                .with_member("handler", handler.to_string())
                .into_response();
            }
        }
    }

    let appended = match scheduler.store().append(routed).await {
        Ok(appended) => appended,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "failed to append events");
            return Problem::internal().into_response();
        }
    };
    let received = &app.scheduler.metrics().events_received;
    let mut accepted = Vec::with_capacity(appended.len());
    for (routed, outcome) in &appended {
        // Only subscribed types get a label of their own: producers must not be able to grow
        // the metric series without bound.
        let label = match routed.deliveries.is_empty() {
            true => crate::metrics::OTHER_TYPE,
            false => routed.event.ty.as_str(),
        };
        received
            .with_label_values(&[label, decoded.mode.as_str()])
            .inc();
        if outcome.is_new() {
            scheduler.appended(routed.deliveries.iter().map(|d| d.handler.as_str()));
        }
        let (seq, duplicate) = match *outcome {
            crate::store::Appended::New { seq } => (seq, false),
            crate::store::Appended::Duplicate { seq } => (seq, true),
        };
        let event = &routed.event;
        accepted.push(
            json!({"source": event.source, "id": event.id, "seq": seq, "duplicate": duplicate}),
        );
    }
    let body = json!({"mode": decoded.mode.as_str(), "accepted": accepted});
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// `OPTIONS /` and `/events`: the CloudEvents web hook handshake.
pub(crate) async fn options(headers: HeaderMap) -> Response {
    match binding::webhook_handshake(&headers) {
        Ok(answer) => (StatusCode::OK, answer).into_response(),
        Err(err) => err.into_response(),
    }
}

/// Any other method on an ingress path.
pub(crate) async fn method_not_allowed(method: Method) -> Response {
    Problem::method_not_allowed(&method, &[Method::POST, Method::OPTIONS]).into_response()
}
