//! The parts of Vast.ai's JSON that drover reads and writes.
//!
//! Response types keep only what drover uses and ignore the rest, so secret-bearing fields
//! (`jupyter_token`, `extra_env`, `onstart`, `instance_api_key`, `api_key`) are never even
//! deserialized. Numbers the cost gate needs stay `Option` here: whether a missing or absurd
//! value is acceptable is the gate's decision, and it fails closed.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// One rentable offer, as `POST /api/v0/bundles/` returns it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Offer {
    /// The offer (ask) id; create an instance with `PUT /api/v0/asks/{id}/`.
    pub id: u64,
    /// The machine the offer is on.
    #[serde(default)]
    pub machine_id: Option<u64>,
    /// The GPU model, e.g. `"RTX 4090"`.
    pub gpu_name: String,
    /// GPUs in the offer.
    pub num_gpus: u32,
    /// Memory per GPU, in MB.
    #[serde(default)]
    pub gpu_ram: Option<f64>,
    /// The host's compute price, USD per hour, for the whole offer.
    #[serde(default)]
    pub dph_base: Option<f64>,
    /// Compute plus storage for the searched `allocated_storage`, USD per hour.
    #[serde(default)]
    pub dph_total: Option<f64>,
    /// Storage price, USD per GB per month (30 days).
    #[serde(default)]
    pub storage_cost: Option<f64>,
    /// Upload price, USD per GB; not in `dph_total`.
    #[serde(default)]
    pub inet_up_cost: Option<f64>,
    /// Download price, USD per GB; not in `dph_total`.
    #[serde(default)]
    pub inet_down_cost: Option<f64>,
    /// The current lowest interruptible price, USD per hour.
    #[serde(default)]
    pub min_bid: Option<f64>,
    /// The host's reliability score, 0 to 1.
    #[serde(default)]
    pub reliability: Option<f64>,
}

/// The offer filter drover sends; it becomes Vast's query language.
#[derive(Clone, Debug, PartialEq)]
pub struct OfferQuery {
    /// Acceptable GPU models (spaces, not underscores); empty means any.
    pub gpu_names: Vec<String>,
    /// GPUs wanted on one machine.
    pub num_gpus: u32,
    /// Least memory per GPU, in MB.
    pub min_gpu_ram_mb: Option<f64>,
    /// Highest `dph_total`, USD per hour.
    pub max_dph_total: Option<f64>,
    /// Least reliability.
    pub min_reliability: Option<f64>,
    /// Interruptible (`bid`) rather than on-demand pricing.
    pub interruptible: bool,
    /// Disk to price in, GB (`allocated_storage`).
    pub disk_gb: f64,
    /// Most offers to return.
    pub limit: u32,
}

impl OfferQuery {
    /// The JSON body for `POST /api/v0/bundles/`: the CLI's default filters (verified, not
    /// external, rentable, not rented), then ours, ordered cheapest first.
    pub fn to_body(&self) -> Value {
        let mut q = Map::new();
        q.insert("verified".into(), json!({"eq": true}));
        q.insert("external".into(), json!({"eq": false}));
        q.insert("rentable".into(), json!({"eq": true}));
        q.insert("rented".into(), json!({"eq": false}));
        q.insert("num_gpus".into(), json!({"eq": self.num_gpus}));
        match self.gpu_names.as_slice() {
            [] => {}
            [one] => {
                q.insert("gpu_name".into(), json!({"eq": one}));
            }
            many => {
                q.insert("gpu_name".into(), json!({"in": many}));
            }
        }
        if let Some(mb) = self.min_gpu_ram_mb {
            q.insert("gpu_ram".into(), json!({"gte": mb}));
        }
        if let Some(max) = self.max_dph_total {
            q.insert("dph_total".into(), json!({"lte": max}));
        }
        if let Some(r) = self.min_reliability {
            q.insert("reliability".into(), json!({"gte": r}));
        }
        q.insert("order".into(), json!([["dph_total", "asc"]]));
        q.insert("type".into(), json!(if self.interruptible { "bid" } else { "on-demand" }));
        q.insert("limit".into(), json!(self.limit));
        q.insert("allocated_storage".into(), json!(self.disk_gb));
        Value::Object(q)
    }
}

