//! The search index (migration 0007): chunks of sessions' text, an FTS5
//! table on SQLite and a `tsvector` with a GIN index on PostgreSQL, and
//! which ended sessions still wait to be indexed.

use sqlx::Row;

use super::{Db, Pool, Result, relaxed_tx, with_db};
use crate::domain::search::{Hit, Query};

/// A chunk to index.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub source: &'static str,
    pub offset_ms: i64,
    /// The text as shown.
    pub body: String,
    /// The text reduced to its words (`domain::search::words`).
    pub words: String,
}

/// An ended session waiting for its index.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: String,
    pub kind: String,
    pub started_at: i64,
    pub recording: Option<String>,
}

/// A matching chunk with its session, before the snippet is cut.
#[derive(Debug, Clone)]
pub struct Found {
    pub hit: Hit,
    pub body: String,
}

/// Ended sessions of `node` not indexed yet, oldest end first.
pub async fn pending(db: &Db, node: &str, limit: i64) -> Result<Vec<Pending>> {
    with_db!(db, pool => {
        let rows = sqlx::query(
            "SELECT id, kind, started_at, recording FROM sessions \
             WHERE node = $1 AND status = 'ended' AND indexed_at IS NULL \
             ORDER BY ended_at LIMIT $2",
        )
        .bind(node)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Pending {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    started_at: r.try_get("started_at")?,
                    recording: r.try_get("recording")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    })
}

/// Stores a session's chunks and marks it indexed, in one transaction (on
/// the relaxed side: an index lost to a crash is rebuilt, since the mark
/// is lost with it).
pub async fn store(db: &Db, session_id: &str, chunks: &[NewChunk], now: i64) -> Result<()> {
    let postgres = db.backend() == "postgres";
    relaxed_tx!(db, tx => {
        for chunk in chunks {
            let text = if postgres {
                "INSERT INTO search_chunks (session_id, source, offset_ms, body, words) \
                 VALUES ($1, $2, $3, $4, to_tsvector('simple', $5))"
            } else {
                "INSERT INTO search_chunks (session_id, source, offset_ms, body, words) \
                 VALUES ($1, $2, $3, $4, $5)"
            };
            sqlx::query(text)
                .bind(session_id)
                .bind(chunk.source)
                .bind(chunk.offset_ms)
                .bind(&chunk.body)
                .bind(&chunk.words)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE sessions SET indexed_at = $1 WHERE id = $2")
            .bind(now)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    })
}

/// Chunks matching `query`'s words as a phrase, newest indexed first.
pub async fn find(db: &Db, query: &Query) -> Result<Vec<Found>> {
    if query.words.is_empty() {
        return Ok(Vec::new());
    }
    let limit = i64::from(query.limit);
    match db.pool() {
        // FTS5 walks its matches in rowid order and stops at the limit.
        Pool::Sqlite(pool) => {
            let rows = sqlx::query(
                "SELECT c.session_id, c.source, c.offset_ms, c.body, \
                 s.kind, s.user_email, s.target, s.started_at \
                 FROM search_chunks c JOIN sessions s ON s.id = c.session_id \
                 WHERE search_chunks MATCH $1 ORDER BY c.rowid DESC LIMIT $2",
            )
            .bind(query.fts5_phrase())
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(decode)
                .collect::<std::result::Result<_, _>>()
        }
        Pool::Postgres(pool) => {
            let rows = sqlx::query(
                "SELECT c.session_id, c.source, c.offset_ms, c.body, \
                 s.kind, s.user_email, s.target, s.started_at \
                 FROM search_chunks c JOIN sessions s ON s.id = c.session_id \
                 WHERE c.words @@ phraseto_tsquery('simple', $1) ORDER BY c.id DESC LIMIT $2",
            )
            // Not kept prepared: after five runs PostgreSQL may switch a
            // prepared statement to a generic plan, which cannot see the
            // words and scans (p95 316 ms over 100 k sessions against 16 ms
            // for the same query planned with its words).
            .persistent(false)
            .bind(&query.words)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(decode)
                .collect::<std::result::Result<_, _>>()
        }
    }
    .map_err(Into::into)
}

fn decode<R: Row>(row: &R) -> std::result::Result<Found, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let offset_ms: i64 = row.try_get("offset_ms")?;
    Ok(Found {
        hit: Hit {
            session_id: row.try_get("session_id")?,
            kind: row.try_get("kind")?,
            user: row.try_get("user_email")?,
            target: row.try_get("target")?,
            started_at: row.try_get("started_at")?,
            source: row.try_get("source")?,
            offset: offset_ms as f64 / 1000.0,
            snippet: String::new(),
        },
        body: row.try_get("body")?,
    })
}
