//! How records become columns and rows become records, for every backend.
//!
//! The schema keeps to types both SQLite and PostgreSQL store the same way (64-bit integers,
//! doubles, text), so one decoder serves both: [`Columns`] is implemented for any sqlx row
//! type that decodes those three, and the record builders here are generic over it.

use drover_proto::api::{Job, JobEvent, JobSpec};
use drover_proto::{CostEstimate, JobId, JobPhase, LeaseId, LeasePhase};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::error::{Context, StoreError};
use crate::model::{ContractRecord, LeaseRecord, micros_to_usd};

/// The job columns every job query selects, in [`job_from_row`]'s terms.
pub(crate) const JOB_COLUMNS: &str =
    "id, state, submitted_by, spec, created_unix_ms, updated_unix_ms, message, output";

/// The lease columns every lease query selects, in [`lease_from_row`]'s terms.
pub(crate) const LEASE_COLUMNS: &str = "lease_id, job_id, actor, label, phase, reserved_micros, day, \
    granted_unix_ms, deadline_unix_ms, pending_offer, gpu_model, gpu_count, expected_usd, \
    p95_usd, worst_usd, confidence, bandwidth_micros, settled_micros, status_message, owner_replica";

/// The contract columns, in [`contract_from_row`]'s terms.
pub(crate) const CONTRACT_COLUMNS: &str =
    "contract_id, offer_id, usd_per_hour, created_unix_ms, gone_unix_ms";

/// A row whose columns decode as the store's three column types.
pub(crate) trait Columns {
    fn text(&self, column: &'static str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &'static str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError>;
    fn float(&self, column: &'static str) -> Result<f64, StoreError>;
}

impl<R> Columns for R
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &'static str) -> Result<String, StoreError> {
        self.try_get(column).during("decoding a row")
    }
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        self.try_get(column).during("decoding a row")
    }
    fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        self.try_get(column).during("decoding a row")
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError> {
        self.try_get(column).during("decoding a row")
    }
    fn float(&self, column: &'static str) -> Result<f64, StoreError> {
        self.try_get(column).during("decoding a row")
    }
}

/// Unsigned to the stored signed form; values past `i64::MAX` (far beyond any time or id
/// drover makes) saturate.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The stored signed form back; a negative value (never written) reads as 0.
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A job phase's stored spelling (its wire spelling).
pub(crate) fn phase_str(phase: JobPhase) -> &'static str {
    match phase {
        JobPhase::Queued => "queued",
        JobPhase::Starting => "starting",
        JobPhase::Running => "running",
        JobPhase::Succeeded => "succeeded",
        JobPhase::Failed => "failed",
        JobPhase::Cancelled => "cancelled",
    }
}

pub(crate) fn parse_phase(text: &str) -> Result<JobPhase, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| StoreError::Corrupt { what: "job state" })
}

/// A lease phase's stored spelling (its wire spelling).
pub(crate) fn lease_phase_str(phase: LeasePhase) -> &'static str {
    match phase {
        LeasePhase::Provisioning => "provisioning",
        LeasePhase::Loading => "loading",
        LeasePhase::Running => "running",
        LeasePhase::Exited => "exited",
        LeasePhase::Failed => "failed",
        LeasePhase::Released => "released",
    }
}

fn parse_lease_phase(text: &str) -> Result<LeasePhase, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| StoreError::Corrupt { what: "lease phase" })
}

pub(crate) fn to_json<T: serde::Serialize>(
    value: &T,
    what: &'static str,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|_| StoreError::Corrupt { what })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt { what })
}

/// The transitions a job may make. Terminal states end it; anything else may follow
/// anything that is not terminal (a driver may skip `starting`, a queued job may be
/// cancelled).
pub(crate) fn transition_allowed(from: JobPhase, to: JobPhase) -> bool {
    !from.is_terminal() && to != JobPhase::Queued
}

/// A job from a row selecting [`JOB_COLUMNS`].
pub(crate) fn job_from_row(row: &impl Columns) -> Result<Job, StoreError> {
    let output = row.opt_text("output")?;
    Ok(Job {
        id: JobId::new(row.text("id")?).map_err(|_| StoreError::Corrupt { what: "job id" })?,
        state: parse_phase(&row.text("state")?)?,
        spec: from_json::<JobSpec>(&row.text("spec")?, "job spec")?,
        submitted_by: row.text("submitted_by")?,
        created_unix_ms: to_u64(row.int("created_unix_ms")?),
        updated_unix_ms: to_u64(row.int("updated_unix_ms")?),
        message: row.opt_text("message")?,
        output: output.map(|o| from_json(&o, "job output")).transpose()?,
    })
}

/// A job event from a row selecting `seq, at_unix_ms, body`.
pub(crate) fn event_from_row(row: &impl Columns) -> Result<JobEvent, StoreError> {
    Ok(JobEvent {
        seq: to_u64(row.int("seq")?),
        at_unix_ms: to_u64(row.int("at_unix_ms")?),
        event: from_json(&row.text("body")?, "job event")?,
    })
}

