//! The authentication extractor: [`Authorized`] taken from a request against the shared
//! [`ApiState`]. It lives above the state (the token table, the limiters and the metrics it
//! reads are parts of the state that never name it), so `auth` stays a leaf.
//!
//! A missing or refused token is 401 (and counts against the peer's anonymous budget, 429 once
//! spent); a valid one over its rate limit is 429; one without the route's scope is 403.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use drover_proto::api::ApiErrorCode;

use crate::auth::{Authorized, Rejection, RequiredScope};
use crate::error::{ApiError, RequestContext};
use crate::listener::peer_of;
use crate::state::ApiState;

/// The bearer token of a request, if the header is present and says `Bearer`.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S: RequiredScope> FromRequestParts<Arc<ApiState>> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let tokens = state.tokens.current();
        let outcome = match bearer(parts) {
            None => Err(Rejection::Missing),
            Some(presented) => tokens.authenticate(presented),
        };
        let principal = match outcome {
            Ok(principal) => principal,
            Err(rejection) => {
                state.metrics.auth_failure(rejection);
                if let Some(context) = RequestContext::current() {
                    context.set_rejection(rejection);
                }
                let peer = peer_of(&parts.extensions);
                if let Err(wait) = state.anonymous.check(peer) {
                    state.metrics.rate_limited();
                    return Err(ApiError::rate_limited(wait));
                }
                return Err(ApiError::new(ApiErrorCode::Unauthorized)
                    .with_message("a valid bearer token is required"));
            }
        };
        if let Some(context) = RequestContext::current() {
            context.set_actor(principal.name.clone());
        }
        if let Err(wait) = state.limiter.check(&principal.name, Instant::now()) {
            state.metrics.rate_limited();
            return Err(ApiError::rate_limited(wait));
        }
        if let Some(scope) = S::SCOPE
            && !principal.has(scope)
        {
            return Err(ApiError::new(ApiErrorCode::Forbidden)
                .with_message("the token lacks the scope this route requires"));
        }
        Ok(Self::new(principal))
    }
}

/// `Option<Authorized<S>>`: `None` when the request carries no `Authorization` header at
/// all (an anonymous probe); a header that is present must pass exactly as for
/// [`Authorized`], so a bad token is still 401.
impl<S: RequiredScope> axum::extract::OptionalFromRequestParts<Arc<ApiState>> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Option<Self>, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(None);
        }
        <Self as FromRequestParts<Arc<ApiState>>>::from_request_parts(parts, state).await.map(Some)
    }
}
