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
    /// share one; replicas that share a store share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    pub deployment: Option<String>,
    /// Seconds without a heartbeat (written every fifth of this) after which this supervisor
    /// counts as dead to the others sharing its store, and its leases are taken over and their
    /// instances destroyed. Default 30.
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

/// The HTTP API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Socket address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    #[schemars(length(min = 3, max = 256))]
    pub listen: String,
    /// `production` (default): error bodies never carry internals. `development` adds details
    /// and is announced loudly at start-up.
    #[serde(default)]
    pub mode: ApiMode,
    /// Largest accepted request body, in bytes. Default 1 MiB.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 67_108_864))]
    pub max_body_bytes: u32,
    /// API tokens, as digests. Create entries with `drover token new`. Reloaded on SIGHUP, so
    /// tokens can be added and revoked without a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub tokens: Vec<TokenEntry>,
    /// Requests each token may make. Default: 20 per second, bursts of 40.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Also append every audit event, as one JSON line, to this file. Absent: the store only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub audit_file: Option<String>,
    /// Allow `http://` webhook URLs (the signature still protects the body, but not its
    /// confidentiality). Default false: `https://` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http_webhooks: bool,
    /// Let webhooks reach loopback, private, link-local and metadata addresses (checked on
    /// the resolved address when connecting). Default false: public addresses only, so a
    /// job's webhook URL cannot make the server call services on its own network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private_webhook_targets: bool,
    /// Connection, concurrency and abuse limits; every key has a default.
    #[serde(default)]
    pub limits: ApiLimitsConfig,
}

/// What one client, or many without a token, can hold of the server (issue 21). The defaults
/// suit a server with the usual 1024 open files; `max_connections` is lowered at start to
/// leave `fd_reserve` descriptors for the store, drivers and their restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiLimitsConfig {
    /// Time a client has to send a request's complete headers, from the connection's start
    /// or the end of its previous response: a slow sender and an idle kept-alive connection
    /// are both closed after it. Default 10000 ms.
    #[serde(default = "default_header_read_timeout_ms")]
    #[schemars(range(min = 100, max = 600_000))]
    pub header_read_timeout_ms: u32,
    /// Open connections at most; new ones wait in the kernel's backlog. Default 512.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: u32,
    /// Open connections from one peer address (IPv6: one /64) at most; more are closed at
    /// once. Default 64.
    #[serde(default = "default_max_connections_per_peer")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections_per_peer: u32,
    /// Requests handled at once; more get 503 with `Retry-After`. Default 256.
    #[serde(default = "default_max_concurrent_requests")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_concurrent_requests: u32,
    /// Open event streams (`GET /v1/jobs/{id}/events`) per token at most; more get 429.
    /// Default 8.
    #[serde(default = "default_sse_streams_per_token")]
    #[schemars(range(min = 1, max = 100_000))]
    pub sse_streams_per_token: u32,
    /// Sustained requests per second without a valid token, per peer address; past the burst
    /// they get 429 instead of 401. Default 2.
    #[serde(default = "default_unauthenticated_per_second")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub unauthenticated_per_second: u32,
    /// Requests without a valid token one peer may make at once. Default 20.
    #[serde(default = "default_unauthenticated_burst")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub unauthenticated_burst: u32,
    /// Requests without a valid token are audited as counts per window of this length, one
    /// row per kind of rejection, not one row each. Default 60 s.
    #[serde(default = "default_anonymous_audit_window_s")]
    #[schemars(range(min = 1, max = 86_400))]
    pub anonymous_audit_window_s: u32,
    /// File descriptors the API never uses, kept for the store, drivers and their restarts:
    /// connections are accepted only while more than this many are free under
    /// `RLIMIT_NOFILE`. Default 128.
    #[serde(default = "default_fd_reserve")]
    #[schemars(range(min = 16, max = 1_000_000))]
    pub fd_reserve: u32,
}

impl Default for ApiLimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: default_header_read_timeout_ms(),
            max_connections: default_max_connections(),
            max_connections_per_peer: default_max_connections_per_peer(),
            max_concurrent_requests: default_max_concurrent_requests(),
            sse_streams_per_token: default_sse_streams_per_token(),
            unauthenticated_per_second: default_unauthenticated_per_second(),
            unauthenticated_burst: default_unauthenticated_burst(),
            anonymous_audit_window_s: default_anonymous_audit_window_s(),
            fd_reserve: default_fd_reserve(),
        }
    }
}

