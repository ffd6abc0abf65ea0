-- Brokered sessions (SSH, ECS exec, PostgreSQL): one row each, live or
-- ended. The web view lists them; a termination request set here reaches
-- the broker that holds the session, whichever broker received it.
CREATE TABLE sessions (
    id               TEXT    PRIMARY KEY,
    kind             TEXT    NOT NULL,   -- ssh | ecs | postgres
    user_email       TEXT    NOT NULL,
    broker_session   TEXT,               -- jti of the broker token
    target           TEXT    NOT NULL,
    login            TEXT,
    node             TEXT    NOT NULL,   -- broker process holding it
    source_ip        TEXT,
    client           TEXT,
    started_at       BIGINT    NOT NULL,
    ended_at         BIGINT,
    status           TEXT    NOT NULL,   -- live | ended
    end_reason       TEXT,
    bytes_in         BIGINT    NOT NULL DEFAULT 0,
    bytes_out        BIGINT    NOT NULL DEFAULT 0,
    recording        TEXT,               -- path under data_dir/recordings
    recording_sha256 TEXT,
    exit_status      BIGINT,
    details          TEXT    NOT NULL DEFAULT '{}',
    terminate_requested_at BIGINT,
    terminate_by     TEXT,
    terminate_reason TEXT
);
CREATE INDEX sessions_status ON sessions (status, started_at);
CREATE INDEX sessions_started ON sessions (started_at);
CREATE INDEX sessions_user ON sessions (user_email, started_at);
CREATE INDEX sessions_node_live ON sessions (node, status);