/// A lease from a row selecting [`LEASE_COLUMNS`], without its contracts.
pub(crate) fn lease_from_row(row: &impl Columns) -> Result<LeaseRecord, StoreError> {
    Ok(LeaseRecord {
        lease_id: LeaseId::new(row.text("lease_id")?)
            .map_err(|_| StoreError::Corrupt { what: "lease id" })?,
        job_id: JobId::new(row.text("job_id")?)
            .map_err(|_| StoreError::Corrupt { what: "lease job id" })?,
        actor: row.text("actor")?,
        label: row.text("label")?,
        phase: parse_lease_phase(&row.text("phase")?)?,
        reserved_usd: micros_to_usd(row.int("reserved_micros")?),
        day: to_u64(row.int("day")?),
        granted_unix_ms: to_u64(row.int("granted_unix_ms")?),
        deadline_unix_ms: to_u64(row.int("deadline_unix_ms")?),
        pending_offer: row.opt_int("pending_offer")?.map(to_u64),
        contracts: Vec::new(),
        gpu_model: row.opt_text("gpu_model")?,
        gpu_count: row
            .opt_int("gpu_count")?
            .map(|c| u8::try_from(c).map_err(|_| StoreError::Corrupt { what: "gpu count" }))
            .transpose()?,
        estimate: CostEstimate {
            expected_usd: row.float("expected_usd")?,
            p95_usd: row.float("p95_usd")?,
            worst_usd: row.float("worst_usd")?,
            confidence: row.float("confidence")?,
        },
        bandwidth_usd: micros_to_usd(row.int("bandwidth_micros")?),
        settled_usd: row.opt_int("settled_micros")?.map(micros_to_usd),
        status_message: row.opt_text("status_message")?,
        owner_replica: row.opt_text("owner_replica")?,
    })
}

/// A contract from a row selecting [`CONTRACT_COLUMNS`].
pub(crate) fn contract_from_row(row: &impl Columns) -> Result<ContractRecord, StoreError> {
    Ok(ContractRecord {
        contract_id: to_u64(row.int("contract_id")?),
        offer_id: to_u64(row.int("offer_id")?),
        usd_per_hour: row.float("usd_per_hour")?,
        created_unix_ms: to_u64(row.int("created_unix_ms")?),
        gone_unix_ms: row.opt_int("gone_unix_ms")?.map(to_u64),
    })
}

/// One lease's ledger shape, as [`crate::Store::ledger_report`] reads it.
pub(crate) struct LeaseLedger {
    pub(crate) lease_id: String,
    pub(crate) reserved: i64,
    pub(crate) settled: Option<i64>,
    pub(crate) total: i64,
    pub(crate) counts: (i64, i64, i64),
}

/// The query [`LeaseLedger`] rows come from (portable: every sum cast to a 64-bit integer,
/// since PostgreSQL sums `BIGINT` as `NUMERIC`).
pub(crate) const LEASE_LEDGER_QUERY: &str = "SELECT l.lease_id, l.reserved_micros, l.settled_micros, \
   CAST(COALESCE((SELECT SUM(amount_micros) FROM ledger g WHERE g.lease_id = l.lease_id), 0) AS BIGINT) AS total, \
   (SELECT COUNT(*) FROM ledger g WHERE g.lease_id = l.lease_id AND g.kind = 'reserve') AS reserves, \
   (SELECT COUNT(*) FROM ledger g WHERE g.lease_id = l.lease_id AND g.kind = 'release') AS releases, \
   (SELECT COUNT(*) FROM ledger g WHERE g.lease_id = l.lease_id AND g.kind = 'charge') AS charges \
 FROM leases l ORDER BY l.lease_id";

pub(crate) fn lease_ledger_from_row(row: &impl Columns) -> Result<LeaseLedger, StoreError> {
    Ok(LeaseLedger {
        lease_id: row.text("lease_id")?,
        reserved: row.int("reserved_micros")?,
        settled: row.opt_int("settled_micros")?,
        total: row.int("total")?,
        counts: (row.int("reserves")?, row.int("releases")?, row.int("charges")?),
    })
}

/// Folds the leases' ledger shapes and the ledger's total into the report.
pub(crate) fn ledger_report(
    leases: Vec<LeaseLedger>,
    ledger_micros: i64,
) -> Result<crate::LedgerReport, StoreError> {
    let mut report = crate::LedgerReport { ledger_micros, ..crate::LedgerReport::default() };
    for lease in leases {
        report.leases += 1;
        let committed = lease.settled.unwrap_or(lease.reserved);
        report.committed_micros += committed;
        let shape_ok = match lease.settled {
            None => {
                report.open += 1;
                lease.counts == (1, 0, 0)
            }
            Some(_) => lease.counts == (1, 1, 1),
        };
        if lease.total != committed || !shape_ok {
            report.unbalanced.push(
                LeaseId::new(lease.lease_id)
                    .map_err(|_| StoreError::Corrupt { what: "lease id" })?,
            );
        }
    }
    Ok(report)
}

/// Now, in Unix milliseconds (0 before 1970).
pub(crate) use drover_proto::text::now_unix_ms;
