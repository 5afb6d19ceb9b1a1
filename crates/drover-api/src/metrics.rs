//! Counters for `GET /metrics` (Prometheus text exposition format 0.0.4).
//!
//! | Metric | Labels |
//! |---|---|
//! | `drover_api_requests_total` | `method` (a standard method, else `other`), `route` (the route template, never the raw path; `(unmatched)` for none), `status` |
//! | `drover_api_request_duration_seconds_sum` / `_count` | `method`, `route` |
//! | `drover_api_auth_failures_total` | `reason` (`missing`, `malformed`, `unknown`, `revoked`) |
//! | `drover_api_rate_limited_total` | |
//! | `drover_api_panics_total` | |
//!
//! The backend appends its own samples (jobs by state, leases, spend).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;

use crate::auth::Rejection;

#[derive(Debug, Default)]
struct Route {
    by_status: BTreeMap<u16, u64>,
    seconds: f64,
    count: u64,
}

/// The API's counters.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    routes: Mutex<BTreeMap<(String, String), Route>>,
    auth_failures: [AtomicU64; 4],
    rate_limited: AtomicU64,
    panics: AtomicU64,
}

impl ApiMetrics {
    pub(crate) fn request(&self, method: &Method, route: &str, status: u16, took: Duration) {
        let Ok(mut routes) = self.routes.lock() else { return };
        let key = (method_label(method).to_owned(), route.to_owned());
        let entry = routes.entry(key).or_default();
        *entry.by_status.entry(status).or_default() += 1;
        entry.seconds += took.as_secs_f64();
        entry.count += 1;
    }

    pub(crate) fn auth_failure(&self, rejection: Rejection) {
        let index = match rejection {
            Rejection::Missing => 0,
            Rejection::Malformed => 1,
            Rejection::Unknown => 2,
            Rejection::Revoked => 3,
        };
        self.auth_failures[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP drover_api_requests_total API requests by route and status.\n");
        out.push_str("# TYPE drover_api_requests_total counter\n");
        let routes = match self.routes.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for ((method, route), r) in routes.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(
                    out,
                    "drover_api_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str("# HELP drover_api_request_duration_seconds Time spent serving requests.\n");
        out.push_str("# TYPE drover_api_request_duration_seconds summary\n");
        for ((method, route), r) in routes.iter() {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            let _ =
                writeln!(out, "drover_api_request_duration_seconds_sum{{{labels}}} {}", r.seconds);
            let _ =
                writeln!(out, "drover_api_request_duration_seconds_count{{{labels}}} {}", r.count);
        }
        drop(routes);
        out.push_str(
            "# HELP drover_api_auth_failures_total Requests refused with 401, by reason.\n",
        );
        out.push_str("# TYPE drover_api_auth_failures_total counter\n");
        for (i, reason) in ["missing", "malformed", "unknown", "revoked"].iter().enumerate() {
            let n = self.auth_failures[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "drover_api_auth_failures_total{{reason=\"{reason}\"}} {n}");
        }
        out.push_str("# HELP drover_api_rate_limited_total Requests refused with 429.\n");
        out.push_str("# TYPE drover_api_rate_limited_total counter\n");
        let _ = writeln!(
            out,
            "drover_api_rate_limited_total {}",
            self.rate_limited.load(Ordering::Relaxed)
        );
        out.push_str("# HELP drover_api_panics_total Handler panics turned into 500.\n");
        out.push_str("# TYPE drover_api_panics_total counter\n");
        let _ = writeln!(out, "drover_api_panics_total {}", self.panics.load(Ordering::Relaxed));
        out
    }
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

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
