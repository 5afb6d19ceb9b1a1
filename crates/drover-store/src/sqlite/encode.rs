//! How values are written to and read from SQLite columns: integers, phases, JSON.

use drover_proto::{JobPhase, LeasePhase};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, Sqlite};

use crate::error::{Context as _, StoreError};

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

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

pub(crate) fn parse_lease_phase(text: &str) -> Result<LeasePhase, StoreError> {
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

pub(crate) fn get<'r, T>(row: &'r SqliteRow, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column).during("decoding a row")
}
