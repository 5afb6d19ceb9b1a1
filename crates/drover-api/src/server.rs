//! The router, its state, the outermost middleware, and serving.
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
use drover_proto::config::{ApiConfig, ApiLimitsConfig, ApiMode};
use futures_util::FutureExt;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::anonymous::{AnonymousGate, peer_of};
use crate::audit::Auditor;
use crate::auth::{RateLimiter, TokenConfigError, TokenRegistry, TokenSet};
use crate::backend::Backend;
use crate::error::{RequestContext, error_response};
use crate::metrics::{ApiMetrics, Registry};
use crate::routes;
use crate::sse::StreamSlots;

/// How the API behaves, from the configuration and the command line.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Error detail level.
    pub mode: ApiMode,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Whether `http://` webhook URLs are accepted.
    pub allow_http_webhooks: bool,
    /// Connection, concurrency and abuse limits.
    pub limits: ApiLimitsConfig,
}

/// Why the API refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configured token is unacceptable.
    #[error("API token configuration refused")]
    Tokens(#[from] TokenConfigError),
    /// The configuration asks for development mode without the explicit flag.
    #[error(
        "api.mode is \"development\" but the server was not started with --development; \
         development mode adds internal details to error responses and must be asked for twice"
    )]
    DevelopmentNotConfirmed,
    /// The flag asks for development mode but the configuration does not.
    #[error("--development was given but api.mode is not \"development\"")]
    DevelopmentNotConfigured,
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// The supervisor behind the API.
    pub backend: Arc<dyn Backend>,
    /// The live tokens.
    pub tokens: TokenRegistry,
    /// Per-token rate limits.
    pub limiter: RateLimiter,
    /// Per-peer limits and aggregated audit for requests without a valid token.
    pub anonymous: AnonymousGate,
    /// Settings.
    pub settings: ApiSettings,
    /// Audit sink.
    pub auditor: Auditor,
    /// The registry behind `/metrics`, with the API's own metrics.
    pub metrics: ApiMetrics,
    /// Compiled params validators per driver action.
    pub(crate) params: routes::ParamsCache,
    /// Open event streams per token.
    pub streams: StreamSlots,
    /// Requests in flight (`api.limits.max_concurrent_requests`).
    requests: Arc<tokio::sync::Semaphore>,
    /// Set once the server begins to shut down; event streams end on it.
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backend")
    }
}

impl ApiState {
    /// Checks `config` and builds the state. `development_flag` is the server's explicit
    /// `--development` flag: development mode needs both it and `api.mode = "development"`,
    /// and logs a loud warning when on. Refuses to start with any token that could carry
    /// less than 256 bits (see [`TokenSet::new`]).
    pub fn new(
        config: &ApiConfig,
        development_flag: bool,
        backend: Arc<dyn Backend>,
        auditor: Auditor,
    ) -> Result<Arc<Self>, StartError> {
        Self::with_registry(config, development_flag, backend, auditor, Registry::default())
    }

    /// [`ApiState::new`], serving `registry` (with whatever the rest of drover registered in
    /// it) at `/metrics`, the API's own metrics added.
    pub fn with_registry(
        config: &ApiConfig,
        development_flag: bool,
        backend: Arc<dyn Backend>,
        auditor: Auditor,
        registry: Registry,
    ) -> Result<Arc<Self>, StartError> {
        let mode = match (config.mode, development_flag) {
            (ApiMode::Production, false) => ApiMode::Production,
            (ApiMode::Development, true) => {
                tracing::warn!(
                    "!!! DEVELOPMENT MODE: error responses include internal error details. \
                     Never expose this server to anyone but yourself. !!!"
                );
                ApiMode::Development
            }
            (ApiMode::Development, false) => return Err(StartError::DevelopmentNotConfirmed),
            (ApiMode::Production, true) => return Err(StartError::DevelopmentNotConfigured),
        };
        let tokens = TokenSet::new(&config.tokens)?;
        if tokens.is_empty() {
            tracing::warn!("no API tokens are configured: every request but /healthz gets 401");
        }
        Ok(Arc::new(Self {
            backend,
            tokens: TokenRegistry::new(tokens),
            limiter: RateLimiter::new(config.rate_limit),
            anonymous: AnonymousGate::new(&config.limits),
            settings: ApiSettings {
                mode,
                max_body_bytes: config.max_body_bytes as usize,
                allow_http_webhooks: config.allow_http_webhooks,
                limits: config.limits,
            },
            auditor,
            metrics: ApiMetrics::new(registry),
            params: routes::ParamsCache::default(),
            streams: StreamSlots::new(config.limits.sse_streams_per_token),
            requests: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_concurrent_requests.max(1) as usize,
            )),
            shutdown: watch::Sender::new(false),
        }))
    }

    /// Ends every open event stream (cleanly: each body finishes) and any opened later; the
    /// server calls it when its shutdown begins.
    pub fn end_streams(&self) {
        self.shutdown.send_replace(true);
    }

    /// Becomes `true` when [`ApiState::end_streams`] is called.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Replaces the tokens with `config`'s (a reload). On error the old tokens stay.
    pub fn reload_tokens(&self, config: &ApiConfig) -> Result<usize, TokenConfigError> {
        let count = self.tokens.replace(&config.tokens)?;
        tracing::info!(tokens = count, "API tokens reloaded");
        Ok(count)
    }
}

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
