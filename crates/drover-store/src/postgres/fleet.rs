//! [`Fleet`] on PostgreSQL: the settings, replicas and reaper-lock tables of migration 3 and
//! the `owner_replica` column of leases. "Now" is the database server's clock
//! (`clock_timestamp()`, read inside each statement), which every replica shares whatever
//! its own host's clock says.

use drover_proto::LeaseId;

use super::{NOW_MS, PgStore};
use crate::codec::{Columns as _, to_i64, to_u64};
use crate::error::{Context as _, StoreError};
use crate::fleet::{Fleet, Heartbeat, Replica};

impl Fleet for PgStore {
    async fn setting_or_init(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.track(async {
            let mut tx = self.begin("reading a setting").await?;
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .during("initialising a setting")?;
            let stored: String = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_one(&mut *tx)
                .await
                .during("reading a setting")?;
            tx.commit().await.during("reading a setting")?;
            Ok(stored)
        })
        .await
    }

    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<(), StoreError> {
        self.track(async {
            let mut tx = self.begin("recording a heartbeat").await?;
            let expires: i64 = sqlx::query_scalar(&format!(
                "INSERT INTO replicas (replica_id, deployment, started_unix_ms, heartbeat_unix_ms, \
                 expires_unix_ms) VALUES ($1, $2, {NOW_MS}, {NOW_MS}, {NOW_MS} + $3) \
                 ON CONFLICT (replica_id) DO UPDATE \
                 SET heartbeat_unix_ms = excluded.heartbeat_unix_ms, \
                 expires_unix_ms = excluded.expires_unix_ms \
                 RETURNING expires_unix_ms"
            ))
            .bind(beat.replica_id)
            .bind(beat.deployment)
            .bind(to_i64(beat.expiry_ms))
            .fetch_one(&mut *tx)
            .await
            .during("recording a heartbeat")?;
            sqlx::query(
                "UPDATE reaper_locks SET expires_unix_ms = $3 \
                 WHERE deployment = $1 AND replica_id = $2",
            )
            .bind(beat.deployment)
            .bind(beat.replica_id)
            .bind(expires)
            .execute(&mut *tx)
            .await
            .during("extending the reaper lock")?;
            tx.commit().await.during("recording a heartbeat")
        })
        .await
    }

    async fn replicas(&self, deployment: &str) -> Result<Vec<Replica>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT replica_id, deployment, started_unix_ms, heartbeat_unix_ms, expires_unix_ms, \
             {NOW_MS} AS now_unix_ms FROM replicas WHERE deployment = $1 ORDER BY started_unix_ms"
        ))
        .bind(deployment)
        .fetch_all(&self.pool)
        .await
        .during("listing replicas")?;
        rows.iter()
            .map(|row| {
                let expires = row.int("expires_unix_ms")?;
                Ok(Replica {
                    replica_id: row.text("replica_id")?,
                    deployment: row.text("deployment")?,
                    started_unix_ms: to_u64(row.int("started_unix_ms")?),
                    heartbeat_unix_ms: to_u64(row.int("heartbeat_unix_ms")?),
                    expires_unix_ms: to_u64(expires),
                    live: expires > row.int("now_unix_ms")?,
                })
            })
            .collect()
    }

    async fn retire_replica(&self, replica_id: &str) -> Result<(), StoreError> {
        self.track(async {
            let mut tx = self.begin("retiring a replica").await?;
            for sql in [
                "DELETE FROM reaper_locks WHERE replica_id = $1",
                "DELETE FROM replicas WHERE replica_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(replica_id)
                    .execute(&mut *tx)
                    .await
                    .during("retiring a replica")?;
            }
            tx.commit().await.during("retiring a replica")
        })
        .await
    }

    async fn prune_replicas(
        &self,
        deployment: &str,
        expired_for_ms: u64,
    ) -> Result<u64, StoreError> {
        self.track(async {
            let done = sqlx::query(&format!(
                "DELETE FROM replicas WHERE deployment = $1 AND expires_unix_ms < {NOW_MS} - $2"
            ))
            .bind(deployment)
            .bind(to_i64(expired_for_ms))
            .execute(&self.pool)
            .await
            .during("pruning replicas")?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn try_reaper_lock(
        &self,
        deployment: &str,
        replica_id: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        self.track(async {
            // Taken when free, already ours, or expired; otherwise the conflict update does
            // nothing and no row comes back. The row lock the upsert takes serializes racers.
            let holder: Option<String> = sqlx::query_scalar(&format!(
                "INSERT INTO reaper_locks (deployment, replica_id, expires_unix_ms) \
                 VALUES ($1, $2, {NOW_MS} + $3) ON CONFLICT (deployment) DO UPDATE \
                 SET replica_id = excluded.replica_id, expires_unix_ms = excluded.expires_unix_ms \
                 WHERE reaper_locks.replica_id = excluded.replica_id \
                    OR reaper_locks.expires_unix_ms <= {NOW_MS} \
                 RETURNING replica_id"
            ))
            .bind(deployment)
            .bind(replica_id)
            .bind(to_i64(ttl_ms))
            .fetch_optional(&self.pool)
            .await
            .during("taking the reaper lock")?;
            Ok(holder.as_deref() == Some(replica_id))
        })
        .await
    }

    async fn release_reaper_lock(
        &self,
        deployment: &str,
        replica_id: &str,
    ) -> Result<(), StoreError> {
        self.track(async {
            sqlx::query("DELETE FROM reaper_locks WHERE deployment = $1 AND replica_id = $2")
                .bind(deployment)
                .bind(replica_id)
                .execute(&self.pool)
                .await
                .during("releasing the reaper lock")?;
            Ok(())
        })
        .await
    }

    async fn take_over_lease(
        &self,
        lease_id: &LeaseId,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, StoreError> {
        self.track(async {
            // One statement: the row lock makes a second racer re-check the owner after the
            // first commits, and find it changed.
            let done = sqlx::query(
                "UPDATE leases SET owner_replica = $3 WHERE lease_id = $1 \
                 AND settled_micros IS NULL AND owner_replica IS NOT DISTINCT FROM $2",
            )
            .bind(lease_id.as_str())
            .bind(from)
            .bind(to)
            .execute(&self.pool)
            .await
            .during("taking over a lease")?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }
}
