-- drover store, schema version 3 (SQLite): several supervisors on one account and one store.

-- Small settings chosen once and kept: today the deployment id (`deployment_id`).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- A store that already has leases was written by a release that labelled every instance with
-- the deployment id "drover": it keeps that id, so the instances of its open leases stay its
-- own. A fresh store gets a random id at its first start.
INSERT INTO settings (key, value)
    SELECT 'deployment_id', 'drover' WHERE EXISTS (SELECT 1 FROM leases);

-- One row per running supervisor process (a replica), rewritten by its heartbeat.
CREATE TABLE replicas (
    replica_id        TEXT   PRIMARY KEY,
    deployment        TEXT   NOT NULL,
    started_unix_ms   BIGINT NOT NULL,
    heartbeat_unix_ms BIGINT NOT NULL,
    expires_unix_ms   BIGINT NOT NULL
);
CREATE INDEX replicas_deployment ON replicas (deployment);

-- At most one reaper per deployment: the replica holding this row until it expires.
CREATE TABLE reaper_locks (
    deployment      TEXT   PRIMARY KEY,
    replica_id      TEXT   NOT NULL,
    expires_unix_ms BIGINT NOT NULL
);

-- The replica that owns each lease; NULL for leases written before this version (no owner:
-- the reaper takes them over).
ALTER TABLE leases ADD COLUMN owner_replica TEXT;
