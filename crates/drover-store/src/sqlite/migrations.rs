//! The SQLite schema migrations, embedded so the binary needs no files beside it.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The schema migrations, embedded so the binary needs no files beside it.
pub(super) fn migrator() -> Migrator {
    Migrator {
        migrations: Cow::Owned(vec![
            Migration::new(
                1,
                Cow::Borrowed("init"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../../migrations/sqlite/0001_init.sql")),
                false,
            ),
            Migration::new(
                2,
                Cow::Borrowed("write probe"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../../migrations/sqlite/0002_write_probe.sql")),
                false,
            ),
            Migration::new(
                3,
                Cow::Borrowed("fleet"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../../migrations/sqlite/0003_fleet.sql")),
                false,
            ),
            Migration::new(
                4,
                Cow::Borrowed("job owners"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../../migrations/sqlite/0004_job_owners.sql")),
                false,
            ),
        ]),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}
