//! [`Fleet`] on SQLite: the settings, replicas and reaper-lock tables of migration 3, and the
//! `owner_replica` column of leases. "Now" is this host's clock, read here, which every
//! process sharing the file shares.

use drover_proto::LeaseId;
use sqlx::Row as _;

use super::{SqliteStore, get, now_unix_ms, to_i64, to_u64};
use crate::error::{Context as _, StoreError};
use crate::fleet::{Fleet, Heartbeat, Replica};

impl Fleet for SqliteStore {
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
            let now = now_unix_ms();
            let expires = to_i64(now.saturating_add(beat.expiry_ms));
            let mut tx = self.begin("recording a heartbeat").await?;
            sqlx::query(
                "INSERT INTO replicas (replica_id, deployment, started_unix_ms, heartbeat_unix_ms, \
                 expires_unix_ms) VALUES ($1, $2, $3, $3, $4) ON CONFLICT (replica_id) DO UPDATE \
                 SET heartbeat_unix_ms = excluded.heartbeat_unix_ms, \
                 expires_unix_ms = excluded.expires_unix_ms",
            )
            .bind(beat.replica_id)
            .bind(beat.deployment)
            .bind(to_i64(now))
            .bind(expires)
            .execute(&mut *tx)
            .await
            .during("recording a heartbeat")?;
            sqlx::query("UPDATE reaper_locks SET expires_unix_ms = $3 WHERE deployment = $1 AND replica_id = $2")
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
        let rows = sqlx::query(
            "SELECT replica_id, deployment, started_unix_ms, heartbeat_unix_ms, expires_unix_ms \
             FROM replicas WHERE deployment = $1 ORDER BY started_unix_ms",
        )
        .bind(deployment)
        .fetch_all(&self.reader)
        .await
        .during("listing replicas")?;
        let now = now_unix_ms();
        rows.iter()
            .map(|row| {
                let expires = to_u64(get(row, "expires_unix_ms")?);
                Ok(Replica {
                    replica_id: row.try_get("replica_id").during("decoding a row")?,
                    deployment: get(row, "deployment")?,
                    started_unix_ms: to_u64(get(row, "started_unix_ms")?),
                    heartbeat_unix_ms: to_u64(get(row, "heartbeat_unix_ms")?),
                    expires_unix_ms: expires,
                    live: expires > now,
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
            let before = now_unix_ms().saturating_sub(expired_for_ms);
            let mut tx = self.begin("pruning replicas").await?;
            let done =
                sqlx::query("DELETE FROM replicas WHERE deployment = $1 AND expires_unix_ms < $2")
                    .bind(deployment)
                    .bind(to_i64(before))
                    .execute(&mut *tx)
                    .await
                    .during("pruning replicas")?;
            tx.commit().await.during("pruning replicas")?;
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
            let now = now_unix_ms();
            let mut tx = self.begin("taking the reaper lock").await?;
            // Taken when free, already ours, or expired; otherwise the update does nothing and
            // nothing is returned.
            let holder: Option<String> = sqlx::query_scalar(
                "INSERT INTO reaper_locks (deployment, replica_id, expires_unix_ms) \
                 VALUES ($1, $2, $3) ON CONFLICT (deployment) DO UPDATE \
                 SET replica_id = excluded.replica_id, expires_unix_ms = excluded.expires_unix_ms \
                 WHERE reaper_locks.replica_id = excluded.replica_id \
                    OR reaper_locks.expires_unix_ms <= $4 \
                 RETURNING replica_id",
            )
            .bind(deployment)
            .bind(replica_id)
            .bind(to_i64(now.saturating_add(ttl_ms)))
            .bind(to_i64(now))
            .fetch_optional(&mut *tx)
            .await
            .during("taking the reaper lock")?;
            tx.commit().await.during("taking the reaper lock")?;
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
            let mut tx = self.begin("releasing the reaper lock").await?;
            sqlx::query("DELETE FROM reaper_locks WHERE deployment = $1 AND replica_id = $2")
                .bind(deployment)
                .bind(replica_id)
                .execute(&mut *tx)
                .await
                .during("releasing the reaper lock")?;
            tx.commit().await.during("releasing the reaper lock")
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
            let mut tx = self.begin("taking over a lease").await?;
            let done = sqlx::query(
                "UPDATE leases SET owner_replica = $3 WHERE lease_id = $1 \
                 AND settled_micros IS NULL \
                 AND (owner_replica = $2 OR (owner_replica IS NULL AND $2 IS NULL))",
            )
            .bind(lease_id.as_str())
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .during("taking over a lease")?;
            tx.commit().await.during("taking over a lease")?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }
}
