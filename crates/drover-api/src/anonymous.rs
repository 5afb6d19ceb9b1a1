//! Requests without a valid token (issue 21): limited per peer, audited in aggregate.
//!
//! An attacker needs no token to send requests, so what each one costs the server must not
//! grow with their number:
//!
//! - **Rate limit per peer.** Every request whose token is missing, malformed, unknown or
//!   revoked takes one from its peer's bucket (`api.limits.unauthenticated_burst`, default
//!   20, refilled at `unauthenticated_per_second`, default 2); an empty bucket turns the 401
//!   into a 429 with `Retry-After`. The peer is the connection's address, an IPv6 address
//!   counted by its /64 (one host usually holds the whole prefix). At most
//!   [`MAX_PEERS`] buckets are held; requests with a valid token never touch them, so a flood
//!   does not slow authenticated clients down.
//! - **Aggregated audit.** Instead of one audit row per rejected request, rejections are
//!   counted per window (`api.limits.anonymous_audit_window_s`, default 60 s) and written as
//!   one `http.unauthenticated` row per kind of rejection (`unauthenticated:missing`,
//!   `...:malformed`, `...:unknown`, `...:revoked`, `...:throttled`), each with its count,
//!   the number of distinct peers and the [`TOP_PEERS`] busiest peers. A window's rows are
//!   written when it ends, so a flood of any size leaves at most five rows per window.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::api::AuditEvent;
use drover_proto::config::{ApiLimitsConfig, RateLimitConfig};
use drover_proto::text::rfc3339_now;
use serde_json::{Map, Value};

use crate::audit::Auditor;
use crate::auth::RateLimiter;
pub use crate::listener::{peer_key, peer_of};

/// Peer buckets held at most.
pub const MAX_PEERS: usize = 10_000;
/// Peers counted one by one per window; the rest are counted together.
pub const TRACKED_PEERS: usize = 1024;
/// Busiest peers named in an aggregate row.
pub const TOP_PEERS: usize = 10;

#[derive(Debug, Default)]
struct Window {
    started: Option<String>,
    counts: BTreeMap<&'static str, u64>,
    peers: HashMap<IpAddr, u64>,
    untracked: u64,
}

/// The per-peer limiter and the window being counted.
#[derive(Debug)]
pub struct AnonymousGate {
    limiter: RateLimiter<IpAddr>,
    window: Arc<Mutex<Window>>,
    length: Duration,
}

impl AnonymousGate {
    /// A gate with `limits`' rate, burst and window.
    pub fn new(limits: &ApiLimitsConfig) -> Self {
        let rate = RateLimitConfig {
            per_second: limits.unauthenticated_per_second,
            burst: limits.unauthenticated_burst,
        };
        Self {
            limiter: RateLimiter::bounded(rate, MAX_PEERS),
            window: Arc::default(),
            length: Duration::from_secs(u64::from(limits.anonymous_audit_window_s.max(1))),
        }
    }

    /// Takes one rejected request from `peer`'s bucket; `Err(seconds)` when it is empty.
    pub fn check(&self, peer: Option<IpAddr>) -> Result<(), u64> {
        self.limiter.check(&peer_key(peer), Instant::now())
    }

    /// Counts one rejection; the first of a window schedules the window's rows.
    pub fn note(&self, result: &'static str, peer: Option<IpAddr>, auditor: &Auditor) {
        let mut window = self.window.lock();
        if window.started.is_none() {
            window.started = Some(rfc3339_now());
            let (shared, auditor, length) = (self.window.clone(), auditor.clone(), self.length);
            tokio::spawn(async move {
                tokio::time::sleep(length).await;
                write(&shared, &auditor).await;
            });
        }
        *window.counts.entry(result).or_default() += 1;
        let key = peer_key(peer);
        let tracked = window.peers.len();
        match window.peers.get_mut(&key) {
            Some(count) => *count += 1,
            None if tracked < TRACKED_PEERS => {
                window.peers.insert(key, 1);
            }
            None => window.untracked += 1,
        }
    }

    /// Writes the current window's rows now (shutdown, tests).
    pub async fn flush(&self, auditor: &Auditor) {
        write(&self.window, auditor).await;
    }
}

/// Takes the window and queues its rows.
async fn write(window: &Mutex<Window>, auditor: &Auditor) {
    let taken = std::mem::take(&mut *window.lock());
    let Some(started) = taken.started else { return };
    let mut busiest: Vec<(IpAddr, u64)> = taken.peers.iter().map(|(p, c)| (*p, *c)).collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<Value> = busiest
        .iter()
        .take(TOP_PEERS)
        .map(|(peer, count)| serde_json::json!({"peer": peer.to_string(), "count": count}))
        .collect();
    for (result, count) in taken.counts {
        let mut metadata = Map::new();
        metadata.insert("count".to_owned(), Value::from(count));
        metadata.insert("window_start".to_owned(), Value::from(started.clone()));
        metadata.insert("distinct_peers".to_owned(), Value::from(taken.peers.len()));
        metadata.insert("untracked_requests".to_owned(), Value::from(taken.untracked));
        metadata.insert("top_peers".to_owned(), Value::from(top.clone()));
        auditor
            .submit(AuditEvent {
                timestamp: rfc3339_now(),
                request_id: None,
                actor: "anonymous".to_owned(),
                action: "http.unauthenticated".to_owned(),
                resource: "api".to_owned(),
                result: result.to_owned(),
                metadata,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_counted_by_their_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(peer_key(Some(a)), peer_key(Some(b)));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(peer_key(Some(mapped)), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_limiter_holds_a_bounded_number_of_peers() {
        let limiter =
            RateLimiter::<IpAddr>::bounded(RateLimitConfig { per_second: 1, burst: 1 }, 2);
        let now = Instant::now();
        let peer = |n: u8| IpAddr::from([10, 0, 0, n]);
        assert!(limiter.check(&peer(1), now).is_ok());
        assert!(limiter.check(&peer(2), now).is_ok());
        // Both buckets are empty, so neither can be dropped: a third peer is refused.
        assert!(limiter.check(&peer(3), now).is_err());
        // Once they refill they are dropped and the third peer gets a bucket.
        assert!(limiter.check(&peer(3), now + Duration::from_secs(2)).is_ok());
    }
}