/// The body of `PUT /api/v0/asks/{id}/`. `Debug` redacts `env` and `onstart`.
#[derive(Clone, PartialEq, Serialize)]
pub struct CreateRequest {
    /// Always `"me"`.
    pub client_id: &'static str,
    /// Container image.
    pub image: String,
    /// Disk, GB.
    pub disk: f64,
    /// The label naming the deployment and lease.
    pub label: String,
    /// Start script.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onstart: Option<String>,
    /// Environment, as a JSON object (a string is refused by Vast).
    pub env: BTreeMap<String, String>,
    /// Bid, USD per hour, for an interruptible instance; `None` for on-demand.
    pub price: Option<f64>,
    /// How the instance is reached.
    pub runtype: &'static str,
    /// Fail instead of creating a stopped instance when the offer cannot be scheduled.
    pub cancel_unavail: bool,
    /// Always `"running"`.
    pub target_state: &'static str,
}

impl fmt::Debug for CreateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateRequest")
            .field("image", &self.image)
            .field("disk", &self.disk)
            .field("label", &self.label)
            .field("onstart", &self.onstart.as_ref().map(|_| crate::secret::REDACTED))
            .field("env", &format_args!("[{} variables redacted]", self.env.len()))
            .field("price", &self.price)
            .finish_non_exhaustive()
    }
}

/// What a create call came to. Any response that names a contract means an instance exists
/// and bills, even when the response is an error: such an outcome always carries the id.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// Created; the contract (instance) id.
    Created {
        /// The new instance's id.
        contract_id: u64,
    },
    /// An error response that still names a contract (a bid too low leaves the instance
    /// stopped, and billing for storage). The instance must be destroyed.
    CreatedWithError {
        /// The instance that exists despite the error.
        contract_id: u64,
        /// The error.
        error: crate::VastError,
    },
    /// Refused, and the response proves nothing was created (a definite 4xx with no contract).
    Refused(crate::VastError),
    /// Unknown: the request may have been acted on (a timeout, a broken connection, a gateway
    /// error). The caller must look for the instance by its label before creating again.
    Unknown(crate::VastError),
}

/// One instance, from a show or a list.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Instance {
    /// The instance (contract) id.
    pub id: u64,
    /// Its label.
    #[serde(default)]
    pub label: Option<String>,
    /// `null` while provisioning, then `loading`, `running`; `exited`, `offline`, `unknown`
    /// are terminal.
    #[serde(default)]
    pub actual_status: Option<String>,
    /// What the instance is meant to be doing.
    #[serde(default)]
    pub intended_status: Option<String>,
    /// The current scheduling state (`stopped` when outbid).
    #[serde(default)]
    pub cur_state: Option<String>,
    /// The host's status line.
    #[serde(default)]
    pub status_msg: Option<String>,
    /// The price, USD per hour, compute plus storage.
    #[serde(default)]
    pub dph_total: Option<f64>,
    /// The compute price, USD per hour.
    #[serde(default)]
    pub dph_base: Option<f64>,
    /// The GPU model.
    #[serde(default)]
    pub gpu_name: Option<String>,
    /// GPUs.
    #[serde(default)]
    pub num_gpus: Option<u32>,
    /// When it was created, Unix seconds.
    #[serde(default)]
    pub start_date: Option<f64>,
}

/// Where an instance stands, as drover reads Vast's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Being placed (`actual_status` null, `created`, `scheduling`).
    Provisioning,
    /// Pulling the image (`loading`).
    Loading,
    /// Running.
    Running,
    /// Will not reach `running`: `exited`, `offline`, `unknown`, stopped, or an OCI failure.
    Terminal,
}

