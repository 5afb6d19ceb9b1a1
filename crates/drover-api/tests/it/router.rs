//! Router tests without sockets (`oneshot`): authentication on every protected route, scopes,
//! validation of every kind of malformed body, 413, 415, 429, production errors for a forced
//! internal error and a forced panic, idempotency, listing, cancelling, events, OpenAPI,
//! metrics, audit and token reload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use parking_lot::Mutex;
use std::io::Write;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use common::*;
use drover_api::{ApiState, Auditor, router};
use drover_proto::api::JobEventKind;
use drover_proto::config::{ApiMode, RateLimitConfig};
use drover_proto::{JobPhase, JobProgress, JobState};
use drover_store::Store;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct App {
    router: Router,
    state: Arc<ApiState>,
    backend: Arc<StoreBackend>,
    tokens: Tokens,
    logs: Arc<Mutex<Vec<u8>>>,
    _log_guard: tracing::subscriber::DefaultGuard,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn app_with(rate: RateLimitConfig, mode: ApiMode, development_flag: bool) -> App {
    app_limited(rate, mode, development_flag, |_| {}).await
}

/// An app whose configuration `adjust` changes last.
async fn app_limited(
    rate: RateLimitConfig,
    mode: ApiMode,
    development_flag: bool,
    adjust: impl FnOnce(&mut drover_proto::config::ApiConfig),
) -> App {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let writer = LogBuffer(logs.clone());
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(StoreBackend::open(dir.path()).await);
    let tokens = tokens();
    let mut config = config(&tokens, rate);
    config.mode = mode;
    adjust(&mut config);
    let auditor = Auditor::start(backend.clone(), Some(dir.path().join("audit.jsonl")));
    let mut registry = drover_api::metrics::Registry::default();
    registry.register("drover_jobs", "Jobs in the store", backend.jobs_gauge.clone());
    let state =
        ApiState::with_registry(&config, development_flag, backend.clone(), auditor, registry)
            .unwrap();
    App {
        router: router(state.clone()),
        state,
        backend,
        tokens,
        logs,
        _log_guard: guard,
        _dir: dir,
    }
}

async fn app() -> App {
    app_with(generous(), ApiMode::Production, false).await
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }
    fn pointers(&self) -> Vec<String> {
        self.json()["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["instance_path"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl App {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(value.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    async fn raw(&self, token: &str, content_type: Option<&str>, body: impl Into<Body>) -> Reply {
        let mut request =
            Request::post("/v1/jobs").header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        self.send(request.body(body.into()).unwrap()).await
    }

    fn admin(&self) -> &str {
        self.tokens.admin.expose()
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock()).into_owned()
    }

    fn every_token(&self) -> Vec<String> {
        let t = &self.tokens;
        [&t.admin, &t.reader, &t.metrics, &t.revoked, &t.unknown]
            .iter()
            .map(|t| t.expose().to_owned())
            .collect()
    }
}

fn job_body() -> Value {
    json!({"driver": "echo", "action": "run", "params": {"n": 3}, "max_runtime_s": 60, "budget_usd": 1.0})
}

/// Every protected route with a request that would otherwise succeed or reach its handler.
fn protected_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let estimate = json!({"gpu": {"count": 1}, "max_runtime_s": 3600, "budget_usd": 1.0});
    vec![
        (Method::POST, "/v1/jobs", Some(job_body())),
        (Method::GET, "/v1/jobs", None),
        (Method::GET, "/v1/jobs/job-1", None),
        (Method::DELETE, "/v1/jobs/job-1", None),
        (Method::GET, "/v1/jobs/job-1/events", None),
        (Method::POST, "/v1/estimates", Some(estimate)),
        (Method::GET, "/v1/drivers", None),
        (Method::GET, "/v1/openapi.json", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/no/such/route", None),
    ]
}

#[tokio::test]
async fn every_protected_route_refuses_missing_malformed_unknown_and_revoked_tokens() {
    let app = app().await;
    let checksum_typo = {
        let mut t = app.admin().to_owned();
        let c = if t.ends_with('A') { "B" } else { "A" };
        t.replace_range(t.len() - 1.., c);
        t
    };
    let presented: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some("hunter2".to_owned())),
        ("malformed checksum", Some(checksum_typo)),
        ("malformed truncated", Some(app.admin()[..40].to_owned())),
        ("unknown", Some(app.tokens.unknown.expose().to_owned())),
        ("revoked", Some(app.tokens.revoked.expose().to_owned())),
    ];
    for (method, uri, body) in protected_routes() {
        for (kind, token) in &presented {
            let reply = app.call(method.clone(), uri, token.as_deref(), body.clone()).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{kind} token on {method} {uri}: {}",
                reply.text
            );
            let www = reply.headers.get(header::WWW_AUTHENTICATE).unwrap().to_str().unwrap();
            assert!(www.starts_with("Bearer"), "{www}");
            let body = reply.json();
            assert_eq!(body["error"], "unauthorized");
            assert_eq!(body["request_id"], reply.headers["x-request-id"].to_str().unwrap());
            if let Some(token) = token {
                assert!(!reply.text.contains(token.as_str()));
            }
        }
        // A non-Bearer scheme is "missing".
        let mut request = Request::builder().method(method.clone()).uri(uri);
        request = request.header(header::AUTHORIZATION, format!("Basic {}", app.admin()));
        let reply = app.send(request.body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "Basic on {method} {uri}");
    }
    // The one open route.
    let health = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok"}));

    // Audit: each refusal counted with its reason, as `anonymous`, and no token anywhere.
    app.state.anonymous.flush(&app.state.auditor).await;
    app.state.auditor.flush().await;
    let audit = app.backend.audit.lock().clone();
    let results: Vec<&str> = audit.iter().map(|e| e.result.as_str()).collect();
    for reason in ["missing", "malformed", "unknown", "revoked"] {
        assert!(
            results.contains(&format!("unauthenticated:{reason}").as_str()),
            "{reason} not audited"
        );
    }
    assert!(
        audit
            .iter()
            .filter(|e| e.result.starts_with("unauthenticated"))
            .all(|e| e.actor == "anonymous")
    );
    let audit_text = serde_json::to_string(&audit).unwrap();
    let file = std::fs::read_to_string(app._dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(file.lines().count(), audit.len());
    for token in app.every_token() {
        assert!(
            !audit_text.contains(&token) && !file.contains(&token) && !app.logs().contains(&token)
        );
        assert!(!audit_text.contains(&token[7..30]), "a token fragment reached the audit log");
    }
}

