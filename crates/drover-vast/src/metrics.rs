//! Every call to the provider, counted for `/metrics`.
//!
//! One [`ProviderMetrics`] is given to the client ([`VastClient::with_metrics`]) and
//! registered once in the registry `/metrics` serves ([`ProviderMetrics::register`]; the
//! provisioner's own metrics register it with theirs). Clones share the counts.
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `drover_provider_calls_total` | counter | `operation` (the Vast.ai call: `search_offers`, `create_instance`, `show_instance`, `list_instances`, `destroy_instance`, `instance_logs`, `current_user`, `pending_price_increases`, `accept_price_increase`, `reject_price_increase`, `list_charges`), `outcome` (`ok`, or the [`VastError::kind`](crate::VastError::kind)) |
//! | `drover_provider_call_duration_seconds` | histogram | `operation` |
//!
//! A provider call is one request with its retries (a paged list is a call per page), timed
//! from the first attempt to the answer; its outcome is the HTTP exchange's (a body that then
//! fails to parse is still `ok` here). Duration buckets, seconds: 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 (and
//! `+Inf`): Vast.ai answers in tenths of a second to seconds, and retries with backoff
//! stretch a call toward the client's overall deadline.
//!
//! [`VastClient::with_metrics`]: crate::VastClient::with_metrics

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the provider-call duration buckets, seconds.
pub const PROVIDER_CALL_BUCKETS: [f64; 10] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

type Labels<const N: usize> = [(&'static str, String); N];

#[derive(Debug)]
struct Families {
    calls: Family<Labels<2>, Counter>,
    durations: Family<Labels<1>, Histogram, fn() -> Histogram>,
}

/// The provider-call counters; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ProviderMetrics(Arc<Families>);

impl Default for ProviderMetrics {
    fn default() -> Self {
        Self(Arc::new(Families {
            calls: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(PROVIDER_CALL_BUCKETS)),
        }))
    }
}

/// Two handles are equal when they count into the same metrics.
impl PartialEq for ProviderMetrics {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl ProviderMetrics {
    /// Adds these metrics to `registry`; call once.
    pub fn register(&self, registry: &mut Registry) {
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

    /// Counts one provider call (`op` as the client names it, e.g. `"search offers"`).
    pub(crate) fn provider_call(&self, op: &str, outcome: &str, took: Duration) {
        let operation = op.replace(' ', "_");
        let labels = [("operation", operation.clone()), ("outcome", outcome.to_owned())];
        self.0.calls.get_or_create(&labels).inc();
        self.0.durations.get_or_create(&[("operation", operation)]).observe(took.as_secs_f64());
    }
}
