-- drover store, schema version 2 (PostgreSQL): one row rewritten by readiness to learn whether
-- the store can write again after a failed write (a full disk, an I/O error).
CREATE TABLE write_probe (
    id         BIGINT PRIMARY KEY,
    at_unix_ms BIGINT  NOT NULL
);
