//! The admin API: the event log, handler state, deployed handlers, dead letters, metrics,
//! store upkeep.
//!
//! Reads go to the store and the live set. Changes go through their owners: deploys,
//! rollbacks and removals are plans for the [`Deployer`]; a dead-letter redrive puts the
//! delivery back to pending through the store and asks the handler's worker to re-read its
//! backlog; a delete discards it. Answers are the types of [`crate::api`]; every failure is an
//! [`AdminError`], which answers as problem+json. When a token is configured, every
//! `/admin/*` route requires it.

mod schemas;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::access::{AdminToken, Guard};
use crate::api::{
    AttemptView, CompactAnswer, DeadLetterPage, DeadLetterView, DeliveryView, DeployAnswer,
    EventJson, EventsPage, HandlerList, HandlerView, LoggedEventView, RedriveAnswer, RemoveAnswer,
    RollbackAnswer, VersionView, rfc3339,
};
use crate::config::HandlerSettings;
use crate::deploy::{Change, DeployError, Deployer};
use crate::ingress::problem::Problem;
use crate::live::{Live, LiveHandler};
use crate::metrics::Metrics;
use crate::name::HandlerName;
use crate::runtime::Runtime;
use crate::store::{
    DeadLetter, DeadLetterQuery, DeliveryStatus, EventQuery, LoggedEvent, Origin, RedriveTarget,
    SharedBackend, StoreError, StoreErrorKind,
};

/// Events one `GET /admin/events` returns when `limit` is not given.
const DEFAULT_EVENTS_LIMIT: u32 = 100;
/// The most events one `GET /admin/events` returns.
const MAX_EVENTS_LIMIT: u32 = 1000;
/// Bytes of event data one page of `GET /admin/events` holds about: the page ends with the
/// event that reaches it (one at least), before `limit`, and `next_after` goes on from there.
/// Without it a page of large events would take gigabytes to read and write (1000 events of
/// up to the 1 MiB body limit each).
const MAX_PAGE_DATA_BYTES: usize = 32 << 20;

/// The largest module a deploy accepts: interpreted languages ship their runtime inside
/// the component (a Python handler is tens of MB).
pub const MAX_MODULE_BYTES: usize = 256 << 20;

/// What the admin API reads and changes.
pub struct AdminState {
    pub live: Arc<Live>,
    pub store: SharedBackend,
    pub deployer: Arc<Deployer>,
    pub metrics: Arc<Metrics>,
    pub runtime: Arc<Runtime>,
    /// When set, `/admin/*` (and `/metrics`, unless `metrics_open`) requires
    /// `Authorization: Bearer <token>`.
    pub token: Option<AdminToken>,
    /// The `Host` and `Origin` checks every admin request passes first.
    pub guard: Guard,
    /// Serve `/metrics` without the token (for a scraper that cannot send one).
    pub metrics_open: bool,
}

/// `/admin/*` (behind the token) and `/metrics`.
pub fn router(state: Arc<AdminState>) -> Router {
    let admin = Router::new()
        .route("/admin/events", get(events))
        .route("/admin/handlers", get(handlers))
        .route(
            "/admin/handlers/{name}",
            get(handler)
                .put(deploy)
                .delete(remove)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_MODULE_BYTES)),
        )
        .route("/admin/handlers/{name}/rollback", post(rollback))
        .route("/admin/state/{handler}/{*key}", get(state_value))
        .route("/admin/deadletters", get(dead_letters))
        .route("/admin/deadletters/redrive", post(redrive_all))
        .route("/admin/deadletters/{id}", get(dead_letter).delete(discard))
        .route("/admin/deadletters/{id}/redrive", post(redrive))
        .route("/admin/compact", post(compact))
        .route("/admin/schemas", get(schemas::list))
        .route(
            "/admin/schemas/{type}",
            get(schemas::get)
                .put(schemas::put)
                .delete(schemas::remove)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_MODULE_BYTES)),
        )
        .route("/admin/upcasters", get(schemas::upcasters))
        .route(
            "/admin/upcasters/{from}",
            axum::routing::put(schemas::put_upcaster)
                .delete(schemas::remove_upcaster)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_MODULE_BYTES)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    let metrics = Router::new().route("/metrics", get(metrics)).route_layer(
        axum::middleware::from_fn_with_state(state.clone(), require_token_for_metrics),
    );
    admin.merge(metrics).with_state(state)
}