#[tokio::test]
async fn a_valid_token_without_the_scope_gets_403_and_with_it_gets_through() {
    let app = app().await;
    let reader = app.tokens.reader.expose();
    let metrics = app.tokens.metrics.expose();
    for (method, uri, body) in protected_routes() {
        let needs = match (method.as_str(), uri) {
            ("GET", "/v1/openapi.json" | "/no/such/route") => "any",
            ("GET", "/v1/drivers") => "drivers:read",
            ("GET", "/metrics") => "metrics:read",
            ("GET", _) => "jobs:read",
            _ => "jobs:write",
        };
        let as_reader = app.call(method.clone(), uri, Some(reader), body.clone()).await;
        let as_metrics = app.call(method.clone(), uri, Some(metrics), body.clone()).await;
        let as_admin = app.call(method.clone(), uri, Some(app.admin()), body.clone()).await;
        let forbidden =
            |r: &Reply| r.status == StatusCode::FORBIDDEN && r.json()["error"] == "forbidden";
        assert!(!forbidden(&as_admin), "{method} {uri} as admin: {}", as_admin.text);
        assert!(as_admin.status != StatusCode::UNAUTHORIZED);
        match needs {
            "any" => assert!(!forbidden(&as_reader) && !forbidden(&as_metrics), "{method} {uri}"),
            "jobs:read" => {
                assert!(!forbidden(&as_reader) && forbidden(&as_metrics), "{method} {uri}")
            }
            "metrics:read" => {
                assert!(forbidden(&as_reader) && !forbidden(&as_metrics), "{method} {uri}")
            }
            _ => assert!(
                forbidden(&as_reader) && forbidden(&as_metrics),
                "{method} {uri}: {}",
                as_reader.text
            ),
        }
    }
}

