//! Driver process ends, counted as the supervisor records them, for the `/metrics` families
//! `drover_driver_exits_total` and `drover_sandbox_deaths_total` ([`crate::metrics`] exports
//! them; the reasons are listed there).

use drover_proto::DriverName;
use drover_sandbox::Cause;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::status::DeathReport;

type ByDriver = Family<[(&'static str, String); 2], Counter>;

/// Deaths, counted as they are recorded.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeathCounters {
    pub(crate) exits: ByDriver,
    pub(crate) sandbox_deaths: ByDriver,
}

impl DeathCounters {
    /// Counts one process end of `driver`.
    pub(crate) fn record(&self, driver: &DriverName, report: &DeathReport) {
        let name = driver.to_string();
        let reason = exit_reason(report.cause.as_ref());
        self.exits.get_or_create(&[("driver", name.clone()), ("reason", reason.to_owned())]).inc();
        let killed = match report.cause {
            Some(Cause::Signaled { .. }) => Some("signal"),
            Some(Cause::Oom { .. }) => Some("oom"),
            Some(Cause::SeccompViolation { .. } | Cause::SeccompKill) => Some("seccomp"),
            _ => None,
        };
        if let Some(cause) = killed {
            self.sandbox_deaths
                .get_or_create(&[("driver", name), ("cause", cause.to_owned())])
                .inc();
        }
    }
}

/// The `reason` label of `drover_driver_exits_total`.
fn exit_reason(cause: Option<&Cause>) -> &'static str {
    match cause {
        None => "start_failed",
        Some(Cause::Exited { code: 0 }) => "exit_ok",
        Some(Cause::Exited { .. }) => "exit_error",
        Some(Cause::Signaled { .. }) => "signal",
        Some(Cause::SeccompViolation { .. } | Cause::SeccompKill) => "seccomp",
        Some(Cause::Oom { .. }) => "oom",
        Some(Cause::Deadline { .. }) => "deadline",
        Some(Cause::KilledBySupervisor { .. }) => "killed_by_supervisor",
    }
}
