//! The Vast.ai simulator: a real HTTP server that speaks the same routes, methods and JSON
//! shapes as the real API, with switchable [`Faults`] and its own billing [`Ledger`].
//!
//! Nothing is rented and nothing is spent. Tests start one on a loopback port with
//! [`Simulator::start`] and point a [`VastClient`](drover_vast::VastClient) (or the official `vastai`
//! CLI, with `--url`) at [`Simulator::base_url`]; `drover fake-vast` runs one alone.
//!
//! | Route | Behaviour |
//! |---|---|
//! | `POST /api/v0/bundles/`, `PUT /api/v0/search/asks/` | search the [catalogue] with the query language (`eq neq gt gte lt lte in notin`, `order`, `type`, `limit`, `allocated_storage`); GPU names match with `_` or spaces |
//! | `PUT /api/v0/asks/{id}/` | create; `{"success":true,"new_contract":N,"instance_api_key":...}`; a gone offer is 404 code 3603 or 410 `no_such_ask` |
//! | `GET /api/v0/instances/{id}/` | `{"instances": {...}}`, or `{"instances": null}` when gone |
//! | `PUT /api/v0/instances/{id}/` | `{"state":"stopped"/"running"}`, `{"label":...}` |
//! | `DELETE /api/v0/instances/{id}/` | destroy; 404 `no_such_instance` when gone |
//! | `GET /api/v0/instances/` | **410** `deprecated_endpoint`, as the real API |
//! | `GET /api/v1/instances/` | paginated list: `select_filters` (stored columns only, else 400 `invalid_request`), `order_by`, `limit` (at most 25), `after_token` (bad: 400 `invalid_token`), `select_cols` |
//! | `GET /api/v0/instances/filters/` | distinct status / verification / GPU values |
//! | `PUT /api/v0/instances/request_logs/{id}/` | `{"result_url": ...}`; the URL answers 404 once, then the log |
//! | `GET /api/v0/users/current/` | the account, **including `api_key`**, as the real API |
//! | `GET /api/v0/instances/pending-price-increases/`, `PUT .../accept-price-increase/`, `PUT .../reject-price-increase/` | host price increases |
//! | `GET /api/v0/charges/` | instance charges from the billing ledger: `{"results": [{"type": "instance", "source": "<id>", "instance_id", "amount", "description", "start", "end"}], "count", "total", "next_token"}`; `select_filters` `{"day": {"gte", "lte"}}` (Unix seconds), `limit` (at most 100), `after_token` |
//! | `GET /_sim/ledger`, `GET /_sim/stats`, `GET`/`PUT /_sim/faults` | the simulator's own control routes (authenticated, never faulted) |
//!
//! Every route also answers without its trailing slash. Authentication is `Authorization:
//! Bearer KEY`; an `api_key=` query parameter is accepted, as the real API does, and counted
//! in [`Stats::api_key_in_url`] so a test can fail on it. A wrong key gets 401 `auth_error`.
//! The simulator logs method, path and status only; never a query string or a body.
//!
//! This file holds the server, the gatekeeper (authentication, faults, logging) and the
//! control routes; the Vast.ai routes are in `search`, `create`, `instances` and `charges`,
//! and the simulated world they act on is [`state`].

// Handlers build their error answers as `Response`s and return them through `Result`; one is
// built per failed request, so boxing them would buy nothing.
#![allow(clippy::result_large_err)]
#![forbid(unsafe_code)]
// An offer record (`catalogue.rs`) is one `json!` of about sixty fields, and serde_json's macro
// recurses once per token tree: the default limit of 128 is too low for it.
#![recursion_limit = "256"]

pub mod catalogue;
mod charges;
mod create;
pub mod faults;
mod instances;
mod search;
pub mod state;

use parking_lot::{Mutex, MutexGuard};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodRouter, get, post, put};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

pub use catalogue::SimOffer;
pub use faults::{FaultSpecError, Faults, KeyEcho};
pub use state::{Ledger, LedgerEntry, SimTiming, Stats};

use drover_vast::{ApiKey, Clock};
use faults::take;
use state::World;

/// How a simulator is set up.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The key clients must present; `None` accepts any non-empty key.
    pub api_key: Option<ApiKey>,
    /// Seed of the offer catalogue.
    pub seed: u64,
    /// Offers in the catalogue. Default 48.
    pub offers: usize,
    /// Faults switched on at start.
    pub faults: Faults,
    /// Instance timings, in simulated seconds.
    pub timing: SimTiming,
    /// The clock instances and billing run on; share it with the provisioner under test.
    pub clock: Clock,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            seed: 1,
            offers: 48,
            faults: Faults::default(),
            timing: SimTiming::default(),
            clock: Clock::system(),
        }
    }
}