#[tokio::test]
async fn every_kind_of_malformed_body_gets_400_with_pointers() {
    let app = app().await;
    let token = app.admin().to_owned();
    let invalid = |reply: &Reply| {
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
        assert_eq!(reply.json()["error"], "invalid_request");
        reply.pointers()
    };
    let mut deep = String::new();
    for _ in 0..200 {
        deep.push('[');
    }
    let syntax: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{\"driver\": ".to_vec()),
        ("duplicate key", br#"{"driver": "echo", "driver": "echo"}"#.to_vec()),
        ("not UTF-8", b"{\"driver\": \"\xff\"}".to_vec()),
        ("empty", Vec::new()),
        ("nested too deep", deep.into_bytes()),
        ("trailing data", br#"{} {}"#.to_vec()),
    ];
    for (kind, bytes) in syntax {
        let reply = app.raw(&token, Some("application/json"), bytes).await;
        assert_eq!(invalid(&reply), [""], "{kind}");
        assert!(
            reply.json()["violations"][0]["message"].as_str().unwrap().contains("JSON")
                || kind == "not UTF-8",
            "{kind}: {}",
            reply.text
        );
    }

    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("not an object", json!([1, 2]), vec![""]),
        ("missing required", json!({"driver": "echo", "action": "run"}), vec!["", ""]),
        (
            "wrong type",
            {
                let mut b = job_body();
                b["max_runtime_s"] = json!("60");
                b
            },
            vec!["/max_runtime_s"],
        ),
        (
            "out of range",
            {
                let mut b = job_body();
                b["max_runtime_s"] = json!(0);
                b
            },
            vec!["/max_runtime_s"],
        ),
        (
            "negative budget",
            {
                let mut b = job_body();
                b["budget_usd"] = json!(-1);
                b
            },
            vec!["/budget_usd"],
        ),
        (
            "unknown field",
            {
                let mut b = job_body();
                b["priority"] = json!(1);
                b
            },
            vec![""],
        ),
        (
            "bad id grammar",
            {
                let mut b = job_body();
                b["driver"] = json!("Echo Driver");
                b
            },
            vec!["/driver"],
        ),
        (
            "too long",
            {
                let mut b = job_body();
                b["labels"] = json!({"team": "x".repeat(300)});
                b
            },
            vec!["/labels/team"],
        ),
        (
            "bad nested",
            {
                let mut b = job_body();
                b["gpu"] = json!({"count": 99});
                b
            },
            vec!["/gpu/count"],
        ),
        (
            "bad webhook",
            {
                let mut b = job_body();
                b["webhook_url"] = json!("ftp://x.test/hook");
                b
            },
            vec!["/webhook_url"],
        ),
        (
            "params break the driver's schema",
            {
                let mut b = job_body();
                b["params"] = json!({"n": 11, "extra": true});
                b
            },
            vec!["/params", "/params/n"],
        ),
        (
            "unknown driver",
            {
                let mut b = job_body();
                b["driver"] = json!("nope");
                b
            },
            vec!["/driver"],
        ),
        (
            "unknown action",
            {
                let mut b = job_body();
                b["action"] = json!("fly");
                b
            },
            vec!["/action"],
        ),
        (
            "plain http webhook",
            {
                let mut b = job_body();
                b["webhook_url"] = json!("http://x.test/hook");
                b
            },
            vec!["/webhook_url"],
        ),
    ];
    for (kind, body, mut expected) in cases {
        let reply = app.call(Method::POST, "/v1/jobs", Some(&token), Some(body)).await;
        let mut pointers = invalid(&reply);
        pointers.sort();
        expected.sort();
        assert_eq!(pointers, expected, "{kind}: {}", reply.text);
        for v in reply.json()["violations"].as_array().unwrap() {
            assert!(
                v["schema_path"].is_string()
                    && v["message"].as_str().is_some_and(|m| !m.is_empty())
            );
        }
    }
    // A params violation points into the driver's schema.
    let mut b = job_body();
    b["params"] = json!({"n": 11});
    let reply = app.call(Method::POST, "/v1/jobs", Some(&token), Some(b)).await;
    assert_eq!(reply.json()["violations"][0]["schema_path"], "/actions/run/properties/n/maximum");
    // Values are never echoed.
    let mut b = job_body();
    b["labels"] = json!({"team": format!("s3cr3t-{}", "y".repeat(300))});
    let reply = app.call(Method::POST, "/v1/jobs", Some(&token), Some(b)).await;
    assert!(!reply.text.contains("s3cr3t"), "{}", reply.text);

    // Estimates and the list query are validated too.
    let reply = app
        .call(
            Method::POST,
            "/v1/estimates",
            Some(&token),
            Some(json!({"gpu": {"count": 0}, "max_runtime_s": 10, "budget_usd": 1})),
        )
        .await;
    let mut pointers = invalid(&reply);
    pointers.sort();
    assert_eq!(pointers, ["/gpu/count", "/max_runtime_s"]);
    for (query, pointer) in [
        ("limit=0", "/limit"),
        ("limit=abc", "/limit"),
        ("state=exploded", "/state"),
        ("colour=red", ""),
        ("limit=1&limit=2", "/limit"),
    ] {
        let reply = app.call(Method::GET, &format!("/v1/jobs?{query}"), Some(&token), None).await;
        assert_eq!(invalid(&reply), [pointer], "{query}");
    }
    let reply = app.call(Method::GET, "/v1/jobs/not%20an%20id", Some(&token), None).await;
    assert_eq!(invalid(&reply), ["/id"]);
    // Nothing invalid reached the store.
    assert!(
        app.backend
            .store
            .list_jobs(&drover_store::JobFilter { limit: 10, ..Default::default() })
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_other_media_types_415() {
    let app = app().await;
    let token = app.admin().to_owned();
    let big = format!(r#"{{"driver": "echo", "pad": "{}"}}"#, "x".repeat(5000));
    let reply = app.raw(&token, Some("application/json"), big.clone()).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"], "payload_too_large");
    // Without a Content-Length (streamed), the limit still holds.
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(512)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let reply = app.raw(&token, Some("application/json"), Body::from_stream(chunks)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
    ] {
        let reply = app.raw(&token, content_type, job_body().to_string()).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}");
        assert_eq!(reply.json()["error"], "unsupported_media_type");
    }
    let reply =
        app.raw(&token, Some("application/json; charset=utf-8"), job_body().to_string()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
}

#[tokio::test]
async fn each_token_is_rate_limited_on_its_own_with_retry_after() {
    let app =
        app_with(RateLimitConfig { per_second: 1, burst: 3 }, ApiMode::Production, false).await;
    for _ in 0..3 {
        assert_eq!(
            app.call(Method::GET, "/v1/jobs", Some(app.admin()), None).await.status,
            StatusCode::OK
        );
    }
    let limited = app.call(Method::GET, "/v1/jobs", Some(app.admin()), None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.json()["error"], "rate_limited");
    let retry: u64 = limited.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry));
    // Another token has its own budget.
    assert_eq!(
        app.call(Method::GET, "/v1/jobs", Some(app.tokens.reader.expose()), None).await.status,
        StatusCode::OK
    );
}

fn assert_no_internals(text: &str) {
    for leak in [
        "/home",
        ".rs",
        "SQL",
        "jobs_v2",
        "panicked",
        "index out of bounds",
        "backtrace",
        "src/",
        "Error {",
    ] {
        assert!(!text.contains(leak), "the body leaks {leak:?}: {text}");
    }
}

#[tokio::test]
async fn production_mode_turns_internal_errors_and_panics_into_a_bare_500() {
    let app = app().await;
    for fault in ["internal", "panic"] {
        let mut body = job_body();
        body["labels"] = json!({FAULT_LABEL: fault});
        let reply = app.call(Method::POST, "/v1/jobs", Some(app.admin()), Some(body)).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{fault}");
        let request_id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(reply.json(), json!({"error": "internal", "request_id": request_id}), "{fault}");
        assert_no_internals(&reply.text);
        // The details are in the log, under the same request id.
        let logs = app.logs();
        let line = logs
            .lines()
            .find(|l| l.contains(&request_id))
            .unwrap_or_else(|| panic!("no log line for {request_id}: {logs}"));
        let expected = if fault == "internal" { "no such table" } else { "index out of bounds" };
        assert!(line.contains(expected), "{line}");
    }
    // The server goes on serving after a panic.
    let reply = app.call(Method::POST, "/v1/jobs", Some(app.admin()), Some(job_body())).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let metrics = app.call(Method::GET, "/metrics", Some(app.admin()), None).await;
    assert!(metrics.text.contains("drover_api_panics_total 1"), "{}", metrics.text);
}

#[tokio::test]
async fn development_mode_needs_the_flag_and_the_config_and_then_adds_details() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(StoreBackend::open(dir.path()).await);
    let tokens = tokens();
    let mut config = config(&tokens, generous());
    config.mode = ApiMode::Development;
    let auditor = Auditor::start(backend.clone(), None);
    let refused = ApiState::new(&config, false, backend.clone(), auditor.clone()).unwrap_err();
    assert!(refused.to_string().contains("--development"), "{refused}");
    config.mode = ApiMode::Production;
    assert!(ApiState::new(&config, true, backend.clone(), auditor).is_err());

    let app = app_with(generous(), ApiMode::Development, true).await;
    assert!(app.logs().contains("DEVELOPMENT MODE"), "no loud warning: {}", app.logs());
    let mut body = job_body();
    body["labels"] = json!({FAULT_LABEL: "internal"});
    let reply = app.call(Method::POST, "/v1/jobs", Some(app.admin()), Some(body)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.json()["detail"].as_str().unwrap().contains("no such table"));
}

