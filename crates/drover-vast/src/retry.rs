//! Capped exponential backoff with an overall deadline.
//!
//! Vast.ai sends no `Retry-After` and no rate-limit headers, so the client paces itself. Only
//! 429, 502, 503, 504 and connection or timeout errors are retried; every other 4xx is final.
//! Attempt `n` (from 1) that fails is followed by a pause of
//! `min(max_backoff, initial_backoff * multiplier^(n-1))`, unless that pause would end past
//! the overall deadline, in which case the call gives up with `VastError::Deadline`.
//!
//! | Setting | Default |
//! |---|---|
//! | `max_attempts` | 6 |
//! | `initial_backoff` | 250 ms |
//! | `multiplier` | 2 |
//! | `max_backoff` | 8 s |
//! | `overall` | 60 s |
//! | `request_timeout` | 30 s per attempt |
//!
//! With the defaults the pauses are 0.25, 0.5, 1, 2, 4 s: six attempts within about 8 s plus
//! the requests themselves. There is no jitter: drover makes few calls, and determinism keeps
//! the tests exact.

use std::time::Duration;

/// How a call is retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts, the first included. At least 1.
    pub max_attempts: u32,
    /// Pause after the first failed attempt.
    pub initial_backoff: Duration,
    /// Growth of the pause per attempt.
    pub multiplier: f64,
    /// Longest pause.
    pub max_backoff: Duration,
    /// Longest a call may take, all attempts and pauses together.
    pub overall: Duration,
    /// Timeout of one attempt.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(250),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(8),
            overall: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier.powi(exp)
        } else {
            1.0
        };
        let secs = self.initial_backoff.as_secs_f64() * factor;
        if secs.is_finite() && secs < self.max_backoff.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.max_backoff
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default();
        let pauses: Vec<_> = (1..=7).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 8000, 8000]);
        let huge = p.backoff(10_000);
        assert_eq!(huge, p.max_backoff);
    }
}
