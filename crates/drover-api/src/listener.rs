//! The accept loop (issue 21): what a client, or a crowd of them without a token, can hold of
//! the server's connections and descriptors.
//!
//! - **Header-read timeout.** A connection has `api.limits.header_read_timeout_ms` (default
//!   10 s) to send a request's complete headers, counted from when the server starts waiting
//!   for them: after the connection opens and after each response on a kept-alive connection.
//!   A slowloris trickling header bytes, or an idle kept-alive connection, is closed then.
//! - **Global cap.** At most `max_connections` (default 512) are open; past it the loop stops
//!   accepting and new connections wait in the kernel's backlog instead of costing a
//!   descriptor.
//! - **Per-peer cap.** At most `max_connections_per_peer` (default 64) from one address (IPv6:
//!   one /64, as [`crate::anonymous::peer_key`]); one more is closed at once.
//! - **Descriptor reserve.** Before each accept the loop checks that more than `fd_reserve`
//!   (default 128) descriptors are free under `RLIMIT_NOFILE` (open ones counted in
//!   `/proc/self/fd`); while not, it waits (polling every [`RESERVE_POLL`]) rather than
//!   accept, so the store, the drivers and their restarts never find the table full because
//!   of HTTP clients. An accept that fails (`EMFILE`, ...) is retried after [`ACCEPT_BACKOFF`].
//! - **Shutdown.** When `shutdown` completes the loop stops accepting, asks every connection
//!   to finish its request in flight and close, and waits for them.
//!
//! Requests in flight are capped separately, in the router ([`crate::server::context`]).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use drover_proto::config::ApiLimitsConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The peer address of a request served with connect info (`None` in `oneshot` tests).
pub fn peer_of(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// The key a peer is limited and counted under: its address, or its /64 for IPv6.
pub fn peer_key(peer: Option<IpAddr>) -> IpAddr {
    match peer {
        None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
        Some(v4) => v4,
    }
}

/// How often the loop looks again while the descriptor reserve is not free.
pub const RESERVE_POLL: Duration = Duration::from_millis(50);
/// Pause after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Descriptors free under the soft `RLIMIT_NOFILE` now; `None` when it cannot be told.
pub fn free_descriptors() -> Option<u64> {
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    // The directory handle used to count is itself one descriptor, closed again at once.
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(soft.saturating_sub(open))
}

/// Open connections per peer key.
#[derive(Clone, Debug, Default)]
struct PeerCounts(Arc<Mutex<HashMap<IpAddr, u32>>>);

/// One counted connection of a peer; uncounted on drop.
struct PeerSlot {
    counts: PeerCounts,
    key: IpAddr,
}

impl PeerCounts {
    fn admit(&self, key: IpAddr, cap: u32) -> Option<PeerSlot> {
        let mut counts = self.0.lock();
        let count = counts.entry(key).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(PeerSlot { counts: self.clone(), key })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown` completes; see the
/// [module docs](self).
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ApiLimitsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1) as usize));
    let peers = PeerCounts::default();
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(u64::from(limits.header_read_timeout_ms)));
    let reserve = u64::from(limits.fd_reserve);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        while free_descriptors().is_some_and(|free| free <= reserve) {
            tokio::select! {
                () = tokio::time::sleep(RESERVE_POLL) => {}
                () = &mut shutdown => return drain(graceful).await,
            }
        }
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = peers.admit(peer_key(Some(addr.ip())), limits.max_connections_per_peer)
        else {
            tracing::debug!(peer = %addr.ip(), "per-peer connection limit reached; closed");
            continue;
        };
        let service = app.clone().map_request(move |mut request: axum::extract::Request<_>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
            request
        });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
            drop(permit);
        });
    }
    drain(graceful).await
}

async fn drain(graceful: GracefulShutdown) -> std::io::Result<()> {
    graceful.shutdown().await;
    Ok(())
}