/// Why an admin request failed; each kind answers with one status, in one place.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// A plan with several problems: each is listed under `problems` too.
    #[error(transparent)]
    Deploy(DeployError),
    /// A plan the deploy gate refused (409), each problem under `problems`.
    #[error(transparent)]
    Gate(DeployError),
    /// A refused change to the schema registry.
    #[error(transparent)]
    Schema(crate::deploy::SchemaChangeError),
    /// A limit or filter of a listing is out of range.
    #[error("{detail}")]
    BadParameter {
        parameter: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host's own failure; the client gets a generic answer, the log the cause.
    #[error("{0}")]
    Internal(String),
}

impl From<DeployError> for AdminError {
    fn from(err: DeployError) -> Self {
        match err {
            DeployError::NotFound(_) => AdminError::NotFound(err.to_string()),
            DeployError::NoEarlierVersion(_) => AdminError::Conflict(err.to_string()),
            DeployError::Store(err) => AdminError::Store(err),
            DeployError::Invalid(_) => AdminError::Deploy(err),
            DeployError::Gate(_) => AdminError::Gate(err),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::NotFound(detail) => Problem::not_found(detail).into_response(),
            AdminError::BadRequest(detail) => Problem::new(StatusCode::BAD_REQUEST)
                .with_detail(detail)
                .into_response(),
            AdminError::Conflict(detail) => Problem::new(StatusCode::CONFLICT)
                .with_detail(detail)
                .into_response(),
            AdminError::Deploy(err) => {
                let problems = match &err {
                    DeployError::Invalid(problems) => problems.clone(),
                    _ => Vec::new(),
                };
                Problem::new(StatusCode::BAD_REQUEST)
                    .with_detail(err.to_string())
                    .with_member("problems", problems)
                    .into_response()
            }
            AdminError::Gate(err) => {
                let problems = match &err {
                    DeployError::Gate(problems) => problems.clone(),
                    _ => Vec::new(),
                };
                Problem::new(StatusCode::CONFLICT)
                    .with_detail(err.to_string())
                    .with_member("problems", problems)
                    .into_response()
            }
            AdminError::Schema(err) => schemas::schema_problem(err),
            AdminError::BadParameter { parameter, detail } => Problem::new(StatusCode::BAD_REQUEST)
                .with_detail(detail)
                .with_member("parameter", parameter)
                .into_response(),
            AdminError::Internal(cause) => {
                tracing::error!(error = cause, "an admin request failed");
                Problem::internal().into_response()
            }
            AdminError::Store(err) => match err.kind() {
                StoreErrorKind::Full | StoreErrorKind::Busy => {
                    tracing::warn!(error = %err, "the store is unavailable");
                    Problem::service_unavailable(
                        Some(std::time::Duration::from_secs(1)),
                        format!("the store is unavailable now ({err})"),
                    )
                    .into_response()
                }
                StoreErrorKind::Broken => {
                    tracing::error!(error = %err, "an admin request failed");
                    Problem::internal().into_response()
                }
            },
        }
    }
}

type Answer<T> = Result<Json<T>, AdminError>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
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
async fn events(
    State(app): State<Arc<AdminState>>,
    params: Result<Query<EventsParams>, QueryRejection>,
) -> Answer<EventsPage<EventJson>> {
    let (params, limit) = page(params, |p| p.limit)?;
    let query = EventQuery {
        ty: params.ty,
        source: params.source,
        subject: params.subject,
        after: params.after,
        limit,
        data_bytes: Some(MAX_PAGE_DATA_BYTES),
    };
    let events = app.store.events(query).await?;
    let next_after = events.last().map(|e| e.seq).or(params.after);
    Ok(Json(EventsPage {
        events: upcast_views(&app, events).await,
        next_after,
    }))
}