#[tokio::test]
async fn a_configured_token_that_is_not_256_bits_or_is_malformed_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(StoreBackend::open(dir.path()).await);
    let tokens = tokens();
    let auditor = Auditor::start(backend.clone(), None);
    let mut config = config(&tokens, generous());
    config.tokens[1].sha256 = config.tokens[0].sha256.clone();
    assert!(ApiState::new(&config, false, backend.clone(), auditor.clone()).is_err());
    let mut config = common::config(&tokens, generous());
    config.tokens[0].sha256.truncate(40);
    assert!(ApiState::new(&config, false, backend.clone(), auditor).is_err());
    // An entry without a 256-bit format is not even a valid configuration.
    let entry = json!({"name": "legacy", "sha256": "a".repeat(64), "scopes": ["jobs:read"]});
    assert!(serde_json::from_value::<drover_proto::config::TokenEntry>(entry.clone()).is_err());
    let mut weak = entry;
    weak["format"] = json!("hex-128");
    assert!(serde_json::from_value::<drover_proto::config::TokenEntry>(weak).is_err());
}

#[tokio::test]
async fn idempotency_keys_replay_and_conflict() {
    let app = app().await;
    let post = |body: Value, key: &'static str| {
        let request = Request::post("/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin()))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap();
        app.send(request)
    };
    let first = post(job_body(), "retry-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = post(job_body(), "retry-1").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers["idempotency-replayed"], "true");
    assert_eq!(again.json()["id"], first.json()["id"]);
    let mut other = job_body();
    other["budget_usd"] = json!(2.0);
    let conflict = post(other, "retry-1").await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    let bad = post(job_body(), "has space").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn jobs_are_listed_fetched_cancelled_and_followed() {
    let app = app().await;
    let token = app.admin().to_owned();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = job_body();
        body["labels"] = json!({"batch": if i < 2 { "a" } else { "b" }});
        let reply = app.call(Method::POST, "/v1/jobs", Some(&token), Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let job = reply.json();
        assert_eq!(
            reply.headers[header::LOCATION],
            format!("/v1/jobs/{}", job["id"].as_str().unwrap())
        );
        assert_eq!(job["state"], "queued");
        assert_eq!(job["submitted_by"], "admin");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let page = app.call(Method::GET, "/v1/jobs?limit=2", Some(&token), None).await.json();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(page["jobs"][0]["id"], ids[4].as_str());
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = app
        .call(Method::GET, &format!("/v1/jobs?limit=2&cursor={cursor}"), Some(&token), None)
        .await
        .json();
    assert_eq!(next["jobs"][0]["id"], ids[2].as_str());
    let labelled = app
        .call(Method::GET, "/v1/jobs?label=batch%3Da&driver=echo", Some(&token), None)
        .await
        .json();
    assert_eq!(labelled["jobs"].as_array().unwrap().len(), 2);

    let id = &ids[0];
    let job_id: drover_proto::JobId = id.parse().unwrap();
    assert_eq!(
        app.call(Method::GET, &format!("/v1/jobs/{id}"), Some(&token), None).await.json()["id"],
        id.as_str()
    );
    assert_eq!(
        app.call(Method::GET, "/v1/jobs/job-missing", Some(&token), None).await.status,
        StatusCode::NOT_FOUND
    );

    app.backend
        .push(
            &job_id,
            JobEventKind::JobState(JobState {
                job_id: job_id.clone(),
                state: JobPhase::Running,
                message: None,
            }),
        )
        .await;
    app.backend
        .push(
            &job_id,
            JobEventKind::JobProgress(JobProgress {
                job_id: job_id.clone(),
                current: 1.0,
                total: Some(2.0),
                unit: None,
                message: None,
            }),
        )
        .await;
    let cancelled = app.call(Method::DELETE, &format!("/v1/jobs/{id}"), Some(&token), None).await;
    assert_eq!(cancelled.json()["state"], "cancelled");
    let twice = app.call(Method::DELETE, &format!("/v1/jobs/{id}"), Some(&token), None).await;
    assert_eq!(twice.status, StatusCode::CONFLICT);

    // The whole history, then resumed after event 2.
    let all = app.call(Method::GET, &format!("/v1/jobs/{id}/events"), Some(&token), None).await;
    assert_eq!(all.headers[header::CONTENT_TYPE], "text/event-stream");
    let ids_seen: Vec<&str> = all.text.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert_eq!(ids_seen, ["1", "2", "3", "4"]);
    assert!(all.text.contains("event: job_progress"));
    let request = Request::get(format!("/v1/jobs/{id}/events"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("last-event-id", "2")
        .body(Body::empty())
        .unwrap();
    let resumed = app.send(request).await;
    let ids_seen: Vec<&str> = resumed.text.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert_eq!(ids_seen, ["3", "4"]);
    let data: Value =
        serde_json::from_str(resumed.text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap())
            .unwrap();
    assert_eq!(data["event"]["type"], "job_progress");
    let bad = Request::get(format!("/v1/jobs/{id}/events"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("last-event-id", "three")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(bad).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn estimates_drivers_readiness_and_metrics_answer() {
    let app = app().await;
    let token = app.admin().to_owned();
    let estimate = app
        .call(Method::POST, "/v1/estimates", Some(&token), Some(json!({"gpu": {"count": 1, "max_usd_per_hour": 0.5}, "max_runtime_s": 3600, "budget_usd": 0.1})))
        .await
        .json();
    assert_eq!(estimate["allowed"], false);
    assert!(estimate["reason"].is_string());
    let drivers = app.call(Method::GET, "/v1/drivers", Some(&token), None).await.json();
    assert_eq!(drivers["drivers"][0]["actions"]["run"], echo_schema());
    let ready = app.call(Method::GET, "/readyz", Some(&token), None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["checks"]["store"]["ok"], true);
    let metrics = app.call(Method::GET, "/metrics", Some(app.tokens.metrics.expose()), None).await;
    assert!(metrics.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    assert!(
        metrics.text.contains(
            "drover_api_requests_total{method=\"GET\",route=\"/v1/drivers\",status=\"200\"} 1"
        ),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("drover_jobs 0"));
    assert_eq!(
        app.call(Method::PUT, "/v1/drivers", Some(&token), None).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

/// Checks a Prometheus text exposition the way a scraper reads it: every line is `# HELP`,
/// `# TYPE` or `name{labels} value`; every sample belongs to a family with a `# TYPE` given
/// before it, and only histograms have `_bucket`/`_sum`/`_count` samples; label values are
/// quoted; values are numbers, never `-0`. Returns the samples as (name, labels, value).
fn parse_exposition(text: &str) -> Vec<(String, String, f64)> {
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE: {line}"));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "stray line: {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(!value.starts_with("-0"), "negative zero: {line}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    assert!(quoted.starts_with('"'), "{line}");
                }
                (name, labels)
            }
            None => (series, ""),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE before {line}");
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

/// Issue 17: the metrics were hand-formatted text with a latency summary; they are encoded
/// by prometheus-client, parse as the exposition format, and latency is a histogram.
#[tokio::test]
async fn metrics_parse_as_the_exposition_format_with_a_latency_histogram() {
    let app = app().await;
    let token = app.admin().to_owned();
    app.call(Method::GET, "/v1/drivers", Some(&token), None).await;
    app.call(Method::GET, "/v1/jobs", Some("not-a-token"), None).await;
    let scraper = app.tokens.metrics.expose().to_owned();
    let response = app.call(Method::GET, "/metrics", Some(&scraper), None).await;
    assert_eq!(
        response.headers[header::CONTENT_TYPE].to_str().unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let samples = parse_exposition(&response.text);
    let bucket = samples
        .iter()
        .find(|(name, labels, _)| {
            name == "drover_api_request_duration_seconds_bucket"
                && labels.contains("route=\"/v1/drivers\"")
                && labels.contains("le=\"+Inf\"")
        })
        .unwrap_or_else(|| panic!("no +Inf bucket for /v1/drivers in\n{}", response.text));
    assert_eq!(bucket.2, 1.0);
    let named = |wanted: &str| samples.iter().any(|(name, _, _)| name == wanted);
    for wanted in [
        "drover_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "drover_api_auth_failures_total",
        "drover_jobs",
    ] {
        assert!(named(wanted), "no {wanted} in\n{}", response.text);
    }
    // A scraper asking for OpenMetrics gets it.
    let request = Request::get("/metrics")
        .header(header::AUTHORIZATION, format!("Bearer {scraper}"))
        .header(header::ACCEPT, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        .body(Body::empty())
        .unwrap();
    let open = app.send(request).await;
    assert!(
        open.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(open.text.ends_with("# EOF\n"), "{}", open.text);
}

#[tokio::test]
async fn openapi_describes_every_route_with_the_schemas_validation_uses() {
    let app = app().await;
    let doc = app.call(Method::GET, "/v1/openapi.json", Some(app.admin()), None).await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every route the router serves is described, and every described route is served.
    for (method, path) in drover_api::openapi::ROUTES {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not described");
        let uri = path.replace("{id}", "job-1");
        let reply =
            app.call(method.to_uppercase().parse().unwrap(), &uri, Some(app.admin()), None).await;
        let unrouted = serde_json::from_str::<Value>(&reply.text)
            .is_ok_and(|body| body["message"] == "no such route");
        assert!(!unrouted, "{method} {path} is not routed");
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
    let described: usize =
        doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(described, drover_api::openapi::ROUTES.len());
    for body in ["JobSpec", "EstimateRequest"] {
        assert!(doc.to_string().contains(&format!("\"#/components/schemas/{body}\"")));
    }
    // Every reference resolves from the document's root, as OpenAPI tools resolve them
    // (issue 17: `#/$defs/...` pointers inside components did not), and no schema still
    // carries its own `$defs` or `$id`.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"").skip(1) {
        let reference = &part[..part.find('"').unwrap()];
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a reference outside components/schemas: {reference}"));
        assert!(doc["components"]["schemas"][name].is_object(), "dangling reference to {name}");
    }
    assert!(!text.contains("\"$defs\"") && !text.contains("\"$id\""));
    // The served schemas judge bodies as validation does: each one, resolved through the
    // document, against the bodies the API accepts and refuses.
    let served = |name: &str| {
        let root = json!({"$ref": format!("#/components/schemas/{name}"),
                          "components": doc["components"].clone()});
        drover_schema::SchemaChecker::new(&root).unwrap()
    };
    let validated = |name: &str| &drover_api::body::ApiSchemas::shared().get(name).unwrap().checker;
    let estimate = json!({"gpu": {"count": 1}, "max_runtime_s": 3600, "budget_usd": 1.0});
    for (name, good, bad) in [
        ("JobSpec", job_body(), json!({"driver": "echo"})),
        ("EstimateRequest", estimate, json!({"gpu": {"count": 0}})),
        ("JobListQuery", json!({"limit": 5}), json!({"limit": "many"})),
    ] {
        for body in [&good, &bad] {
            assert_eq!(
                served(name).check(body).is_ok(),
                validated(name).check(body).is_ok(),
                "{name}: {body}"
            );
        }
        assert!(served(name).check(&good).is_ok() && served(name).check(&bad).is_err(), "{name}");
    }
    // The committed copy is the served document (`drover schemas --check` guards it too).
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/api/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(committed, doc, "schemas/api/openapi.json is stale: cargo run -p drover -- schemas");
}

#[tokio::test]
async fn tokens_are_replaced_on_reload_and_revoked_ones_stop_working() {
    let app = app().await;
    let fresh = drover_api::token::ApiToken::generate().unwrap();
    assert_eq!(
        app.call(Method::GET, "/v1/jobs", Some(fresh.expose()), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut config = config(&app.tokens, generous());
    config.tokens.push(entry("rotated", &fresh, &[drover_proto::config::Scope::JobsRead], false));
    config.tokens[0].revoked = true;
    let loader: drover_api::reload::Loader = Box::new(move || Ok(config.clone()));
    assert_eq!(drover_api::reload::reload_now(&app.state, &loader).await, Some(6));
    assert_eq!(
        app.call(Method::GET, "/v1/jobs", Some(fresh.expose()), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.call(Method::GET, "/v1/jobs", Some(app.admin()), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A bad configuration is refused whole; the tokens in force stay.
    let mut bad = common::config(&app.tokens, generous());
    bad.tokens[1].sha256 = bad.tokens[0].sha256.clone();
    let loader: drover_api::reload::Loader = Box::new(move || Ok(bad.clone()));
    assert_eq!(drover_api::reload::reload_now(&app.state, &loader).await, None);
    assert_eq!(
        app.call(Method::GET, "/v1/jobs", Some(fresh.expose()), None).await.status,
        StatusCode::OK
    );
    let broken: drover_api::reload::Loader =
        Box::new(|| Err("line 3: sha256 = \"drover_pasted-token\"".into()));
    assert_eq!(drover_api::reload::reload_now(&app.state, &broken).await, None);
    assert!(!app.logs().contains("pasted-token"), "a loader error reached the log");
    app.state.auditor.flush().await;
    let audit = app.backend.audit.lock().clone();
    let reloads: Vec<&str> = audit
        .iter()
        .filter(|e| e.action == "api.tokens.reload")
        .map(|e| e.result.as_str())
        .collect();
    assert_eq!(reloads, ["ok", "refused", "refused"]);
}

/// Issue 21: a job belongs to the token that submitted it. Without `jobs:admin` another
/// token's job is a 404 (the same as no job) on read, events and cancel, and lists hold only
/// the caller's own jobs; `jobs:admin` sees and cancels everyone's.
#[tokio::test]
async fn cross_token_reads_and_cancels_are_refused_without_jobs_admin() {
    let app = app().await;
    let (admin, tenant, reader) =
        (app.admin(), app.tokens.tenant.expose(), app.tokens.reader.expose());
    let tenants_job = app.call(Method::POST, "/v1/jobs", Some(tenant), Some(job_body())).await;
    assert_eq!(tenants_job.status, StatusCode::CREATED, "{}", tenants_job.text);
    let tenants_job = tenants_job.json()["id"].as_str().unwrap().to_owned();
    let admins_job = app.call(Method::POST, "/v1/jobs", Some(admin), Some(job_body())).await;
    let admins_job = admins_job.json()["id"].as_str().unwrap().to_owned();

    for (token, job) in [(reader, &tenants_job), (reader, &admins_job), (tenant, &admins_job)] {
        for (method, uri) in [
            (Method::GET, format!("/v1/jobs/{job}")),
            (Method::GET, format!("/v1/jobs/{job}/events")),
        ] {
            let reply = app.call(method.clone(), &uri, Some(token), None).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {uri}: {}", reply.text);
            assert!(!reply.text.contains("\"spec\""), "{}", reply.text);
        }
    }
    let uri = format!("/v1/jobs/{admins_job}");
    let cancel = app.call(Method::DELETE, &uri, Some(tenant), None).await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    let still = app.backend.store.get_job(&admins_job.parse().unwrap()).await.unwrap().unwrap();
    assert!(!still.state.is_terminal(), "the other token's job was not cancelled");

    let ids = |reply: Reply| -> Vec<String> {
        reply.json()["jobs"].as_array().unwrap().iter().map(|j| j["id"].to_string()).collect()
    };
    let listed = ids(app.call(Method::GET, "/v1/jobs", Some(tenant), None).await);
    assert_eq!(listed, vec![format!("\"{tenants_job}\"")]);
    assert!(ids(app.call(Method::GET, "/v1/jobs", Some(reader), None).await).is_empty());

    // Its own job, and anyone's with jobs:admin.
    let uri = format!("/v1/jobs/{tenants_job}");
    let own = app.call(Method::GET, &uri, Some(tenant), None).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(ids(app.call(Method::GET, "/v1/jobs", Some(admin), None).await).len(), 2);
    let uri = format!("/v1/jobs/{tenants_job}");
    let as_admin = app.call(Method::GET, &uri, Some(admin), None).await;
    assert_eq!(as_admin.status, StatusCode::OK);
    let uri = format!("/v1/jobs/{tenants_job}");
    let cancel = app.call(Method::DELETE, &uri, Some(admin), None).await;
    assert_eq!(cancel.status, StatusCode::OK);
}

/// Probes (issue 17): `/healthz` and `/readyz` answer a caller without any `Authorization`
/// header, as the kubelet calls them, and `/readyz` then says only ready or not; a presented
/// token must still be valid, and a valid one sees every check.
#[tokio::test]
async fn probes_answer_without_a_token_and_reveal_nothing_but_readiness() {
    let app = app().await;
    for uri in ["/healthz", "/readyz"] {
        let reply = app.call(Method::GET, uri, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text);
    }
    let anonymous = app.call(Method::GET, "/readyz", None, None).await.json();
    assert_eq!(anonymous, json!({"ready": true, "checks": {}}));
    for bad in ["hunter2", app.tokens.unknown.expose(), app.tokens.revoked.expose()] {
        let reply = app.call(Method::GET, "/readyz", Some(bad), None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    }
    let detailed = app.call(Method::GET, "/readyz", Some(app.tokens.reader.expose()), None).await;
    assert_eq!(detailed.json()["checks"]["store"]["ok"], true, "{}", detailed.text);
}

/// Issue 21: a flood without a token gets 429 once its peer's burst is spent, leaves a
/// bounded number of audit rows (one per kind of rejection per window, with the count), and
/// never slows down a client with a valid token.
#[tokio::test]
async fn an_unauthenticated_flood_is_throttled_and_audited_in_aggregate() {
    let app = app_limited(generous(), ApiMode::Production, false, |config| {
        config.limits = drover_proto::config::ApiLimitsConfig::default();
    })
    .await;
    let limits = app.state.settings.limits;
    let flood = 2000;
    let (mut unauthorized, mut throttled) = (0, 0);
    for n in 0..flood {
        let token = (n % 2 == 0).then_some("drover_not-a-token");
        let reply = app.call(Method::GET, "/v1/jobs", token, None).await;
        match reply.status {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(reply.headers.contains_key(header::RETRY_AFTER));
                throttled += 1;
            }
            other => panic!("unexpected {other}"),
        }
        if n % 500 == 0 {
            let ok = app.call(Method::GET, "/v1/jobs", Some(app.admin()), None).await;
            assert_eq!(ok.status, StatusCode::OK, "an authenticated client is still served");
        }
    }
    // The burst, plus whatever refilled while the loop ran (a few seconds at most).
    assert!(unauthorized >= limits.unauthenticated_burst as usize, "{unauthorized}");
    assert!(unauthorized <= limits.unauthenticated_burst as usize + 40, "{unauthorized}");
    assert_eq!(unauthorized + throttled, flood);

    app.state.anonymous.flush(&app.state.auditor).await;
    app.state.auditor.flush().await;
    let audit = app.backend.audit.lock().clone();
    let anonymous: Vec<_> = audit.iter().filter(|e| e.actor == "anonymous").collect();
    assert!(anonymous.len() <= 5, "{} audit rows for the flood", anonymous.len());
    assert!(audit.len() < 20, "{} audit rows in all", audit.len());
    let counted: u64 = anonymous.iter().map(|e| e.metadata["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, flood as u64, "every rejection is counted");
    let results: Vec<&str> = anonymous.iter().map(|e| e.result.as_str()).collect();
    assert!(results.contains(&"unauthenticated:throttled"), "{results:?}");
    assert!(anonymous.iter().all(|e| e.action == "http.unauthenticated"));
}

/// Issue 21: one token holds at most `sse_streams_per_token` open event streams (one more is
/// a 429; other tokens are unaffected; a closed stream frees its slot), and every stream ends
/// cleanly when the server begins its shutdown.
#[tokio::test]
async fn event_streams_are_capped_per_token_and_end_at_shutdown() {
    let app = app().await;
    let cap = app.state.settings.limits.sse_streams_per_token as usize;
    let tenant = app.tokens.tenant.expose();
    let job = app.call(Method::POST, "/v1/jobs", Some(tenant), Some(job_body())).await;
    let uri = format!("/v1/jobs/{}/events", job.json()["id"].as_str().unwrap());
    let follow = |token: &str| {
        let request = Request::get(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        app.router.clone().oneshot(request)
    };
    let mut open = Vec::new();
    for _ in 0..cap {
        let response = follow(tenant).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    assert_eq!(app.state.streams.held("tenant") as usize, cap);
    let refused = follow(tenant).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    let other = follow(app.admin()).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK, "another token has its own limit");
    open.push(other);

    drop(open.remove(0));
    let again = follow(tenant).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "a closed stream frees its slot");
    open.push(again);

    app.state.end_streams();
    for response in open {
        let ended =
            tokio::time::timeout(std::time::Duration::from_secs(5), response.into_body().collect())
                .await
                .expect("every stream ends at shutdown");
        assert!(ended.is_ok(), "it ends cleanly, not with an error");
    }
    assert_eq!(app.state.streams.held("tenant"), 0);
}

/// What schemathesis found (issue 17): a cursor keeps its text, so its length is checked
/// (`000…0`, 21 digits, was read as 0 and accepted), and an integer field takes a number the
/// schema counts as an integer (`57.0`).
#[tokio::test]
async fn cursors_keep_their_text_and_integral_numbers_fill_integer_fields() {
    let app = app().await;
    let token = app.admin().to_owned();
    let long =
        app.call(Method::GET, "/v1/jobs?cursor=000000000000000000000", Some(&token), None).await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST, "{}", long.text);
    let estimate =
        json!({"gpu": {"count": 1}, "max_runtime_s": 3600.0, "disk_gib": 57.0, "budget_usd": 1.0});
    let reply = app.call(Method::POST, "/v1/estimates", Some(&token), Some(estimate)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

/// Issue 17: invented HTTP methods (on known and unknown paths, with and without a token)
/// collapse into one `method="other"` label, so the metric series stay bounded.
#[tokio::test]
async fn invented_methods_do_not_add_metric_series() {
    let app = app().await;
    let series =
        |text: &str| text.lines().filter(|l| l.starts_with("drover_api_requests_total{")).count();
    let metrics_token = app.tokens.metrics.expose().to_owned();
    let warm = |n: usize| {
        let method = Method::from_bytes(format!("X{n}").as_bytes()).unwrap();
        let path = if n.is_multiple_of(2) { "/v1/jobs" } else { "/no/such/route" };
        let token = n.is_multiple_of(3).then(|| app.admin().to_owned());
        (method, path, token)
    };
    for n in 0..10 {
        let (method, path, token) = warm(n);
        app.call(method, path, token.as_deref(), None).await;
    }
    let before = series(&app.call(Method::GET, "/metrics", Some(&metrics_token), None).await.text);
    for n in 10..300 {
        let (method, path, token) = warm(n);
        app.call(method, path, token.as_deref(), None).await;
    }
    let text = app.call(Method::GET, "/metrics", Some(&metrics_token), None).await.text;
    assert!(
        series(&text) <= before + 2,
        "{} series after 300 methods (was {before})",
        series(&text)
    );
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(!text.contains("method=\"X2"), "{text}");
}

/// Issue 21: requests in flight are capped (`max_concurrent_requests`); one more is answered
/// at once with 503 and `Retry-After`, and the slot is free again when the first ends.
#[tokio::test]
async fn requests_over_the_in_flight_limit_get_503() {
    let app = app_limited(generous(), ApiMode::Production, false, |config| {
        config.limits.max_concurrent_requests = 1;
    })
    .await;
    // A submit whose body never finishes holds the only slot.
    let (feed, body) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    feed.send(Ok(bytes::Bytes::from_static(b"{\"driver\":"))).await.unwrap();
    let held = Request::post("/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body)))
        .unwrap();
    let holder = tokio::spawn(app.router.clone().oneshot(held));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let refused = app.call(Method::GET, "/v1/jobs", Some(app.admin()), None).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text);
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    drop(feed);
    let _ = holder.await.unwrap();
    let served = app.call(Method::GET, "/v1/jobs", Some(app.admin()), None).await;
    assert_eq!(served.status, StatusCode::OK);
}

/// Issue 17: `/v1/estimates` takes the job spec `drover estimate` takes (it used to refuse
/// one); a job without a GPU is a violation at `/gpu`.
#[tokio::test]
async fn estimates_accept_a_job_spec() {
    let app = app().await;
    let token = app.admin().to_owned();
    let mut job = job_body();
    job["gpu"] = json!({"count": 1});
    let reply = app.call(Method::POST, "/v1/estimates", Some(&token), Some(job)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(reply.json()["allowed"].is_boolean());
    let reply = app.call(Method::POST, "/v1/estimates", Some(&token), Some(job_body())).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert_eq!(reply.json()["violations"][0]["instance_path"], "/gpu");
}
