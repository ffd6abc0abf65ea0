-- Full-text search over what sessions showed and ran (terminal output,
-- commands, SQL), filled by the broker that held the session once it has
-- ended (`search` service). One row per chunk of text: `words` is the
-- chunk reduced to its words as a tsvector ('simple': no stemming, no
-- stop words, so a search finds the words as typed), `body` the text as
-- shown, `offset_ms` where the chunk starts in the recording. Built-in
-- full text only: no extension (pg_trgm) is needed.
ALTER TABLE sessions ADD COLUMN indexed_at BIGINT;
CREATE INDEX sessions_unindexed ON sessions (node, ended_at)
    WHERE status = 'ended' AND indexed_at IS NULL;
CREATE TABLE search_chunks (
    id         BIGSERIAL PRIMARY KEY,
    session_id TEXT      NOT NULL,
    source     TEXT      NOT NULL,   -- output | command | sql
    offset_ms  BIGINT    NOT NULL,
    body       TEXT      NOT NULL,
    words      TSVECTOR  NOT NULL
);
CREATE INDEX search_chunks_words ON search_chunks USING GIN (words);
CREATE INDEX search_chunks_session ON search_chunks (session_id);
