//! Size limits written into the schemas, so that validation rejects abuse and not only wrong
//! types. Each constant is used both in a `#[schemars(...)]` bound and by code that has to stay
//! under it (the driver SDK chunks log lines by [`LOG_LINES_PER_FRAME`], for example).

/// Default largest frame payload, in bytes: 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1 << 20;
/// Largest `max_frame_bytes` a session may negotiate: 16 MiB.
pub const NEGOTIABLE_MAX_FRAME_BYTES: u32 = 16 << 20;
/// Smallest `max_frame_bytes` a session may negotiate: 4 KiB (a `hello` must fit).
pub const MIN_MAX_FRAME_BYTES: u32 = 4 << 10;

/// Longest human-readable message (`message`, `reason`, `status_message`), in characters.
pub const MESSAGE_LEN: u32 = 1024;
/// Longest single log line, in characters; longer lines are split by the sender.
pub const LOG_LINE_LEN: u32 = 16 * 1024;
/// Most log lines in one `job_log` or `lease_log` frame.
pub const LOG_LINES_PER_FRAME: u32 = 4096;
/// Most protocol versions a driver may offer in `hello`.
pub const PROTOCOL_VERSIONS: u32 = 16;
/// Most capabilities a driver may declare in `hello`.
pub const CAPABILITIES: u32 = 32;
/// Most actions a driver may declare in `hello`.
pub const ACTIONS: u32 = 64;
/// Most violations carried by one `error` frame; the rest are counted, not sent.
pub const VIOLATIONS: u32 = 64;
/// Longest JSON pointer or schema path in a violation, in characters.
pub const POINTER_LEN: u32 = 512;
/// Most structured fields on one `log` frame or `error` details object.
pub const FIELDS: u32 = 32;
/// Most properties in a job's `params` object (its own driver schema narrows it further).
pub const PARAMS_PROPERTIES: u32 = 256;
/// Longest container image reference (Vast.ai's own limit).
pub const IMAGE_LEN: u32 = 1024;
/// Longest start script (Vast.ai's limit for `onstart` plus `args`).
pub const ONSTART_LEN: u32 = 4096;
/// Most environment variables passed to a rented instance.
pub const ENV_VARS: u32 = 32;
/// Longest environment variable value (Vast.ai's own limit).
pub const ENV_VALUE_LEN: u32 = 256;
/// Most GPUs in one request.
pub const GPU_COUNT: u32 = 16;
/// Most alternative GPU models in one request.
pub const GPU_MODELS: u32 = 16;
/// Longest hard runtime cap for a lease or a job: 7 days, in seconds.
pub const MAX_RUNTIME_S: u32 = 7 * 24 * 3600;
/// Longest grace period a `shutdown` may grant: 10 minutes, in milliseconds.
pub const MAX_GRACE_MS: u32 = 600_000;
/// Highest price or budget accepted anywhere, in USD. Far above any real GPU rental; its
/// purpose is to keep arithmetic on these values finite and exact enough.
pub const MAX_USD: f64 = 1_000_000.0;
