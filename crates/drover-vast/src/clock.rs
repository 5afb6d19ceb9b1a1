//! The clock that lease deadlines, polling and the simulator's billing run on.
//!
//! In production it is the wall clock ([`Clock::system`]). Tests build a [`Clock::scaled`]
//! clock that runs `speed` times faster than real time: a 60-second lease then lasts
//! `60 / speed` real seconds, and the simulator, given the same clock, bills it as 60 seconds.
//! Both sides must share one clock (it is `Copy`) so that their notions of "now" agree; it
//! lives here, with the client, because the simulator and the provisioner both build on this
//! crate and neither on the other.
//!
//! Clock time is Unix time in seconds, as an `f64`, because that is how Vast.ai reports
//! `start_date` and how per-second billing is computed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A wall clock, possibly running faster than real time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    origin_unix_s: f64,
    speed: f64,
}

impl Clock {
    /// The real wall clock.
    pub fn system() -> Self {
        Self::scaled(1.0)
    }

    /// A clock that starts at the current Unix time and runs `speed` times faster than real
    /// time. A `speed` that is not finite or not positive is taken as 1.
    pub fn scaled(speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 { speed } else { 1.0 };
        let origin_unix_s =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Self { origin: Instant::now(), origin_unix_s, speed }
    }

    /// Whether this is the real wall clock (speed 1): only then is it shifted to the store's
    /// clock (see the module docs).
    pub fn is_real(&self) -> bool {
        (self.speed - 1.0).abs() < f64::EPSILON
    }

    /// How many clock seconds pass per real second.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Now, as Unix time in seconds.
    pub fn now_s(&self) -> f64 {
        self.origin_unix_s + self.origin.elapsed().as_secs_f64() * self.speed
    }

    /// Now, as Unix time in whole milliseconds.
    pub fn now_ms(&self) -> u64 {
        // Unix time in ms fits a u64 for the next 500 million years; negative is impossible
        // because the origin comes from `SystemTime`.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (self.now_s() * 1000.0).round() as u64;
        ms
    }

    /// The real duration that `clock_s` clock seconds take.
    pub fn real(&self, clock_s: f64) -> Duration {
        if clock_s.is_finite() && clock_s > 0.0 {
            Duration::from_secs_f64((clock_s / self.speed).min(1.0e9))
        } else {
            Duration::ZERO
        }
    }

    /// Sleeps for `clock_s` clock seconds.
    pub async fn sleep(&self, clock_s: f64) {
        tokio::time::sleep(self.real(clock_s)).await;
    }

    /// Sleeps until the clock reads `unix_s` (returns at once if it already has).
    pub async fn sleep_until(&self, unix_s: f64) {
        self.sleep(unix_s - self.now_s()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling() {
        let c = Clock::scaled(100.0);
        assert_eq!(c.real(50.0), Duration::from_millis(500));
        assert_eq!(c.real(-1.0), Duration::ZERO);
        assert_eq!(c.real(f64::NAN), Duration::ZERO);
        assert!((Clock::scaled(f64::NAN).speed() - 1.0).abs() < f64::EPSILON);
        let a = c.now_s();
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.now_s() - a >= 1.9, "100x clock advanced too little");
    }
}
