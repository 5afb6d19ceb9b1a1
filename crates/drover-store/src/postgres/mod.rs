//! The PostgreSQL [`Store`](crate::Store): one database shared by every supervisor of a fleet.
//!
//! The schema is SQLite's with its types translated (`migrations/postgres`, embedded and run at
//! open under sqlx's migration lock, so replicas starting together migrate once), and the
//! queries are the same portable SQL. What differs is how concurrent writers are kept apart:
//! SQLite has one writer at a time, PostgreSQL many, in other processes too. Each read-then-write
//! step therefore locks what it reads, in the same transaction:
//!
//! | Step | Lock |
//! |---|---|
//! | idempotency check, then insert | `pg_advisory_xact_lock` on the actor's key |
//! | a job's state and owner check, then its event | `SELECT ... FOR UPDATE` on the job row |
//! | a lease's state check, then its update or settlement | `SELECT ... FOR UPDATE` on the lease row |
//! | the caps, then a reservation | `pg_advisory_xact_lock` on [`BUDGET_LOCK`], so reservations of every replica are serialized and the sums they check cannot move under them |
//!
//! Commits are durable as PostgreSQL makes them (`synchronous_commit = on`, its default; an
//! operator who turns it off trades acknowledged jobs for latency).
//!
//! # Defaults
//!
//! | Setting | Default |
//! |---|---|
//! | connections | at most [`MAX_CONNECTIONS`] per store, opened on demand |
//! | connect timeout | [`CONNECT_TIMEOUT`] |
//! | TLS | none in this build: reach the database over a private network or a Unix socket (`?host=/run/postgresql`) |
//!
//! The store's clock ([`Store::now_unix_ms`](crate::Store::now_unix_ms)) is the server's
//! `clock_timestamp()`, and a reservation is refused unless its `day` is the server's current
//! UTC day (read in the reservation's transaction, under [`BUDGET_LOCK`], and summed against
//! that day's cap).
//!
//! Audit positions come from an identity column, which concurrent transactions may commit out
//! of order; a reader paging [`Store::audit_after`](crate::Store::audit_after) while another
//! replica writes can miss a row committed late with a lower position. Within one replica the
//! order holds.

mod fleet;
mod leases;
mod owners;
mod store;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::error::{Context, StoreError};

/// The most connections one store opens.
pub(crate) const MAX_CONNECTIONS: u32 = 8;

/// How long opening a connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock key that serializes budget reservations across replicas (an arbitrary
/// constant, "drover budget" in ASCII, kept apart from the idempotency keys' hash range by
/// the two-key form those use).
pub(crate) const BUDGET_LOCK: i64 = 0x6472_6f76_6572_6275;

/// The database server's clock in Unix milliseconds, as SQL (`clock_timestamp()`, read when
/// the statement reaches it, not when its transaction began).
pub(crate) const NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// A UTC day in milliseconds: `NOW_MS / DAY_MS` is the database's budget day (Unix days).
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The schema migrations, embedded so the binary needs no files beside it.
fn migrator() -> Migrator {
    let migration = |version, name, sql| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )
    };
    Migrator {
        migrations: Cow::Owned(vec![
            migration(1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
            migration(
                2,
                "write probe",
                include_str!("../../migrations/postgres/0002_write_probe.sql"),
            ),
            migration(3, "fleet", include_str!("../../migrations/postgres/0003_fleet.sql")),
            migration(
                4,
                "job owners",
                include_str!("../../migrations/postgres/0004_job_owners.sql"),
            ),
        ]),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// The PostgreSQL [`Store`](crate::Store). Cheap to clone: clones share the pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Whether the last write failed in the database (not a refusal).
    write_failed: Arc<AtomicBool>,
    /// The replica this handle speaks for ([`crate::JobOwners`]): the owner of the jobs it
    /// accepts, and the only owner it writes events for.
    replica: Option<Arc<str>>,
}

impl PgStore {
    /// Connects to a `postgres://` (or `postgresql://`) URL and migrates the database.
    ///
    /// Errors name the server and database, never the password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|_| StoreError::Open {
            location: "store.url".to_owned(),
            source: "not a valid postgres:// URL".into(),
        })?;
        Self::connect_with(options).await
    }

    /// Connects with explicit options and migrates the database.
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self, StoreError> {
        let location = location(&options);
        let open_error =
            |e: sqlx::Error| StoreError::Open { location: location.clone(), source: Box::new(e) };
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Open { location: location.clone(), source: Box::new(e) })?;
        Ok(Self { pool, write_failed: Arc::new(AtomicBool::new(false)), replica: None })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs a write and remembers whether the database failed it (refusals are answers, not
    /// failures, and leave the flag alone).
    async fn track<T>(
        &self,
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = write.await;
        match &result {
            Ok(_) => self.write_failed.store(false, Ordering::SeqCst),
            Err(StoreError::Backend { .. }) => self.write_failed.store(true, Ordering::SeqCst),
            Err(_) => {}
        }
        result
    }

    async fn begin(
        &self,
        operation: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.during(operation)
    }
}

/// Where a store is, for errors and logs: user, host (or socket directory), port and database,
/// never the password.
fn location(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_never_carries_the_password() {
        let options =
            PgConnectOptions::from_str("postgres://drover:hunter2-secret@db.internal:6543/fleet")
                .unwrap();
        let shown = location(&options);
        assert_eq!(shown, "postgres://drover@db.internal:6543/fleet");
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn an_invalid_url_names_the_field_without_echoing_it() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let error = runtime
            .block_on(PgStore::connect("postgres://drover:hunter2@db:notaport/x"))
            .unwrap_err();
        let text = format!("{error} {error:?}");
        assert!(text.contains("store.url"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
