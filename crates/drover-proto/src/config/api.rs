//! The `[api]` table: listener, limits, rate limits, tokens and their scopes.

use super::*;

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