fn default_header_read_timeout_ms() -> u32 {
    10_000
}
fn default_max_connections() -> u32 {
    512
}
fn default_max_connections_per_peer() -> u32 {
    64
}
fn default_max_concurrent_requests() -> u32 {
    256
}
fn default_sse_streams_per_token() -> u32 {
    8
}
fn default_unauthenticated_per_second() -> u32 {
    2
}
fn default_unauthenticated_burst() -> u32 {
    20
}
fn default_anonymous_audit_window_s() -> u32 {
    60
}
fn default_fd_reserve() -> u32 {
    128
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            mode: ApiMode::default(),
            max_body_bytes: default_max_body_bytes(),
            tokens: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            audit_file: None,
            allow_http_webhooks: false,
            allow_private_webhook_targets: false,
            limits: ApiLimitsConfig::default(),
        }
    }
}

/// A token bucket per API token: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second. Default 20.
    #[serde(default = "default_rate_per_second")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub per_second: u32,
    /// Requests allowed at once after a quiet period. Default 40.
    #[serde(default = "default_rate_burst")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { per_second: default_rate_per_second(), burst: default_rate_burst() }
    }
}

fn default_rate_per_second() -> u32 {
    20
}
fn default_rate_burst() -> u32 {
    40
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_max_body_bytes() -> u32 {
    1 << 20
}

/// How much an API error body may say.
///
/// Development mode also needs the server's explicit `--development` flag; the configuration
/// alone cannot enable it, and the server warns loudly at start-up when it is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiMode {
    /// Error bodies carry a code and a request id, never internals.
    #[default]
    Production,
    /// Error bodies may carry details; for local development only.
    Development,
}

/// One API token, stored as its digest; the token itself is shown once, at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds the token; audit events name this, never the token.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    pub name: String,
    /// SHA-256 of the token, lowercase hex.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
    /// What the token may do.
    #[schemars(length(min = 1, max = 16), extend("uniqueItems" = true))]
    pub scopes: Vec<Scope>,
    /// How the token was made, which bounds its entropy. The server refuses to start with an
    /// entry whose format could carry less than 256 bits.
    pub format: TokenFormat,
    /// A revoked token is refused (401) and its use is audited as such. Removing the entry
    /// has the same effect; keeping it revoked for a while makes rotation auditable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// How an API token is encoded, and so how much entropy it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TokenFormat {
    /// `drover_` + base64url(32 bytes from the OS CSPRNG + a 4-byte checksum): 256 bits.
    #[serde(rename = "drover-v1")]
    DroverV1,
}

impl TokenFormat {
    /// The entropy a token of this format carries, in bits.
    pub fn entropy_bits(self) -> u32 {
        match self {
            Self::DroverV1 => 256,
        }
    }
}

/// A permission an API token carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Scope {
    /// Read jobs, their events and logs.
    #[serde(rename = "jobs:read")]
    JobsRead,
    /// Submit and cancel jobs, request estimates.
    #[serde(rename = "jobs:write")]
    JobsWrite,
    /// List drivers and their action schemas.
    #[serde(rename = "drivers:read")]
    DriversRead,
    /// Read Prometheus metrics.
    #[serde(rename = "metrics:read")]
    MetricsRead,
    /// Read, follow and cancel every token's jobs. Without it a token sees only the jobs it
    /// submitted itself (their owner is the submitting token's name).
    #[serde(rename = "jobs:admin")]
    JobsAdmin,
}

impl Scope {
    /// Every scope, in the order `drover token new --help` lists them.
    pub const ALL: &'static [Scope] = &[
        Scope::JobsRead,
        Scope::JobsWrite,
        Scope::DriversRead,
        Scope::MetricsRead,
        Scope::JobsAdmin,
    ];

    /// The scope as it appears in the configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobsRead => "jobs:read",
            Self::JobsWrite => "jobs:write",
            Self::DriversRead => "drivers:read",
            Self::MetricsRead => "metrics:read",
            Self::JobsAdmin => "jobs:admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.iter().copied().find(|scope| scope.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|scope| scope.as_str()).collect();
            format!("unknown scope (known: {})", known.join(", "))
        })
    }
}

/// Persistence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Database URL: `sqlite://PATH` or `postgres://...`. Default: SQLite at
    /// `<data_dir>/drover.db`.
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
    /// Most that all rentals together may cost per UTC day, in USD. Default 50.
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

