//! The Vast.ai REST client.
//!
//! | Operation | Request | Retried on |
//! |---|---|---|
//! | [`search_offers`](VastClient::search_offers) | `POST /api/v0/bundles/` | 429, 502, 503, 504, connection, timeout |
//! | [`create_instance`](VastClient::create_instance) | `PUT /api/v0/asks/{id}/` | 429 and "no connection" only (see below) |
//! | [`show_instance`](VastClient::show_instance) | `GET /api/v0/instances/{id}/?owner=me` | as search |
//! | [`list_instances`](VastClient::list_instances) | `GET /api/v1/instances/` (every page) | as search |
//! | [`destroy_instance`](VastClient::destroy_instance) | `DELETE /api/v0/instances/{id}/` | as search |
//! | [`instance_logs`](VastClient::instance_logs) | `PUT /api/v0/instances/request_logs/{id}/`, then `GET result_url` | as search |
//! | [`current_user`](VastClient::current_user) | `GET /api/v0/users/current/` | as search |
//! | [`pending_price_increases`](VastClient::pending_price_increases) | `GET /api/v0/instances/pending-price-increases/` | as search |
//! | [`instance_charges`](VastClient::instance_charges) | `GET /api/v0/charges/` (every page) | as search |
//!
//! The base URL is configurable (the CLI's `VAST_URL` convention, [`base_url_from_env`]) so
//! tests point the client at the simulator. The key goes only in `Authorization: Bearer`,
//! never in a URL; plain `http://` is accepted only for loopback addresses, so the key never
//! crosses a network in clear. Redirects are not followed.
//!
//! **Create is never blindly retried.** A 429 or a refused connection proves the request was
//! not acted on, so those are retried. A timeout, a reset or a 502/503/504 may hide an instance
//! that was created: the client reports [`CreateOutcome::Unknown`] and the caller looks the
//! instance up by its label before it creates anything again. Any create response whose body
//! names `new_contract`, error or not, is reported with that id.
//!
//! **A failed list is an error, never an empty list.** A list whose body has no `instances`
//! array, a failed page, or a pagination token loop all fail the whole call.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{debug, trace, warn};

use crate::error::{ErrorBody, TransportFailure, VastError, classify};
use crate::model::{
    CreateOutcome, CreateRequest, Instance, Offer, OfferQuery, PriceIncrease, User,
};

use crate::metrics::ProviderMetrics;
use crate::redact::{Scrubber, redact_json};
use crate::retry::RetryPolicy;
use crate::secret::{ApiKey, REDACTED};

/// The real API's base URL.
pub const DEFAULT_BASE_URL: &str = "https://console.vast.ai";

/// The environment variable that overrides the base URL (the official CLI's convention).
pub const BASE_URL_ENV: &str = "VAST_URL";

/// Rows per page of the v1 instance list (the API's maximum).
const PAGE_LIMIT: u32 = 25;
/// Most pages one list call follows: 25 000 instances, far beyond any real account.
pub(crate) const MAX_PAGES: u32 = 1000;
/// Largest response body read, in bytes.
const MAX_BODY: usize = 8 << 20;
/// Polls of a log `result_url` before giving up (the CLI's count).
const LOG_POLLS: u32 = 30;

/// `VAST_URL` if it is set, otherwise `configured`.
pub fn base_url_from_env(configured: &str) -> String {
    match std::env::var(BASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => configured.to_owned(),
    }
}

/// Checks that a URL may carry the key (or, for a log `result_url`, be fetched): `https://`
/// anywhere, `http://` only on a loopback host; no user info, query or fragment.
pub(crate) fn check_url(url: &str, allow_query: bool) -> Result<(), &'static str> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err("it must start with https:// (or http:// for a loopback address)");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err("it has no host");
    }
    if authority.contains('@') {
        return Err("it must not carry user info");
    }
    if url.contains('#') || (!allow_query && url.contains('?')) {
        return Err("it must not carry a query or fragment");
    }
    if !secure {
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.split(':').next().unwrap_or("")
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err("plain http:// is allowed only for a loopback address");
        }
    }
    Ok(())
}

