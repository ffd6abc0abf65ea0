-- Filters of the web view's lists that stay fast at millions of events: a
-- kind with an outcome (failed logins, denied decisions) and a source IP,
-- each walked in `seq` order; and sessions of one kind.
CREATE INDEX audit_events_kind_outcome_seq ON audit_events (kind, outcome, seq);
CREATE INDEX audit_events_ip_seq ON audit_events (source_ip, seq);
-- Sessions of one kind, newest first.
CREATE INDEX sessions_kind_started ON sessions (kind, started_at);
