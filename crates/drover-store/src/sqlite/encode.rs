//! How values are written to and read from SQLite columns: the backend-neutral encoders of
//! [`crate::codec`], and a typed column read.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, Sqlite};

pub(crate) use crate::codec::{
    from_json, lease_phase_str, parse_phase, phase_str, to_i64, to_json, to_u64,
};
use crate::error::{Context as _, StoreError};

pub(crate) fn get<'r, T>(row: &'r SqliteRow, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column).during("decoding a row")
}
