//! drover's gated provisioner: the policy of renting, and the only way a GPU is ever rented.
//! It drives the Vast.ai client ([`drover_vast`], which holds the key on the wire) and is
//! tested against the simulator (`drover-vast-sim`), which it does not depend on.
//!
//! | Module | What it does |
//! |---|---|
//! | [`clock`] | the store's clock, the budget day, audit timestamps ([`Clock`] is the client's) |
//! | [`estimate`] | the deterministic cost model, with worked examples |
//! | [`gate`] | the cost gate (SR-007): below 95% confidence, or any doubt, nothing is rented |
//! | [`provisioner`] | leases: reserve, rent with failover, watchdog, confirmed destroy, settle, reaper; persisted through [`drover_store::Store`] |
//! | [`metrics`] | gate decisions (and, registered with them, the client's provider calls) for `/metrics` |
//! | [`fleet`] | deployment id (configured, or generated once per store), replica ids and heartbeats, who owns a lease |
//!
//! Architecture invariants:
//!
//! - The key stays in the client: nothing here reads it, logs it, audits it or hands it to a
//!   driver; provider errors are the client's, already scrubbed.
//! - Fail closed: an estimate with any doubtful input, a stale quote, a confidence below the
//!   floor, or a daily cap that cannot cover the worst case rents nothing.
//! - Write before acting, close after proof: the lease is reserved before the first create, a
//!   contract id is recorded the moment a response names one, and a lease is settled only after
//!   its instances are confirmed gone.
//! - Never an instance billing without an owner: at most one live instance per lease, a hard
//!   deadline per lease, and a reaper (at start-up and periodically) that destroys every
//!   instance labelled for this deployment that no live lease owns.
//! - Never another's instance: the reaper touches only its own deployment's instances, and
//!   leaves a lease to the replica that owns it while that replica's heartbeat is live
//!   ([`fleet`]).
//! - A failed list is an error, never an empty list.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use drover_provision::{Provisioner, ProvisionerConfig};
//! use drover_vast::{ApiKey, Clock, DEFAULT_BASE_URL, RetryPolicy, VastClient, base_url_from_env};
//! use drover_store::SqliteStore;
//!
//! let key = ApiKey::from_env()?; // VASTAI_API_KEY, read once
//! let client = VastClient::new(&base_url_from_env(DEFAULT_BASE_URL), key, RetryPolicy::default())?;
//! let store = SqliteStore::open_in(std::path::Path::new("./drover-data")).await?;
//! let config = ProvisionerConfig::new("prod");
//! let provisioner = Provisioner::start(client, store, config, Clock::system()).await?;
//! # drop(provisioner); Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod clock;
pub mod estimate;
pub mod gate;
pub mod metrics;
pub mod provisioner;

pub use clock::Clock;
pub use estimate::{CostModel, Estimate, EstimateInputs};
pub use gate::{CostGateError, Gate, GateReason};
pub use metrics::{GatePurpose, ProvisionMetrics};
pub use provisioner::fleet;
pub use provisioner::{
    AcquireError, DryRun, JobContext, LeaseError, Provisioner, ProvisionerConfig, ReapReport,
};
