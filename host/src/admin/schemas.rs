//! `/admin/schemas` and `/admin/upcasters`: the schema registry. Changes are the deployer's
//! ([`crate::deploy::SchemaChange`]), under the same one-at-a-time rule and the same gate as
//! deploys; reads are the live registry's.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{AdminError, AdminState};
use crate::api::{
    FamilyView, SchemaChangeAnswer, SchemaList, SchemaView, UpcasterList, UpcasterView, rfc3339,
};
use crate::deploy::{Module, SchemaChange, SchemaChangeError};
use crate::schemas::{BookError, Compatibility, Outcome, Registry, VersionedType};
use crate::store::Origin;

impl From<SchemaChangeError> for AdminError {
    fn from(err: SchemaChangeError) -> Self {
        AdminError::Schema(err)
    }
}

/// The problem a refused registry change answers with.
pub(super) fn schema_problem(err: SchemaChangeError) -> Response {
    use crate::ingress::problem::Problem;
    let detail = err.to_string();
    match err {
        SchemaChangeError::Store(err) => AdminError::Store(err).into_response(),
        SchemaChangeError::Book(BookError::Invalid(_)) => Problem::new(StatusCode::BAD_REQUEST)
            .with_detail(detail)
            .into_response(),
        SchemaChangeError::Book(BookError::NotFound(_)) => {
            Problem::not_found(detail).into_response()
        }
        SchemaChangeError::Book(BookError::Conflict(_)) => Problem::new(StatusCode::CONFLICT)
            .with_detail(detail)
            .into_response(),
        SchemaChangeError::Book(BookError::Incompatible { mode, changes, .. }) => {
            Problem::new(StatusCode::CONFLICT)
                .with_detail(detail)
                .with_member("compatibility", mode.as_str())
                .with_member(
                    "breaking_changes",
                    serde_json::to_value(&changes).unwrap_or_default(),
                )
                .into_response()
        }
        SchemaChangeError::Module(problems) => Problem::new(StatusCode::BAD_REQUEST)
            .with_detail(detail)
            .with_member("problems", problems)
            .into_response(),
        SchemaChangeError::Gate(problems) => Problem::new(StatusCode::CONFLICT)
            .with_detail(detail)
            .with_member("problems", problems)
            .into_response(),
    }
}

fn outcome(outcome: Outcome) -> (StatusCode, &'static str) {
    match outcome {
        Outcome::Created => (StatusCode::CREATED, "created"),
        Outcome::Unchanged => (StatusCode::OK, "unchanged"),
        Outcome::Replaced => (StatusCode::OK, "replaced"),
        Outcome::Removed => (StatusCode::OK, "removed"),
    }
}

/// `GET /admin/schemas`.
pub(super) async fn list(State(app): State<Arc<AdminState>>) -> Json<SchemaList> {
    let registry = app.live.registry();
    let families = registry
        .families()
        .into_iter()
        .map(|(family, versions)| FamilyView {
            compatibility: registry.mode(&family).to_string(),
            versions: versions
                .into_iter()
                .filter_map(|version| {
                    schema_view(&registry, &VersionedType::new(family.clone(), version))
                })
                .collect(),
            family,
        })
        .collect();
    let policy = registry.policy();
    Json(SchemaList {
        require: policy.require,
        default_compatibility: policy.compatibility.to_string(),
        families,
    })
}

fn schema_view(registry: &Registry, ty: &VersionedType) -> Option<SchemaView> {
    let name = ty.to_string();
    let record = registry.schema(&name)?;
    let previous = ty.version().checked_sub(1).map(|v| ty.at(v).to_string());
    let upcaster = previous
        .as_deref()
        .and_then(|from| upcaster_view(registry, from));
    Some(SchemaView {
        url: registry.schema_url(&name),
        version: ty.version(),
        sha256: record.sha256.clone(),
        registered_at: rfc3339(record.registered_at_ms),
        origin: record.origin,
        from_previous: previous
            .and_then(|from| registry.step_kind(&from))
            .map(str::to_owned),
        upcaster,
        ty: name,
    })
}

fn upcaster_view(registry: &Registry, from: &str) -> Option<UpcasterView> {
    let record = registry.book().upcasters.get(from)?;
    Some(UpcasterView {
        from: from.to_owned(),
        to: record.to.clone(),
        module_sha256: record.module_sha256.clone(),
        registered_at: rfc3339(record.registered_at_ms),
        origin: record.origin,
    })
}

