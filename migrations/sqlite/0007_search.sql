-- Full-text search over what sessions showed and ran (terminal output,
-- commands, SQL), filled by the broker that held the session once it has
-- ended (`search` service). One row per chunk of text: `words` is the
-- chunk reduced to its words (what is matched), `body` the text as shown,
-- `offset_ms` where the chunk starts in the recording.
ALTER TABLE sessions ADD COLUMN indexed_at INTEGER;
CREATE INDEX sessions_unindexed ON sessions (node, ended_at)
    WHERE status = 'ended' AND indexed_at IS NULL;
CREATE VIRTUAL TABLE search_chunks USING fts5(
    words,
    body UNINDEXED,
    session_id UNINDEXED,
    source UNINDEXED,
    offset_ms UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 0'
);
