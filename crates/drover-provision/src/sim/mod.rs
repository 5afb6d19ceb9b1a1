//! The Vast.ai simulator: a real HTTP server that speaks the same routes, methods and JSON
//! shapes as the real API, with switchable [`Faults`] and its own billing [`Ledger`].
//!
//! Nothing is rented and nothing is spent. Tests start one on a loopback port with
//! [`Simulator::start`] and point a [`VastClient`](crate::VastClient) (or the official `vastai`
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

// Handlers build their error answers as `Response`s and return them through `Result`; one is
// built per failed request, so boxing them would buy nothing.
#![allow(clippy::result_large_err)]

pub mod catalogue;
mod charges;
pub mod faults;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
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
pub use state::{DEADMAN_MARKER, DEADMAN_POLL_S, Ledger, LedgerEntry, SimTiming, Stats};

use crate::clock::Clock;
use crate::secret::ApiKey;
use faults::take;
use state::{CreateArgs, CreateResult, World};

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
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.world.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        ("/api/v0/bundles/", post(search)),
        ("/api/v0/search/asks/", put(search_new)),
        ("/api/v0/asks/{id}/", put(create)),
        ("/api/v0/instances/", get(old_list)),
        ("/api/v0/instances/filters/", get(filters)),
        ("/api/v0/instances/pending-price-increases/", get(pending_increases)),
        ("/api/v0/instances/accept-price-increase/", put(accept_increase)),
        ("/api/v0/instances/reject-price-increase/", put(reject_increase)),
        ("/api/v0/instances/request_logs/{id}/", put(request_logs)),
        ("/api/v0/instances/{id}/", get(show).put(manage).delete(destroy)),
        ("/api/v1/instances/", get(list_v1)),
        ("/api/v0/users/current/", get(current_user)),
        ("/api/v0/charges/", get(charges::charges)),
    ];
    let mut app = Router::new();
    for (path, route) in routes {
        app = app.route(path, route.clone()).route(path.trim_end_matches('/'), route);
    }
    app.route("/_sim/ledger", get(sim_ledger))
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/faults", get(sim_faults).put(sim_set_faults))
        .route("/_sim/logs/{name}", get(log_file))
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

// ---- search -------------------------------------------------------------------------------

/// Whether two JSON values are equal for the query language: numbers as numbers, strings with
/// `_` read as a space (the CLI's GPU-name convention).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        // The CLI sends numbers from its query language as strings: `{"num_gpus": {"eq": "1"}}`.
        (Value::Number(x), Value::String(y)) | (Value::String(y), Value::Number(x)) => {
            y.trim().parse::<f64>().ok() == x.as_f64()
        }
        (Value::String(x), Value::String(y)) => x.replace('_', " ") == y.replace('_', " "),
        (Value::Bool(x), Value::Number(y)) | (Value::Number(y), Value::Bool(x)) => {
            y.as_f64() == Some(f64::from(u8::from(*x)))
        }
        _ => a == b,
    }
}

