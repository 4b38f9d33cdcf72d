//! The admin API: the event log, handler state, deployed handlers, dead letters.
//!
//! Everything here reads, except the dead-letter operations: a redrive puts a dead delivery
//! back to pending through the store and wakes the handler's worker, a delete discards it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::ingress::problem::Problem;
use crate::store::{DeadLetter, DeadLetterQuery, EventQuery, LoggedEvent, RedriveTarget};

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
        Err(rejection) => return bad_query(&rejection),
    };
    let limit = params.limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if limit == 0 || limit > MAX_EVENTS_LIMIT {
        return bad_limit();
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
    let deliveries: Vec<Value> = logged
        .deliveries
        .iter()
        .map(|d| {
            // A pending delivery that already failed is waiting for its next attempt.
            let status = if d.status == "pending" && d.attempts > 0 {
                "retrying"
            } else {
                d.status.as_str()
            };
            let mut delivery = json!({
                "id": d.id,
                "handler": d.handler,
                "status": status,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "caused": d.caused,
            });
            if status == "retrying" {
                delivery["next_attempt_at"] = json!(rfc3339(d.not_before_ms));
            }
            if d.redrives > 0 {
                delivery["redrives"] = json!(d.redrives);
            }
            delivery
        })
        .collect();
    json!({
        "seq": logged.seq,
        "received_at": rfc3339(logged.received_at_ms),
        "event": logged.event.to_json(),
        "deliveries": deliveries,
    })
}

fn rfc3339(unix_ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadLetterParams {
    handler: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /admin/deadletters?handler=&type=&after=&limit=`: dead letters, oldest first.
pub(crate) async fn dead_letters(
    State(app): State<Arc<AppState>>,
    params: Result<Query<DeadLetterParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(params) => params,
        Err(rejection) => return bad_query(&rejection),
    };
    let limit = params.limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if limit == 0 || limit > MAX_EVENTS_LIMIT {
        return bad_limit();
    }
    let query = DeadLetterQuery {
        handler: params.handler,
        ty: params.ty,
        id: None,
        after: params.after,
        limit,
    };
    match app.scheduler.store().dead_letters(query).await {
        Ok(letters) => {
            let next_after = letters.last().map(|l| l.id).or(params.after);
            let letters: Vec<Value> = letters.iter().map(dead_letter_json).collect();
            Json(json!({"deadletters": letters, "next_after": next_after})).into_response()
        }
        Err(err) => internal("failed to read dead letters", &err),
    }
}

/// `GET /admin/deadletters/{id}`: one dead letter with every error.
pub(crate) async fn dead_letter(State(app): State<Arc<AppState>>, Path(id): Path<i64>) -> Response {
    let query = DeadLetterQuery {
        id: Some(id),
        limit: 1,
        ..DeadLetterQuery::default()
    };
    match app.scheduler.store().dead_letters(query).await {
        Ok(letters) => match letters.first() {
            Some(letter) => Json(dead_letter_json(letter)).into_response(),
            None => no_dead_letter(id),
        },
        Err(err) => internal("failed to read dead letters", &err),
    }
}

/// `POST /admin/deadletters/{id}/redrive`: deliver it again, with a fresh attempt count.
pub(crate) async fn redrive(State(app): State<Arc<AppState>>, Path(id): Path<i64>) -> Response {
    redrive_target(&app, RedriveTarget::Delivery(id)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveAllParams {
    handler: String,
}

/// `POST /admin/deadletters/redrive?handler=NAME`: redrive every dead letter of a handler.
pub(crate) async fn redrive_all(
    State(app): State<Arc<AppState>>,
    params: Result<Query<RedriveAllParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match params {
        Ok(Query(params)) => redrive_target(&app, RedriveTarget::Handler(params.handler)).await,
        Err(rejection) => bad_query(&rejection),
    }
}

async fn redrive_target(app: &AppState, target: RedriveTarget) -> Response {
    if let RedriveTarget::Handler(handler) = &target
        && app.scheduler.handler(handler).is_none()
    {
        return Problem::not_found(format!("no handler `{handler}`")).into_response();
    }
    let single = match &target {
        RedriveTarget::Delivery(id) => Some(*id),
        RedriveTarget::Handler(_) => None,
    };
    match app.scheduler.store().redrive(target).await {
        Ok(handlers) => {
            if let (Some(id), true) = (single, handlers.is_empty()) {
                return no_dead_letter(id);
            }
            app.scheduler.appended(handlers.iter().map(String::as_str));
            Json(json!({"redriven": handlers.len()})).into_response()
        }
        Err(err) => internal("failed to redrive", &err),
    }
}

/// `DELETE /admin/deadletters/{id}`: give up on it (the event stays in the log).
pub(crate) async fn discard(State(app): State<Arc<AppState>>, Path(id): Path<i64>) -> Response {
    match app.scheduler.store().discard(id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => no_dead_letter(id),
        Err(err) => internal("failed to discard a dead letter", &err),
    }
}

fn dead_letter_json(letter: &DeadLetter) -> Value {
    let errors: Vec<Value> = letter
        .errors
        .iter()
        .map(|a| {
            json!({
                "redrive": a.redrive,
                "attempt": a.attempt,
                "error": a.error,
                "at": rfc3339(a.at_ms),
            })
        })
        .collect();
    json!({
        "id": letter.id,
        "handler": letter.handler,
        "seq": letter.seq,
        "attempts": letter.attempts,
        "redrives": letter.redrives,
        "died_at": rfc3339(letter.died_at_ms),
        "event": letter.event.to_json(),
        "errors": errors,
    })
}

fn no_dead_letter(id: i64) -> Response {
    Problem::not_found(format!("no dead letter with id {id}")).into_response()
}

fn bad_query(rejection: &axum::extract::rejection::QueryRejection) -> Response {
    Problem::new(StatusCode::BAD_REQUEST)
        .with_detail(format!("bad query: {}", rejection.body_text()))
        .into_response()
}

fn bad_limit() -> Response {
    Problem::new(StatusCode::BAD_REQUEST)
        .with_detail(format!("`limit` must be between 1 and {MAX_EVENTS_LIMIT}"))
        .with_member("parameter", "limit")
        .into_response()
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

/// `GET /metrics`: Prometheus text format. Live gauges are read now, so they never drift.
pub(crate) async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let scheduler = &app.scheduler;
    let metrics = scheduler.metrics();
    for name in scheduler.handler_names() {
        if let Some(slot) = scheduler.handler(&name) {
            let labels = [name.as_str()];
            metrics
                .pending
                .with_label_values(&labels)
                .set(slot.pending() as i64);
            metrics
                .in_flight
                .with_label_values(&labels)
                .set(slot.in_flight() as i64);
            metrics.dead_letters.with_label_values(&labels).set(0);
        }
    }
    match scheduler.store().dead_counts().await {
        Ok(counts) => {
            for (handler, count) in counts {
                metrics
                    .dead_letters
                    .with_label_values(&[handler.as_str()])
                    .set(count as i64);
            }
        }
        Err(err) => return internal("failed to count dead letters", &err),
    }
    match metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => internal("failed to render metrics", &err),
    }
}

fn internal(what: &str, err: &anyhow::Error) -> Response {
    tracing::error!(error = format!("{err:#}"), "{what}");
    Problem::internal().into_response()
}