/// How a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Safe to repeat: retried on 429/502/503/504, connection and timeout errors.
    Idempotent,
    /// Create: retried only when the request provably was not acted on.
    Create,
}

/// A response with a 2xx status.
pub(crate) struct Reply {
    pub(crate) status: u16,
    body: Bytes,
}

/// A call that failed.
pub(crate) struct Failure {
    pub(crate) error: VastError,
    /// The server may have acted on the request.
    maybe_acted: bool,
    /// The body of the last response, if there was one.
    body: Option<Bytes>,
}

/// Whether a destroy found the instance or it was already gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destroyed {
    /// The API accepted the destroy.
    Accepted,
    /// The API says there is no such instance: already destroyed.
    AlreadyGone,
}

/// The Vast.ai REST client. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct VastClient {
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
    retry: RetryPolicy,
    /// The key in every encoding a server may echo it in.
    scrubber: Scrubber,
    /// Calls counted for `/metrics`.
    metrics: ProviderMetrics,
}

impl std::fmt::Debug for VastClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VastClient")
            .field("base", &self.base)
            .field("key", &REDACTED)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl VastClient {
    /// A client for `base_url` (e.g. [`DEFAULT_BASE_URL`], or the simulator's address).
    pub fn new(base_url: &str, key: ApiKey, retry: RetryPolicy) -> Result<Self, VastError> {
        let base = base_url.trim().trim_end_matches('/').to_owned();
        check_url(&base, false)
            .map_err(|reason| VastError::Config { reason: format!("base URL: {reason}") })?;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                VastError::Config { reason: "the API key cannot go in a header".into() }
            })?;
        auth.set_sensitive(true);
        // The one TLS provider (see the workspace manifest); a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(retry.request_timeout.min(Duration::from_secs(10)))
            .timeout(retry.request_timeout)
            .build()
            .map_err(|_| VastError::Config {
                reason: "the HTTP client could not be built".into(),
            })?;
        let scrubber = Scrubber::new(key.expose());
        Ok(Self { http, base, auth, retry, scrubber, metrics: ProviderMetrics::default() })
    }

    /// Counts every call into `metrics` (see [`crate::metrics`]).
    pub fn with_metrics(self, metrics: ProviderMetrics) -> Self {
        Self { metrics, ..self }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Removes the key from a text that is about to be logged or kept.
    fn scrub(&self, text: &str) -> String {
        self.scrubber.scrub(text)
    }

    /// One call with its retries, counted in the metrics.
    pub(crate) async fn request(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, Value)],
        body: Option<&Value>,
        mode: Mode,
    ) -> Result<Reply, Failure> {
        let started = Instant::now();
        let result = self.request_with_retries(op, method, path, query, body, mode).await;
        let outcome = result.as_ref().map_or_else(|f| f.error.kind(), |_| "ok");
        self.metrics.provider_call(op, outcome, started.elapsed());
        result
    }

    async fn request_with_retries(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, Value)],
        body: Option<&Value>,
        mode: Mode,
    ) -> Result<Reply, Failure> {
        let url = format!("{}{}{}", self.base, path, encode_query(query));
        let started = Instant::now();
        if let Some(b) = body {
            let mut shown = b.clone();
            redact_json(&mut shown);
            trace!(op, %method, path, body = %shown, "vast request");
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req =
                self.http.request(method.clone(), &url).header(AUTHORIZATION, self.auth.clone());
            if let Some(b) = body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.to_string());
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match read_body(resp).await {
                        // Provider text never carries the key on, in any encoding: it is
                        // blanked before the body is parsed, logged, stored or sent.
                        Ok(bytes) => Ok((status, self.scrubber.scrub_bytes(bytes))),
                        Err(()) => Err(TransportFailure::Other),
                    }
                }
                Err(e) => Err(if e.is_connect() {
                    TransportFailure::Connect
                } else if e.is_timeout() {
                    TransportFailure::Timeout
                } else {
                    TransportFailure::Other
                }),
            };
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let last: Failure = match outcome {
                Ok((status, bytes)) => {
                    let code = status.as_u16();
                    debug!(op, %method, path, status = code, attempt, elapsed_ms, "vast call");
                    if tracing::enabled!(tracing::Level::TRACE) {
                        trace!(op, body = %self.shown_body(&bytes), "vast response");
                    }
                    if status.is_success() {
                        return Ok(Reply { status: code, body: bytes });
                    }
                    let parsed = ErrorBody::parse(&bytes);
                    let error = classify(op, code, &parsed, attempt, |s| self.scrub(s));
                    let transient = matches!(code, 429 | 502 | 503 | 504);
                    // A 4xx is a decision the API made: nothing was done. A 5xx may come
                    // from a gateway after the API acted.
                    let failure = Failure { error, maybe_acted: code >= 500, body: Some(bytes) };
                    if !transient || (mode == Mode::Create && code != 429) {
                        return Err(failure);
                    }
                    failure
                }
                Err(failure) => {
                    debug!(op, %method, path, %failure, attempt, elapsed_ms, "vast call failed");
                    let f = Failure {
                        error: VastError::Transport { op, failure, attempts: attempt },
                        maybe_acted: failure != TransportFailure::Connect,
                        body: None,
                    };
                    if mode == Mode::Create && failure != TransportFailure::Connect {
                        return Err(f);
                    }
                    f
                }
            };
            if attempt >= self.retry.max_attempts.max(1) {
                return Err(last);
            }
            let pause = self.retry.backoff(attempt);
            if started.elapsed() + pause > self.retry.overall {
                return Err(Failure {
                    error: VastError::Deadline {
                        op,
                        attempts: attempt,
                        deadline: self.retry.overall,
                    },
                    ..last
                });
            }
            warn!(op, attempt, pause_ms = u64::try_from(pause.as_millis()).unwrap_or(0), error = %last.error, "retrying vast call");
            tokio::time::sleep(pause).await;
        }
    }

    /// A response body as it may appear in a trace line: JSON with secrets redacted, text
    /// bounded, the key scrubbed either way.
    fn shown_body(&self, bytes: &[u8]) -> String {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut v) => {
                redact_json(&mut v);
                self.scrub(&crate::redact::bounded(&v.to_string(), 2048))
            }
            Err(_) => self.scrub(&crate::redact::bounded(&String::from_utf8_lossy(bytes), 256)),
        }
    }

    /// Searches offers.
    pub async fn search_offers(&self, query: &OfferQuery) -> Result<Vec<Offer>, VastError> {
        const OP: &str = "search offers";
        let body = query.to_body();
        let reply = self
            .request(OP, Method::POST, "/api/v0/bundles/", &[], Some(&body), Mode::Idempotent)
            .await
            .map_err(|f| f.error)?;
        let v = success_json(OP, &reply)?;
        field(OP, reply.status, &v, "offers")
    }

    /// Creates an instance from an offer. See the module docs for what each outcome means;
    /// in particular, every outcome that may hide an instance says so.
    pub async fn create_instance(&self, offer_id: u64, req: &CreateRequest) -> CreateOutcome {
        const OP: &str = "create instance";
        let body = match serde_json::to_value(req) {
            Ok(v) => v,
            Err(_) => {
                return CreateOutcome::Refused(VastError::Config {
                    reason: "the create request could not be encoded".into(),
                });
            }
        };
        let path = format!("/api/v0/asks/{offer_id}/");
        match self.request(OP, Method::PUT, &path, &[], Some(&body), Mode::Create).await {
            Ok(reply) => {
                let parsed = serde_json::from_slice::<Value>(&reply.body).ok();
                let contract = parsed.as_ref().and_then(new_contract);
                let success =
                    parsed.as_ref().and_then(|v| v.get("success")).and_then(Value::as_bool);
                match (contract, success) {
                    (Some(contract_id), Some(true) | None) => {
                        CreateOutcome::Created { contract_id }
                    }
                    (Some(contract_id), Some(false)) => CreateOutcome::CreatedWithError {
                        contract_id,
                        error: classify(OP, reply.status, &ErrorBody::parse(&reply.body), 1, |s| {
                            self.scrub(s)
                        }),
                    },
                    (None, Some(false)) => CreateOutcome::Refused(classify(
                        OP,
                        reply.status,
                        &ErrorBody::parse(&reply.body),
                        1,
                        |s| self.scrub(s),
                    )),
                    // A 2xx that names no contract: something may exist; look it up.
                    (None, _) => CreateOutcome::Unknown(VastError::Malformed {
                        op: OP,
                        status: reply.status,
                        reason: "a successful create response names no new_contract".into(),
                    }),
                }
            }
            Err(failure) => {
                let contract = failure
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .as_ref()
                    .and_then(new_contract);
                match contract {
                    Some(contract_id) => {
                        CreateOutcome::CreatedWithError { contract_id, error: failure.error }
                    }
                    None if failure.maybe_acted => CreateOutcome::Unknown(failure.error),
                    None => CreateOutcome::Refused(failure.error),
                }
            }
        }
    }

    /// Reads one instance; `None` when the API says it does not exist (`{"instances": null}`
    /// or `no_such_instance`).
    pub async fn show_instance(&self, id: u64) -> Result<Option<Instance>, VastError> {
        const OP: &str = "show instance";
        let path = format!("/api/v0/instances/{id}/");
        let query = [("owner", json!("me"))];
        match self.request(OP, Method::GET, &path, &query, None, Mode::Idempotent).await {
            Ok(reply) => {
                let v = success_json(OP, &reply)?;
                match v.get("instances") {
                    None => Err(malformed(OP, reply.status, "no `instances` field")),
                    Some(Value::Null) => Ok(None),
                    Some(obj) => serde_json::from_value(obj.clone())
                        .map(Some)
                        .map_err(|_| malformed(OP, reply.status, "`instances` is not an instance")),
                }
            }
            Err(Failure { error: VastError::NotFound { .. }, .. }) => Ok(None),
            Err(f) => Err(f.error),
        }
    }

    /// Lists the account's instances, following every page; with `label`, only those with
    /// exactly that label. Any failure fails the whole call.
    pub async fn list_instances(&self, label: Option<&str>) -> Result<Vec<Instance>, VastError> {
        const OP: &str = "list instances";
        let filters = match label {
            Some(l) => json!({"label": {"eq": l}}),
            None => json!({}),
        };
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("select_filters", filters.clone()),
                ("order_by", json!([{"col": "id", "dir": "asc"}])),
                ("limit", json!(PAGE_LIMIT)),
            ];
            if let Some(t) = &token {
                query.push(("after_token", Value::String(t.clone())));
            }
            let reply = self
                .request(OP, Method::GET, "/api/v1/instances/", &query, None, Mode::Idempotent)
                .await
                .map_err(|f| f.error)?;
            let v = success_json(OP, &reply)?;
            let page: Vec<Instance> = field(OP, reply.status, &v, "instances")?;
            all.extend(page);
            match v.get("next_token") {
                None | Some(Value::Null) => return Ok(all),
                Some(Value::String(t)) if t.is_empty() => return Ok(all),
                Some(Value::String(t)) => {
                    if token.as_deref() == Some(t.as_str()) {
                        return Err(malformed(OP, reply.status, "next_token repeats"));
                    }
                    token = Some(t.clone());
                }
                Some(_) => return Err(malformed(OP, reply.status, "next_token is not a string")),
            }
        }
        Err(VastError::Malformed {
            op: OP,
            status: 200,
            reason: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Destroys an instance. Idempotent: an instance that is already gone is reported as
    /// such, not as an error. This does not confirm anything; see
    /// provisioner (`drover-provision`) for the confirmed destroy.
    pub async fn destroy_instance(&self, id: u64) -> Result<Destroyed, VastError> {
        const OP: &str = "destroy instance";
        let path = format!("/api/v0/instances/{id}/");
        match self.request(OP, Method::DELETE, &path, &[], Some(&json!({})), Mode::Idempotent).await
        {
            Ok(reply) => {
                success_json(OP, &reply)?;
                Ok(Destroyed::Accepted)
            }
            Err(Failure { error: VastError::NotFound { .. }, .. }) => Ok(Destroyed::AlreadyGone),
            Err(f) => Err(f.error),
        }
    }

    /// The last `tail` lines of an instance's log: `request_logs`, then the `result_url`
    /// it names, fetched without credentials until it is ready.
    pub async fn instance_logs(&self, id: u64, tail: u32) -> Result<String, VastError> {
        const OP: &str = "instance logs";
        let path = format!("/api/v0/instances/request_logs/{id}/");
        let body = json!({"tail": tail.to_string()});
        let reply = self
            .request(OP, Method::PUT, &path, &[], Some(&body), Mode::Idempotent)
            .await
            .map_err(|f| f.error)?;
        let v = success_json(OP, &reply)?;
        let url: String = field(OP, reply.status, &v, "result_url")?;
        check_url(&url, true).map_err(|reason| malformed(OP, reply.status, reason))?;
        for poll in 1..=LOG_POLLS {
            // No Authorization header: the result URL is a presigned object, not the API.
            let resp = self.http.get(&url).send().await;
            match resp {
                Ok(r) if r.status() == StatusCode::OK => {
                    let bytes = read_body(r).await.map_err(|()| VastError::Transport {
                        op: OP,
                        failure: TransportFailure::Other,
                        attempts: poll,
                    })?;
                    return Ok(self.scrub(&String::from_utf8_lossy(&bytes)));
                }
                Ok(r) => debug!(op = OP, status = r.status().as_u16(), poll, "log not ready"),
                Err(_) => debug!(op = OP, poll, "log fetch failed"),
            }
            tokio::time::sleep(self.retry.initial_backoff).await;
        }
        Err(VastError::Deadline {
            op: OP,
            attempts: LOG_POLLS,
            deadline: self.retry.initial_backoff * LOG_POLLS,
        })
    }

    /// The account. The body's `api_key` field, which the real API includes, is never read.
    pub async fn current_user(&self) -> Result<User, VastError> {
        const OP: &str = "current user";
        let reply = self
            .request(OP, Method::GET, "/api/v0/users/current/", &[], None, Mode::Idempotent)
            .await
            .map_err(|f| f.error)?;
        let v = success_json(OP, &reply)?;
        serde_json::from_value(v).map_err(|_| malformed(OP, reply.status, "not a user object"))
    }

    /// Hosts' pending price increases on the account's instances.
    pub async fn pending_price_increases(&self) -> Result<Vec<PriceIncrease>, VastError> {
        const OP: &str = "pending price increases";
        let reply = self
            .request(
                OP,
                Method::GET,
                "/api/v0/instances/pending-price-increases/",
                &[],
                None,
                Mode::Idempotent,
            )
            .await
            .map_err(|f| f.error)?;
        let v = success_json(OP, &reply)?;
        field(OP, reply.status, &v, "pending_price_increases")
    }

    /// Accepts (`true`) or rejects (`false`) a pending price increase.
    pub async fn answer_price_increase(&self, id: u64, accept: bool) -> Result<(), VastError> {
        let (op, path) = if accept {
            ("accept price increase", "/api/v0/instances/accept-price-increase/")
        } else {
            ("reject price increase", "/api/v0/instances/reject-price-increase/")
        };
        let body = json!({"pending_price_increase_id": id});
        let reply = self
            .request(op, Method::PUT, path, &[], Some(&body), Mode::Idempotent)
            .await
            .map_err(|f| f.error)?;
        success_json(op, &reply).map(drop)
    }
}

/// `?a=1&b=...`: each value JSON-encoded unless it is a string, then percent-encoded, as the
/// official CLI's `_build_url` does.
fn encode_query(query: &[(&str, Value)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let mut out = String::new();
    for (i, (name, value)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(name);
        out.push('=');
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.extend(utf8_percent_encode(&text, NON_ALPHANUMERIC));
    }
    out
}

async fn read_body(mut resp: reqwest::Response) -> Result<Bytes, ()> {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_BODY {
                    return Err(());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(buf)),
            Err(_) => return Err(()),
        }
    }
}

