//! A client of a running host: the admin API with the typed answers of [`crate::api`], and
//! ingress through the CloudEvents SDK. The `evhost` CLI is a thin shell over it; Rust code
//! (tests, tools) can use it the same way, handing it SDK events or ours.

use std::time::Duration;

use cloudevents::binding::reqwest::RequestSerializer;
use cloudevents::message::StructuredDeserializer;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::api::{
    CompactAnswer, DeadLetterPage, DeadLetterView, DeployAnswer, EventsPage, HandlerList,
    HandlerView, IngestAnswer, ProblemView, RedriveAnswer, RemoveAnswer, RollbackAnswer,
    SchemaChangeAnswer, SchemaList,
};

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The host answered with an error; `problem` is its body when it was problem+json.
    #[error("the host answered {status}: {}", detail(.problem.as_ref()))]
    Refused {
        status: StatusCode,
        problem: Option<ProblemView>,
    },
    /// The host answered 2xx with a body that is not what the API promises.
    #[error("unexpected answer from {url}: {reason}")]
    Unexpected { url: String, reason: String },
    #[error("the event cannot be sent: {0}")]
    Event(String),
}

fn detail(problem: Option<&ProblemView>) -> String {
    match problem {
        Some(problem) => {
            let mut detail = problem
                .detail
                .clone()
                .unwrap_or_else(|| "no detail".to_owned());
            // Several deploy problems: one per line after the summary.
            if let Some(problems) = problem.members.get("problems").and_then(|p| p.as_array())
                && problems.len() > 1
                && !detail.contains('\n')
            {
                for line in problems.iter().filter_map(|p| p.as_str()) {
                    detail.push_str("\n  ");
                    detail.push_str(line);
                }
            }
            detail
        }
        None => "no detail".to_owned(),
    }
}

