//! The supervisor's configuration file, `drover.toml`.
//!
//! Every field has a default, so an empty file (or none at all) is a working configuration:
//! API on `127.0.0.1:8080` in production mode, SQLite in `./drover-data`, the embedded Vast.ai
//! simulator (no money can be spent), the cost gate at its 95% floor, the bundled `container`
//! driver and no other. Unknown
//! keys are errors, so a typo never silently falls back to a default. Secrets are never read
//! from this file: the Vast.ai key comes only from `VASTAI_API_KEY`, and API tokens appear
//! only as SHA-256 digests.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::DriverName;

mod api;
mod driver;
pub use api::*;
pub use driver::*;

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the supervisor keeps its state and which identity it drops to.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Persistence.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where GPUs are rented.
    #[serde(default)]
    pub provider: ProviderConfig,
    /// The cost gate and global spending caps.
    #[serde(default)]
    pub gate: GateConfig,
    /// The drivers the supervisor runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub drivers: Vec<DriverConfig>,
}

/// Where the supervisor keeps its state and which identity it drops to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Directory for the store and other state. Default `./drover-data`.
    #[serde(default = "default_data_dir")]
    #[schemars(length(min = 1, max = 4096))]
    pub data_dir: String,
    /// User id the supervisor drops to when started as root. Default 65534 (`nobody`).
    #[serde(default = "default_unprivileged_id")]
    #[schemars(range(min = 1, max = 4_294_967_294_u32))]
    pub uid: u32,
    /// Group id the supervisor drops to when started as root. Default 65534 (`nogroup`).
    #[serde(default = "default_unprivileged_id")]
    #[schemars(range(min = 1, max = 4_294_967_294_u32))]
    pub gid: u32,
    /// What happens to running jobs on SIGTERM/SIGINT. Default `cancel`.
    #[serde(default)]
    pub on_shutdown: ShutdownMode,
    /// How long running jobs get to end on shutdown, in seconds (then they are cancelled, and
    /// their drivers stopped). Default 10.
    #[serde(default = "default_shutdown_grace_s")]
    #[schemars(range(min = 1, max = 86_400))]
    pub shutdown_grace_s: u32,
    /// Run the bundled `container` driver (this binary, `drover driver container`, in the
    /// default sandbox profile) next to the `[[drivers]]` entries. Default true; a
    /// `[[drivers]]` entry named `container` replaces it.
    #[serde(default = "default_true")]
    pub bundled_container: bool,
    /// Protections this deployment knowingly runs without. `serve` refuses to start when one
    /// of them is missing on this machine and not listed here; every one listed is reported by
    /// `/readyz` and `drover sandbox status`. Default empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2), extend("uniqueItems" = true))]
    pub accept_risks: Vec<AcceptedRisk>,
    /// This deployment's id, in the label of every rented instance (`drover:<id>:<lease>`); a
    /// reaper touches only its own deployment's instances. Default: generated at the first
    /// start (`drover-` and 12 random hex digits) and kept in the store, so two installs never
    /// share one; replicas that share a store share it. Two supervisors with different stores
    /// must never be given the same id: each would destroy the other's instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    pub deployment: Option<String>,
    /// Seconds without a heartbeat (written every fifth of this) after which this supervisor
    /// counts as dead to the others sharing its store: its queued jobs are resumed by another
    /// replica, its starting and running ones failed with the reason, and its leases taken
    /// over and their instances destroyed. Give every replica the same value. Default 30.
    #[serde(default = "default_replica_expiry_s")]
    #[schemars(range(min = 1, max = 3600))]
    pub replica_expiry_s: u32,
}

/// A protection `serve` may knowingly run without (`supervisor.accept_risks`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AcceptedRisk {
    /// Drivers run without Landlock. They run as the supervisor's own uid, so without it a
    /// driver can write the supervisor's data directory (its store, its jobs' data).
    DriverWritableStore,
    /// A driver's `limits.pids`, `cpu_quota` or `memory_bytes` may go unenforced where this
    /// machine offers no cgroup for it, so one driver can starve the others.
    UnenforcedLimits,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            uid: 65534,
            gid: 65534,
            on_shutdown: ShutdownMode::default(),
            shutdown_grace_s: default_shutdown_grace_s(),
            bundled_container: true,
            accept_risks: Vec::new(),
            deployment: None,
            replica_expiry_s: default_replica_expiry_s(),
        }
    }
}

/// What happens to running jobs when the supervisor is asked to stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownMode {
    /// Cancel every running job at once, and wait for them to end. Default.
    #[default]
    Cancel,
    /// Let running jobs finish within the grace period; cancel what is left after it.
    Drain,
}

fn default_true() -> bool {
    true
}

fn default_shutdown_grace_s() -> u32 {
    10
}

fn default_replica_expiry_s() -> u32 {
    30
}

