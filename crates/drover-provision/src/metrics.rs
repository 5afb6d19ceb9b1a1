//! The provisioner's metrics: the gate's decisions and every call to the provider.
//!
//! One [`ProvisionMetrics`] is given to both the client
//! ([`VastClient::with_metrics`](crate::VastClient::with_metrics)) and the provisioner
//! ([`ProvisionerConfig::metrics`](crate::ProvisionerConfig::metrics)), and registered once in
//! the registry `/metrics` serves ([`ProvisionMetrics::register`]). Clones share the counts.
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `drover_gate_decisions_total` | counter | `purpose` (`rental`, `estimate`), `decision` (`allowed`, `refused`), `reason` (`none` when allowed, else the [`CostGateError::reason_code`]: `low_confidence`, `stale_quote`, `invalid_input`, `daily_cap`, `estimator_error`) |
//! | `drover_provider_calls_total` | counter | `operation` (the Vast.ai call: `search_offers`, `create_instance`, `show_instance`, `list_instances`, `destroy_instance`, `instance_logs`, `current_user`, `pending_price_increases`, `accept_price_increase`, `reject_price_increase`, `list_charges`), `outcome` (`ok`, or the [`VastError::kind`](crate::VastError::kind)) |
//! | `drover_provider_call_duration_seconds` | histogram | `operation` |
//!
//! A provider call is one request with its retries (a paged list is a call per page), timed
//! from the first attempt to the answer; its outcome is the HTTP exchange's (a body that then
//! fails to parse is still `ok` here). Duration buckets, seconds: 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 (and
//! `+Inf`): Vast.ai answers in tenths of a second to seconds, and retries with backoff
//! stretch a call toward the client's overall deadline.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::gate::CostGateError;

/// Upper bounds of the provider-call duration buckets, seconds.
pub const PROVIDER_CALL_BUCKETS: [f64; 10] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// What a gate decision was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatePurpose {
    /// A rental (`acquire`): an allowed decision rents.
    Rental,
    /// A dry run (`POST /v1/estimates`): nothing is rented either way.
    Estimate,
}

type Labels<const N: usize> = [(&'static str, String); N];

#[derive(Debug)]
struct Families {
    gate: Family<Labels<3>, Counter>,
    calls: Family<Labels<2>, Counter>,
    durations: Family<Labels<1>, Histogram, fn() -> Histogram>,
}

/// The provisioner's counters; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ProvisionMetrics(Arc<Families>);

impl Default for ProvisionMetrics {
    fn default() -> Self {
        Self(Arc::new(Families {
            gate: Family::default(),
            calls: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(PROVIDER_CALL_BUCKETS)),
        }))
    }
}

/// Two handles are equal when they count into the same metrics (so a
/// [`ProvisionerConfig`](crate::ProvisionerConfig) keeps its `PartialEq`).
impl PartialEq for ProvisionMetrics {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl ProvisionMetrics {
    /// Adds these metrics to `registry`; call once.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "drover_gate_decisions",
            "Cost gate decisions, by purpose, decision and reason",
            self.0.gate.clone(),
        );
        registry.register(
            "drover_provider_calls",
            "Calls to the GPU provider, by operation and outcome",
            self.0.calls.clone(),
        );
        registry.register(
            "drover_provider_call_duration_seconds",
            "Time a provider call took, retries included, by operation",
            self.0.durations.clone(),
        );
    }

    /// Counts one gate decision: `refusal` is `None` when it allowed.
    pub fn gate_decision(&self, purpose: GatePurpose, refusal: Option<&CostGateError>) {
        let purpose = match purpose {
            GatePurpose::Rental => "rental",
            GatePurpose::Estimate => "estimate",
        };
        let (decision, reason) = match refusal {
            None => ("allowed", "none"),
            Some(rejection) => ("refused", rejection.reason_code()),
        };
        let labels = [
            ("purpose", purpose.to_owned()),
            ("decision", decision.to_owned()),
            ("reason", reason.to_owned()),
        ];
        self.0.gate.get_or_create(&labels).inc();
    }

    /// Counts one provider call (`op` as the client names it, e.g. `"search offers"`).
    pub(crate) fn provider_call(&self, op: &str, outcome: &str, took: Duration) {
        let operation = op.replace(' ', "_");
        let labels = [("operation", operation.clone()), ("outcome", outcome.to_owned())];
        self.0.calls.get_or_create(&labels).inc();
        self.0.durations.get_or_create(&[("operation", operation)]).observe(took.as_secs_f64());
    }
}