/// `GET /admin/schemas/{type}`: the schema itself, as registered (what `dataschema` points
/// at), `application/schema+json`.
pub(super) async fn get(
    State(app): State<Arc<AdminState>>,
    Path(ty): Path<String>,
) -> Result<Response, AdminError> {
    let registry = app.live.registry();
    let record = registry
        .schema(&ty)
        .ok_or_else(|| AdminError::NotFound(format!("no schema is registered for `{ty}`")))?;
    let mut response = Json(record.schema.clone()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/schema+json"),
    );
    if let Ok(etag) = header::HeaderValue::from_str(&format!("\"{}\"", record.sha256)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutParams {
    compatibility: Option<String>,
}

fn compatibility(text: &str) -> Result<Compatibility, AdminError> {
    text.parse().map_err(|why| AdminError::BadParameter {
        parameter: "compatibility",
        detail: format!("compatibility: {why}"),
    })
}

/// `PUT /admin/schemas/{type}[?compatibility=MODE]`: register a schema. The body is the
/// schema (`application/json` or `application/schema+json`), or multipart with the parts
/// `schema`, `upcaster` (a component upcasting the previous version into this one) and
/// `compatibility`. 201 when registered, 200 when it was already (`unchanged`); 400 for a
/// schema that is not one, 409 for a change to a registered schema, an incompatible one
/// (each breaking change under `breaking_changes`) or one the deploy gate refuses.
pub(super) async fn put(
    State(app): State<Arc<AdminState>>,
    Path(ty): Path<String>,
    params: Result<Query<PutParams>, QueryRejection>,
    request: Request,
) -> Result<Response, AdminError> {
    let params = params
        .map_err(|rejection| AdminError::BadRequest(rejection.body_text()))?
        .0;
    let mut mode = params
        .compatibility
        .as_deref()
        .map(compatibility)
        .transpose()?;
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (schema, upcaster) = match is_multipart {
        true => {
            let mut multipart =
                Multipart::from_request(request, &())
                    .await
                    .map_err(|rejection| {
                        AdminError::BadRequest(format!(
                            "unreadable multipart body: {}",
                            rejection.body_text()
                        ))
                    })?;
            let known = ["schema", "upcaster", "compatibility"];
            let mut parts = super::read_parts(&mut multipart, &known).await?;
            if let Some(text) = parts.remove("compatibility") {
                mode = Some(compatibility(String::from_utf8_lossy(&text).trim())?);
            }
            let schema = parts.remove("schema").ok_or_else(|| {
                AdminError::BadRequest("the `schema` part (the JSON Schema) is missing".to_owned())
            })?;
            (schema, parts.remove("upcaster"))
        }
        false => {
            check_json_body(request.headers())?;
            let body = Bytes::from_request(request, &())
                .await
                .map_err(|rejection| AdminError::BadRequest(rejection.body_text()))?;
            (body, None)
        }
    };
    let schema: Value = serde_json::from_slice(&schema)
        .map_err(|err| AdminError::BadRequest(format!("the schema is not JSON: {err}")))?;
    let upcaster = upcaster.map(|bytes| Module::new(bytes.to_vec(), "the uploaded upcaster"));
    let change = SchemaChange::Register {
        ty: ty.clone(),
        schema,
        compatibility: mode,
        upcaster,
    };
    let done = app.deployer.change_schemas(vec![change], Origin::Api).await;
    let outcomes = match done {
        Ok(outcomes) => outcomes,
        Err(err) => return Ok(schema_problem(err)),
    };
    let registry = app.live.registry();
    let record = registry.schema(&ty);
    let (status, said) = outcome(outcomes.first().copied().unwrap_or(Outcome::Unchanged));
    tracing::info!(schema = ty, outcome = said, "schema registered");
    let answer = SchemaChangeAnswer {
        sha256: record.map(|r| r.sha256.clone()),
        url: record.map(|_| registry.schema_url(&ty)),
        ty,
        outcome: said.to_owned(),
    };
    Ok((status, Json(answer)).into_response())
}

/// A schema is JSON: a body of another media type is a mistake worth naming.
fn check_json_body(headers: &HeaderMap) -> Result<(), AdminError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    match crate::event::is_json_media_type(media) {
        true => Ok(()),
        false => Err(AdminError::BadRequest(format!(
            "expected the schema as `application/json` (or `application/schema+json`), or \
             multipart/form-data with a `schema` part; got `{media}`"
        ))),
    }
}

/// `DELETE /admin/schemas/{type}`: unregister a family's latest version (and the upcaster
/// into it), unless the gate refuses.
pub(super) async fn remove(
    State(app): State<Arc<AdminState>>,
    Path(ty): Path<String>,
) -> Result<Response, AdminError> {
    let change = SchemaChange::Remove { ty: ty.clone() };
    answer_change(&app, change, ty).await
}

/// `GET /admin/upcasters`.
pub(super) async fn upcasters(State(app): State<Arc<AdminState>>) -> Json<UpcasterList> {
    let registry = app.live.registry();
    let upcasters = registry
        .book()
        .upcasters
        .keys()
        .filter_map(|from| upcaster_view(&registry, from))
        .collect();
    Json(UpcasterList { upcasters })
}

/// `PUT /admin/upcasters/{from}`: register or replace the upcaster from `from` into the next
/// version (whose schema must be registered); the body is the component.
pub(super) async fn put_upcaster(
    State(app): State<Arc<AdminState>>,
    Path(from): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    if body.is_empty() {
        return Err(AdminError::BadRequest(
            "the body (the upcaster component's bytes) is empty".to_owned(),
        ));
    }
    let module = Module::new(body.to_vec(), "the uploaded upcaster");
    let change = SchemaChange::PutUpcaster {
        from: from.clone(),
        module,
    };
    answer_change(&app, change, from).await
}

/// `DELETE /admin/upcasters/{from}`, unless the gate refuses.
pub(super) async fn remove_upcaster(
    State(app): State<Arc<AdminState>>,
    Path(from): Path<String>,
) -> Result<Response, AdminError> {
    let change = SchemaChange::RemoveUpcaster { from: from.clone() };
    answer_change(&app, change, from).await
}

async fn answer_change(
    app: &AdminState,
    change: SchemaChange,
    ty: String,
) -> Result<Response, AdminError> {
    let outcomes = match app.deployer.change_schemas(vec![change], Origin::Api).await {
        Ok(outcomes) => outcomes,
        Err(err) => return Ok(schema_problem(err)),
    };
    let (status, said) = outcome(outcomes.first().copied().unwrap_or(Outcome::Unchanged));
    tracing::info!(of = ty, outcome = said, "schema registry changed");
    let answer = SchemaChangeAnswer {
        ty,
        outcome: said.to_owned(),
        sha256: None,
        url: None,
    };
    Ok((status, Json(answer)).into_response())
}
