//! The handlers. Each takes its [`Authorized`] extractor first (401/429/403 before anything
//! else), then its validated input ([`ValidJson`], [`ValidQuery`], [`JobIdPath`]), so a
//! handler body only ever sees authenticated, schema-valid requests.
//!
//! Ownership: a job belongs to the token that submitted it (its configured name, stored as
//! the job's `submitted_by`). Reading, listing, following and cancelling see only the
//! caller's own jobs unless its token carries `jobs:admin`; another token's job is a 404,
//! the same answer as a job that does not exist.

use std::sync::{Arc, OnceLock};

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use drover_proto::api::{
    ApiErrorCode, DEFAULT_PAGE, EstimateRequest, Health, IDEMPOTENCY_KEY_LEN, Job, JobListQuery,
    JobSpec,
};
use drover_proto::config::Scope;
use drover_proto::{JobId, Violation};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::{AnyScope, Authorized, DriversRead, JobsRead, JobsWrite, MetricsRead, Principal};
use crate::backend::{JobQuery, SchemaLookupError, Submission};
use crate::body::{ValidJson, ValidQuery};
use crate::error::{ApiError, RequestContext};
use crate::state::ApiState;

pub use crate::openapi::IDEMPOTENCY_KEY;

type Shared = State<Arc<ApiState>>;

/// A JSON response with `status`.
pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// `GET /healthz`: no authentication; the process serves HTTP.
pub async fn healthz() -> Response {
    json(StatusCode::OK, &Health { status: "ok".to_owned() })
}

/// `GET /readyz`: 200 when the supervisor can take jobs, 503 otherwise. Without an
/// `Authorization` header (a Kubernetes probe) the body says only that, with no checks; with
/// a valid token it names each check (a bad token is 401, as everywhere).
pub async fn readyz(State(state): Shared, auth: Option<Authorized<AnyScope>>) -> Response {
    let mut readiness = state.backend.readiness().await;
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if auth.is_none() {
        readiness.checks.clear();
    }
    json(status, &readiness)
}