/// One driver the supervisor runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverConfig {
    /// The driver's name; jobs name it.
    pub name: DriverName,
    /// The program and its arguments.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 4096)))]
    pub command: Vec<String>,
    /// Sandbox profile file. Absent: the default profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub profile: Option<String>,
    /// How many driver processes to keep running. Default 1.
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = 1, max = 64))]
    pub pool_size: u16,
    /// The channel frames travel on. Default `fd3`.
    #[serde(default)]
    pub transport: TransportKind,
    /// How long the driver has to send `hello`, in milliseconds. Default 10000.
    #[serde(default = "default_hello_timeout_ms")]
    #[schemars(range(min = 100, max = 600_000))]
    pub hello_timeout_ms: u32,
    /// Interval between heartbeats, in milliseconds. Default 5000.
    #[serde(default = "default_heartbeat_ms")]
    #[schemars(range(min = 100, max = 600_000))]
    pub heartbeat_ms: u32,
    /// Missed heartbeats after which the driver counts as hung. Default 3.
    #[serde(default = "default_heartbeat_misses")]
    #[schemars(range(min = 1, max = 100))]
    pub heartbeat_misses: u32,
    /// Grace period granted by `shutdown`, in milliseconds. Default 10000.
    #[serde(default = "default_shutdown_grace_ms")]
    #[schemars(range(max = crate::limits::MAX_GRACE_MS))]
    pub shutdown_grace_ms: u32,
    /// Restarts allowed within a crash-loop window before the driver is marked failed.
    /// Default 5.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(max = 1000))]
    pub max_restarts: u32,
    /// The local NVIDIA GPUs this driver holds: `"all"`, or a list of nvidia-smi indices
    /// (`[0]`) and UUIDs (`["GPU-8f2c..."]`). Only those `/dev/nvidiaN` nodes, plus the
    /// control and unified-memory nodes, are granted to its processes, and
    /// `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES` name them by UUID. The supervisor
    /// refuses to start when a named GPU is not there. Absent (the default): no GPU, whatever
    /// the profile lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuSelection>,
}

/// Which local GPUs a driver holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum GpuSelection {
    /// Every GPU the supervisor found at start.
    All(AllGpus),
    /// These GPUs, in this order (CUDA numbers them 0, 1, ... in this order).
    Listed(#[schemars(length(min = 1, max = 64))] Vec<GpuRef>),
}

/// The word `"all"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllGpus {
    /// Every GPU.
    All,
}

/// One GPU, by index or by UUID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum GpuRef {
    /// Its index as `nvidia-smi` lists it (PCI bus order).
    Index(#[schemars(range(max = 1023))] u32),
    /// Its UUID as `nvidia-smi -L` prints it.
    Uuid(GpuUuid),
}

impl std::fmt::Display for GpuRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuRef::Index(index) => write!(f, "GPU {index}"),
            GpuRef::Uuid(uuid) => write!(f, "GPU {uuid}"),
        }
    }
}

/// A GPU UUID: `GPU-` followed by hexadecimal digits and dashes, at most 64 characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GpuUuid(String);

impl GpuUuid {
    /// The JSON Schema `pattern`.
    pub const PATTERN: &'static str = "^GPU-[0-9a-fA-F-]+$";

    /// Checks `value` (`GPU-` then hex digits and dashes, at most 64 bytes) and wraps it.
    pub fn new(value: impl Into<String>) -> Result<Self, crate::ids::IdError> {
        let value = value.into();
        let error = |reason| crate::ids::IdError { kind: "GpuUuid", reason };
        let Some(rest) = value.strip_prefix("GPU-") else {
            return Err(error("does not start with GPU-"));
        };
        if value.len() > 64 {
            return Err(error("is too long"));
        }
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(error("contains a character that is not a hex digit or a dash"));
        }
        Ok(Self(value))
    }

    /// The UUID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GpuUuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for GpuUuid {
    type Error = crate::ids::IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<GpuUuid> for String {
    fn from(uuid: GpuUuid) -> String {
        uuid.0
    }
}

impl JsonSchema for GpuUuid {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GpuUuid".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A GPU UUID as nvidia-smi -L prints it.",
            "type": "string",
            "minLength": 5,
            "maxLength": 64,
            "pattern": "^GPU-[0-9a-fA-F-]+$",
            "examples": ["GPU-8f2c4a1e-3b5d-4c6e-9f70-1a2b3c4d5e6f"],
        })
    }
}

fn default_pool_size() -> u16 {
    1
}
fn default_hello_timeout_ms() -> u32 {
    10_000
}
fn default_heartbeat_ms() -> u32 {
    5_000
}
fn default_heartbeat_misses() -> u32 {
    3
}
fn default_shutdown_grace_ms() -> u32 {
    10_000
}
fn default_max_restarts() -> u32 {
    5
}

/// The channel frames travel on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// A socketpair end at fd 3; stdout and stderr are captured as logs. Default.
    #[default]
    Fd3,
    /// stdin/stdout, for drivers that cannot use fd 3; stderr is captured as logs.
    Stdio,
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
