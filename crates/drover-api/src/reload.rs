//! Token rotation without a restart: on SIGHUP the configuration is read again and its tokens
//! replace the ones in force.
//!
//! Rotation with an overlap window: add the new token's entry and send SIGHUP; move clients
//! to the new token; mark the old entry `revoked = true` (or remove it) and send SIGHUP again.
//! A configuration that fails to load or to pass the token checks is refused as a whole and
//! the tokens in force stay; the refusal is logged and audited.

use std::sync::Arc;

use drover_proto::config::ApiConfig;
use serde_json::{Map, Value};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::state::ApiState;

/// Reads the API section of the configuration again; the binary passes its config loader.
pub type Loader =
    Box<dyn Fn() -> Result<ApiConfig, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Applies `load()`'s tokens to `state`, logging and auditing the outcome. Returns the number
/// of tokens now configured, or `None` if the reload was refused.
pub async fn reload_now(state: &ApiState, load: &Loader) -> Option<usize> {
    let mut metadata = Map::new();
    // A loader error is not shown: configuration parsers may quote the file, and a token
    // pasted there by mistake must not reach a log. Token check errors never echo values.
    let reason = match load() {
        Err(_) => Err(
            "the configuration could not be loaded (check it with `drover validate --kind config`)"
                .to_owned(),
        ),
        Ok(config) => state.reload_tokens(&config).map_err(|e| e.to_string()),
    };
    let (result, count) = match reason {
        Ok(count) => {
            metadata.insert("tokens".to_owned(), Value::from(count));
            ("ok", Some(count))
        }
        Err(text) => {
            tracing::error!(reason = %text, "token reload refused; the tokens in force stay");
            metadata.insert("reason".to_owned(), Value::from(text));
            ("refused", None)
        }
    };
    state.auditor.record(None, "operator", "api.tokens.reload", "tokens", result, metadata).await;
    count
}

/// Installs a SIGHUP handler that reloads the tokens every time the signal arrives.
pub fn spawn_sighup_reload(state: Arc<ApiState>, load: Loader) -> std::io::Result<JoinHandle<()>> {
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reload_now(&state, &load).await;
        }
    }))
}