/// The views of `events`, each delivery whose handler reads the event as a newer version
/// showing it upcast (run now: an upcaster is pure, so this is what the delivery got or
/// gets).
async fn upcast_views(
    app: &AdminState,
    events: Vec<LoggedEvent>,
) -> Vec<LoggedEventView<EventJson>> {
    let live = app.live.current();
    let registry = app.live.registry();
    let mut views = Vec::with_capacity(events.len());
    for logged in events {
        let mut upcasts = Vec::with_capacity(logged.deliveries.len());
        for delivery in &logged.deliveries {
            let Some(handler) = live.handler(delivery.handler.as_str()) else {
                upcasts.push((None, None));
                continue;
            };
            let settings = handler.deployed.settings();
            // Why it cannot be read matters while the delivery may still run (or is dead);
            // a done one was read by the version that ran it.
            let may_run = !matches!(
                delivery.status,
                DeliveryStatus::Done | DeliveryStatus::Discarded
            );
            let read = registry
                .read_as(&app.runtime, settings, &logged.event)
                .await;
            upcasts.push(match read {
                Ok(None) => (None, None),
                Ok(Some(upcast)) => (Some(upcast.to_json()), None),
                Err(why) if may_run => (None, Some(why)),
                Err(_) => (None, None),
            });
        }
        let mut view = logged_event_view(logged);
        for (delivery, (delivered_as, upcast_error)) in view.deliveries.iter_mut().zip(upcasts) {
            delivery.delivered_as = delivered_as;
            delivery.upcast_error = upcast_error;
        }
        views.push(view);
    }
    views
}

