//! Error answers as RFC 9457 problem details (`application/problem+json`).
//!
//! Every HTTP error the host sends goes through [`Problem`], so a client sees one shape
//! whatever failed: `type`, `title`, `status`, `detail`, plus members of our own. Ingress
//! failures are an [`IngressError`], which the ingress handler can match on (to count them
//! per kind, say) before turning it into a response; its problem names the offending
//! CloudEvents attribute in an `attribute` member, and batch failures add the `index` of the
//! event at fault.
//!
//! Client errors are answered and not logged as errors; [`Problem::internal`] has a generic
//! body on purpose, so that nothing about the host's insides leaks to a client (the caller
//! logs the cause once).

use std::borrow::Cow;
use std::time::Duration;

use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

/// The media type of every error body (RFC 9457, section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where our problem type URIs start. A `tag:` URI (RFC 4151) rather than an `https:` one:
/// RFC 9457 allows type URIs that are never dereferenced, and evhost runs on laptops with no
/// documentation site to point at, so a locator would only promise a page that is not there.
pub const PROBLEM_TYPE_PREFIX: &str = "tag:evhost,2026:problem:";

/// The members RFC 9457 defines; [`Problem::with_member`] may not replace them.
const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

/// One problem details answer: a status, the standard members, members of our own, and
/// response headers (`Allow`, `Retry-After`...).
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    problem_type: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Option<String>,
    members: Map<String, Value>,
    headers: HeaderMap,
}

impl Problem {
    /// A problem with no more meaning than its status: type `about:blank` and, as RFC 9457
    /// asks for that type, the status's reason phrase as the title.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            problem_type: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Unknown Status")),
            detail: None,
            members: Map::new(),
            headers: HeaderMap::new(),
        }
    }

    /// Sets the problem type, with its title: the title belongs to the type (the same for
    /// every occurrence), so they are set together.
    pub fn with_type(
        mut self,
        problem_type: impl Into<Cow<'static, str>>,
        title: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.problem_type = problem_type.into();
        self.title = title.into();
        self
    }

    /// Sets the explanation of this occurrence (lowercase, no trailing period, names in
    /// backticks).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a member of our own, e.g. `attribute` or `index`. The standard members
    /// (`type`, `title`, `status`, `detail`, `instance`) are set by their own methods and
    /// ignored here, so that a body never carries one twice.
    pub fn with_member(mut self, name: &str, value: impl Into<Value>) -> Self {
        if !STANDARD_MEMBERS.contains(&name) {
            self.members.insert(name.to_owned(), value.into());
        }
        self
    }

    /// Names the CloudEvents attribute at fault.
    pub fn with_attribute(self, attribute: impl Into<String>) -> Self {
        self.with_member("attribute", attribute.into())
    }

    /// Adds a response header. `Content-Type` is always `application/problem+json`.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        if name != header::CONTENT_TYPE {
            self.headers.append(name, value);
        }
        self
    }

    /// 404: nothing at this path, or no such resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND).with_detail(detail)
    }

    /// 405, with the `Allow` header RFC 9110 requires on it.
    pub fn method_not_allowed(method: &Method, allow: &[Method]) -> Self {
        let allow = allow
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let problem = Self::new(StatusCode::METHOD_NOT_ALLOWED).with_detail(format!(
            "method `{method}` is not allowed here, use `{allow}`"
        ));
        match HeaderValue::from_str(&allow) {
            Ok(value) => problem.with_header(header::ALLOW, value),
            // Only an extension method with bytes no header may carry gets here; the answer
            // is still a 405, just without the list.
            Err(_) => problem,
        }
    }

    /// 429: a queue is full. `Retry-After` is in whole seconds, rounded up, so that a client
    /// that honours it never comes back early.
    pub fn too_many_requests(retry_after: Duration, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS)
            .with_detail(detail)
            .with_retry_after(retry_after)
    }

    /// 503: shutting down or not ready; `Retry-After` when the wait is known.
    pub fn service_unavailable(retry_after: Option<Duration>, detail: impl Into<String>) -> Self {
        let problem = Self::new(StatusCode::SERVICE_UNAVAILABLE).with_detail(detail);
        match retry_after {
            Some(after) => problem.with_retry_after(after),
            None => problem,
        }
    }

    /// 500 with a generic body: the cause is for the log, not for the client.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR)
            .with_detail("the host failed to handle the request, see its log")
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The JSON body, as it is sent.
    pub fn body(&self) -> Value {
        serde_json::to_value(self.wire()).unwrap_or_else(|_| self.fallback_body())
    }

    pub fn with_retry_after(self, after: Duration) -> Self {
        let mut seconds = after.as_secs();
        if after.subsec_nanos() > 0 || seconds == 0 {
            seconds = seconds.saturating_add(1);
        }
        self.with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            problem_type: &self.problem_type,
            title: &self.title,
            status: self.status.as_u16(),
            detail: self.detail.as_deref(),
            members: &self.members,
        }
    }

    /// What is sent if the members cannot be serialised, which a `Map` of `Value`s never
    /// fails to do; it keeps the answer a valid problem without a panic path.
    fn fallback_body(&self) -> Value {
        serde_json::json!({
            "type": self.problem_type,
            "title": self.title,
            "status": self.status.as_u16(),
        })
    }
}

