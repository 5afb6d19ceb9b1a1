//! The dead-man's switch contract between the `onstart` script the provisioner writes into
//! every instance and whatever runs it: a real Vast.ai host, or the simulator, which emulates
//! the script from these markers.
//!
//! The script carries `DROVER_DEADMAN_AFTER_S=<s>; DROVER_DEADMAN_AT=<unix s>`: it takes the
//! earlier of that moment and the container's start plus the delay, checks the time every
//! [`POLL_S`] seconds and, once past it, destroys its own instance through the API.

/// How often the switch checks the time, seconds (its `sleep`).
pub const POLL_S: f64 = 15.0;

/// The marker that carries the switch's latest moment, Unix seconds.
pub const AT_MARKER: &str = "DROVER_DEADMAN_AT=";

/// The marker of the switch's delay from the container's start, seconds.
pub const AFTER_MARKER: &str = "DROVER_DEADMAN_AFTER_S=";
