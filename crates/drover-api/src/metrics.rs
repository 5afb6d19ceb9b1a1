//! `GET /metrics`: one [`prometheus_client`] registry, built at start and shared by every
//! part of drover that has something to count, encoded at each scrape.
//!
//! The registry is handed to [`ApiMetrics::new`] (through
//! [`ApiState::with_registry`](crate::ApiState::with_registry)) after the service, the
//! supervisor and the provisioner have registered their own metrics in it; the API adds its
//! request metrics, `drover_build_info` and the process metrics, and from then on the registry
//! is only read. Before each scrape the backend refreshes what it reads from the store
//! ([`Backend::refresh_metrics`](crate::Backend::refresh_metrics)).
//!
//! The response is the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), or
//! OpenMetrics 1.0 (`application/openmetrics-text`) when the scraper's `Accept` asks for it.
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `drover_api_requests_total` | counter | `method` (a standard method, else `other`), `route` (the route template, never the raw path; `(unmatched)` for none), `status` |
//! | `drover_api_request_duration_seconds` | histogram | `method`, `route` |
//! | `drover_api_auth_failures_total` | counter | `reason` (`missing`, `malformed`, `unknown`, `revoked`) |
//! | `drover_api_rate_limited_total` | counter | |
//! | `drover_api_panics_total` | counter | |
//! | `drover_build_info` | gauge, always 1 | `version`, `arch`, `os`, `profile` (`debug` or `release`) |
//! | `process_cpu_seconds_total` | counter | |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes` | gauge | |
//! | `process_open_fds`, `process_max_fds` | gauge | |
//! | `process_start_time_seconds` | gauge | |
//!
//! The request-duration buckets, in seconds: 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
//! 0.25, 0.5, 1, 2.5, 5, 10 (and `+Inf`): the API answers most requests in about a
//! millisecond, so the low end is finer than the Prometheus default. An event stream counts
//! from its request to its end.
//!
//! Every label set is bounded: methods are the nine standard ones plus `other`, routes are
//! templates, statuses are HTTP statuses. The service, the supervisor and the provisioner
//! document their own metrics (`drover_service::metrics`, `drover_supervisor::metrics`,
//! `drover_provision::metrics`); README's "Metrics" section lists them all.

mod process;

use std::fmt::Write as _;
use std::time::Duration;

use axum::http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
pub use prometheus_client::registry::Registry;

use crate::token::Rejection;

/// Upper bounds of the request-duration buckets, seconds (see the [module docs](self)).
pub const REQUEST_DURATION_BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The `reason` label values of `drover_api_auth_failures_total`.
const AUTH_FAILURE_REASONS: [&str; 4] = ["missing", "malformed", "unknown", "revoked"];

/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: Status,
}

/// An HTTP status as a label value, written without allocating.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Status(u16);

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

/// The registry behind `/metrics`, and the API's own metrics in it.
#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Durations,
    auth_failures: Family<[(&'static str, &'static str); 1], Counter>,
    rate_limited: Counter,
    panics: Counter,
}

impl Default for ApiMetrics {
    /// The API's metrics in a registry of their own.
    fn default() -> Self {
        Self::new(Registry::default())
    }
}

impl ApiMetrics {
    /// Adds the API's metrics, `drover_build_info` and the process metrics to `registry`,
    /// which holds whatever the rest of drover registered, and keeps it for scrapes.
    pub fn new(mut registry: Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Durations::new_with_constructor(duration_histogram);
        let auth_failures = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let (rate_limited, panics) = (Counter::default(), Counter::default());
        registry.register(
            "drover_api_requests",
            "API requests by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "drover_api_request_duration_seconds",
            "Time spent serving API requests, by method and route template",
            durations.clone(),
        );
        // Every reason is there from the start, so a rate over it is defined before the first.
        for reason in AUTH_FAILURE_REASONS {
            let _ = auth_failures.get_or_create(&[("reason", reason)]);
        }
        registry.register(
            "drover_api_auth_failures",
            "Requests refused with 401, by reason",
            auth_failures.clone(),
        );
        registry.register(
            "drover_api_rate_limited",
            "Requests refused with 429",
            rate_limited.clone(),
        );
        registry.register("drover_api_panics", "Handler panics turned into 500", panics.clone());
        registry.register("drover_build", "Which drover this is (always 1)", build_info());
        registry.register_collector(Box::new(process::ProcessCollector));
        Self { registry, requests, durations, auth_failures, rate_limited, panics }
    }

