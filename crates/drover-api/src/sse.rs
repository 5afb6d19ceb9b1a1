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
//!
//! Limits (issue 21): a token holds at most `api.limits.sse_streams_per_token` (default 8)
//! open streams; one more gets `429 rate_limited` with `Retry-After` and the open ones are
//! untouched. Every stream ends cleanly (the response body simply finishes) when the server
//! begins its shutdown ([`ApiState::end_streams`]), so graceful shutdown never waits on a
//! follower.

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
use crate::state::ApiState;

/// The header a reconnecting client sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

pub use crate::state::{StreamSlot, StreamSlots};

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
    let slot = state.streams.open(&auth.principal.name).ok_or_else(|| {
        ApiError::rate_limited(1)
            .with_message("this token already holds its limit of open event streams")
    })?;
    let stream = state.backend.events(&id, after).await?;
    let mut shutdown = state.shutdown_signal();
    let events = stream
        .map(move |event| {
            // The slot lives as long as the body: dropped when the stream ends or the client goes.
            let _held = &slot;
            let data = serde_json::to_string(&event).unwrap_or_default();
            Ok(Event::default().id(event.seq.to_string()).event(event.event.name()).data(data))
        })
        .take_until(async move {
            let _ = shutdown.wait_for(|ending| *ending).await;
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
