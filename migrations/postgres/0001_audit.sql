-- The tamper-evident audit trail: one hash chain of events, its head, and
-- signed checkpoints. Append-only: the broker never updates or deletes rows
-- here (retention is a separate, audited operation).
CREATE TABLE audit_events (
    seq         BIGINT  PRIMARY KEY,      -- place in the chain, from 1
    id          TEXT    NOT NULL UNIQUE,  -- UUIDv7
    ts          BIGINT  NOT NULL,         -- microseconds since the Unix epoch, UTC
    kind        TEXT    NOT NULL,
    actor       TEXT,
    source_ip   TEXT,
    target      TEXT,
    session_id  TEXT,
    outcome     TEXT    NOT NULL,
    details     TEXT    NOT NULL,         -- canonical JSON (sorted keys), hashed as stored
    prev_hash   BYTEA   NOT NULL,
    hash        BYTEA   NOT NULL
);
CREATE INDEX audit_events_ts         ON audit_events (ts);
CREATE INDEX audit_events_kind_seq   ON audit_events (kind, seq);
CREATE INDEX audit_events_actor_seq  ON audit_events (actor, seq);
CREATE INDEX audit_events_target_seq ON audit_events (target, seq);
CREATE INDEX audit_events_session    ON audit_events (session_id, seq);

-- One row: the end of the chain. Appenders lock it first, which serializes
-- writers across processes.
CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         BIGINT  NOT NULL,
    hash        BYTEA   NOT NULL,
    writer      TEXT,
    updated_at  BIGINT  NOT NULL
);
INSERT INTO audit_head (id, seq, hash, writer, updated_at)
VALUES (1, 0, decode(repeat('00', 32), 'hex'), NULL, 0);

CREATE TABLE audit_checkpoints (
    seq         BIGINT  PRIMARY KEY,
    ts          BIGINT  NOT NULL,
    hash        BYTEA   NOT NULL,
    key_id      TEXT    NOT NULL,
    signature   BYTEA   NOT NULL
);
