//! SIGHUP reloads the tokens without a restart. The signal goes to the whole test process: this
//! test installs the handler before raising it (the handler then stays for the process's life),
//! and no other test in this binary raises SIGHUP or installs a reload, so it needs no process
//! of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use drover_api::{ApiState, Auditor, router};
use tower::ServiceExt;

#[tokio::test]
async fn sighup_adds_and_revokes_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(StoreBackend::open(dir.path()).await);
    let tokens = tokens();
    let initial = config(&tokens, generous());
    let state =
        ApiState::new(&initial, false, backend.clone(), Auditor::start(backend.clone(), None))
            .unwrap();
    let app = router(state.clone());

    // The "configuration file" the loader reads.
    let file = dir.path().join("api.json");
    std::fs::write(&file, serde_json::to_vec(&initial).unwrap()).unwrap();
    let path = file.clone();
    let loader: drover_api::reload::Loader =
        Box::new(move || Ok(serde_json::from_slice(&std::fs::read(&path)?)?));
    drover_api::reload::spawn_sighup_reload(state.clone(), loader).unwrap();

    let status = |token: String| {
        let app = app.clone();
        async move {
            let request = Request::get("/v1/jobs")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        }
    };
    let fresh = drover_api::token::ApiToken::generate().unwrap();
    assert_eq!(status(fresh.expose().to_owned()).await, StatusCode::UNAUTHORIZED);

    // Overlap window: the new token is added, the old one still works.
    let mut rotated = initial.clone();
    rotated.tokens.push(entry("admin-2", &fresh, drover_proto::config::Scope::ALL, false));
    std::fs::write(&file, serde_json::to_vec(&rotated).unwrap()).unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for(|| async { status(fresh.expose().to_owned()).await == StatusCode::OK }).await;
    assert_eq!(status(tokens.admin.expose().to_owned()).await, StatusCode::OK);

    // Then the old one is revoked.
    rotated.tokens[0].revoked = true;
    std::fs::write(&file, serde_json::to_vec(&rotated).unwrap()).unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for(|| async {
        status(tokens.admin.expose().to_owned()).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_eq!(status(fresh.expose().to_owned()).await, StatusCode::OK);
}

async fn wait_for<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the reload did not happen within 2 seconds");
}