/// Whether `row` satisfies `cond` on `field`. A field the row lacks does not constrain it.
fn satisfies(row: &Value, field: &str, cond: &Value) -> Result<bool, String> {
    let Some(actual) = row.get(field) else { return Ok(true) };
    let ops: Vec<(&str, &Value)> = match cond {
        Value::Object(m) => m.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        other => vec![("eq", other)],
    };
    for (op, want) in ops {
        let num = |v: &Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
        let cmp = |f: fn(f64, f64) -> bool| match (num(actual), num(want)) {
            (Some(a), Some(b)) => f(a, b),
            _ => false,
        };
        let list = || want.as_array().cloned().unwrap_or_else(|| vec![want.clone()]);
        let ok = match op {
            "eq" => same(actual, want),
            "neq" => !same(actual, want),
            "gt" => cmp(|a, b| a > b),
            "gte" => cmp(|a, b| a >= b),
            "lt" => cmp(|a, b| a < b),
            "lte" => cmp(|a, b| a <= b),
            "in" => list().iter().any(|w| same(actual, w)),
            "notin" => !list().iter().any(|w| same(actual, w)),
            other => return Err(format!("unknown operator {}", other.escape_debug())),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn order_key(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

const SEARCH_RESERVED: &[&str] =
    &["order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols"];

fn run_search(sh: &Shared, q: &Map<String, Value>) -> Response {
    let storage = q.get("allocated_storage").and_then(Value::as_f64).unwrap_or(5.0);
    if !(storage.is_finite() && storage >= 0.0) {
        return error(400, "invalid_args", "error 400: allocated_storage must be a number >= 0");
    }
    let bid = match q.get("type").and_then(Value::as_str).unwrap_or("on-demand") {
        "bid" | "interruptible" => true,
        "on-demand" | "ondemand" | "reserved" => false,
        _ => {
            return error(
                400,
                "invalid_args",
                "error 400: type must be on-demand, reserved or bid",
            );
        }
    };
    let limit = q.get("limit").and_then(Value::as_u64).unwrap_or(64).clamp(1, 10_000);
    let order: Vec<(String, bool)> = match q.get("order") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| {
                let pair = i.as_array()?;
                let field = pair.first()?.as_str()?.to_owned();
                let desc = pair.get(1).and_then(Value::as_str) == Some("desc");
                Some((field, desc))
            })
            .collect(),
        _ => vec![("score".to_owned(), true)],
    };
    let w = sh.world();
    let mut rows = Vec::new();
    for offer in w.listed_offers() {
        let row = offer.to_json(storage, bid);
        let mut keep = true;
        for (field, cond) in q.iter().filter(|(k, _)| !SEARCH_RESERVED.contains(&k.as_str())) {
            match satisfies(&row, field, cond) {
                Ok(true) => {}
                Ok(false) => {
                    keep = false;
                    break;
                }
                Err(msg) => return error(400, "invalid_args", &format!("error 400: {msg}")),
            }
        }
        if keep {
            rows.push(row);
        }
    }
    drop(w);
    rows.sort_by(|a, b| {
        for (field, desc) in &order {
            let o = order_key(&a[field.as_str()], &b[field.as_str()]);
            let o = if *desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        order_key(&a["id"], &b["id"])
    });
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    reply(200, json!({"offers": rows}))
}

async fn search(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    match json_object(&body) {
        Ok(q) => run_search(&sh, &q),
        Err(resp) => resp,
    }
}

async fn search_new(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    match json_object(&body) {
        Ok(outer) => match outer.get("q") {
            Some(Value::Object(q)) => run_search(&sh, q),
            _ => error(400, "invalid_args", "error 400: `q` must be an object"),
        },
        Err(resp) => resp,
    }
}

// ---- create -------------------------------------------------------------------------------

fn create_args(m: &Map<String, Value>) -> Result<CreateArgs, Response> {
    let bad =
        |msg: &str| error(400, "invalid_args", &format!("error 400/3467: Invalid args: {msg}"));
    let image = match m.get("image") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 1024 => s.clone(),
        _ => return Err(bad("image is required and at most 1024 characters")),
    };
    let disk = match m.get("disk") {
        None | Some(Value::Null) => 10.0,
        Some(v) => match v.as_f64() {
            Some(d) if d.is_finite() && (8.0..=100_000.0).contains(&d) => d,
            _ => return Err(bad("disk must be a number from 8 to 100000")),
        },
    };
    let label = match m.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 256 => Some(s.clone()),
        _ => return Err(bad("label must be a string of at most 256 characters")),
    };
    let env = match m.get("env") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(e)) => {
            let mut out = Vec::new();
            let mut total = 0usize;
            for (k, v) in e {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    _ => return Err(bad("env values must be strings")),
                };
                if v.chars().count() > 256 {
                    return Err(bad("an env value is longer than 256 characters"));
                }
                total += k.len() + v.len();
                out.push((k.clone(), v));
            }
            if total > 32_768 {
                return Err(bad("env is larger than 32768 characters"));
            }
            out
        }
        Some(_) => return Err(bad("invalid env type: env must be a dict")),
    };
    let onstart = match m.get("onstart") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        _ => return Err(bad("onstart must be a string")),
    };
    let args_len = match m.get("args") {
        None | Some(Value::Null) => 0,
        Some(v) => v.to_string().len(),
    };
    if onstart.as_ref().map_or(0, String::len) + args_len > 4096 {
        return Err(bad("onstart and args together are longer than 4096 characters"));
    }
    let price = match m.get("price") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(p) if p.is_finite() && (0.001..=128.0).contains(&p) => Some(p),
            _ => {
                return Err(error(
                    400,
                    "invalid_price",
                    "error 400: price must be from 0.001 to 128",
                ));
            }
        },
    };
    Ok(CreateArgs { image, disk, label, env, onstart, price })
}

