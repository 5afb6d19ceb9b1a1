//! The router, the outermost middleware, and serving (the state is [`crate::state`]).
//!
//! Outermost first, every request passes through:
//!
//! 1. [`context`]: refuses a request over `api.limits.max_concurrent_requests` in flight
//!    (default 256) with `503` and `Retry-After: 1`, gives the request an id (`x-request-id` on the response), runs everything
//!    inside it with that id in a task-local, turns a panic anywhere inside into
//!    `500 {"error": "internal", "request_id": ...}` (the panic message goes to the log under
//!    the same id), and writes one audit event and the metrics for the request (requests
//!    without a valid token are counted per window instead, [`crate::anonymous`]).
//! 2. The routes ([`crate::routes`]), whose extractors authenticate ([`crate::auth`]) and
//!    validate ([`crate::body`]) before the handler runs.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use drover_proto::api::{ApiErrorCode, ErrorBody};
use drover_proto::config::ApiMode;
use futures_util::FutureExt;
use serde_json::{Map, Value};

use crate::error::{RequestContext, error_response};
use crate::listener::peer_of;
use crate::routes;
pub use crate::state::{ApiSettings, ApiState, StartError};

/// The whole API as a router, ready for `axum::serve` or for `oneshot` in tests.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/v1/jobs", post(routes::submit).get(routes::list))
        .route("/v1/jobs/{id}", get(routes::get_job).delete(routes::cancel))
        .route("/v1/jobs/{id}/events", get(crate::sse::events))
        .route("/v1/estimates", post(routes::estimate))
        .route("/v1/drivers", get(routes::drivers))
        .route("/v1/openapi.json", get(routes::openapi))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), context))
        .with_state(state)
}

/// A fresh request id: `req-` and 16 hex digits from the OS CSPRNG.
fn request_id() -> String {
    let mut bytes = [0u8; 8];
    // If the CSPRNG fails the id is still unique enough from the clock; ids are not secrets.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(0).to_le_bytes();
    }
    format!("req-{}", hex::encode(bytes))
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

/// The outermost middleware; see the [module docs](self).
pub async fn context(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id();
    let peer = peer_of(request.extensions());
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let context = Arc::new(RequestContext {
        request_id: id.clone(),
        mode: state.settings.mode,
        actor: Default::default(),
        rejection: Default::default(),
    });
    // Requests in flight are capped; one more gets 503 with Retry-After at once.
    let in_flight = state.requests.clone().try_acquire_owned();
    let handle = async move {
        match in_flight {
            Ok(_permit) => next.run(request).await,
            Err(_) => crate::error::ApiError::new(ApiErrorCode::Unavailable)
                .with_message("the server is at its limit of requests in flight")
                .with_retry_after(1)
                .into_response(),
        }
    };
    let run =
        RequestContext::scope(context.clone(), std::panic::AssertUnwindSafe(handle).catch_unwind());
    let mut response = match run.await {
        Ok(response) => response,
        Err(payload) => {
            state.metrics.panic();
            tracing::error!(request_id = %id, panic = %panic_text(payload.as_ref()), "handler panicked");
            let body = ErrorBody {
                error: ApiErrorCode::Internal,
                request_id: id.clone(),
                message: None,
                violations: Vec::new(),
                detail: (state.settings.mode == ApiMode::Development)
                    .then(|| format!("panic: {}", panic_text(payload.as_ref()))),
            };
            error_response(ApiErrorCode::Internal, &body)
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    state.metrics.request(&method, &route, status, started.elapsed());
    // Probes poll every few seconds; they are counted in the metrics, not audited.
    let probe = method == Method::GET && (route == "/healthz" || route == "/readyz");
    if let Some(rejection) = context.rejection() {
        // No valid token: counted per window, not a row each (crate::anonymous).
        let result = if status == 429 { "unauthenticated:throttled" } else { rejection.as_str() };
        state.anonymous.note(result, peer, &state.auditor);
    } else if !probe {
        let actor = context.actor().map_or_else(|| "anonymous".to_owned(), |a| a.to_string());
        let result = match context.rejection() {
            Some(rejection) => rejection.as_str().to_owned(),
            None => status.to_string(),
        };
        let mut metadata = Map::new();
        metadata.insert("status".to_owned(), Value::from(status));
        metadata.insert(
            "duration_ms".to_owned(),
            Value::from(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        );
        state
            .auditor
            .record(
                Some(&id),
                &actor,
                "http.request",
                &format!("route:{method} {route}"),
                &result,
                metadata,
            )
            .await;
    }
    response
}

/// Serves the API of `state` on `listener`, with its connection limits
/// ([`crate::listener`]), until `shutdown` completes; then ends every event stream and drains
/// in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let limits = state.settings.limits;
    let stop = async move {
        shutdown.await;
        state.end_streams();
    };
    crate::listener::serve_limited(listener, app, limits, stop).await
}
