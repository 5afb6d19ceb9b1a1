//! The `[[drivers]]` entries: the command, its sandbox profile, its pool, its GPUs.

use super::*;

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