fn default_data_dir() -> String {
    "./drover-data".to_owned()
}
fn default_unprivileged_id() -> u32 {
    65534
}

/// Persistence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Database URL: `sqlite://PATH`, or `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (or
    /// `postgresql://`) for one database shared by a fleet of replicas, migrated at start. It
    /// holds a password: set it in the environment (`DROVER_STORE__URL`), not in the file.
    /// No TLS to PostgreSQL in this build (`sslmode=require` fails): use a private network or
    /// a Unix socket (`?host=/run/postgresql`). Default: SQLite at `<data_dir>/drover.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^(sqlite|postgres|postgresql)://"))]
    pub url: Option<String>,
    /// Bytes of log line text stored per job; later lines are dropped and counted, and one
    /// log event before the job's end says how many. Default 16777216 (16 MiB).
    #[serde(default = "default_log_quota_bytes")]
    #[schemars(range(min = 1024, max = crate::ids::MAX_SAFE_INTEGER))]
    pub log_quota_bytes: u64,
    /// Free bytes the data directory's volume must keep: below it new jobs are refused with
    /// 503 `storage_low` and `Retry-After`, and `/readyz` is not ready, until space returns.
    /// Default 67108864 (64 MiB).
    #[serde(default = "default_min_free_bytes")]
    #[schemars(range(max = crate::ids::MAX_SAFE_INTEGER))]
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            log_quota_bytes: default_log_quota_bytes(),
            min_free_bytes: default_min_free_bytes(),
        }
    }
}

fn default_log_quota_bytes() -> u64 {
    16 * 1024 * 1024
}

fn default_min_free_bytes() -> u64 {
    64 * 1024 * 1024
}

/// Where GPUs are rented.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// The embedded Vast.ai simulator: nothing real is rented and nothing is spent. Default.
    #[default]
    Simulator,
    /// The real Vast.ai API, with the key from `VASTAI_API_KEY`.
    Vastai {
        /// API base URL. Default `https://console.vast.ai`.
        #[serde(default = "default_vastai_url")]
        #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
        base_url: String,
    },
}

fn default_vastai_url() -> String {
    "https://console.vast.ai".to_owned()
}

/// The cost gate and global spending caps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Least confidence that a rental's cost stays within budget. Default 0.95; it may be
    /// raised, never lowered.
    #[serde(default = "default_confidence_floor")]
    #[schemars(range(min = 0.95, max = 1.0))]
    pub confidence_floor: f64,
    /// Oldest price quote the gate accepts, in seconds. Default 60.
    #[serde(default = "default_max_quote_age_s")]
    #[schemars(range(min = 1, max = 3600))]
    pub max_quote_age_s: u32,
    /// Most that all rentals together may cost per UTC day, in USD. Default 50. The day is
    /// the store's (the PostgreSQL server's clock, shared by every replica of a fleet; the
    /// host's for SQLite), not each replica's own.
    #[serde(default = "default_daily_cap_usd")]
    #[schemars(range(min = 0.0, max = crate::limits::MAX_USD))]
    pub daily_cap_usd: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            confidence_floor: default_confidence_floor(),
            max_quote_age_s: default_max_quote_age_s(),
            daily_cap_usd: default_daily_cap_usd(),
        }
    }
}

fn default_confidence_floor() -> f64 {
    0.95
}
fn default_max_quote_age_s() -> u32 {
    60
}
fn default_daily_cap_usd() -> f64 {
    50.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn gpus(value: serde_json::Value) -> Result<Option<GpuSelection>, serde_json::Error> {
        let driver = json!({"name": "trainer", "command": ["/bin/true"], "gpus": value});
        serde_json::from_value::<DriverConfig>(driver).map(|d| d.gpus)
    }

    #[test]
    fn gpus_are_all_indices_or_uuids() {
        assert_eq!(gpus(json!("all")).unwrap(), Some(GpuSelection::All(AllGpus::All)));
        let listed = gpus(json!([0, "GPU-8f2c-01"])).unwrap().unwrap();
        assert_eq!(
            listed,
            GpuSelection::Listed(vec![
                GpuRef::Index(0),
                GpuRef::Uuid(GpuUuid::new("GPU-8f2c-01").unwrap())
            ])
        );
        let absent = serde_json::from_value::<DriverConfig>(
            json!({"name": "trainer", "command": ["/bin/true"]}),
        );
        assert_eq!(absent.unwrap().gpus, None);
        for bad in [json!("some"), json!(["GPU-xyz"]), json!([-1]), json!(["0"]), json!({})] {
            assert!(gpus(bad.clone()).is_err(), "{bad}");
        }
        assert!(GpuUuid::new(format!("GPU-{}", "a".repeat(61))).is_err());
        assert_eq!(GpuRef::Index(3).to_string(), "GPU 3");
    }
}