/// The body in the member order of RFC 9457, which reads better than sorted keys.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    problem_type: &'a str,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(flatten)]
    members: &'a Map<String, Value>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = match serde_json::to_vec(&self.wire()) {
            Ok(body) => body,
            Err(_) => self.fallback_body().to_string().into_bytes(),
        };
        let mut headers = self.headers;
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        (self.status, headers, body).into_response()
    }
}

/// Why a request could not be turned into events. Everything here is the client's doing
/// (400, 413, 415); the host's own failures are [`Problem::internal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    /// A REQUIRED attribute (`specversion`, `id`, `source`, `type`) is absent or null.
    #[error("missing required attribute `{attribute}`")]
    MissingAttribute { attribute: &'static str },
    /// An attribute is present but breaks a CloudEvents rule.
    #[error("invalid attribute `{attribute}`: {reason}")]
    InvalidAttribute { attribute: String, reason: String },
    /// The body of a structured or batch request is not JSON.
    #[error("the body is not valid JSON: {reason}")]
    InvalidJson { reason: String },
    /// The body is JSON, but not the kind of value the mode needs.
    #[error("expected {expected}, found {found}")]
    UnexpectedJson {
        expected: &'static str,
        found: &'static str,
    },
    /// `application/cloudevents+FORMAT` (or the batch form) with a format we do not read.
    #[error(
        "unsupported event format `{media_type}`, use `application/cloudevents+json`, \
         `application/cloudevents-batch+json` or binary mode"
    )]
    UnsupportedFormat { media_type: String },
    /// The body is over the limit; raised by the caller, which reads the body.
    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body did not arrive in full in time.
    #[error("the body did not arrive within {after:?}")]
    BodyTimeout { after: Duration },
    /// The body could not be read to its end, e.g. the client went away.
    #[error("the body could not be read to its end")]
    UnreadableBody,
    /// A header that is not a CloudEvents attribute is unusable, e.g. two `Content-Type`s.
    #[error("invalid header `{header}`: {reason}")]
    InvalidHeader { header: String, reason: String },
    /// A header the request needs is absent, e.g. `WebHook-Request-Origin`.
    #[error("missing header `{header}`")]
    MissingHeader { header: &'static str },
    /// A batch holds more events than `[ingress] max_batch`.
    #[error("the batch holds {count} events, over the limit of {limit} (`[ingress] max_batch`)")]
    TooManyEvents { count: usize, limit: usize },
    /// The `source` is in the namespace of the host's own handlers (`/{app}/...`): only they
    /// emit from it.
    #[error(
        "invalid attribute `source`: `{given}` is the host's own (its handlers emit as \
         `{namespace}/<handler>`): producers must use another source"
    )]
    ReservedSource { given: String, namespace: String },
    /// `[ingress] accept` does not list the type.
    #[error("producers may not send `{ty}`: the app's `[ingress] accept` list does not name it")]
    NotAccepted { ty: String },
    /// No handler subscribes to the type, and `[ingress] unrouted = "refuse"`.
    #[error("no handler subscribes to `{ty}` (and `[ingress] unrouted` is \"refuse\")")]
    Unrouted { ty: String },
    /// The event's `data` does not match its type's registered schema.
    #[error(
        "`data` does not match the schema of `{ty}`: {}",
        crate::schemas::validate::describe(.violations)
    )]
    SchemaMismatch {
        ty: String,
        /// The schema's URL on the host.
        schema: String,
        violations: Vec<crate::schemas::validate::Violation>,
    },
    /// The type has no schema, and the app requires one.
    #[error("{reason}")]
    NoSchema { ty: String, reason: String },
    /// One event of a batch is invalid, so the whole batch is refused.
    #[error("event at index {index}: {inner}")]
    Batch {
        index: usize,
        inner: Box<IngressError>,
    },
}