impl Instance {
    /// Reads the state from `actual_status`, `cur_state` and `status_msg`.
    pub fn state(&self) -> InstanceState {
        if self.cur_state.as_deref() == Some("stopped")
            || self.intended_status.as_deref() == Some("stopped")
        {
            return InstanceState::Terminal;
        }
        if self.status_msg.as_deref().is_some_and(|m| m.contains("OCI runtime create failed")) {
            return InstanceState::Terminal;
        }
        match self.actual_status.as_deref() {
            None | Some("created" | "scheduling" | "restarting" | "rebooting") => {
                InstanceState::Provisioning
            }
            Some("loading") => InstanceState::Loading,
            Some("running") => InstanceState::Running,
            Some(_) => InstanceState::Terminal,
        }
    }
}

/// A host's pending price increase on one of the account's contracts.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct PriceIncrease {
    /// The increase's id, for accept or reject.
    pub id: u64,
    /// The instance it applies to.
    pub contract_id: u64,
    /// The new compute price, USD per second.
    pub new_gpu_costpersec: f64,
    /// The old compute price, USD per second.
    pub old_gpu_costpersec: f64,
}

/// The account, from `/api/v0/users/current/`, without its `api_key` field.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct User {
    /// Account id.
    pub id: u64,
    /// Balance, USD.
    #[serde(default)]
    pub balance: Option<f64>,
    /// Credit, USD.
    #[serde(default)]
    pub credit: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(v: Value) -> Instance {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn states() {
        assert_eq!(
            inst(json!({"id": 1, "actual_status": null})).state(),
            InstanceState::Provisioning
        );
        assert_eq!(
            inst(json!({"id": 1, "actual_status": "loading"})).state(),
            InstanceState::Loading
        );
        assert_eq!(
            inst(json!({"id": 1, "actual_status": "running"})).state(),
            InstanceState::Running
        );
        for s in ["exited", "offline", "unknown", "frozen"] {
            assert_eq!(inst(json!({"id": 1, "actual_status": s})).state(), InstanceState::Terminal);
        }
        let outbid = json!({"id": 1, "actual_status": "running", "cur_state": "stopped"});
        assert_eq!(inst(outbid).state(), InstanceState::Terminal);
        let oci = json!({"id": 1, "actual_status": "created", "status_msg": "Error: OCI runtime create failed: x"});
        assert_eq!(inst(oci).state(), InstanceState::Terminal);
    }

    #[test]
    fn secrets_are_not_read_and_not_shown() {
        let i = inst(
            json!({"id": 1, "jupyter_token": "tok", "extra_env": [["A", "b"]], "onstart": "x"}),
        );
        assert!(!format!("{i:?}").contains("tok"));
        let req = CreateRequest {
            client_id: "me",
            image: "img".into(),
            disk: 10.0,
            label: "l".into(),
            onstart: Some("secret-script".into()),
            env: BTreeMap::from([("TOKEN".into(), "secret-value".into())]),
            price: None,
            runtype: "ssh",
            cancel_unavail: true,
            target_state: "running",
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn query_body() {
        let q = OfferQuery {
            gpu_names: vec!["RTX 4090".into(), "H100 SXM".into()],
            num_gpus: 2,
            min_gpu_ram_mb: Some(24000.0),
            max_dph_total: Some(3.0),
            min_reliability: None,
            interruptible: true,
            disk_gb: 20.0,
            limit: 8,
        };
        let b = q.to_body();
        assert_eq!(b["gpu_name"], json!({"in": ["RTX 4090", "H100 SXM"]}));
        assert_eq!(b["type"], "bid");
        assert_eq!(b["rented"], json!({"eq": false}));
        assert_eq!(b["order"], json!([["dph_total", "asc"]]));
        assert!(b.get("reliability").is_none());
    }
}