struct Shared {
    world: Mutex<World>,
    key: Option<ApiKey>,
    clock: Clock,
    base_url: String,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock()
    }
    fn now(&self) -> f64 {
        self.clock.now_s()
    }
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("base_url", &self.shared.base_url).finish_non_exhaustive()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Simulator {
    /// Binds `addr` (port 0 picks a free one) and serves in a background task.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let shared = Arc::new(shared(&listener, config)?);
        let app = router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "simulator server stopped");
            }
        });
        Ok(Self { shared, task })
    }

    /// The base URL to give a client, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The clock the simulator runs on.
    pub fn clock(&self) -> Clock {
        self.shared.clock
    }

    /// The billing ledger, brought up to now.
    pub fn ledger(&self) -> Ledger {
        let now = self.shared.now();
        self.shared.world().ledger(now)
    }

    /// What the simulator has been sent.
    pub fn stats(&self) -> Stats {
        self.shared.world().stats.clone()
    }

    /// The faults now switched on (counted ones as many as are left).
    pub fn faults(&self) -> Faults {
        self.shared.world().faults.clone()
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.world().faults = faults;
    }

    /// Whether an instance exists and has not been destroyed.
    pub fn instance_exists(&self, id: u64) -> bool {
        let now = self.shared.now();
        self.shared.world().exists(id, now)
    }

    /// The restricted key the simulator handed an instance at creation (tests check that it
    /// never reaches a log).
    pub fn instance_api_key(&self, id: u64) -> Option<String> {
        self.shared.world().instance_key(id).map(str::to_owned)
    }

    /// The catalogue's offers (sold ones included, vanished ones not).
    pub fn offers(&self) -> Vec<SimOffer> {
        self.shared.world().offers.clone()
    }
}

fn shared(listener: &TcpListener, config: SimConfig) -> std::io::Result<Shared> {
    let base_url = format!("http://{}", listener.local_addr()?);
    let offers = catalogue::catalogue(config.seed, config.offers);
    Ok(Shared {
        world: Mutex::new(World::new(offers, config.faults, config.timing, config.seed)),
        key: config.api_key,
        clock: config.clock,
        base_url,
    })
}

/// Serves on `listener` until `shutdown` completes (for `drover fake-vast`).
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(shared(&listener, config)?);
    axum::serve(listener, router(shared)).with_graceful_shutdown(shutdown).await
}

fn router(shared: Arc<Shared>) -> Router {
    let routes: Vec<(&str, MethodRouter<Arc<Shared>>)> = vec![
        ("/api/v0/bundles/", post(search::search)),
        ("/api/v0/search/asks/", put(search::search_new)),
        ("/api/v0/asks/{id}/", put(create::create)),
        ("/api/v0/instances/", get(instances::old_list)),
        ("/api/v0/instances/filters/", get(instances::filters)),
        ("/api/v0/instances/pending-price-increases/", get(instances::pending_increases)),
        ("/api/v0/instances/accept-price-increase/", put(instances::accept_increase)),
        ("/api/v0/instances/reject-price-increase/", put(instances::reject_increase)),
        ("/api/v0/instances/request_logs/{id}/", put(instances::request_logs)),
        (
            "/api/v0/instances/{id}/",
            get(instances::show).put(instances::manage).delete(instances::destroy),
        ),
        ("/api/v1/instances/", get(instances::list_v1)),
        ("/api/v0/users/current/", get(instances::current_user)),
        ("/api/v0/charges/", get(charges::charges)),
    ];
    let mut app = Router::new();
    for (path, route) in routes {
        app = app.route(path, route.clone()).route(path.trim_end_matches('/'), route);
    }
    app.route("/_sim/ledger", get(sim_ledger))
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/faults", get(sim_faults).put(sim_set_faults))
        .route("/_sim/logs/{name}", get(instances::log_file))
        .fallback(|| async {
            reply(404, json!({"success": false, "error": "not_found", "msg": "no such route"}))
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), gatekeeper))
        .with_state(shared)
}

/// A JSON response with exactly `Content-Type: application/json` (the CLI compares it).
fn reply(status: u16, body: Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: u16, code: &str, msg: &str) -> Response {
    reply(status, json!({"success": false, "error": code, "msg": msg}))
}

fn text(status: u16, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|k| k.trim().to_owned())
}