/// Checks a job's params against the schema its driver declared for its action.
fn check_params(state: &ApiState, spec: &JobSpec) -> Result<(), ApiError> {
    let schema = state.backend.params_schema(&spec.driver, &spec.action).map_err(|e| match e {
        SchemaLookupError::UnknownDriver => {
            ApiError::violation("/driver", "", "no driver of this name is registered")
        }
        SchemaLookupError::UnknownAction => {
            ApiError::violation("/action", "", "the driver declares no action of this name")
        }
        SchemaLookupError::NotReady => ApiError::new(ApiErrorCode::Unavailable)
            .with_message("the driver has not declared its actions yet"),
    })?;
    let checker = state.params.checker(&spec.driver, &spec.action, schema)?;
    let params = Value::Object(spec.params.clone());
    match checker.check(&params) {
        Ok(()) => Ok(()),
        Err(violations) => {
            let prefix = format!("/actions/{}", spec.action);
            Err(ApiError::invalid(
                violations
                    .list
                    .into_iter()
                    .map(|v| Violation {
                        instance_path: format!("/params{}", v.instance_path),
                        schema_path: format!("{prefix}{}", v.schema_path),
                        message: v.message,
                    })
                    .collect(),
            ))
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let valid = value.as_bytes();
    if valid.is_empty()
        || valid.len() > IDEMPOTENCY_KEY_LEN
        || !valid.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(ApiError::violation(
            "",
            "",
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(String::from_utf8_lossy(valid).into_owned()))
}

/// `POST /v1/jobs`: accepts a job; 201 once it is durable (200 when an `Idempotency-Key`
/// replays an earlier submission of the same body).
pub async fn submit(
    State(state): Shared,
    auth: Authorized<JobsWrite>,
    headers: HeaderMap,
    body: ValidJson<JobSpec>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let spec = body.value;
    if let Some(url) = &spec.webhook_url
        && !state.settings.allow_http_webhooks
        && !url.starts_with("https://")
    {
        return Err(ApiError::violation(
            "/webhook_url",
            "",
            "webhook URLs must be https:// (plain http is not allowed by this server)",
        ));
    }
    check_params(&state, &spec)?;
    let request_id = RequestContext::current_id();
    let digest = key.as_ref().map(|_| hex::encode(Sha256::digest(&body.raw)));
    let submission = Submission {
        spec,
        actor: auth.principal.name.to_string(),
        idempotency: key.zip(digest),
        request_id: request_id.clone(),
    };
    let outcome = state.backend.submit(submission).await;
    let (result, resource) = match &outcome {
        Ok(s) => (if s.replayed { "replayed" } else { "ok" }, format!("job:{}", s.job.id)),
        Err(_) => ("error", "job:-".to_owned()),
    };
    let mut metadata = Map::new();
    if let Ok(s) = &outcome {
        metadata.insert("driver".to_owned(), Value::from(s.job.spec.driver.as_str()));
        metadata.insert("action".to_owned(), Value::from(s.job.spec.action.as_str()));
        metadata.insert("budget_usd".to_owned(), Value::from(s.job.spec.budget_usd));
    }
    state
        .auditor
        .record(Some(&request_id), &auth.principal.name, "job.submit", &resource, result, metadata)
        .await;
    let submitted = outcome?;
    let status = if submitted.replayed { StatusCode::OK } else { StatusCode::CREATED };
    let mut response = json(status, &submitted.job);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{}", submitted.job.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if submitted.replayed {
        response.headers_mut().insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `GET /v1/jobs`: a page of jobs, newest first, filtered by state, driver and label.
pub async fn list(
    State(state): Shared,
    auth: Authorized<JobsRead>,
    ValidQuery(query): ValidQuery<JobListQuery>,
) -> Result<Response, ApiError> {
    let label = query
        .label
        .as_deref()
        .and_then(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let cursor = match query.cursor.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| ApiError::violation("/cursor", "", "not a cursor from this server"))?,
        ),
    };
    let list = state
        .backend
        .jobs(JobQuery {
            state: query.state,
            driver: query.driver,
            label,
            limit: query.limit.unwrap_or(DEFAULT_PAGE),
            cursor,
            submitted_by: (!auth.principal.has(Scope::JobsAdmin))
                .then(|| auth.principal.name.to_string()),
        })
        .await?;
    Ok(json(StatusCode::OK, &list))
}

/// A job id from the path, checked against its grammar (400 with a violation at `/id`).
#[derive(Debug)]
pub struct JobIdPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::violation("/id", "", "the job id in the path is not valid"))?;
        JobId::new(raw).map(JobIdPath).map_err(|e| {
            ApiError::violation("/id", "/$defs/JobId/pattern", format!("the job id {}", e.reason))
        })
    }
}

/// The job `id` if `principal` may see it (its own, or anyone's with `jobs:admin`). Another
/// token's job is answered exactly like a job that does not exist, so ids cannot be probed.
pub(crate) async fn owned_job(
    state: &ApiState,
    principal: &Principal,
    id: &JobId,
) -> Result<Job, ApiError> {
    match state.backend.job(id).await? {
        Some(job) if principal.may_touch_job_of(&job.submitted_by) => Ok(job),
        _ => Err(ApiError::new(ApiErrorCode::NotFound).with_message("no such job")),
    }
}

/// `GET /v1/jobs/{id}`: the caller's own job (anyone's with `jobs:admin`).
pub async fn get_job(
    State(state): Shared,
    auth: Authorized<JobsRead>,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &owned_job(&state, &auth.principal, &id).await?))
}

