-- SIEM export (issue 13): one row per `[[export]]` sink, named by the
-- sink. `seq` is the last event the sink acknowledged (everything up to it
-- was exported at least once); it only moves forward. In a fleet one broker
-- at a time exports a sink: the one whose lease (`owner`, `lease_until`,
-- microseconds) is current.
CREATE TABLE export_cursors (
    sink        TEXT    PRIMARY KEY,
    seq         BIGINT  NOT NULL DEFAULT 0,
    owner       TEXT,
    lease_until BIGINT  NOT NULL DEFAULT 0,
    updated_at  BIGINT  NOT NULL
);
