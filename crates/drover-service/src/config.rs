//! How the service behaves: [`ServiceConfig`] with its defaults, where rentals go
//! ([`ProviderKind`]) and the embedded simulator's ledger ([`SimulatorLedger`]).

use std::sync::Arc;
use std::time::Duration;

use drover_api::webhook::WebhookSender;

/// Where rentals go, as readiness and the logs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// The embedded Vast.ai simulator: nothing real is rented, nothing is spent.
    Simulator,
    /// The real Vast.ai: rentals cost real money.
    Vastai,
}

/// What readiness says about the simulator.
pub const SIMULATOR_NOTICE: &str = "SIMULATOR: the embedded Vast.ai simulator is the provider; \
     nothing real is rented and nothing is spent";

/// Reads the embedded simulator's ledger: (USD billed so far, instances still billing).
#[derive(Clone)]
pub struct SimulatorLedger(pub Arc<dyn Fn() -> (f64, usize) + Send + Sync>);

impl std::fmt::Debug for SimulatorLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimulatorLedger")
    }
}

/// How the service behaves.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The provider behind the provisioner.
    pub provider: ProviderKind,
    /// Pause between dispatch attempts while the driver is starting or busy. Default 500 ms.
    pub dispatch_retry: Duration,
    /// How long [`Service::shutdown`](crate::Service::shutdown) waits for jobs to end. Default 10 s.
    pub shutdown_grace: Duration,
    /// Cancel running jobs at shutdown, or let them finish first. Default cancel.
    pub on_shutdown: drover_proto::config::ShutdownMode,
    /// The gate's confidence floor, for answers made without the gate (no offers). Default
    /// 0.95.
    pub confidence_floor: f64,
    /// The embedded simulator's own billing ledger, when it is the provider: a function that
    /// returns (USD billed so far, instances still billing). Exported by `/metrics` as
    /// `drover_simulator_billed_usd` and `drover_simulator_live_instances`, next to
    /// `drover_ledger_usd`, so the provider's bill and drover's ledger can be compared.
    pub simulator_ledger: Option<SimulatorLedger>,
    /// Sends `job.finished` to jobs' webhook URLs; `None`: jobs with a webhook URL are
    /// accepted but nothing is sent (logged).
    pub webhooks: Option<WebhookSender>,
    /// Protections this deployment runs without (`supervisor.accept_risks`), reported by
    /// readiness as the `sandbox` check (still ready). Default none.
    pub accepted_risks: Vec<String>,
    /// Bytes of log line text stored per job; lines beyond it are dropped and counted (see
    /// the [crate docs](crate)). Default [`DEFAULT_LOG_QUOTA_BYTES`] (16 MiB).
    pub log_quota_bytes: u64,
    /// A directory on the store's volume, whose free space (`statvfs`) is checked against
    /// `min_free_bytes` at every submit and readiness probe. `None`: not checked. Default
    /// `None` (serve passes its data directory).
    pub data_volume: Option<std::path::PathBuf>,
    /// Free bytes the volume must keep; below it submits get
    /// [`BackendError::StorageLow`](drover_api::BackendError::StorageLow) (503 `storage_low`, `Retry-After`) and readiness says
    /// not ready. Default [`DEFAULT_MIN_FREE_BYTES`] (64 MiB).
    pub min_free_bytes: u64,
}

/// The default disk-space watermark: 64 MiB free.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// The default per-job log quota: 16 MiB of line text.
pub const DEFAULT_LOG_QUOTA_BYTES: u64 = 16 * 1024 * 1024;

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            provider: ProviderKind::Simulator,
            dispatch_retry: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            on_shutdown: drover_proto::config::ShutdownMode::Cancel,
            confidence_floor: 0.95,
            simulator_ledger: None,
            webhooks: None,
            accepted_risks: Vec::new(),
            log_quota_bytes: DEFAULT_LOG_QUOTA_BYTES,
            data_volume: None,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}