/// `DELETE /v1/jobs/{id}`: asks for the job to be cancelled; answers with the job. Only the
/// caller's own job (anyone's with `jobs:admin`).
pub async fn cancel(
    State(state): Shared,
    auth: Authorized<JobsWrite>,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    let outcome = match owned_job(&state, &auth.principal, &id).await {
        Ok(_) => state.backend.cancel(&id, &auth.principal.name).await,
        Err(_) => Err(crate::backend::BackendError::NotFound),
    };
    let result = match &outcome {
        Ok(_) => "ok",
        Err(crate::backend::BackendError::NotFound) => "not_found",
        Err(crate::backend::BackendError::Conflict(_)) => "conflict",
        Err(_) => "error",
    };
    let request_id = RequestContext::current_id();
    state
        .auditor
        .record(
            Some(&request_id),
            &auth.principal.name,
            "job.cancel",
            &format!("job:{id}"),
            result,
            Map::new(),
        )
        .await;
    Ok(json(StatusCode::OK, &outcome?))
}

/// The body of `POST /v1/estimates`: an [`EstimateRequest`], or a job spec (it has a
/// `driver`), read as [`EstimateRequest::for_job`] does, so the API takes what `drover
/// estimate` takes. Each is checked against its own schema; a job with no GPU is a violation
/// at `/gpu`.
#[derive(Debug)]
pub struct EstimateBody(pub EstimateRequest);

impl axum::extract::FromRequest<Arc<ApiState>> for EstimateBody {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &Arc<ApiState>,
    ) -> Result<Self, ApiError> {
        let (value, _) = crate::body::read_json(request, state).await?;
        if value.get("driver").is_none() {
            return crate::body::check_value::<EstimateRequest>(value).map(Self);
        }
        let spec = crate::body::check_value::<JobSpec>(value)?;
        EstimateRequest::for_job(&spec).map(Self).ok_or_else(|| {
            ApiError::violation("/gpu", "", "the job asks for no GPU, so it rents nothing")
        })
    }
}

/// `POST /v1/estimates`: a dry-run estimate through the estimator and the gate.
pub async fn estimate(
    State(state): Shared,
    auth: Authorized<JobsWrite>,
    EstimateBody(request): EstimateBody,
) -> Result<Response, ApiError> {
    let response = state.backend.estimate(request).await?;
    let mut metadata = Map::new();
    metadata.insert("allowed".to_owned(), Value::from(response.allowed));
    if let Some(estimate) = &response.estimate {
        metadata.insert("p95_usd".to_owned(), Value::from(estimate.p95_usd));
        metadata.insert("confidence".to_owned(), Value::from(estimate.confidence));
    }
    let request_id = RequestContext::current_id();
    state
        .auditor
        .record(
            Some(&request_id),
            &auth.principal.name,
            "gate.estimate",
            "estimate",
            if response.allowed { "allowed" } else { "rejected" },
            metadata,
        )
        .await;
    Ok(json(StatusCode::OK, &response))
}

/// `GET /v1/drivers`.
pub async fn drivers(
    State(state): Shared,
    _auth: Authorized<DriversRead>,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &state.backend.drivers().await?))
}

/// `GET /v1/openapi.json`: the API description, generated once.
pub async fn openapi(_auth: Authorized<AnyScope>) -> Response {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = DOCUMENT
        .get_or_init(|| serde_json::to_vec(&crate::openapi::document()).unwrap_or_default());
    let mut response = (StatusCode::OK, bytes.clone()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `GET /metrics`: Prometheus text (OpenMetrics when `Accept` asks for it); needs
/// `metrics:read`.
pub async fn metrics(
    State(state): Shared,
    _auth: Authorized<MetricsRead>,
    headers: HeaderMap,
) -> Response {
    state.backend.refresh_metrics().await;
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (text, content_type) = if openmetrics {
        (state.metrics.render_openmetrics(), crate::metrics::OPENMETRICS_TEXT)
    } else {
        (state.metrics.render(), crate::metrics::PROMETHEUS_TEXT)
    };
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Any other path: 404 for a valid token (401 without one).
pub async fn not_found(_auth: Authorized<AnyScope>) -> ApiError {
    ApiError::new(ApiErrorCode::NotFound).with_message("no such route")
}

/// A known path with a method it does not take: 405 for a valid token (401 without one).
pub async fn method_not_allowed(_auth: Authorized<AnyScope>) -> ApiError {
    ApiError::new(ApiErrorCode::MethodNotAllowed)
        .with_message("the route does not take this method")
}