/// Splits a query string into decoded `(name, value)` pairs (`+` is a space, as Python's
/// `quote_plus` writes it).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// Authentication, request accounting and the request-level faults.
async fn gatekeeper(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if path.starts_with("/_sim/logs/") {
        return next.run(req).await;
    }
    let control = path.starts_with("/_sim/");
    let url_key = req
        .uri()
        .query()
        .and_then(|q| query_pairs(q).into_iter().find(|(k, _)| k == "api_key").map(|(_, v)| v));
    let presented = bearer(req.headers()).or_else(|| url_key.clone());
    let key_ok = presented
        .as_deref()
        .is_some_and(|p| !p.is_empty() && sh.key.as_ref().is_none_or(|k| k.matches(p)));
    let is_create = method == axum::http::Method::PUT && path.starts_with("/api/v0/asks/");
    let (pre, forced_auth, slow_ms) = {
        let mut w = sh.world();
        if !control {
            w.stats.requests += 1;
        }
        if url_key.is_some() {
            w.stats.api_key_in_url += 1;
        }
        let forced = if control { None } else { w.faults.auth };
        let pre = if control || !key_ok || forced.is_some() {
            None
        } else if take(&mut w.faults.rate_limit) {
            w.fired("rate_limit");
            let n = w.stats.faults_fired.get("rate_limit").copied().unwrap_or(0);
            Some(match n % 3 {
                1 => text(429, "API requests too frequent endpoint threshold=4.5"),
                2 => reply(
                    429,
                    json!({"detail": "API requests too frequent endpoint threshold=4.5"}),
                ),
                _ => error(429, "rate_limit_exceeded", "API requests too frequent"),
            })
        } else if take(&mut w.faults.bad_gateway) {
            w.fired("bad_gateway");
            Some(text(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"))
        } else if is_create && take(&mut w.faults.create_bad_gateway) {
            w.fired("create_bad_gateway");
            Some(text(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"))
        } else if let (true, Some(echo), Some(key)) =
            (is_create, w.faults.echo_key, presented.as_deref())
        {
            w.fired("echo_key");
            let msg = format!("error 400: key {} may not rent this offer", echo.encode(key));
            Some(error(400, "invalid_args", &msg))
        } else if take(&mut w.faults.unavailable) {
            w.fired("unavailable");
            Some(text(503, "<html><body><h1>503 Service Unavailable</h1></body></html>"))
        } else {
            None
        };
        let slow = if control {
            0
        } else {
            w.faults.slow_ms + if is_create { w.faults.slow_create_ms } else { 0 }
        };
        if !key_ok || forced.is_some() {
            w.stats.auth_failures += 1;
        }
        (pre, forced, slow)
    };
    let resp = if !key_ok || forced_auth.is_some() {
        let status = forced_auth.unwrap_or(401);
        error(status, "auth_error", "Invalid user key")
    } else if let Some(resp) = pre {
        resp
    } else {
        let resp = next.run(req).await;
        let timeout = !control && {
            let mut w = sh.world();
            if take(&mut w.faults.gateway_timeout) {
                w.fired("gateway_timeout");
                true
            } else if is_create && take(&mut w.faults.create_gateway_timeout) {
                w.fired("create_gateway_timeout");
                true
            } else {
                false
            }
        };
        if timeout {
            text(504, "<html><body><h1>504 Gateway Time-out</h1></body></html>")
        } else {
            resp
        }
    };
    if slow_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(slow_ms)).await;
    }
    info!(%method, path, status = resp.status().as_u16(), "sim request");
    resp
}

fn json_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(error(400, "invalid_args", "error 400: the body must be a JSON object")),
    }
}

fn parse_id(raw: &str) -> Result<u64, Response> {
    raw.parse().map_err(|_| error(400, "invalid_args", "error 400: the id must be an integer"))
}

fn page_token(offset: usize) -> String {
    let check = (offset as u64).wrapping_mul(2_654_435_761) % 1_000_003;
    format!("o{offset}c{check}")
}

fn read_token(token: &str) -> Option<usize> {
    let rest = token.strip_prefix('o')?;
    let (offset, check) = rest.split_once('c')?;
    let offset: usize = offset.parse().ok()?;
    (page_token(offset) == format!("o{offset}c{check}")).then_some(offset)
}

// ---- control ------------------------------------------------------------------------------

async fn sim_ledger(State(sh): State<Arc<Shared>>) -> Response {
    let now = sh.now();
    let ledger = sh.world().ledger(now);
    let live: Vec<u64> = ledger.live().iter().map(|e| e.contract_id).collect();
    reply(200, json!({"entries": ledger.entries, "live": live, "total_usd": ledger.total_usd()}))
}

async fn sim_stats(State(sh): State<Arc<Shared>>) -> Response {
    let stats = sh.world().stats.clone();
    reply(200, serde_json::to_value(stats).unwrap_or(Value::Null))
}

async fn sim_faults(State(sh): State<Arc<Shared>>) -> Response {
    let spec = sh.world().faults.to_string();
    reply(200, json!({"faults": spec}))
}

async fn sim_set_faults(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let spec = String::from_utf8_lossy(&body);
    match spec.parse::<Faults>() {
        Ok(f) => {
            sh.world().faults = f;
            reply(200, json!({"success": true}))
        }
        Err(e) => error(400, "invalid_args", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(read_token(&page_token(50)), Some(50));
        assert_eq!(read_token("o50c1"), None);
        assert_eq!(read_token("garbage"), None);
    }

    #[test]
    fn plus_is_space() {
        let p = query_pairs("a=RTX+4090&b=%7B%7D&api_key=x");
        assert_eq!(p[0], ("a".into(), "RTX 4090".into()));
        assert_eq!(p[1].1, "{}");
        assert_eq!(p[2].0, "api_key");
    }
}
