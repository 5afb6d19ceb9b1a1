//! `GET /v1/jobs/{id}/events`: a job's events as server-sent events.
//!
//! ```text
//! id: 3
//! event: job_progress
//! data: {"seq":3,"at_unix_ms":1795305600123,"event":{"type":"job_progress","job_id":"job-1","current":3.0}}
//! ```
//!
//! `id` is the event's `seq`. A client that loses the connection reconnects with
//! `Last-Event-ID: <last id seen>` and gets everything after it, from the job's stored
//! history and then live; the stream ends after the job's terminal state. A comment line
//! keeps idle connections alive every 15 seconds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};

use crate::auth::{Authorized, JobsRead};
use crate::error::ApiError;
use crate::routes::JobIdPath;
use crate::server::ApiState;

/// The header a reconnecting client sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The handler.
pub async fn events(
    State(state): State<Arc<ApiState>>,
    auth: Authorized<JobsRead>,
    JobIdPath(id): JobIdPath,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = match headers.get(LAST_EVENT_ID) {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::violation("", "", "Last-Event-ID must be the id of an event (a number)")
            })?,
    };
    crate::routes::owned_job(&state, &auth.principal, &id).await?;
    let stream = state.backend.events(&id, after).await?;
    let events = stream.map(|event| {
        let data = serde_json::to_string(&event).unwrap_or_default();
        Ok(Event::default().id(event.seq.to_string()).event(event.event.name()).data(data))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