impl IngressError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedFormat { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } | Self::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::ReservedSource { .. } | Self::NotAccepted { .. } => StatusCode::FORBIDDEN,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Unrouted { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Batch { inner, .. } => inner.status(),
            Self::MissingAttribute { .. }
            | Self::InvalidAttribute { .. }
            | Self::InvalidJson { .. }
            | Self::UnexpectedJson { .. }
            | Self::UnreadableBody
            | Self::InvalidHeader { .. }
            | Self::MissingHeader { .. }
            | Self::SchemaMismatch { .. }
            | Self::NoSchema { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The offending attribute, as the problem names it: `source`, or `[2].source` for the
    /// third event of a batch.
    pub fn attribute(&self) -> Option<String> {
        match self {
            Self::MissingAttribute { attribute } => Some((*attribute).to_owned()),
            Self::InvalidAttribute { attribute, .. } => Some(attribute.clone()),
            Self::ReservedSource { .. } => Some("source".to_owned()),
            Self::NotAccepted { .. } | Self::Unrouted { .. } | Self::NoSchema { .. } => {
                Some("type".to_owned())
            }
            Self::SchemaMismatch { .. } => Some("data".to_owned()),
            Self::Batch { index, inner } => inner
                .attribute()
                .map(|attribute| format!("[{index}].{attribute}")),
            _ => None,
        }
    }

    /// The index of the event at fault in a batch.
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::Batch { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The error for a body that could not be read to its end with `axum::body::to_bytes`
    /// under `limit`: over the limit is 413, anything else a body that could not be read.
    pub fn from_body_error(error: &axum::Error, limit: usize) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(error) = cause {
            if error.is::<http_body_util::LengthLimitError>() {
                return Self::PayloadTooLarge { limit };
            }
            cause = error.source();
        }
        Self::UnreadableBody
    }

    /// Wraps an error about one event of a batch.
    pub(crate) fn at_index(self, index: usize) -> Self {
        Self::Batch {
            index,
            inner: Box::new(self),
        }
    }

    pub fn to_problem(&self) -> Problem {
        let (slug, title) = self.kind();
        let mut problem = Problem::new(self.status())
            .with_type(format!("{PROBLEM_TYPE_PREFIX}{slug}"), title)
            .with_detail(self.to_string());
        if let Some(attribute) = self.attribute() {
            problem = problem.with_attribute(attribute);
        }
        if let Some(index) = self.index() {
            problem = problem.with_member("index", index);
        }
        match self.innermost() {
            Self::InvalidHeader { header, .. } => problem.with_member("header", header.clone()),
            Self::TooManyEvents { limit, .. } => problem.with_member("limit", *limit),
            Self::MissingHeader { header } => problem.with_member("header", *header),
            Self::SchemaMismatch {
                schema, violations, ..
            } => problem.with_member("schema", schema.clone()).with_member(
                "violations",
                serde_json::to_value(violations).unwrap_or_default(),
            ),
            // RFC 9110 (section 12.5.1): `Accept` on a response says what a request's
            // content may be.
            Self::UnsupportedFormat { .. } => problem.with_header(
                header::ACCEPT,
                HeaderValue::from_static(
                    "application/cloudevents+json, application/cloudevents-batch+json",
                ),
            ),
            _ => problem,
        }
    }

    fn innermost(&self) -> &Self {
        match self {
            Self::Batch { inner, .. } => inner.innermost(),
            other => other,
        }
    }

    /// The problem type (after [`PROBLEM_TYPE_PREFIX`]) and its title. A batch error has the
    /// type of its cause: what went wrong is the same, only where differs.
    fn kind(&self) -> (&'static str, &'static str) {
        match self.innermost() {
            Self::MissingAttribute { .. } => ("missing-attribute", "missing CloudEvents attribute"),
            Self::InvalidAttribute { .. } => ("invalid-attribute", "invalid CloudEvents attribute"),
            Self::InvalidJson { .. } => ("invalid-json", "invalid JSON"),
            Self::UnexpectedJson { .. } => ("unexpected-json", "unexpected JSON value"),
            Self::UnsupportedFormat { .. } => {
                ("unsupported-format", "unsupported CloudEvents format")
            }
            Self::PayloadTooLarge { .. } => ("payload-too-large", "request body too large"),
            Self::TooManyEvents { .. } => ("too-many-events", "batch too large"),
            Self::ReservedSource { .. } => ("reserved-source", "source reserved for the host"),
            Self::NotAccepted { .. } => ("type-not-accepted", "event type not accepted"),
            Self::Unrouted { .. } => ("unrouted-type", "no handler for the event type"),
            Self::UnreadableBody => ("unreadable-body", "unreadable request body"),
            Self::BodyTimeout { .. } => ("body-timeout", "request body too slow"),
            Self::InvalidHeader { .. } => ("invalid-header", "invalid header"),
            Self::MissingHeader { .. } => ("missing-header", "missing header"),
            Self::SchemaMismatch { .. } => ("schema-mismatch", "data does not match its schema"),
            Self::NoSchema { .. } => ("no-schema", "event type has no schema"),
            Self::Batch { .. } => ("invalid-batch", "invalid batch"),
        }
    }
}

impl From<crate::event::EventError> for IngressError {
    fn from(error: crate::event::EventError) -> Self {
        match error {
            crate::event::EventError::Missing { attribute } => Self::MissingAttribute { attribute },
            crate::event::EventError::Invalid { attribute, reason } => {
                Self::InvalidAttribute { attribute, reason }
            }
        }
    }
}

impl From<IngressError> for Problem {
    fn from(error: IngressError) -> Self {
        error.to_problem()
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        self.to_problem().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(response: impl IntoResponse) -> (StatusCode, HeaderMap, Value) {
        let response = response.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("an in-memory body");
        let body = serde_json::from_slice(&bytes).expect("a JSON body");
        (status, headers, body)
    }

    #[tokio::test]
    async fn an_invalid_attribute_names_it() {
        let error = IngressError::InvalidAttribute {
            attribute: "source".into(),
            reason: "not a URI-reference".into(),
        };
        let (status, headers, body) = answer(error).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(
            body,
            serde_json::json!({
                "type": "tag:evhost,2026:problem:invalid-attribute",
                "title": "invalid CloudEvents attribute",
                "status": 400,
                "detail": "invalid attribute `source`: not a URI-reference",
                "attribute": "source",
            })
        );
    }

    #[tokio::test]
    async fn a_batch_error_carries_the_index_and_the_cause_type() {
        let error = IngressError::MissingAttribute {
            attribute: "source",
        }
        .at_index(2);
        assert_eq!(error.attribute().as_deref(), Some("[2].source"));
        let (status, _, body) = answer(error).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["type"], "tag:evhost,2026:problem:missing-attribute");
        assert_eq!(body["attribute"], "[2].source");
        assert_eq!(body["index"], 2);
        assert_eq!(
            body["detail"],
            "event at index 2: missing required attribute `source`"
        );
    }

