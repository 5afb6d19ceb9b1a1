//! The records the store keeps, apart from the API types it stores as they are
//! ([`drover_proto::api::Job`], [`drover_proto::api::JobEvent`],
//! [`drover_proto::api::AuditEvent`]).

use drover_proto::api::{Job, JobSpec};
use drover_proto::{CostEstimate, JobId, JobPhase, LeaseId, LeasePhase};
use serde::Serialize;

/// Money is kept as integer micro-USD, so sums are exact and the ledger balances to the
/// unit. Amounts in the API of this crate are USD (`f64`) and are rounded to the nearest
/// micro-USD when stored.
pub const MICROS_PER_USD: f64 = 1_000_000.0;

/// USD to micro-USD, rounded to the nearest unit. Non-finite or negative amounts are a
/// caller's bug; they are clamped to 0 so they can never credit a budget.
pub fn usd_to_micros(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        // At most `limits::MAX_USD` (1e6) in practice: 1e12 micro-USD, far inside i64.
        #[allow(clippy::cast_possible_truncation)]
        let micros = (usd * MICROS_PER_USD).round() as i64;
        micros
    } else {
        0
    }
}

/// Micro-USD to USD.
pub fn micros_to_usd(micros: i64) -> f64 {
    micros as f64 / MICROS_PER_USD
}

/// A job to accept.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// Its id, chosen by the caller.
    pub id: JobId,
    /// What was submitted, already validated.
    pub spec: JobSpec,
    /// Who submitted it: a token name.
    pub submitted_by: String,
    /// When, Unix ms.
    pub at_unix_ms: u64,
    /// The request's `Idempotency-Key`, if it had one.
    pub idempotency: Option<Idempotency>,
}

/// An `Idempotency-Key` and the digest of the request it came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// The key, as the client sent it (its scope is the submitting actor).
    pub key: String,
    /// SHA-256 (hex) of the request body, so a key reused for a different request is refused.
    pub request_sha256: String,
}

/// What [`crate::Store::submit_job`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    /// The job, as stored.
    pub job: Job,
    /// True when the idempotency key matched an earlier submission of the same request, and
    /// that job is returned instead of a new one.
    pub replayed: bool,
}

/// Which jobs [`crate::Store::list_jobs`] returns, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobPhase>,
    /// Only jobs of this driver.
    pub driver: Option<String>,
    /// Only jobs with this label key and value.
    pub label: Option<(String, String)>,
    /// Only jobs older than this cursor (the previous page's `next_cursor`).
    pub before: Option<i64>,
    /// Page size (at least 1).
    pub limit: u32,
    /// Only jobs submitted by this actor (their owner); `None`: every owner's.
    pub submitted_by: Option<String>,
}

/// One page of jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<Job>,
    /// The cursor of the next page; `None` on the last.
    pub next_cursor: Option<i64>,
}

/// One instance a lease has had.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContractRecord {
    /// The instance (contract) id.
    pub contract_id: u64,
    /// The offer it came from; 0 when it was found by its label rather than created here.
    pub offer_id: u64,
    /// The highest price seen for it, USD per hour.
    pub usd_per_hour: f64,
    /// When the create request was sent, Unix ms.
    pub created_unix_ms: u64,
    /// When its destroy was confirmed, Unix ms; `None` while it may exist.
    pub gone_unix_ms: Option<u64>,
}

/// A lease as the store keeps it: the same record `drover-provision` persists.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeaseRecord {
    /// The lease.
    pub lease_id: LeaseId,
    /// Its job.
    pub job_id: JobId,
    /// Who asked for it (an actor name, never a credential).
    pub actor: String,
    /// The label every instance of the lease carries.
    pub label: String,
    /// Where it is.
    pub phase: LeasePhase,
    /// The reservation, USD: the estimate's worst case.
    pub reserved_usd: f64,
    /// UTC day of the reservation (Unix days), for the daily cap: the store's day (PostgreSQL
    /// refuses any other, [`crate::StoreError::NotToday`]).
    pub day: u64,
    /// When it was granted, Unix ms.
    pub granted_unix_ms: u64,
    /// When the watchdog destroys it regardless, Unix ms.
    pub deadline_unix_ms: u64,
    /// The offer being bought, while a create is in flight.
    pub pending_offer: Option<u64>,
    /// Every instance it has had.
    pub contracts: Vec<ContractRecord>,
    /// GPU model, once an instance runs.
    pub gpu_model: Option<String>,
    /// GPU count, once an instance runs.
    pub gpu_count: Option<u8>,
    /// The approved estimate.
    pub estimate: CostEstimate,
    /// Declared bandwidth cost, USD.
    pub bandwidth_usd: f64,
    /// The settled cost, USD, once closed.
    pub settled_usd: Option<f64>,
    /// Why it ended, or the provider's status line.
    pub status_message: Option<String>,
    /// The replica (supervisor process) that owns it; `None` for a lease written before
    /// replicas were recorded. See [`crate::fleet`].
    pub owner_replica: Option<String>,
}

impl LeaseRecord {
    /// Whether it still holds a reservation (not settled).
    pub fn is_open(&self) -> bool {
        self.settled_usd.is_none()
    }

    /// What counts against budgets: the settled cost once closed, the reservation before.
    pub fn committed_usd(&self) -> f64 {
        self.settled_usd.unwrap_or(self.reserved_usd)
    }
}

/// Amounts already committed, for the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Committed {
    /// The job's leases: settled costs plus open reservations, USD.
    pub job_usd: f64,
    /// Today's leases, all jobs, likewise, USD.
    pub day_usd: f64,
}

/// The limits [`crate::Store::reserve_lease`] enforces in the same transaction as the insert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReserveLimits {
    /// The global daily cap, USD.
    pub daily_cap_usd: f64,
    /// The job's committed amount the gate saw; if it changed since, the reservation is
    /// refused with [`crate::StoreError::Conflict`] and the gate runs again.
    pub job_committed_seen_usd: f64,
}

/// The kind of a ledger entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// A lease's reservation, positive.
    Reserve,
    /// The reservation given back at settlement, negative.
    Release,
    /// The settled cost, positive.
    Charge,
}

impl LedgerKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Release => "release",
            Self::Charge => "charge",
        }
    }
}

/// What [`crate::Store::ledger_report`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerReport {
    /// Leases in the store.
    pub leases: u64,
    /// Of them, open.
    pub open: u64,
    /// Sum of every ledger entry, micro-USD.
    pub ledger_micros: i64,
    /// Sum of every lease's committed amount (settled, or reserved while open), micro-USD.
    pub committed_micros: i64,
    /// Leases whose entries do not sum to what they commit, or whose entries are not
    /// exactly `reserve` (open) or `reserve, release, charge` (settled).
    pub unbalanced: Vec<LeaseId>,
}

impl LedgerReport {
    /// True when every lease's entries sum to what it commits and the totals agree.
    pub fn balances(&self) -> bool {
        self.unbalanced.is_empty() && self.ledger_micros == self.committed_micros
    }
}