async fn create(State(sh): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let offer_id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let args = match json_object(&body).and_then(|m| create_args(&m)) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let now = sh.now();
    let result = {
        let mut world = sh.world();
        if take(&mut world.faults.late_create) {
            world.fired("late_create");
            world.create_later(offer_id, args, now);
            return text(504, "<html><body><h1>504 Gateway Time-out</h1></body></html>");
        }
        world.create(offer_id, args, now)
    };
    match result {
        CreateResult::Ok { contract, instance_api_key } => reply(
            200,
            json!({"success": true, "new_contract": contract, "instance_api_key": instance_api_key}),
        ),
        CreateResult::LowBid { contract, min_bid } => reply(
            400,
            json!({
                "success": false, "error": "invalid_price",
                "msg": format!("error 400: your bid is below the current minimum of {min_bid:.4}; the instance was created stopped"),
                "new_contract": contract,
            }),
        ),
        CreateResult::OfferGone { status: 410 } => error(
            410,
            "no_such_ask",
            &format!(
                "error 410/3907: no_such_ask Instance type {offer_id} is no longer available."
            ),
        ),
        CreateResult::OfferGone { .. } => reply(
            404,
            json!({
                "success": false, "error": "invalid_args",
                "msg": format!("error 404/3603: no_such_ask Instance type by id {offer_id} is not available."),
                "ask_id": offer_id,
            }),
        ),
    }
}

// ---- instances ----------------------------------------------------------------------------

async fn show(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let now = sh.now();
    let row = sh.world().show(id, now);
    reply(200, json!({"instances": row}))
}

