//! Time for the provisioner: the store's clock and the budget day. The
//! [`Clock`] itself (wall time, or scaled for tests, shared with the simulator) is
//! [`drover_vast::Clock`], re-exported here.
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

pub use drover_vast::Clock;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
