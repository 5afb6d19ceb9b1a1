//! The service's metrics: jobs in flight, leases and spend, read at each scrape.
//!
//! [`Service::register_metrics`](crate::Service::register_metrics) adds a collector to the
//! shared registry; before each scrape the API calls
//! [`Backend::refresh_metrics`](drover_api::Backend::refresh_metrics), which takes a
//! snapshot (the ledger from the store, the simulator's bill), and the collector encodes it.
//! A value that could not be read in that refresh (the store did not answer) is left out of
//! the scrape, never reported stale or as 0.
//!
//! | Metric | Type | Labels | |
//! |---|---|---|---|
//! | `drover_jobs_active` | gauge | | jobs waiting for a driver or running |
//! | `drover_leases_open` | gauge | | leases not yet settled |
//! | `drover_ledger_usd` | gauge | | net ledger total (reserved plus charged, minus released), USD |
//! | `drover_simulator_billed_usd` | gauge | | what the embedded simulator billed, USD (simulator only) |
//! | `drover_simulator_live_instances` | gauge | | simulator instances still billing (simulator only) |
//!
//! USD values are written as plain decimals; a zero is always `0`, never `-0` (an empty
//! floating-point sum is negative zero in Rust, which the simulator's empty bill was).

use parking_lot::Mutex;
use std::sync::Arc;

use drover_api::metrics::Registry;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// What the last refresh read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) jobs_active: usize,
    /// (open leases, ledger USD), when the store answered.
    pub(crate) ledger: Option<(u64, f64)>,
    /// (USD billed, live instances), when the simulator is the provider.
    pub(crate) simulator: Option<(f64, usize)>,
}

/// The service's metrics: the latest snapshot, shared with the registry's collector.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceMetrics(Arc<Mutex<Snapshot>>);

impl ServiceMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    pub(crate) fn set(&self, snapshot: Snapshot) {
        *self.0.lock() = snapshot;
    }
}

/// `value` with a negative zero turned into zero (adding +0 does exactly that).
fn no_negative_zero(value: f64) -> f64 {
    value + 0.0
}

/// Encodes one gauge.
fn gauge<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for ServiceMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.lock().clone();
        let e = &mut encoder;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(
            e,
            "drover_jobs_active",
            "Jobs waiting for a driver or running",
            count(snapshot.jobs_active),
        )?;
        if let Some((open, usd)) = snapshot.ledger {
            gauge(
                e,
                "drover_leases_open",
                "Leases not yet settled",
                i64::try_from(open).unwrap_or(i64::MAX),
            )?;
            gauge(
                e,
                "drover_ledger_usd",
                "Net ledger total (reserved plus charged, minus released), USD",
                no_negative_zero(usd),
            )?;
        }
        if let Some((billed, live)) = snapshot.simulator {
            gauge(
                e,
                "drover_simulator_billed_usd",
                "What the embedded simulator billed, USD",
                no_negative_zero(billed),
            )?;
            gauge(
                e,
                "drover_simulator_live_instances",
                "Simulator instances still billing",
                count(live),
            )?;
        }
        Ok(())
    }
}
