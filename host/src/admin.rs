//! The admin API: the event log, handler state, deployed handlers, dead letters.
//!
//! Reads go to the store and the scheduler. Changes go through their owners: deploys,
//! rollbacks and removals through the [`Deployer`](crate::deploy::Deployer); a dead-letter
//! redrive puts the delivery back to pending through the store and wakes the handler's
//! worker, a delete discards it. When a token is configured, every route here requires it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use axum::extract::Multipart;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::config::HandlerSettings;
use crate::deploy::DeployError;
use crate::ingress::problem::Problem;
use crate::scheduler::HandlerSlot;
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
    let (params, limit) = match page(params, |p| p.limit) {
        Ok(page) => page,
        Err(problem) => return problem,
    };
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
    let (params, limit) = match page(params, |p| p.limit) {
        Ok(page) => page,
        Err(problem) => return problem,
    };
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
            app.scheduler.redriven(handlers.iter().map(String::as_str));
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

/// A listing's parameters and its page size, or the 400 that says what is wrong with them.
#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, made at most once per request"
)]
fn page<T>(
    params: Result<Query<T>, axum::extract::rejection::QueryRejection>,
    limit: impl Fn(&T) -> Option<u32>,
) -> Result<(T, u32), Response> {
    let Query(params) = params.map_err(|rejection| bad_query(&rejection))?;
    let size = limit(&params).unwrap_or(DEFAULT_EVENTS_LIMIT);
    if size == 0 || size > MAX_EVENTS_LIMIT {
        return Err(bad_limit());
    }
    Ok((params, size))
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

/// `GET /admin/handlers`: what is deployed, with its version, policy and live counters.
pub(crate) async fn handlers(State(app): State<Arc<AppState>>) -> Response {
    let handlers: Vec<Value> = app
        .scheduler
        .handler_names()
        .iter()
        .filter_map(|name| app.scheduler.handler(name))
        .map(|slot| handler_json(&slot))
        .collect();
    Json(json!({"handlers": handlers})).into_response()
}

fn handler_json(slot: &HandlerSlot) -> Value {
    let deployed = slot.deployed();
    let s = &deployed.settings;
    json!({
        "name": deployed.name,
        "version": deployed.version,
        "module_sha256": deployed.module_sha256,
        "deployed_at": rfc3339(deployed.deployed_at_ms),
        "subscribe": s.subscribe,
        "concurrency": s.concurrency,
        "ordering": s.ordering.as_str(),
        "key": s.key.as_str(),
        "max_pending": s.max_pending,
        "timeout_ms": s.timeout.as_millis() as u64,
        "memory_mb": s.memory_mb,
        "max_attempts": s.max_attempts,
        "rate": s.rate.map(|r| r.to_string()),
        "pending": slot.pending(),
        "in_flight": slot.in_flight(),
    })
}

/// The largest module a deploy accepts: interpreted languages ship their runtime inside
/// the component (a Python handler is tens of MB).
pub const MAX_MODULE_BYTES: usize = 256 << 20;

/// `GET /admin/handlers/{name}`: one handler, with every stored version.
pub(crate) async fn handler(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    let Some(slot) = app.scheduler.handler(&name) else {
        return Problem::not_found(format!("no handler `{name}` is deployed")).into_response();
    };
    let mut body = handler_json(&slot);
    match app.scheduler.store().versions(&name).await {
        Ok((versions, _)) => {
            body["versions"] = versions
                .iter()
                .map(|v| {
                    json!({
                        "version": v.version,
                        "module_sha256": v.module_sha256,
                        "deployed_at": rfc3339(v.deployed_at_ms),
                    })
                })
                .collect();
            Json(body).into_response()
        }
        Err(err) => internal("failed to read handler versions", &err),
    }
}

/// `PUT /admin/handlers/{name}`, multipart: `module` (the component) and `config` (the
/// handler's settings, TOML as in `evhost.toml`). 201 for a new handler, 200 for a new
/// version (or the same one, `unchanged`), 400 naming what is wrong with the module or
/// the settings (the live version stays).
pub(crate) async fn deploy(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let mut multipart = match multipart {
        Ok(multipart) => multipart,
        Err(rejection) => {
            return bad_request(format!(
                "expected multipart/form-data: {}",
                rejection.body_text()
            ));
        }
    };
    let (mut module, mut config) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => return bad_request(format!("unreadable multipart body: {err}")),
        };
        let part = field.name().unwrap_or_default().to_owned();
        let bytes = match field.bytes().await {
            Ok(bytes) => bytes,
            Err(err) => return bad_request(format!("unreadable part `{part}`: {err}")),
        };
        match part.as_str() {
            "module" => module = Some(bytes.to_vec()),
            "config" => config = Some(bytes),
            other => {
                return bad_request(format!(
                    "unknown part `{other}` (expected `module` and `config`)"
                ));
            }
        }
    }
    let Some(module) = module else {
        return bad_request("the `module` part (the component's bytes) is missing".to_owned());
    };
    let settings = match config {
        None => None,
        Some(text) => {
            let Ok(text) = std::str::from_utf8(&text) else {
                return bad_request("the `config` part is not UTF-8".to_owned());
            };
            match HandlerSettings::parse_toml(text, &format!("config of `{name}`")) {
                Ok(settings) => Some(settings),
                Err(err) => return bad_request(err.to_string()),
            }
        }
    };
    match app.deployer.deploy(&name, module, settings).await {
        Ok(deployed) => {
            let status = if deployed.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let info = &deployed.info;
            let body = json!({
                "name": info.handler,
                "version": info.version,
                "module_sha256": info.module_sha256,
                "deployed_at": rfc3339(info.deployed_at_ms),
                "unchanged": deployed.unchanged,
            });
            (status, Json(body)).into_response()
        }
        Err(err) => deploy_error(err),
    }
}

