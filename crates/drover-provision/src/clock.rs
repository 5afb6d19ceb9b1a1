//! The clock that lease deadlines, polling and the simulator's billing run on.
//!
//! In production it is the wall clock ([`Clock::system`]). Tests build a [`Clock::scaled`]
//! clock that runs `speed` times faster than real time: a 60-second lease then lasts
//! `60 / speed` real seconds, and the simulator, given the same clock, bills it as 60 seconds.
//! Both sides must share one clock (it is `Copy`) so that their notions of "now" agree.
//!
//! Clock time is Unix time in seconds, as an `f64`, because that is how Vast.ai reports
//! `start_date` and how per-second billing is computed.
//!
//! # The store's clock
//!
//! Replicas of a fleet agree on time through the store's clock
//! (`drover_store::Store::now_unix_ms`: the PostgreSQL server's, or the host's for SQLite).
//! A replica measures its offset from it NTP-style ([`midpoint_offset_ms`]: the store's
//! reading is taken as made halfway through the round trip) at start and with every
//! heartbeat, and shifts its own readings by it ([`shift_ms`]). The rule:
//!
//! - The **budget day** is always the store's day: this host's system clock plus the offset.
//! - **Lease times** (`granted_unix_ms`, `deadline_unix_ms`, and the checks against them) use
//!   the offset only on the real clock ([`Clock::is_real`]); a scaled test clock keeps its own
//!   time (offset 0), since its seconds are not the store's.
//! - What runs on the provider's clocks keeps this host's: the deadline written into an
//!   instance's dead-man's switch is shifted back, and instance create and destroy times
//!   (compared with the provider's bill) are this host's clock.

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

/// How far the store's clock is ahead of ours (negative: behind), ms, from one reading:
/// `store_ms` was read by the store somewhere between `sent_ms` and `received_ms` (our clock),
/// and is taken as read at their midpoint, so half the round trip is corrected for and the
/// error is at most half of it.
pub fn midpoint_offset_ms(sent_ms: u64, store_ms: u64, received_ms: u64) -> i64 {
    let (first, last) = (sent_ms.min(received_ms), sent_ms.max(received_ms));
    let midpoint = first + (last - first) / 2;
    let offset = i128::from(store_ms) - i128::from(midpoint);
    i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX })
}

/// `ms` shifted by `offset_ms`, clamped to Unix time (never below 0).
pub fn shift_ms(ms: u64, offset_ms: i64) -> u64 {
    ms.saturating_add_signed(offset_ms)
}

/// The UTC day (Unix days) of a Unix time in ms: the budget day.
pub fn unix_day(ms: u64) -> u64 {
    ms / 86_400_000
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, `2026-11-22T08:59:13.123Z`, the form
/// audit events carry. (Howard Hinnant's `civil_from_days`; valid for years 0 to 9999.)
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let days = unix_ms / 86_400_000;
    let ms_of_day = unix_ms % 86_400_000;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (h, m, s, ms) =
        (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_337_953_123), "2026-11-22T08:59:13.123Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_store_clock_a_day_ahead_moves_the_budget_day_by_one() {
        const DAY_MS: u64 = 86_400_000;
        let ours = 1_795_337_953_123; // 2026-11-22T08:59:13.123Z
        // The store answered a request sent at `ours` 100 ms later; its reading, made halfway,
        // is a day (and 7 ms) ahead of ours.
        let store = ours + 50 + DAY_MS + 7;
        let offset = midpoint_offset_ms(ours, store, ours + 100);
        assert_eq!(offset, i64::try_from(DAY_MS).unwrap() + 7);
        assert_eq!(unix_day(shift_ms(ours + 500, offset)), unix_day(ours) + 1);
        // Behind by a second: the day turns a second later than ours does.
        let midnight = (unix_day(ours) + 1) * DAY_MS;
        let behind = midpoint_offset_ms(midnight, midnight - 1000 + 5, midnight + 10);
        assert_eq!(behind, -1000);
        assert_eq!(unix_day(shift_ms(midnight + 999, behind)), unix_day(ours));
        assert_eq!(unix_day(shift_ms(midnight + 1000, behind)), unix_day(ours) + 1);
        // No round trip, no correction; readings out of order are taken as a round trip too.
        assert_eq!(midpoint_offset_ms(10, 10, 10), 0);
        assert_eq!(midpoint_offset_ms(20, 15, 10), 0);
        assert_eq!(shift_ms(5, -10), 0);
        assert!(Clock::system().is_real() && !Clock::scaled(10.0).is_real());
    }

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
