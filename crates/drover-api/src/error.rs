//! Error responses, and the per-request context they read their request id from.
//!
//! Every error the API sends is an [`ErrorBody`]: a stable code, the request id and, where it
//! helps the client, a short fixed message or the schema violations. Internal errors carry
//! their cause only to the log (`tracing::error!` with the same `request_id`); in
//! production mode (the default) the body never holds an error text, a path, SQL or a trace.
//! Development mode (`--development` and `mode = "development"`) adds the cause as `detail`.

use parking_lot::Mutex;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use drover_proto::Violation;
use drover_proto::api::{ApiErrorCode, ErrorBody};
use drover_proto::config::ApiMode;

tokio::task_local! {
    /// The context of the request being served; set by the outermost middleware.
    static CONTEXT: Arc<RequestContext>;
}

/// What the outermost middleware knows about a request, readable from anywhere in its task.
#[derive(Debug)]
pub struct RequestContext {
    /// The request id, also sent as `x-request-id`.
    pub request_id: String,
    /// How much error bodies may say.
    pub mode: ApiMode,
    /// The authenticated token's name, once the auth extractor ran.
    pub actor: Mutex<Option<Arc<str>>>,
    /// Why authentication failed, if it did.
    pub rejection: Mutex<Option<crate::token::Rejection>>,
}

impl RequestContext {
    /// Runs `f` inside the scope of `context`.
    pub(crate) async fn scope<F: Future>(context: Arc<RequestContext>, f: F) -> F::Output {
        CONTEXT.scope(context, f).await
    }

    /// The current request's context, if called inside one.
    pub fn current() -> Option<Arc<RequestContext>> {
        CONTEXT.try_with(Arc::clone).ok()
    }

    /// The current request id, or `-` outside a request.
    pub fn current_id() -> String {
        CONTEXT.try_with(|c| c.request_id.clone()).unwrap_or_else(|_| "-".to_owned())
    }

    pub(crate) fn set_actor(&self, actor: Arc<str>) {
        *self.actor.lock() = Some(actor);
    }

    pub(crate) fn set_rejection(&self, rejection: crate::token::Rejection) {
        *self.rejection.lock() = Some(rejection);
    }

    pub(crate) fn rejection(&self) -> Option<crate::token::Rejection> {
        *self.rejection.lock()
    }

    pub(crate) fn actor(&self) -> Option<Arc<str>> {
        self.actor.lock().clone()
    }
}

/// An error response. Build it with the constructors; the cause of an internal error goes to
/// the log, never to the client (outside development mode).
#[derive(Debug)]
pub struct ApiError {
    code: ApiErrorCode,
    message: Option<&'static str>,
    violations: Vec<Violation>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with a code and no more.
    pub fn new(code: ApiErrorCode) -> Self {
        Self { code, message: None, violations: Vec::new(), cause: None, retry_after_s: None }
    }

    /// Adds a short, fixed explanation (never built from input or from another error).
    pub fn with_message(mut self, message: &'static str) -> Self {
        self.message = Some(message);
        self
    }

    /// `400 invalid_request` with violations.
    pub fn invalid(violations: Vec<Violation>) -> Self {
        Self { violations, ..Self::new(ApiErrorCode::InvalidRequest) }
    }

    /// `400 invalid_request` with one violation.
    pub fn violation(instance_path: &str, schema_path: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![Violation {
            instance_path: instance_path.to_owned(),
            schema_path: schema_path.to_owned(),
            message: message.into(),
        }])
    }

    /// `500 internal`, with the cause for the log.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self { cause: Some(cause.into()), ..Self::new(ApiErrorCode::Internal) }
    }

    /// `429 rate_limited` with `Retry-After`.
    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self { retry_after_s: Some(retry_after_s.max(1)), ..Self::new(ApiErrorCode::RateLimited) }
    }

    /// Adds `Retry-After: seconds` (at least 1) to the response.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    /// The code.
    pub fn code(&self) -> ApiErrorCode {
        self.code
    }
}

/// The chain of an error's messages, `a: b: c`, for the log.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}

/// Serializes an error body with its status and headers.
pub(crate) fn error_response(code: ApiErrorCode, body: &ErrorBody) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // Serializing a struct of strings and vectors of strings cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec());
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if code == ApiErrorCode::Unauthorized {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"drover\", error=\"invalid_token\""),
        );
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let context = RequestContext::current();
        let request_id = context.as_ref().map_or_else(|| "-".to_owned(), |c| c.request_id.clone());
        let development = context.as_ref().is_some_and(|c| c.mode == ApiMode::Development);
        let detail = match &self.cause {
            Some(cause) => {
                let text = chain(cause.as_ref());
                tracing::error!(request_id = %request_id, error = %text, "internal error");
                development.then_some(text)
            }
            None => None,
        };
        let body = ErrorBody {
            error: self.code,
            request_id,
            message: self.message.map(str::to_owned),
            violations: self.violations,
            detail,
        };
        let mut response = error_response(self.code, &body);
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<crate::backend::BackendError> for ApiError {
    fn from(error: crate::backend::BackendError) -> Self {
        use crate::backend::BackendError as B;
        match error {
            B::NotFound => Self::new(ApiErrorCode::NotFound).with_message("no such job"),
            B::Conflict(what) => Self::new(ApiErrorCode::Conflict).with_message(what),
            B::IdempotencyConflict => Self::new(ApiErrorCode::Conflict)
                .with_message("the Idempotency-Key was already used for a different request"),
            B::Unavailable(what) => Self::new(ApiErrorCode::Unavailable).with_message(what),
            B::StorageLow { .. } => Self::new(ApiErrorCode::StorageLow)
                .with_message(
                    "free space on the store's volume is below store.min_free_bytes; \
                     new jobs are refused until space returns",
                )
                .with_retry_after(30),
            B::Internal(cause) => Self::internal(cause),
        }
    }
}
