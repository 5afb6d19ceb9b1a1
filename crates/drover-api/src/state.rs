//! What the handlers share: [`ApiState`] and the parts only it holds (the params validator
//! cache and the open event-stream slots).
//!
//! The layering, leaf-ward: the parts (`token`, `auth`'s token table and limiter, `metrics`,
//! `audit`, `anonymous`, `listener`, `error`, `backend`) never name the state; this module
//! builds the state from them; the extractors (`extract`, `body`), handlers (`routes`,
//! `sse`) and `reload` use it; `server` assembles the router and serves on top.
//!
//! Defaults: at most `api.limits.sse_streams_per_token` open event streams per token (at
//! least 1) and `api.limits.max_concurrent_requests` requests in flight (at least 1).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use drover_proto::api::ApiErrorCode;
use drover_proto::config::{ApiConfig, ApiLimitsConfig, ApiMode};
use drover_proto::{ActionName, DriverName, ParamsSchema};
use drover_schema::SchemaChecker;
use tokio::sync::watch;

use crate::anonymous::AnonymousGate;
use crate::audit::Auditor;
use crate::auth::{RateLimiter, TokenConfigError, TokenRegistry, TokenSet};
use crate::backend::Backend;
use crate::error::ApiError;
use crate::metrics::{ApiMetrics, Registry};

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
    pub(crate) params: ParamsCache,
    /// Open event streams per token.
    pub streams: StreamSlots,
    /// Requests in flight (`api.limits.max_concurrent_requests`).
    pub(crate) requests: Arc<tokio::sync::Semaphore>,
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
            params: ParamsCache::default(),
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

/// Compiled params validators, keyed by driver and action, reused while the backend returns
/// the same schema `Arc`.
#[derive(Debug, Default)]
pub(crate) struct ParamsCache {
    compiled: Mutex<HashMap<(DriverName, ActionName), CompiledParams>>,
}

/// A driver's params schema and its validator.
type CompiledParams = (Arc<ParamsSchema>, Arc<SchemaChecker>);

impl ParamsCache {
    pub(crate) fn checker(
        &self,
        driver: &DriverName,
        action: &ActionName,
        schema: Arc<ParamsSchema>,
    ) -> Result<Arc<SchemaChecker>, ApiError> {
        let key = (driver.clone(), action.clone());
        if let Some((cached, checker)) = self.compiled.lock().get(&key)
            && Arc::ptr_eq(cached, &schema)
        {
            return Ok(checker.clone());
        }
        let checker = Arc::new(SchemaChecker::new(&schema.0).map_err(|_| {
            ApiError::new(ApiErrorCode::Unavailable)
                .with_message("the driver's params schema for this action does not compile")
        })?);
        self.compiled.lock().insert(key, (schema, checker.clone()));
        Ok(checker)
    }
}

/// Open streams per token name.
#[derive(Debug)]
pub struct StreamSlots {
    per_token: u32,
    open: Arc<Mutex<HashMap<Arc<str>, u32>>>,
}

/// One open stream; its token's count goes down when it is dropped with the response body.
#[derive(Debug)]
pub struct StreamSlot {
    name: Arc<str>,
    open: Arc<Mutex<HashMap<Arc<str>, u32>>>,
}

impl StreamSlots {
    /// At most `per_token` open streams per token.
    pub fn new(per_token: u32) -> Self {
        Self { per_token: per_token.max(1), open: Arc::default() }
    }

    /// A slot for `name`, or `None` when it already holds its limit.
    pub fn open(&self, name: &Arc<str>) -> Option<StreamSlot> {
        let mut open = self.open.lock();
        let count = open.entry(name.clone()).or_default();
        if *count >= self.per_token {
            return None;
        }
        *count += 1;
        Some(StreamSlot { name: name.clone(), open: self.open.clone() })
    }

    /// How many streams `name` holds open.
    pub fn held(&self, name: &str) -> u32 {
        let open = self.open.lock();
        open.get(name).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.name);
            }
        }
    }
}
