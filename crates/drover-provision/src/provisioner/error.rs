//! Why a provisioner operation failed, and what a reaper pass did.

use drover_proto::{ErrorCode, LeaseId, WireError};
use drover_store::StoreError;

use super::fleet;
use crate::gate::{CostGateError, GateConfigError};
use drover_vast::VastError;
use drover_vast::redact::bounded;

/// Why a provisioner could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The deployment id is not usable in a label.
    #[error(transparent)]
    Deployment(#[from] fleet::DeploymentIdError),
    /// No replica id could be drawn.
    #[error(transparent)]
    Replica(#[from] fleet::DeploymentError),
    /// The replica's first heartbeat could not be written.
    #[error("the replica's heartbeat could not be stored: {0}")]
    Heartbeat(#[source] StoreError),
    /// The store's clock (today, lease deadlines) could not be read.
    #[error("the store's clock could not be read: {0}")]
    StoreClock(#[source] StoreError),
    /// The gate configuration is invalid.
    #[error(transparent)]
    Gate(#[from] GateConfigError),
    /// The start-up reaper could not reconcile the account; nothing may be rented until it
    /// can.
    #[error("start-up reconciliation failed: {0}")]
    Reconcile(#[from] LeaseError),
}

/// Why `acquire_gpu` failed. Nothing is left billing: every instance created on the way was
/// destroyed and confirmed gone, or the lease stays open for the reaper.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The request breaks a bound (the schema should have caught it).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The cost gate refused.
    #[error(transparent)]
    Gate(#[from] CostGateError),
    /// No offer matches.
    #[error("no offer matches the request")]
    NoOffers,
    /// The provider failed.
    #[error("provider: {0}")]
    Provider(#[from] VastError),
    /// Offers were bought but none reached `running`.
    #[error("no instance could be started: {reason}")]
    NotProvisioned {
        /// The last attempt's failure.
        reason: String,
    },
    /// The instance was destroyed before the job's budget would be exceeded.
    #[error("the job's budget would be exceeded: {reason}")]
    BudgetCeiling {
        /// What was accrued against which ceiling.
        reason: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl AcquireError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::SchemaViolation,
            Self::Gate(_) | Self::BudgetCeiling { .. } => ErrorCode::CostGateRejected,
            Self::NoOffers | Self::Provider(_) | Self::NotProvisioned { .. } => {
                ErrorCode::ProviderUnavailable
            }
            Self::Store(_) => ErrorCode::Internal,
        }
    }

    /// The error as a driver receives it; the gate's numbers go in `details`.
    pub fn to_wire(&self) -> WireError {
        let message = match self {
            Self::Store(_) => "internal error".to_owned(),
            other => bounded(&other.to_string(), 1000),
        };
        WireError {
            code: self.code(),
            message,
            violations: Vec::new(),
            details: match self {
                Self::Gate(g) => Some(g.details()),
                _ => None,
            },
        }
    }
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No such lease.
    #[error("no lease {0}")]
    Unknown(LeaseId),
    /// The lease is still being provisioned.
    #[error("lease {0} is still being provisioned")]
    Busy(LeaseId),
    /// The provider failed.
    #[error("provider: {0}")]
    Provider(#[from] VastError),
    /// An instance could not be confirmed gone before the teardown deadline; the lease stays
    /// open and the reaper keeps trying.
    #[error("instance {contract_id} could not be confirmed destroyed")]
    DestroyUnconfirmed {
        /// The instance.
        contract_id: u64,
    },
    /// Another replica, live, owns the lease; only it (or, once its heartbeat expires, the
    /// reaper) may end it.
    #[error("lease {0} is owned by another live replica")]
    OwnedElsewhere(LeaseId),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What one reaper pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReapReport {
    /// Instances listed.
    pub listed: usize,
    /// Instances destroyed (confirmed).
    pub destroyed: Vec<u64>,
    /// Leases settled.
    pub settled: Vec<LeaseId>,
    /// What could not be done (retried next pass).
    pub failures: Vec<String>,
    /// Leases taken over from a replica whose heartbeat had expired (or that had no owner).
    pub taken_over: Vec<LeaseId>,
    /// Open leases left alone because another live replica owns them.
    pub left_to_owners: Vec<LeaseId>,
    /// When the earliest owner of those stops counting as live without another heartbeat,
    /// Unix ms (store clock): the periodic reaper wakes then.
    pub next_takeover_unix_ms: Option<u64>,
    /// True when another replica held the deployment's reaper lock: nothing was done.
    pub skipped: bool,
}