pub(crate) fn malformed(op: &'static str, status: u16, reason: &str) -> VastError {
    VastError::Malformed { op, status, reason: reason.to_owned() }
}

/// Parses a 2xx body as a JSON object and refuses `success: false`.
pub(crate) fn success_json(op: &'static str, reply: &Reply) -> Result<Value, VastError> {
    let v: Value = serde_json::from_slice(&reply.body)
        .map_err(|_| malformed(op, reply.status, "the body is not JSON"))?;
    if !v.is_object() {
        return Err(malformed(op, reply.status, "the body is not a JSON object"));
    }
    if v.get("success").and_then(Value::as_bool) == Some(false) {
        let parsed = ErrorBody::parse(&reply.body);
        return Err(classify(op, reply.status, &parsed, 1, |s| s.to_owned()));
    }
    Ok(v)
}

fn field<T: DeserializeOwned>(
    op: &'static str,
    status: u16,
    v: &Value,
    name: &str,
) -> Result<T, VastError> {
    let raw = v.get(name).ok_or_else(|| malformed(op, status, &format!("no `{name}` field")))?;
    serde_json::from_value(raw.clone())
        .map_err(|_| malformed(op, status, &format!("`{name}` has the wrong shape")))
}

fn new_contract(v: &Value) -> Option<u64> {
    v.get("new_contract").and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://console.vast.ai", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080", false).is_ok());
        assert!(check_url("http://localhost:1", false).is_ok());
        assert!(check_url("http://[::1]:9", false).is_ok());
        assert!(check_url("http://10.0.0.1:80", false).is_err());
        assert!(check_url("http://example.com", false).is_err());
        assert!(check_url("https://user:pw@example.com", false).is_err());
        assert!(check_url("https://example.com/?api_key=x", false).is_err());
        assert!(check_url("https://s3.example.com/x.log?sig=1", true).is_ok());
        assert!(check_url("ftp://x", false).is_err());
    }

    #[test]
    fn query_encoding_matches_the_cli() {
        let q = encode_query(&[
            ("select_filters", json!({"label": {"eq": "a:b"}})),
            ("limit", json!(25)),
            ("after_token", json!("t/1")),
        ]);
        assert_eq!(
            q,
            "?select_filters=%7B%22label%22%3A%7B%22eq%22%3A%22a%3Ab%22%7D%7D&limit=25&after_token=t%2F1"
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let key = ApiKey::new("super-secret-key-value").unwrap();
        let c = VastClient::new("http://127.0.0.1:1", key.clone(), RetryPolicy::default()).unwrap();
        assert!(!format!("{c:?}").contains("super-secret"));
        // The real API's base builds too: TLS (rustls) is available.
        let real = VastClient::new(DEFAULT_BASE_URL, key, RetryPolicy::default()).unwrap();
        assert_eq!(real.base_url(), DEFAULT_BASE_URL);
        let err = VastClient::new(
            "http://203.0.113.1",
            ApiKey::new("super-secret-key-value").unwrap(),
            RetryPolicy::default(),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("super-secret"));
    }
}