async fn manage(State(sh): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let m = match json_object(&body) {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    let running = match m.get("state").and_then(Value::as_str) {
        Some("running") => Some(true),
        Some("stopped") => Some(false),
        Some(_) => {
            return error(400, "invalid_args", "error 400: state must be running or stopped");
        }
        None => None,
    };
    let label = m.get("label").and_then(Value::as_str).map(str::to_owned);
    let now = sh.now();
    if sh.world().manage(id, running, label, now) {
        reply(200, json!({"success": true}))
    } else {
        error(404, "no_such_instance", "error 404/3102: Instance not found")
    }
}

async fn destroy(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let now = sh.now();
    match sh.world().destroy(id, now) {
        Some(_) => reply(200, json!({"success": true})),
        None => error(404, "no_such_instance", "error 404/3102: Instance not found"),
    }
}

async fn old_list() -> Response {
    error(
        410,
        "deprecated_endpoint",
        "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.",
    )
}

const LIST_FILTER_COLUMNS: &[&str] = &["actual_status", "gpu_name", "label", "id", "verification"];

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

async fn list_v1(State(sh): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params: Map<String, Value> = query_pairs(query.as_deref().unwrap_or(""))
        .into_iter()
        .map(|(k, v)| {
            let parsed = serde_json::from_str(&v).unwrap_or(Value::String(v));
            (k, parsed)
        })
        .collect();
    let filters = match params.get("select_filters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return error(400, "invalid_request", "Error in query parameters: select_filters");
        }
    };
    if let Some(bad) = filters.keys().find(|k| !LIST_FILTER_COLUMNS.contains(&k.as_str())) {
        return error(
            400,
            "invalid_request",
            &format!("Error in query parameters: {} is not a valid search key", bad.escape_debug()),
        );
    }
    let limit = params.get("limit").and_then(Value::as_u64).unwrap_or(25).clamp(1, 25);
    let offset = match params.get("after_token") {
        None | Some(Value::Null) => 0,
        Some(Value::String(t)) => match read_token(t) {
            Some(o) => o,
            None => return error(400, "invalid_token", "Invalid pagination token"),
        },
        Some(_) => return error(400, "invalid_token", "Invalid pagination token"),
    };
    let now = sh.now();
    let mut rows: Vec<Value> = sh.world().list(now);
    let mut kept = Vec::new();
    for row in rows.drain(..) {
        let mut keep = true;
        for (col, cond) in &filters {
            match satisfies(&row, col, cond) {
                Ok(true) => {}
                Ok(false) => keep = false,
                Err(msg) => {
                    return error(
                        400,
                        "invalid_request",
                        &format!("Error in query parameters: {msg}"),
                    );
                }
            }
        }
        if keep {
            kept.push(row);
        }
    }
    if let Some(Value::Array(order)) = params.get("order_by") {
        let keys: Vec<(String, bool)> = order
            .iter()
            .filter_map(|o| {
                let col = o.get("col")?.as_str()?.to_owned();
                Some((col, o.get("dir").and_then(Value::as_str) == Some("desc")))
            })
            .collect();
        kept.sort_by(|a, b| {
            for (col, desc) in &keys {
                let o = order_key(&a[col.as_str()], &b[col.as_str()]);
                let o = if *desc { o.reverse() } else { o };
                if o.is_ne() {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    let total = kept.len();
    let mut label_counts = Map::new();
    for row in &kept {
        let label = row["label"].as_str().unwrap_or("").to_owned();
        let n = label_counts.get(&label).and_then(Value::as_u64).unwrap_or(0);
        label_counts.insert(label, json!(n + 1));
    }
    let limit = usize::try_from(limit).unwrap_or(25);
    let page: Vec<Value> = kept.into_iter().skip(offset).take(limit).collect();
    let next = (offset + page.len() < total).then(|| page_token(offset + page.len()));
    let cols: Option<Vec<String>> = match params.get("select_cols") {
        Some(Value::Array(c)) => {
            let c: Vec<String> = c.iter().filter_map(Value::as_str).map(str::to_owned).collect();
            (!c.iter().any(|x| x == "*")).then_some(c)
        }
        _ => None,
    };
    let page: Vec<Value> = match cols {
        None => page,
        Some(cols) => page
            .into_iter()
            .map(|row| {
                let mut out = Map::new();
                out.insert("id".into(), row["id"].clone());
                for c in &cols {
                    if let Some(v) = row.get(c.as_str()) {
                        out.insert(c.clone(), v.clone());
                    }
                }
                Value::Object(out)
            })
            .collect(),
    };
    reply(
        200,
        json!({
            "success": true, "instances_found": page.len(), "total_instances": total,
            "label_counts": label_counts, "next_token": next, "instances": page,
        }),
    )
}

async fn filters(State(sh): State<Arc<Shared>>) -> Response {
    let now = sh.now();
    let rows = sh.world().list(now);
    let mut combos: Vec<Value> = Vec::new();
    for r in rows {
        let c = json!({
            "actual_status": r["actual_status"], "verification": r["verification"], "gpu_name": r["gpu_name"],
        });
        if !combos.contains(&c) {
            combos.push(c);
        }
    }
    reply(200, json!({"success": true, "filters": combos}))
}

async fn request_logs(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let now = sh.now();
    let mut w = sh.world();
    if !w.exists(id, now) {
        return error(404, "no_such_instance", "error 404/3102: Instance not found");
    }
    let name = format!("{id}-{}", w.log_files.len() + 1);
    let text = w.log_text(id);
    w.log_files.insert(name.clone(), (0, text));
    reply(
        200,
        json!({"success": true, "msg": "logs requested", "result_url": format!("{}/_sim/logs/{name}.log", sh.base_url)}),
    )
}

async fn log_file(State(sh): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let key = name.trim_end_matches(".log");
    let mut w = sh.world();
    match w.log_files.get_mut(key) {
        // The first fetch finds the upload not finished yet, as on the real service.
        Some((polls, _)) if *polls == 0 => {
            *polls += 1;
            text(404, "not ready")
        }
        Some((_, body)) => {
            let mut resp = Response::new(Body::from(body.clone()));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            resp
        }
        None => text(404, "no such log"),
    }
}

async fn current_user(State(sh): State<Arc<Shared>>) -> Response {
    // The real endpoint returns the key itself; clients must drop it before printing.
    let key = sh.key.as_ref().map(|k| k.expose().to_owned());
    reply(
        200,
        json!({
            "id": 4242, "key_id": 77, "username": "drover-sim", "fullname": "drover simulator",
            "email": "sim@drover.invalid", "balance": 100.0, "credit": 100.0,
            "api_key": key, "ssh_key": Value::Null, "sid": "sim-session",
            "host_agreement_accepted": false, "has_billing": true, "can_pay": true,
        }),
    )
}

async fn pending_increases(State(sh): State<Arc<Shared>>) -> Response {
    let now = sh.now();
    let list = sh.world().pending_increases(now);
    reply(200, json!({"success": true, "count": list.len(), "pending_price_increases": list}))
}

async fn answer(sh: &Shared, body: &Bytes, accept: bool) -> Response {
    let id = match json_object(body) {
        Ok(m) => m.get("pending_price_increase_id").and_then(Value::as_u64),
        Err(resp) => return resp,
    };
    let Some(id) = id else {
        return error(400, "invalid_args", "error 400: pending_price_increase_id is required");
    };
    let now = sh.now();
    if sh.world().answer_increase(id, accept, now) {
        reply(200, json!({"success": true}))
    } else {
        error(404, "not_found", "no such pending price increase")
    }
}

async fn accept_increase(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    answer(&sh, &body, true).await
}

async fn reject_increase(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    answer(&sh, &body, false).await
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
    fn query_language() {
        let row =
            json!({"gpu_name": "RTX 4090", "num_gpus": 2, "dph_total": 0.5, "verified": true});
        assert!(satisfies(&row, "gpu_name", &json!({"eq": "RTX_4090"})).unwrap());
        assert!(satisfies(&row, "gpu_name", &json!({"in": ["H100 SXM", "RTX 4090"]})).unwrap());
        assert!(!satisfies(&row, "gpu_name", &json!({"notin": ["RTX 4090"]})).unwrap());
        assert!(satisfies(&row, "num_gpus", &json!({"gte": 2, "lt": 3})).unwrap());
        assert!(satisfies(&row, "num_gpus", &json!({"eq": "2", "gte": "1.5"})).unwrap());
        assert!(!satisfies(&row, "dph_total", &json!({"lte": 0.4})).unwrap());
        assert!(satisfies(&row, "verified", &json!({"eq": true})).unwrap());
        assert!(satisfies(&row, "no_such_field", &json!({"eq": 1})).unwrap());
        assert!(satisfies(&row, "num_gpus", &json!({"like": 1})).is_err());
    }

    #[test]
    fn plus_is_space() {
        let p = query_pairs("a=RTX+4090&b=%7B%7D&api_key=x");
        assert_eq!(p[0], ("a".into(), "RTX 4090".into()));
        assert_eq!(p[1].1, "{}");
        assert_eq!(p[2].0, "api_key");
    }
}
