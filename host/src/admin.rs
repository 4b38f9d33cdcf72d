//! The admin API's read side: the event log, handler state, deployed handlers.
//!
//! Reads only: it asks the store and the scheduler, and changes nothing.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::ingress::problem::Problem;
use crate::store::{EventQuery, LoggedEvent};

/// Events one `GET /admin/events` returns when `limit` is not given.
const DEFAULT_EVENTS_LIMIT: u32 = 100;
/// The most events one `GET /admin/events` returns.
const MAX_EVENTS_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsParams {
    #[serde(rename = "type")]
    ty: Option<String>,
    source: Option<String>,
    subject: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /admin/events?type=&source=&subject=&after=&limit=`: the log, oldest first. Each
/// item is the event in the CloudEvents JSON format with its log position and deliveries;
/// `next_after` continues the listing.
pub(crate) async fn events(
    State(app): State<Arc<AppState>>,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(params) => params,
        Err(rejection) => {
            return Problem::new(StatusCode::BAD_REQUEST)
                .with_detail(format!("bad query: {}", rejection.body_text()))
                .into_response();
        }
    };
    let limit = params.limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if limit == 0 || limit > MAX_EVENTS_LIMIT {
        return Problem::new(StatusCode::BAD_REQUEST)
            .with_detail(format!("`limit` must be between 1 and {MAX_EVENTS_LIMIT}"))
            .with_member("parameter", "limit")
            .into_response();
    }
    let query = EventQuery {
        ty: params.ty,
        source: params.source,
        subject: params.subject,
        after: params.after,
        limit,
    };
    match app.scheduler.store().events(query).await {
        Ok(events) => {
            let next_after = events.last().map(|e| e.seq).or(params.after);
            let events: Vec<Value> = events.iter().map(logged_event_json).collect();
            Json(json!({"events": events, "next_after": next_after})).into_response()
        }
        Err(err) => internal("failed to read the event log", &err),
    }
}

fn logged_event_json(logged: &LoggedEvent) -> Value {
    let received_at = chrono::DateTime::from_timestamp_millis(logged.received_at_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let deliveries: Vec<Value> = logged
        .deliveries
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "handler": d.handler,
                "status": d.status,
                "attempts": d.attempts,
                "last_error": d.last_error,
            })
        })
        .collect();
    json!({
        "seq": logged.seq,
        "received_at": received_at,
        "event": logged.event.to_json(),
        "deliveries": deliveries,
    })
}

/// `GET /admin/state/{handler}/{key}`: one value of a handler's state, as stored (JSON values
/// are served as `application/json`).
pub(crate) async fn state(
    State(app): State<Arc<AppState>>,
    Path((handler, key)): Path<(String, String)>,
) -> Response {
    if app.scheduler.handler(&handler).is_none() {
        return Problem::not_found(format!("no handler `{handler}`")).into_response();
    }
    let reader = app.scheduler.store().state_reader(&handler);
    let lookup_key = key.clone();
    let value = tokio::task::spawn_blocking(move || reader.get(&lookup_key)).await;
    match value {
        Ok(Ok(Some(value))) => {
            let content_type = if serde_json::from_slice::<Value>(&value).is_ok() {
                "application/json"
            } else {
                "application/octet-stream"
            };
            ([(header::CONTENT_TYPE, content_type)], value).into_response()
        }
        Ok(Ok(None)) => {
            Problem::not_found(format!("handler `{handler}` has no key `{key}`")).into_response()
        }
        Ok(Err(err)) => internal("failed to read state", &err),
        Err(err) => internal("failed to read state", &anyhow::Error::from(err)),
    }
}

/// `GET /admin/handlers`: what is deployed, with its policy and live counters.
pub(crate) async fn handlers(State(app): State<Arc<AppState>>) -> Response {
    let handlers: Vec<Value> = app
        .scheduler
        .handler_names()
        .iter()
        .filter_map(|name| app.scheduler.handler(name))
        .map(|slot| {
            let deployed = slot.deployed();
            let s = &deployed.settings;
            json!({
                "name": deployed.name,
                "subscribe": s.subscribe,
                "concurrency": s.concurrency,
                "ordering": s.ordering.as_str(),
                "key": s.key.as_str(),
                "max_pending": s.max_pending,
                "timeout_ms": s.timeout.as_millis() as u64,
                "memory_mb": s.memory_mb,
                "max_attempts": s.max_attempts,
                "pending": slot.pending(),
                "in_flight": slot.in_flight(),
            })
        })
        .collect();
    Json(json!({"handlers": handlers})).into_response()
}

fn internal(what: &str, err: &anyhow::Error) -> Response {
    tracing::error!(error = format!("{err:#}"), "{what}");
    Problem::internal().into_response()
}