    pub(crate) fn request(&self, method: &Method, route: &str, status: u16, took: Duration) {
        let method = method_label(method);
        let labels = RequestLabels { method, route: route.to_owned(), status: Status(status) };
        self.requests.get_or_create(&labels).inc();
        let labels = RouteLabels { method, route: labels.route };
        self.durations.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub(crate) fn auth_failure(&self, rejection: Rejection) {
        let reason = AUTH_FAILURE_REASONS[match rejection {
            Rejection::Missing => 0,
            Rejection::Malformed => 1,
            Rejection::Unknown => 2,
            Rejection::Revoked => 3,
        }];
        self.auth_failures.get_or_create(&[("reason", reason)]).inc();
    }

    pub(crate) fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub(crate) fn panic(&self) {
        self.panics.inc();
    }

    /// The whole registry in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String fails only if a metric's own encoding does, which none of
        // drover's does; a partial text is still better than none for the scraper.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(%error, "encoding the metrics failed");
        }
        out
    }

    /// The whole registry as OpenMetrics text (ends with `# EOF`).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "encoding the metrics failed");
        }
        out
    }
}

/// `drover_build_info`: the version and the target this binary was built for.
fn build_info() -> Info<[(&'static str, &'static str); 4]> {
    Info::new([
        ("version", env!("CARGO_PKG_VERSION")),
        ("arch", std::env::consts::ARCH),
        ("os", std::env::consts::OS),
        ("profile", if cfg!(debug_assertions) { "debug" } else { "release" }),
    ])
}

/// The `method` label: one of the standard methods, or `other`, so a client inventing methods
/// cannot add series (issue 17: every new method used to add one, never pruned).
fn method_label(method: &Method) -> &'static str {
    static KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN.iter().find(|known| *known == method).map_or("other", Method::as_str)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Issue 17: latency was a summary (`_sum`/`_count` only); it is a histogram with the
    /// documented buckets.
    #[test]
    fn request_latency_is_a_histogram_with_buckets() {
        let metrics = ApiMetrics::default();
        metrics.request(&Method::GET, "/v1/jobs", 200, Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains("# TYPE drover_api_request_duration_seconds histogram"), "{text}");
        let bucket = |le: &str| {
            format!(
                "drover_api_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/jobs\",le=\"{le}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 0\n", bucket("0.0025"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", bucket("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", bucket("+Inf"))), "{text}");
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("drover_api_request_duration_seconds_bucket{"))
            .count();
        assert_eq!(buckets, REQUEST_DURATION_BUCKETS.len() + 1, "{text}");
        assert!(text.contains(
            "drover_api_request_duration_seconds_count{method=\"GET\",route=\"/v1/jobs\"} 1"
        ));
    }

    /// Issue 17: there was no build or process information.
    #[test]
    fn build_info_and_process_metrics_are_exported() {
        let text = ApiMetrics::default().render();
        let build = format!(
            "drover_build_info{{version=\"{}\",arch=\"{}\",os=\"{}\",profile=\"debug\"}} 1",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            std::env::consts::OS
        );
        assert!(text.contains(&build), "{text}");
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.split(' ').next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let started = value("process_start_time_seconds");
        assert!(started <= now.as_secs_f64() + 1.0 && started > now.as_secs_f64() - 3600.0);
    }

    #[test]
    fn openmetrics_ends_with_eof_and_counters_keep_their_names() {
        let metrics = ApiMetrics::default();
        metrics.panic();
        let text = metrics.render_openmetrics();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("drover_api_panics_total 1\n"), "{text}");
        assert!(metrics.render().contains("drover_api_panics_total 1\n"));
    }
}
