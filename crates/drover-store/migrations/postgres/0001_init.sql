-- drover store, schema version 1 (PostgreSQL): the SQLite schema with its types translated
-- (an identity column for SQLite's INTEGER PRIMARY KEY rowid alias), nothing else.
--
-- Conventions kept so the PostgreSQL migration is a translation of types, not of design:
-- integers are 64-bit (BIGINT), money is integer micro-USD, times are Unix milliseconds,
-- JSON documents are TEXT, and no query relies on SQLite-only syntax.

-- Jobs, newest has the highest seq. `spec` is the accepted JobSpec as JSON.
CREATE TABLE jobs (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    driver          TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    submitted_by    TEXT    NOT NULL,
    spec            TEXT    NOT NULL,
    created_unix_ms BIGINT  NOT NULL,
    updated_unix_ms BIGINT  NOT NULL,
    message         TEXT,
    output          TEXT,
    last_event_seq  BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state ON jobs (state, seq);
CREATE INDEX jobs_driver ON jobs (driver, seq);

CREATE TABLE job_labels (
    job_seq BIGINT NOT NULL REFERENCES jobs (seq),
    key     TEXT   NOT NULL,
    value   TEXT   NOT NULL,
    PRIMARY KEY (job_seq, key)
);
CREATE INDEX job_labels_key_value ON job_labels (key, value);

-- Each job's history, seq from 1 without gaps.
CREATE TABLE job_events (
    job_seq    BIGINT NOT NULL REFERENCES jobs (seq),
    seq        BIGINT NOT NULL,
    at_unix_ms BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    PRIMARY KEY (job_seq, seq)
);

-- Idempotency keys are scoped to the actor (token name) that sent them.
CREATE TABLE idempotency_keys (
    actor           TEXT   NOT NULL,
    key             TEXT   NOT NULL,
    request_sha256  TEXT   NOT NULL,
    job_id          TEXT   NOT NULL REFERENCES jobs (id),
    created_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (actor, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_unix_ms);

-- Leases: written before the instance is rented, closed after destroy is confirmed.
CREATE TABLE leases (
    lease_id           TEXT   PRIMARY KEY,
    job_id             TEXT   NOT NULL,
    actor              TEXT   NOT NULL,
    label              TEXT   NOT NULL,
    phase              TEXT   NOT NULL,
    reserved_micros    BIGINT NOT NULL,
    day                BIGINT NOT NULL,
    granted_unix_ms    BIGINT NOT NULL,
    deadline_unix_ms   BIGINT NOT NULL,
    pending_offer      BIGINT,
    gpu_model          TEXT,
    gpu_count          BIGINT,
    expected_usd       DOUBLE PRECISION NOT NULL,
    p95_usd            DOUBLE PRECISION NOT NULL,
    worst_usd          DOUBLE PRECISION NOT NULL,
    confidence         DOUBLE PRECISION NOT NULL,
    bandwidth_micros   BIGINT NOT NULL,
    settled_micros     BIGINT,
    settled_unix_ms    BIGINT,
    status_message     TEXT
);
CREATE INDEX leases_open ON leases (settled_micros);
CREATE INDEX leases_job ON leases (job_id);

-- Every instance a lease has had. A contract id is recorded the moment a response names it.
CREATE TABLE lease_contracts (
    lease_id        TEXT   NOT NULL REFERENCES leases (lease_id),
    position        BIGINT NOT NULL,
    contract_id     BIGINT NOT NULL,
    offer_id        BIGINT NOT NULL,
    usd_per_hour    DOUBLE PRECISION NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    gone_unix_ms    BIGINT,
    PRIMARY KEY (lease_id, position)
);

-- The budget ledger, append-only. A reservation is +reserved; settling appends -reserved
-- (release) and +settled (charge) in the same transaction, so for every lease the sum of its
-- entries is what it commits: the reservation while open, the settled cost once closed.
CREATE TABLE ledger (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lease_id      TEXT   NOT NULL REFERENCES leases (lease_id),
    job_id        TEXT   NOT NULL,
    day           BIGINT NOT NULL,
    kind          TEXT   NOT NULL,
    amount_micros BIGINT NOT NULL,
    at_unix_ms    BIGINT NOT NULL
);
CREATE INDEX ledger_job ON ledger (job_id);
CREATE INDEX ledger_day ON ledger (day);
CREATE INDEX ledger_lease ON ledger (lease_id);

-- The audit log, append-only; `line` is the event as one JSON line.
CREATE TABLE audit_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    timestamp  TEXT   NOT NULL,
    request_id TEXT,
    actor      TEXT   NOT NULL,
    action     TEXT   NOT NULL,
    resource   TEXT   NOT NULL,
    result     TEXT   NOT NULL,
    line       TEXT   NOT NULL
);
