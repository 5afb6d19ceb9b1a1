//! The store on a real PostgreSQL server (drover-testkit starts it for this test binary).

// A store that cannot be opened is a test failure.
#![allow(clippy::expect_used)]

pub use drover_testkit::postgres::fresh_database;

/// A migrated [`drover_store::PgStore`] on a new, empty database.
pub async fn store() -> drover_store::PgStore {
    drover_store::PgStore::connect_with(fresh_database().await)
        .await
        .expect("open the postgres store")
}