    #[tokio::test]
    async fn unsupported_format_is_415_and_says_what_is_accepted() {
        let error = IngressError::UnsupportedFormat {
            media_type: "application/cloudevents+xml".into(),
        };
        let (status, headers, body) = answer(error).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(
            headers[header::ACCEPT]
                .to_str()
                .is_ok_and(|accept| accept.contains("application/cloudevents+json"))
        );
        assert!(body.get("attribute").is_none());
    }

    #[tokio::test]
    async fn payload_too_large_is_413() {
        let (status, _, body) = answer(IngressError::PayloadTooLarge { limit: 65536 }).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            body["detail"],
            "the body is larger than the limit of 65536 bytes"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413() {
        const LIMIT: usize = 4;
        let over = axum::body::to_bytes(axum::body::Body::from("12345"), LIMIT)
            .await
            .expect_err("over the limit");
        let (status, _, body) = answer(IngressError::from_body_error(&over, LIMIT)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["type"], "tag:evhost,2026:problem:payload-too-large");
        assert_eq!(
            body["detail"],
            "the body is larger than the limit of 4 bytes"
        );
    }

    #[tokio::test]
    async fn method_not_allowed_lists_the_allowed_methods() {
        let problem = Problem::method_not_allowed(&Method::PUT, &[Method::POST, Method::OPTIONS]);
        let (status, headers, body) = answer(problem).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "POST, OPTIONS");
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Method Not Allowed");
        assert_eq!(
            body["detail"],
            "method `PUT` is not allowed here, use `POST, OPTIONS`"
        );
    }

    #[tokio::test]
    async fn retry_after_rounds_up_to_whole_seconds() {
        let problem = Problem::too_many_requests(
            Duration::from_millis(1500),
            "handler `inventory` has too many pending deliveries",
        );
        let (status, headers, _) = answer(problem).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "2");

        let problem = Problem::service_unavailable(Some(Duration::ZERO), "the host is stopping");
        assert_eq!(problem.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem.headers()[header::RETRY_AFTER], "1");
        assert!(
            Problem::service_unavailable(None, "not ready")
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
    }

    #[tokio::test]
    async fn standard_members_and_content_type_cannot_be_overridden() {
        let problem = Problem::not_found("no handler `x`")
            .with_member("status", 200)
            .with_member("handler", "x")
            .with_header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let (status, headers, body) = answer(problem).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(body["status"], 404);
        assert_eq!(body["handler"], "x");
    }

    #[test]
    fn internal_errors_have_a_generic_body() {
        let body = Problem::internal().body();
        assert_eq!(body["status"], 500);
        assert_eq!(body["title"], "Internal Server Error");
        assert_eq!(
            body["detail"],
            "the host failed to handle the request, see its log"
        );
    }
}