/// The answer writes each event as it goes ([`EventJson`]): no tree of its `data`.
fn logged_event_view(logged: LoggedEvent) -> LoggedEventView<EventJson> {
    let deliveries = logged
        .deliveries
        .iter()
        .map(|d| DeliveryView {
            id: d.id,
            handler: d.handler.clone(),
            status: d.status,
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            caused: d.caused.clone(),
            next_attempt_at: (d.status == DeliveryStatus::Retrying)
                .then(|| rfc3339(d.not_before_ms))
                .flatten(),
            redrives: d.redrives,
            delivered_as: None,
            upcast_error: None,
        })
        .collect();
    LoggedEventView {
        seq: logged.seq,
        received_at: rfc3339(logged.received_at_ms),
        event: EventJson(logged.event),
        deliveries,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterParams {
    handler: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /admin/deadletters?handler=&type=&after=&limit=`: dead letters, oldest first.
async fn dead_letters(
    State(app): State<Arc<AdminState>>,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Answer<DeadLetterPage<EventJson>> {
    let (params, limit) = page(params, |p| p.limit)?;
    let query = DeadLetterQuery {
        handler: params.handler,
        ty: params.ty,
        id: None,
        after: params.after,
        limit,
    };
    let letters = app.store.dead_letters(query).await?;
    let next_after = letters.last().map(|l| l.id).or(params.after);
    Ok(Json(DeadLetterPage {
        deadletters: letters.into_iter().map(dead_letter_view).collect(),
        next_after,
    }))
}

/// `GET /admin/deadletters/{id}`: one dead letter with every error.
async fn dead_letter(
    State(app): State<Arc<AdminState>>,
    Path(id): Path<i64>,
) -> Answer<DeadLetterView<EventJson>> {
    let query = DeadLetterQuery {
        id: Some(id),
        limit: 1,
        ..DeadLetterQuery::default()
    };
    let letters = app.store.dead_letters(query).await?;
    letters
        .into_iter()
        .next()
        .map(|letter| Json(dead_letter_view(letter)))
        .ok_or_else(|| no_dead_letter(id))
}

/// `POST /admin/deadletters/{id}/redrive`: deliver it again, with a fresh attempt count.
async fn redrive(State(app): State<Arc<AdminState>>, Path(id): Path<i64>) -> Answer<RedriveAnswer> {
    let redriven = redrive_target(&app, RedriveTarget::Delivery(id)).await?;
    if redriven == 0 {
        // Not redriven: no such dead letter, or its handler is not deployed (the store
        // redrives only deliveries of deployed handlers). Say which.
        let query = DeadLetterQuery {
            id: Some(id),
            limit: 1,
            ..DeadLetterQuery::default()
        };
        return Err(
            match app.store.dead_letters(query).await?.into_iter().next() {
                Some(letter) => AdminError::Conflict(format!(
                    "dead letter {id} is for handler `{}`, which is not deployed: deploy it, then \
                 redrive",
                    letter.handler
                )),
                None => no_dead_letter(id),
            },
        );
    }
    Ok(Json(RedriveAnswer { redriven }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveAllParams {
    handler: String,
}

/// `POST /admin/deadletters/redrive?handler=NAME`: redrive every dead letter of a handler.
async fn redrive_all(
    State(app): State<Arc<AdminState>>,
    params: Result<Query<RedriveAllParams>, QueryRejection>,
) -> Answer<RedriveAnswer> {
    let Query(params) = params.map_err(|rejection| bad_query(&rejection))?;
    let (name, _) = live_handler(&app, &params.handler)?;
    let redriven = redrive_target(&app, RedriveTarget::Handler(name)).await?;
    Ok(Json(RedriveAnswer { redriven }))
}

/// Put dead deliveries back to pending and tell their handlers' workers.
async fn redrive_target(app: &AdminState, target: RedriveTarget) -> Result<usize, AdminError> {
    let handlers = app.store.redrive(target).await?;
    let live = app.live.current();
    for name in &handlers {
        if let Some(handler) = live.handler(name.as_str()) {
            handler.slot.queue.added(1);
            // The redriven ids are older than what the worker has read.
            handler.slot.rescan();
        }
    }
    Ok(handlers.len())
}

/// `DELETE /admin/deadletters/{id}`: give up on it (the event stays in the log).
async fn discard(
    State(app): State<Arc<AdminState>>,
    Path(id): Path<i64>,
) -> Result<StatusCode, AdminError> {
    match app.store.discard(id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(no_dead_letter(id)),
    }
}

fn dead_letter_view(letter: DeadLetter) -> DeadLetterView<EventJson> {
    DeadLetterView {
        id: letter.id,
        handler: letter.handler.clone(),
        seq: letter.seq,
        attempts: letter.attempts,
        redrives: letter.redrives,
        died_at: rfc3339(letter.died_at_ms),
        event: EventJson(letter.event),
        errors: letter
            .errors
            .iter()
            .map(|a| AttemptView {
                redrive: a.redrive,
                attempt: a.attempt,
                error: a.error.clone(),
                at: rfc3339(a.at_ms),
            })
            .collect(),
    }
}

fn no_dead_letter(id: i64) -> AdminError {
    AdminError::NotFound(format!("no dead letter with id {id}"))
}

/// A listing's parameters and its page size.
fn page<T>(
    params: Result<Query<T>, QueryRejection>,
    limit: impl Fn(&T) -> Option<u32>,
) -> Result<(T, u32), AdminError> {
    let Query(params) = params.map_err(|rejection| bad_query(&rejection))?;
    let size = limit(&params).unwrap_or(DEFAULT_EVENTS_LIMIT);
    if size == 0 || size > MAX_EVENTS_LIMIT {
        return Err(AdminError::BadParameter {
            parameter: "limit",
            detail: format!("`limit` must be between 1 and {MAX_EVENTS_LIMIT}"),
        });
    }
    Ok((params, size))
}

fn bad_query(rejection: &QueryRejection) -> AdminError {
    AdminError::BadRequest(format!("bad query: {}", rejection.body_text()))
}

/// The live handler called `name`, or the 404 that says there is none.
fn live_handler(app: &AdminState, name: &str) -> Result<(HandlerName, LiveHandler), AdminError> {
    let live = app.live.current();
    match live.handler(name) {
        Some(handler) => Ok((handler.deployed.name().clone(), handler.clone())),
        None => Err(AdminError::NotFound(format!(
            "no handler `{name}` is deployed"
        ))),
    }
}

/// `GET /admin/state/{handler}/{key}`: one value of a handler's state, as stored (JSON values
/// are served as `application/json`).
async fn state_value(
    State(app): State<Arc<AdminState>>,
    Path((handler, key)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    let (name, _) = live_handler(&app, &handler)?;
    let reader = app.store.state_reader(&name);
    let value = reader
        .get(&key)
        .await
        .map_err(|err| StoreError::classify(&err))?;
    let Some(value) = value else {
        return Err(AdminError::NotFound(format!(
            "handler `{handler}` has no key `{key}`"
        )));
    };
    let content_type = match serde_json::from_slice::<serde::de::IgnoredAny>(&value) {
        Ok(_) => "application/json",
        Err(_) => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], value).into_response())
}

/// `GET /admin/handlers`: what is deployed, with its version, policy and live counters.
async fn handlers(State(app): State<Arc<AdminState>>) -> Answer<HandlerList> {
    let owners = owners(&app).await?;
    let live = app.live.current();
    let handlers = live
        .handlers()
        .values()
        .map(|handler| handler_view(handler, owner_of(&owners, handler)))
        .collect();
    Ok(Json(HandlerList { handlers }))
}

/// Who owns each handler.
async fn owners(app: &AdminState) -> Result<Vec<(HandlerName, Origin)>, StoreError> {
    Ok(app
        .store
        .handler_records()
        .await?
        .into_iter()
        .map(|r| (r.name, r.owner))
        .collect())
}

fn owner_of(owners: &[(HandlerName, Origin)], handler: &LiveHandler) -> Origin {
    owners
        .iter()
        .find(|(name, _)| name == handler.deployed.name())
        .map_or(handler.deployed.deployment().origin, |(_, owner)| *owner)
}

fn handler_view(handler: &LiveHandler, owner: Origin) -> HandlerView {
    let deployed = &handler.deployed;
    let deployment = deployed.deployment();
    let s = deployed.settings();
    HandlerView {
        name: deployed.name().clone(),
        version: deployment.version,
        module_sha256: deployment.module_sha256.clone(),
        deployed_at: rfc3339(deployment.deployed_at_ms),
        version_origin: deployment.origin,
        origin: owner,
        subscribe: s.subscribe.clone(),
        concurrency: s.concurrency,
        ordering: s.ordering.as_str().to_owned(),
        key: s.key.as_str().to_owned(),
        max_pending: s.max_pending,
        timeout_ms: u64::try_from(s.timeout.as_millis()).unwrap_or(u64::MAX),
        memory_mb: s.memory_mb,
        max_attempts: s.max_attempts,
        rate: s.rate.map(|r| r.to_string()),
        pending: handler.slot.queue.pending(),
        in_flight: handler.slot.in_flight(),
        versions: None,
    }
}

/// `GET /admin/handlers/{name}`: one handler, with every stored version.
async fn handler(
    State(app): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Answer<HandlerView> {
    let (name, handler) = live_handler(&app, &name)?;
    let owners = owners(&app).await?;
    let mut view = handler_view(&handler, owner_of(&owners, &handler));
    let versions = app.store.versions(&name).await?;
    view.versions = Some(
        versions
            .iter()
            .map(|v| VersionView {
                version: v.version,
                module_sha256: v.module_sha256.clone(),
                deployed_at: rfc3339(v.deployed_at_ms),
                origin: v.origin,
            })
            .collect(),
    );
    Ok(Json(view))
}

/// `PUT /admin/handlers/{name}`, multipart: `module` (the component) and `config` (the
/// handler's settings, TOML as in `evhost.toml`). 201 for a new handler, 200 for a new
/// version (or the same one, `unchanged`), 400 naming what is wrong with the module or
/// the settings (the live version stays).
async fn deploy(
    State(app): State<Arc<AdminState>>,
    Path(name): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<DeployAnswer>), AdminError> {
    let mut multipart = multipart.map_err(|rejection| {
        AdminError::BadRequest(format!(
            "expected multipart/form-data: {}",
            rejection.body_text()
        ))
    })?;
    let mut parts = read_parts(&mut multipart, &["module", "config"]).await?;
    let (module, config) = (
        parts.remove("module").map(|bytes| bytes.to_vec()),
        parts.remove("config"),
    );
    // Checked once the body is read: answering before would cut the upload short, and the
    // client would see a broken pipe instead of this answer.
    let name = HandlerName::new(name)
        .map_err(|why| AdminError::BadRequest(format!("handler name: {why}")))?;
    let module = module.ok_or_else(|| {
        AdminError::BadRequest("the `module` part (the component's bytes) is missing".to_owned())
    })?;
    let settings = match config {
        None => None,
        Some(text) => {
            let text = std::str::from_utf8(&text)
                .map_err(|_| AdminError::BadRequest("the `config` part is not UTF-8".to_owned()))?;
            let settings = HandlerSettings::parse_toml(text, &format!("config of `{name}`"))
                .map_err(|err| AdminError::BadRequest(err.to_string()))?;
            Some(settings)
        }
    };
    let (deployment, status, unchanged) = match app.deployer.deploy(name, module, settings).await? {
        Change::Deployed {
            deployment,
            created,
        } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (deployment, status, false)
        }
        Change::Unchanged(deployment) => (deployment, StatusCode::OK, true),
        other => return Err(AdminError::Internal(format!("a deploy did {other:?}"))),
    };
    Ok((
        status,
        Json(DeployAnswer {
            name: deployment.handler,
            version: deployment.version,
            module_sha256: deployment.module_sha256,
            deployed_at: rfc3339(deployment.deployed_at_ms),
            unchanged,
        }),
    ))
}

/// Every part of a multipart body by name, each read to its end; a part not in `known` is
/// refused, but only once the whole body is read (answering before would cut the upload
/// short, and the client would see a broken pipe instead of the answer).
async fn read_parts(
    multipart: &mut Multipart,
    known: &[&str],
) -> Result<std::collections::BTreeMap<String, bytes::Bytes>, AdminError> {
    let mut parts = std::collections::BTreeMap::new();
    let mut unknown = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|err| AdminError::BadRequest(format!("unreadable multipart body: {err}")))?
    {
        let part = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|err| AdminError::BadRequest(format!("unreadable part `{part}`: {err}")))?;
        match known.contains(&part.as_str()) {
            true => {
                parts.insert(part, bytes);
            }
            false => unknown = unknown.or(Some(part)),
        }
    }
    match unknown {
        Some(other) => {
            let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            Err(AdminError::BadRequest(format!(
                "unknown part `{other}` (expected {})",
                expected.join(", ")
            )))
        }
        None => Ok(parts),
    }
}

/// `POST /admin/handlers/{name}/rollback`: the version before the live one goes live.
async fn rollback(
    State(app): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Answer<RollbackAnswer> {
    let (name, _) = live_handler(&app, &name)?;
    match app.deployer.rollback(name).await? {
        Change::RolledBack(deployment) => Ok(Json(RollbackAnswer {
            name: deployment.handler,
            version: deployment.version,
            module_sha256: deployment.module_sha256,
        })),
        other => Err(AdminError::Internal(format!("a rollback did {other:?}"))),
    }
}

/// `DELETE /admin/handlers/{name}`: stop routing to it; its pending deliveries become dead
/// letters (`handler removed`), so that a redeploy and a redrive recover them.
async fn remove(
    State(app): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Answer<RemoveAnswer> {
    let (name, _) = live_handler(&app, &name)?;
    match app.deployer.remove(name).await? {
        Change::Removed {
            handler,
            dead_lettered,
        } => Ok(Json(RemoveAnswer {
            removed: handler,
            dead_lettered,
        })),
        other => Err(AdminError::Internal(format!("a removal did {other:?}"))),
    }
}

/// `POST /admin/compact`: hand the store's free pages back to the file system and empty the
/// WAL, while the host runs; the sizes before and after.
async fn compact(State(app): State<Arc<AdminState>>) -> Answer<CompactAnswer> {
    let Some(compacted) = app.store.compact().await? else {
        return Err(AdminError::Conflict(
            "this host keeps the app in a cluster's JetStream stream, which compacts its own \
             files: there is no store of its own to compact"
                .to_owned(),
        ));
    };
    Ok(Json(CompactAnswer {
        before: compacted.before.into(),
        after: compacted.after.into(),
        vacuumed_pages: compacted.vacuumed_pages,
        wal_truncated: compacted.checkpoint.truncated,
    }))
}

/// Every `/admin/*` request passes the [`Guard`], and needs `Authorization: Bearer <token>`
/// when a token is set ([`crate::access`] says why each check).
async fn require_token(
    State(app): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match admit(&app, &request, true) {
        Ok(()) => next.run(request).await,
        Err(refused) => (*refused).into_response(),
    }
}

/// `/metrics` passes the same checks as `/admin/*`, the token unless `metrics_open`.
async fn require_token_for_metrics(
    State(app): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match admit(&app, &request, !app.metrics_open) {
        Ok(()) => next.run(request).await,
        Err(refused) => (*refused).into_response(),
    }
}

fn admit(
    app: &AdminState,
    request: &axum::extract::Request,
    needs_token: bool,
) -> Result<(), Box<Problem>> {
    app.guard.check(request.headers())?;
    match &app.token {
        Some(token)
            if needs_token && !token.admits(request.headers().get(header::AUTHORIZATION)) =>
        {
            Err(Box::new(
                Problem::new(StatusCode::UNAUTHORIZED)
                    .with_detail("the admin API needs `Authorization: Bearer <token>`")
                    .with_header(
                        header::WWW_AUTHENTICATE,
                        axum::http::HeaderValue::from_static("Bearer"),
                    ),
            ))
        }
        _ => Ok(()),
    }
}

/// `GET /metrics`: Prometheus text format. Live gauges are read now, so they never drift.
async fn metrics(State(app): State<Arc<AdminState>>) -> Result<Response, AdminError> {
    let metrics = &app.metrics;
    for (name, handler) in app.live.current().handlers() {
        let labels = [name.as_str()];
        metrics
            .pending
            .with_label_values(&labels)
            .set(i64::try_from(handler.slot.queue.pending()).unwrap_or(i64::MAX));
        metrics
            .in_flight
            .with_label_values(&labels)
            .set(i64::try_from(handler.slot.in_flight()).unwrap_or(i64::MAX));
        metrics.dead_letters.with_label_values(&labels).set(0);
    }
    for (handler, count) in app.store.dead_counts().await? {
        metrics
            .dead_letters
            .with_label_values(&[handler.as_str()])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    app.store.refresh_size_metrics().await?;
    let cache = app.runtime.cache_stats();
    metrics
        .compile_cache
        .with_label_values(&["hit"])
        .set(i64::try_from(cache.hits).unwrap_or(i64::MAX));
    metrics
        .compile_cache
        .with_label_values(&["miss"])
        .set(i64::try_from(cache.misses).unwrap_or(i64::MAX));
    let text = metrics
        .render()
        .map_err(|err| AdminError::Internal(format!("failed to render metrics: {err:#}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
