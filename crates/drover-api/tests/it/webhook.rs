//! Webhook delivery against a real receiver on loopback: signed bodies that the shipped
//! verifier accepts, retries with backoff on 5xx, no retry on other 4xx, giving up after the
//! last attempt, and https-only unless plain http is allowed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use drover_api::egress::TargetPolicy;
use drover_api::webhook::{
    RetryPolicy, SIGNATURE_HEADER, WebhookError, WebhookSecret, WebhookSender, verify,
};
use drover_proto::api::{Job, WebhookEvent, WebhookKind};

const SECRET: &[u8] = b"a webhook secret of thirty-two bytes or more";

#[derive(Clone, Default)]
struct Receiver {
    /// Statuses to answer, in order; then 200.
    script: Arc<Mutex<Vec<u16>>>,
    /// Verification outcome of each delivery received.
    seen: Arc<Mutex<Vec<Result<(), String>>>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let outcome = verify(SECRET, header, &body, now).map_err(|e| e.to_string());
    let ok = outcome.is_ok();
    receiver.seen.lock().push(outcome);
    let mut script = receiver.script.lock();
    if !script.is_empty() {
        return StatusCode::from_u16(script.remove(0)).unwrap();
    }
    if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
}

async fn start(script: Vec<u16>) -> (String, Receiver) {
    let receiver = Receiver { script: Arc::new(Mutex::new(script)), ..Receiver::default() };
    let app = Router::new().route("/hook", post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, receiver)
}

fn event() -> WebhookEvent {
    let job: Job = serde_json::from_value(serde_json::json!({
        "id": "job-1", "state": "succeeded", "submitted_by": "ci",
        "spec": {"driver": "echo", "action": "run", "max_runtime_s": 60, "budget_usd": 1.0},
        "created_unix_ms": 1, "updated_unix_ms": 2}))
    .unwrap();
    WebhookEvent { id: "evt-1".into(), kind: WebhookKind::JobFinished, created_unix_ms: 2, job }
}

/// A sender for the loopback receivers these tests start (private targets allowed).
fn sender(max_attempts: u32, allow_http: bool) -> WebhookSender {
    sender_for(max_attempts, allow_http, TargetPolicy::AnyAddress)
}

fn sender_for(max_attempts: u32, allow_http: bool, targets: TargetPolicy) -> WebhookSender {
    let policy = RetryPolicy {
        max_attempts,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(40),
        timeout: Duration::from_secs(5),
    };
    WebhookSender::new(WebhookSecret::new(SECRET.to_vec()).unwrap(), policy, allow_http, targets)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_retried_until_accepted() {
    let (url, receiver) = start(vec![500, 503, 429]).await;
    let started = std::time::Instant::now();
    let attempts = sender(5, true).deliver(&url, &event()).await.unwrap();
    assert_eq!(attempts, 4);
    // Backoff: 20 + 40 + 40 ms at least between the attempts.
    assert!(started.elapsed() >= Duration::from_millis(100));
    let seen = receiver.seen.lock().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(Result::is_ok), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_client_errors_are_not_retried_and_retries_end() {
    let (url, receiver) = start(vec![404]).await;
    let refused = sender(5, true).deliver(&url, &event()).await.unwrap_err();
    assert!(matches!(refused, WebhookError::Refused(404)), "{refused}");
    assert_eq!(receiver.seen.lock().len(), 1);

    let (url, receiver) = start(vec![500; 10]).await;
    let gave_up = sender(3, true).deliver(&url, &event()).await.unwrap_err();
    assert!(matches!(gave_up, WebhookError::GaveUp { attempts: 3 }), "{gave_up}");
    assert_eq!(receiver.seen.lock().len(), 3);
}

#[tokio::test]
async fn plain_http_needs_permission_and_a_wrong_secret_is_caught() {
    let (url, receiver) = start(vec![]).await;
    let refused = sender(1, false).deliver(&url, &event()).await.unwrap_err();
    assert!(matches!(refused, WebhookError::Url(_)));
    assert!(receiver.seen.lock().is_empty());

    let wrong = WebhookSender::new(
        WebhookSecret::new(b"not the receiver's secret, 32+ bytes".to_vec()).unwrap(),
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
        true,
        TargetPolicy::AnyAddress,
    )
    .unwrap();
    assert!(matches!(wrong.deliver(&url, &event()).await, Err(WebhookError::Refused(401))));
    let seen = receiver.seen.lock().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].as_ref().unwrap_err().contains("does not match"));
}

/// Issue 21: by default a webhook never reaches loopback, whether the URL names the address
/// or a host name resolving to it (checked on the resolved address, so DNS rebinding cannot
/// pass); nothing connects and nothing is retried. Allowed when configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_webhook_targets_are_refused_unless_allowed() {
    let (url, receiver) = start(vec![]).await;
    let port = url.rsplit(':').next().unwrap().trim_end_matches(|c: char| !c.is_ascii_digit());
    let by_name = format!("http://localhost:{port}/hook");
    let by_v6 = format!("http://[::ffff:127.0.0.1]:{port}/hook");
    let public_only = sender_for(5, true, TargetPolicy::PublicOnly);
    for target in [&url, &by_name, &by_v6] {
        let started = std::time::Instant::now();
        let refused = public_only.deliver(target, &event()).await.unwrap_err();
        assert!(matches!(refused, WebhookError::ForbiddenTarget), "{target}: {refused}");
        assert!(started.elapsed() < Duration::from_millis(500), "{target}: retried");
    }
    assert!(receiver.seen.lock().is_empty(), "a refused target was connected to");

    let allowed = sender_for(1, true, TargetPolicy::AnyAddress);
    assert_eq!(allowed.deliver(&by_name, &event()).await.unwrap(), 1);
    assert_eq!(receiver.seen.lock().len(), 1);
}
