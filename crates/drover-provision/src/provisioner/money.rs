//! The money rules of a lease: the budget ceiling while it runs, the settlement from the
//! provider's bill, and the dead-man's switch every instance carries.
//!
//! **Ceiling.** A lease may accrue at most `min(reserved, the job's remaining budget)`. Its
//! accrued cost is what settlement would charge now (each instance's highest seen price, loading time
//! included, over its whole life, plus the declared bandwidth); while an instance loads and
//! while it runs, the instance is destroyed once the accrued cost plus what the next check
//! and a teardown would add (`rate * (check interval + teardown_expected_s)`) reaches the
//! ceiling.
//!
//! **Settlement.** A lease settles at what the provider billed for its instances (the charges
//! listing, summed per instance) plus its declared bandwidth, when that bill is whole: each
//! instance's charges are counted up to (their latest `end` is at or after) the moment drover
//! sent the destroy that ended it. A bill that does not yet reach that moment (a provider that
//! counts late) settles at `max(accrued, billed + bandwidth)`: the accrued cost is an upper
//! bound (each instance's highest seen price from the create call to the destroy, though a
//! provider starts compute only once the instance loads and stops it when it stops), so the
//! ledger never records less than was billed. If the bill cannot be read (the call fails, or
//! an instance of the lease has no charge), it settles at `max(accrued, reserved)`, the worst
//! bound it reserved, and the settlement message says so. Every settlement is rounded up to
//! the store's micro-dollar. The audit event `ledger.settle` names the basis (`bill`,
//! `accrued` or `reserved_bound`) with the billed and accrued amounts. Settling at the accrued
//! bound whenever it was higher put a fleet's ledger about a fifth above the account's bill.
//!
//! **Dead-man's switch.** Every instance's `onstart` begins with a script that, from the
//! moment the container starts, waits `max_runtime_s + deadman_grace_s` (never past the
//! absolute moment `grant + provision_max_s + max_runtime_s + deadman_grace_s`), checking the
//! time every [`POLL_S`](drover_vast::deadman::POLL_S) seconds, then destroys its own instance through the API with
//! the instance's own scoped key (`CONTAINER_API_KEY`, which Vast.ai puts in every
//! container's environment with `CONTAINER_ID`), falling back to stopping it (compute billing
//! ends; the reaper destroys what is left) and retrying for ten minutes. The container starts
//! before drover sees it `running`, so the instance ends by the lease's hard deadline plus
//! `deadman_grace_s` plus one check ([`POLL_S`](drover_vast::deadman::POLL_S)) plus the API call, with the
//! supervisor alive or not. The switch is armed only once the container runs: an instance
//! stuck loading is bounded by the provisioning window and the ceiling, which need the
//! supervisor, and by the start-up reaper after a restart.

use drover_vast::DEFAULT_BASE_URL;
use drover_vast::deadman::POLL_S as DEADMAN_POLL_S;
use drover_vast::deadman::{AFTER_MARKER as DEADMAN_AFTER_MARKER, AT_MARKER as DEADMAN_MARKER};

/// The longest `onstart` Vast.ai accepts, in characters.
pub const ONSTART_MAX: usize = 4048;

/// The dead-man's switch script: destroy this instance `after_s` seconds after it starts, and
/// never later than `at_unix_s`.
pub fn deadman_script(after_s: u64, at_unix_s: u64) -> String {
    // The poll is a whole number of seconds by construction.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let poll = DEADMAN_POLL_S as u64;
    let api = format!("{DEFAULT_BASE_URL}/api/v0/instances/$CONTAINER_ID/");
    format!(
        "# drover dead-man's switch: this instance ends itself at its lease's deadline, supervisor or not\n\
         {DEADMAN_AFTER_MARKER}{after_s}; {DEADMAN_MARKER}{at_unix_s}\n\
         (d=$(( $(date +%s) + DROVER_DEADMAN_AFTER_S )); [ \"$d\" -gt \"$DROVER_DEADMAN_AT\" ] && d=$DROVER_DEADMAN_AT\n\
         while [ \"$(date +%s)\" -lt \"$d\" ]; do sleep {poll}; done\n\
         for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do\n\
         curl -fsS -m 20 -X DELETE -H \"Authorization: Bearer $CONTAINER_API_KEY\" \"{api}\" && exit 0\n\
         curl -fsS -m 20 -X PUT -H \"Authorization: Bearer $CONTAINER_API_KEY\" -H 'Content-Type: application/json' -d '{{\"state\":\"stopped\"}}' \"{api}\" && exit 0\n\
         sleep 30; done) >/dev/null 2>&1 &\n"
    )
}

/// The `onstart` an instance is created with: the switch, then the driver's script.
pub fn onstart_with_deadman(after_s: u64, at_unix_s: u64, driver: Option<&str>) -> Option<String> {
    let mut script = deadman_script(after_s, at_unix_s);
    if let Some(d) = driver {
        script.push_str(d);
    }
    (script.chars().count() <= ONSTART_MAX).then_some(script)
}

/// The room left for a driver's `onstart` next to the switch.
pub fn onstart_room() -> usize {
    ONSTART_MAX - deadman_script(u64::MAX / 2, u64::MAX / 2).chars().count()
}

/// Whether a lease that has accrued `accrued_usd`, billing `rate_usd_per_hour`, must end now
/// so that the next `lookahead_s` seconds cannot take it past `ceiling_usd`.
pub fn over_ceiling(
    accrued_usd: f64,
    rate_usd_per_hour: f64,
    lookahead_s: f64,
    ceiling_usd: f64,
) -> bool {
    let next = accrued_usd + rate_usd_per_hour.max(0.0) * lookahead_s.max(0.0) / 3600.0;
    !(next.is_finite() && next < ceiling_usd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_fits_and_carries_its_moments() {
        let s = deadman_script(660, 1_700_000_000);
        assert!(s.contains("DROVER_DEADMAN_AFTER_S=660; DROVER_DEADMAN_AT=1700000000"));
        assert!(s.contains("$CONTAINER_API_KEY") && s.contains("$CONTAINER_ID"));
        assert!(onstart_room() > 3000, "{}", onstart_room());
        assert!(onstart_with_deadman(1, 2, Some(&"x".repeat(onstart_room()))).is_some());
        assert!(onstart_with_deadman(1, 2, Some(&"x".repeat(ONSTART_MAX))).is_none());
    }

    #[test]
    fn the_ceiling_looks_ahead() {
        assert!(!over_ceiling(0.5, 3.6, 10.0, 1.0));
        assert!(over_ceiling(0.99, 3.6, 10.0, 1.0));
        assert!(over_ceiling(1.0, 0.0, 0.0, 1.0));
        assert!(over_ceiling(f64::NAN, 1.0, 1.0, 1.0));
    }
}
