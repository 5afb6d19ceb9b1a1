//! The supervisor's metrics, for the registry `/metrics` serves
//! ([`Supervisor::register_metrics`]).
//!
//! | Metric | Type | Labels | |
//! |---|---|---|---|
//! | `drover_driver_sessions_connected` | gauge | `driver` | processes that finished their handshake and are alive |
//! | `drover_driver_health` | gauge, 1 for the current one | `driver`, `health` (`starting`, `ready`, `degraded`, `failed`) | |
//! | `drover_driver_restarts_total` | counter | `driver` | processes restarted after a death |
//! | `drover_driver_protocol_violations_total` | counter | `driver` | frames rejected |
//! | `drover_driver_exits_total` | counter | `driver`, `reason` (below) | every process end, shutdown included |
//! | `drover_sandbox_deaths_total` | counter | `driver`, `cause` (`signal`, `oom`, `seccomp`) | processes the kernel or the sandbox killed |
//!
//! Exit reasons, from the [`DeathReport`]'s typed cause: `exit_ok` (status 0), `exit_error`
//! (any other status), `signal` (a signal the supervisor did not send), `seccomp` (a refused
//! system call), `oom` (the memory cgroup's OOM killer), `deadline`, `killed_by_supervisor`
//! (hung, a protocol breach, shutdown's last step), `start_failed` (no process: the spawn
//! failed). `driver` takes only configured names, so every label set is bounded.
//!
//! The first four are read from [`Supervisor::drivers`] at each scrape; the two death
//! counters are counted as each death is recorded.

use std::sync::Weak;

use drover_proto::api::DriverHealth;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::registry::Inner;
use crate::status::DriverStatus;
use crate::supervisor::Supervisor;

impl Supervisor {
    /// Adds the supervisor's metrics (drivers, restarts, exits, sandbox deaths) to the
    /// registry `/metrics` serves. The registry holds the supervisor only weakly.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let deaths = &self.inner.deaths;
        registry.register(
            "drover_driver_exits",
            "Driver process ends, by driver and reason",
            deaths.exits.clone(),
        );
        registry.register(
            "drover_sandbox_deaths",
            "Driver processes killed by a signal, the OOM killer or seccomp",
            deaths.sandbox_deaths.clone(),
        );
        let weak = std::sync::Arc::downgrade(&self.inner);
        registry.register_collector(Box::new(DriverCollector(weak)));
    }
}

/// Reads each driver's status at scrape time.
struct DriverCollector(Weak<Inner>);

impl std::fmt::Debug for DriverCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DriverCollector")
    }
}

impl Collector for DriverCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(inner) = self.0.upgrade() else { return Ok(()) };
        let drivers = Supervisor { inner }.drivers();
        {
            let mut metric = encoder.encode_descriptor(
                "drover_driver_sessions_connected",
                "Driver processes that finished their handshake and are alive",
                None,
                MetricType::Gauge,
            )?;
            for d in &drivers {
                let labels = [("driver", d.name.as_str())];
                ConstGauge::new(i64::from(d.ready_sessions))
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "drover_driver_health",
                "Each driver's health (1 for the current one)",
                None,
                MetricType::Gauge,
            )?;
            for d in &drivers {
                for health in [
                    DriverHealth::Starting,
                    DriverHealth::Ready,
                    DriverHealth::Degraded,
                    DriverHealth::Failed,
                ] {
                    let labels = [("driver", d.name.as_str()), ("health", health_label(health))];
                    ConstGauge::new(i64::from(d.health == health))
                        .encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let restarts: fn(&DriverStatus) -> u64 = |d| u64::from(d.restarts);
        let violations: fn(&DriverStatus) -> u64 = |d| d.protocol_violations;
        for (name, help, value) in [
            ("drover_driver_restarts", "Driver processes restarted after a death", restarts),
            ("drover_driver_protocol_violations", "Frames from drivers rejected", violations),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for d in &drivers {
                ConstCounter::new(value(d))
                    .encode(metric.encode_family(&[("driver", d.name.as_str())])?)?;
            }
        }
        Ok(())
    }
}

fn health_label(health: DriverHealth) -> &'static str {
    match health {
        DriverHealth::Starting => "starting",
        DriverHealth::Ready => "ready",
        DriverHealth::Degraded => "degraded",
        DriverHealth::Failed => "failed",
    }
}
