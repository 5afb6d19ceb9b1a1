//! The provisioner's metrics: the gate's decisions, and the client's provider calls with them.
//!
//! One [`ProvisionMetrics`] is given to the provisioner
//! ([`ProvisionerConfig::metrics`](crate::ProvisionerConfig::metrics)), its
//! [`provider`](ProvisionMetrics::provider) half to the client
//! ([`VastClient::with_metrics`](drover_vast::VastClient::with_metrics)), and both are
//! registered once in the registry `/metrics` serves ([`ProvisionMetrics::register`]). Clones
//! share the counts.
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `drover_gate_decisions_total` | counter | `purpose` (`rental`, `estimate`), `decision` (`allowed`, `refused`), `reason` (`none` when allowed, else the [`CostGateError::reason_code`]: `low_confidence`, `stale_quote`, `invalid_input`, `daily_cap`, `estimator_error`) |
//! | `drover_provider_calls_total`, `drover_provider_call_duration_seconds` | counter, histogram | see [`drover_vast::metrics`] |

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use drover_vast::ProviderMetrics;

use crate::gate::CostGateError;

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
    provider: ProviderMetrics,
}

/// The provisioner's counters; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ProvisionMetrics(Arc<Families>);

impl Default for ProvisionMetrics {
    fn default() -> Self {
        Self(Arc::new(Families { gate: Family::default(), provider: ProviderMetrics::default() }))
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
        self.0.provider.register(registry);
    }

    /// The provider-call half, for [`VastClient::with_metrics`](drover_vast::VastClient::with_metrics).
    pub fn provider(&self) -> &ProviderMetrics {
        &self.0.provider
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
}
