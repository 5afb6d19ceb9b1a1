-- drover store, schema version 4 (SQLite): every job has an owner, the replica (supervisor process)
-- that runs it, and a cancel request another replica can leave for that owner.

-- The replica that accepted or took over the job; NULL for jobs written before this version
-- (no owner: the first replica to look takes them over). Every event is written by the owner
-- only, so a replica that was presumed dead and comes back cannot write to a job another took.
ALTER TABLE jobs ADD COLUMN owner_replica TEXT;
-- Why a client asked to cancel the job, when it asked another replica than the owner.
ALTER TABLE jobs ADD COLUMN cancel_requested TEXT;
CREATE INDEX jobs_owner ON jobs (owner_replica, state);