impl ClientError {
    /// The HTTP status the host answered, for a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What to list from the event log.
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    pub ty: Option<String>,
    pub source: Option<String>,
    pub subject: Option<String>,
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLettersQuery {
    pub handler: Option<String>,
    pub ty: Option<String>,
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

/// A running host, at `base` (e.g. `http://127.0.0.1:8080`).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// How long one call may take; a deploy of a large module compiles it first.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

impl Client {
    pub fn new(base: impl Into<String>, token: Option<String>) -> Client {
        Client {
            base: base.into().trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, self.url(path))
            .timeout(CALL_TIMEOUT);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Send `request`; a 2xx answer is read as `T`, anything else is a [`ClientError`].
    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let (url, response) = self.exchange(request).await?;
        let text = response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        serde_json::from_str(&text).map_err(|err| ClientError::Unexpected {
            url,
            reason: err.to_string(),
        })
    }

    /// Send `request`; return the response when it is 2xx.
    async fn exchange(
        &self,
        request: RequestBuilder,
    ) -> Result<(String, reqwest::Response), ClientError> {
        let request = request
            .build()
            .map_err(|err| ClientError::Event(err.to_string()))?;
        let url = request.url().to_string();
        let response =
            self.http
                .execute(request)
                .await
                .map_err(|source| ClientError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
        let status = response.status();
        if status.is_success() {
            return Ok((url, response));
        }
        let problem = response.json::<ProblemView>().await.ok();
        Err(ClientError::Refused { status, problem })
    }

    /// `GET /admin/handlers`.
    pub async fn handlers(&self) -> Result<Vec<HandlerView>, ClientError> {
        let list: HandlerList = self
            .call(self.request(Method::GET, "/admin/handlers"))
            .await?;
        Ok(list.handlers)
    }

    /// `GET /admin/handlers/{name}`, with every version.
    pub async fn handler(&self, name: &str) -> Result<HandlerView, ClientError> {
        let path = format!("/admin/handlers/{name}");
        self.call(self.request(Method::GET, &path)).await
    }

    /// `PUT /admin/handlers/{name}`: deploy `module`, with `config` (the handler's settings
    /// as TOML) or, without it, the live version's settings.
    pub async fn deploy(
        &self,
        name: &str,
        module: Vec<u8>,
        config: Option<String>,
    ) -> Result<DeployAnswer, ClientError> {
        let mut form = reqwest::multipart::Form::new().part(
            "module",
            reqwest::multipart::Part::bytes(module).file_name("module.wasm"),
        );
        if let Some(config) = config {
            form = form.text("config", config);
        }
        let path = format!("/admin/handlers/{name}");
        self.call(self.request(Method::PUT, &path).multipart(form))
            .await
    }

    /// `GET /admin/schemas`.
    pub async fn schemas(&self) -> Result<SchemaList, ClientError> {
        self.call(self.request(Method::GET, "/admin/schemas")).await
    }

    /// `GET /admin/schemas/{type}`: the schema as registered.
    pub async fn schema(&self, ty: &str) -> Result<serde_json::Value, ClientError> {
        let path = format!("/admin/schemas/{ty}");
        self.call(self.request(Method::GET, &path)).await
    }

    /// `PUT /admin/schemas/{type}`: register `schema` (JSON text), with an upcaster from the
    /// previous version and the family's mode when given.
    pub async fn put_schema(
        &self,
        ty: &str,
        schema: Vec<u8>,
        upcaster: Option<Vec<u8>>,
        compatibility: Option<&str>,
    ) -> Result<SchemaChangeAnswer, ClientError> {
        let mut form = reqwest::multipart::Form::new().part(
            "schema",
            reqwest::multipart::Part::bytes(schema).file_name("schema.json"),
        );
        if let Some(upcaster) = upcaster {
            form = form.part(
                "upcaster",
                reqwest::multipart::Part::bytes(upcaster).file_name("upcaster.wasm"),
            );
        }
        if let Some(mode) = compatibility {
            form = form.text("compatibility", mode.to_owned());
        }
        let path = format!("/admin/schemas/{ty}");
        self.call(self.request(Method::PUT, &path).multipart(form))
            .await
    }

    /// `DELETE /admin/schemas/{type}`.
    pub async fn remove_schema(&self, ty: &str) -> Result<SchemaChangeAnswer, ClientError> {
        let path = format!("/admin/schemas/{ty}");
        self.call(self.request(Method::DELETE, &path)).await
    }

    /// `PUT /admin/upcasters/{from}`.
    pub async fn put_upcaster(
        &self,
        from: &str,
        module: Vec<u8>,
    ) -> Result<SchemaChangeAnswer, ClientError> {
        let path = format!("/admin/upcasters/{from}");
        let request = self
            .request(Method::PUT, &path)
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(module);
        self.call(request).await
    }

    /// `DELETE /admin/upcasters/{from}`.
    pub async fn remove_upcaster(&self, from: &str) -> Result<SchemaChangeAnswer, ClientError> {
        let path = format!("/admin/upcasters/{from}");
        self.call(self.request(Method::DELETE, &path)).await
    }

    /// `POST /admin/handlers/{name}/rollback`.
    pub async fn rollback(&self, name: &str) -> Result<RollbackAnswer, ClientError> {
        let path = format!("/admin/handlers/{name}/rollback");
        self.call(self.request(Method::POST, &path)).await
    }

    /// `DELETE /admin/handlers/{name}`.
    pub async fn remove(&self, name: &str) -> Result<RemoveAnswer, ClientError> {
        let path = format!("/admin/handlers/{name}");
        self.call(self.request(Method::DELETE, &path)).await
    }

    /// `GET /admin/events`: one page of the log.
    pub async fn events(&self, query: &EventsQuery) -> Result<EventsPage, ClientError> {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        let optional = [
            ("type", &query.ty),
            ("source", &query.source),
            ("subject", &query.subject),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                pairs.push((name, value.clone()));
            }
        }
        if let Some(after) = query.after {
            pairs.push(("after", after.to_string()));
        }
        if let Some(limit) = query.limit {
            pairs.push(("limit", limit.to_string()));
        }
        self.call(self.request(Method::GET, "/admin/events").query(&pairs))
            .await
    }

    /// `GET /admin/deadletters`: one page.
    pub async fn dead_letters(
        &self,
        query: &DeadLettersQuery,
    ) -> Result<DeadLetterPage, ClientError> {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(handler) = &query.handler {
            pairs.push(("handler", handler.clone()));
        }
        if let Some(ty) = &query.ty {
            pairs.push(("type", ty.clone()));
        }
        if let Some(after) = query.after {
            pairs.push(("after", after.to_string()));
        }
        if let Some(limit) = query.limit {
            pairs.push(("limit", limit.to_string()));
        }
        self.call(
            self.request(Method::GET, "/admin/deadletters")
                .query(&pairs),
        )
        .await
    }

    /// `GET /admin/deadletters/{id}`.
    pub async fn dead_letter(&self, id: i64) -> Result<DeadLetterView, ClientError> {
        let path = format!("/admin/deadletters/{id}");
        self.call(self.request(Method::GET, &path)).await
    }

    /// `POST /admin/deadletters/{id}/redrive`.
    pub async fn redrive(&self, id: i64) -> Result<RedriveAnswer, ClientError> {
        let path = format!("/admin/deadletters/{id}/redrive");
        self.call(self.request(Method::POST, &path)).await
    }

    /// `POST /admin/deadletters/redrive?handler=`: every dead letter of `handler`.
    pub async fn redrive_all(&self, handler: &str) -> Result<RedriveAnswer, ClientError> {
        let request = self
            .request(Method::POST, "/admin/deadletters/redrive")
            .query(&[("handler", handler)]);
        self.call(request).await
    }

    /// `DELETE /admin/deadletters/{id}`.
    pub async fn discard(&self, id: i64) -> Result<(), ClientError> {
        let path = format!("/admin/deadletters/{id}");
        self.exchange(self.request(Method::DELETE, &path))
            .await
            .map(drop)
    }

    /// `POST /admin/compact`: free pages back to the file system, the WAL emptied.
    pub async fn compact(&self) -> Result<CompactAnswer, ClientError> {
        self.call(self.request(Method::POST, "/admin/compact"))
            .await
    }

    /// `GET /admin/state/{handler}/{key}`: the stored bytes, `None` when the key is absent.
    pub async fn state(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let path = format!("/admin/state/{handler}/{key}");
        match self.exchange(self.request(Method::GET, &path)).await {
            Ok((url, response)) => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|source| ClientError::Unreachable { url, source })?;
                Ok(Some(bytes.to_vec()))
            }
            Err(ClientError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Post one event through the CloudEvents SDK's HTTP binding, in structured mode: it
    /// carries every attribute exactly, where the SDK's binary mode writes `ce-` headers
    /// without the percent-encoding the binding asks for (a `%` or a non-ASCII subject would
    /// not arrive as it was).
    pub async fn send(
        &self,
        event: impl TryInto<cloudevents::Event, Error: std::fmt::Display>,
    ) -> Result<IngestAnswer, ClientError> {
        let event = event
            .try_into()
            .map_err(|err| ClientError::Event(err.to_string()))?;
        let post = self.http.post(self.url("/events")).timeout(CALL_TIMEOUT);
        let request = event
            .deserialize_structured(RequestSerializer::new(post))
            .map_err(|err| ClientError::Event(err.to_string()))?;
        self.call(request).await
    }
}