/// `POST /admin/handlers/{name}/rollback`: the version before the live one goes live.
pub(crate) async fn rollback(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    match app.deployer.rollback(&name).await {
        Ok(info) => Json(json!({
            "name": info.handler,
            "version": info.version,
            "module_sha256": info.module_sha256,
        }))
        .into_response(),
        Err(err) => deploy_error(err),
    }
}

/// `DELETE /admin/handlers/{name}`: stop routing to it; its pending deliveries become dead
/// letters (`handler removed`), so that a redeploy and a redrive recover them.
pub(crate) async fn remove(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match app.deployer.remove(&name).await {
        Ok(dead) => Json(json!({"removed": name, "dead_lettered": dead})).into_response(),
        Err(err) => deploy_error(err),
    }
}

fn deploy_error(err: DeployError) -> Response {
    match err {
        DeployError::Invalid(why) => bad_request(why),
        DeployError::NotFound(_) => Problem::not_found(err.to_string()).into_response(),
        DeployError::NoEarlierVersion(_) => Problem::new(StatusCode::CONFLICT)
            .with_detail(err.to_string())
            .into_response(),
        DeployError::Internal(err) => internal("a deployment change failed", &err),
    }
}

fn bad_request(detail: String) -> Response {
    Problem::new(StatusCode::BAD_REQUEST)
        .with_detail(detail)
        .into_response()
}

/// Every `/admin/*` request needs `Authorization: Bearer <token>` when a token is set. The
/// comparison takes the same time whatever the guess, so it leaks nothing about the token.
pub(crate) async fn require_token(
    State(app): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(expected) = &app.admin_token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches: bool = presented.as_bytes().ct_eq(expected.as_bytes()).into();
    if matches {
        next.run(request).await
    } else {
        Problem::new(StatusCode::UNAUTHORIZED)
            .with_detail("the admin API needs `Authorization: Bearer <token>`")
            .with_header(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            )
            .into_response()
    }
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
    let cache = scheduler.runtime().cache_stats();
    metrics
        .compile_cache
        .with_label_values(&["hit"])
        .set(cache.hits as i64);
    metrics
        .compile_cache
        .with_label_values(&["miss"])
        .set(cache.misses as i64);
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
