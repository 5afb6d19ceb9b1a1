//! Bodies of the HTTP API that share their schema with `drover validate --kind job`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{ActionName, DriverName};
use crate::limits;
use crate::messages::GpuRequest;

/// A job submission: the body of `POST /v1/jobs`.
///
/// ```json
/// {"driver": "container", "action": "run",
///  "params": {"image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "command": ["python", "-c", "print(1)"]},
///  "gpu": {"count": 1, "models": ["RTX 4090"]},
///  "max_runtime_s": 3600, "budget_usd": 2.5}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The registered driver that runs the job.
    pub driver: DriverName,
    /// The driver action to run.
    pub action: ActionName,
    /// The action's parameters; validated against the schema the driver declared for it.
    #[serde(default)]
    #[schemars(extend("maxProperties" = limits::PARAMS_PROPERTIES))]
    pub params: Map<String, Value>,
    /// GPUs the job may rent. Absent: the job may not rent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
    /// Hard cap on the job's run time, in seconds; the job is cancelled when it is reached.
    #[schemars(range(min = 1, max = limits::MAX_RUNTIME_S))]
    pub max_runtime_s: u32,
    /// The most the job may spend on rentals, in USD. Every rental is gated against what is
    /// left of it.
    #[schemars(range(min = 0.0, max = limits::MAX_USD))]
    pub budget_usd: f64,
    /// Free-form labels for filtering and for the caller's own bookkeeping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "propertyNames" = {"pattern": "^[a-z0-9][a-z0-9._/-]{0,62}$"},
        "additionalProperties" = {"type": "string", "maxLength": 256},
    ))]
    pub labels: BTreeMap<String, String>,
}
