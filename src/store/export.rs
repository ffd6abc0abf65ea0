//! Export cursors: per `[[export]]` sink, the last event it acknowledged,
//! and a lease so that one broker of a fleet exports a sink at a time.
//!
//! Cursor moves are written on the relaxed side of the store (no fsync of
//! their own): a crash can only lose a move, and a lost move means events
//! are exported again (duplicates, recognisable by `seq`), never skipped.

use sqlx::Row;

use super::{Db, Result, relaxed_tx, with_db};

/// A sink's persisted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub sink: String,
    /// Every event with `seq <= seq` was acknowledged by the sink.
    pub seq: i64,
    /// The broker holding the lease, if any.
    pub owner: Option<String>,
    /// Microseconds since the epoch.
    pub lease_until: i64,
    pub updated_at: i64,
}

/// Takes (or renews) the lease on `sink` for `node` until `until_us`, when
/// it is free, expired or already ours. Returns the sink's cursor when the
/// lease is ours, `None` when another broker holds it.
pub async fn claim(
    db: &Db,
    sink: &str,
    node: &str,
    now_us: i64,
    until_us: i64,
) -> Result<Option<i64>> {
    let claimed = relaxed_tx!(db, tx => {
        sqlx::query(
            "INSERT INTO export_cursors (sink, seq, owner, lease_until, updated_at) VALUES ($1, 0, NULL, 0, $2) ON CONFLICT (sink) DO NOTHING",
        )
        .bind(sink)
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "UPDATE export_cursors SET owner = $2, lease_until = $3 WHERE sink = $1 AND (owner IS NULL OR owner = $2 OR lease_until < $4) RETURNING seq",
        )
        .bind(sink)
        .bind(node)
        .bind(until_us)
        .bind(now_us)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(row) => Some(row.try_get::<i64, _>("seq")?),
            None => None,
        }
    });
    Ok(claimed)
}

/// Moves `sink`'s cursor forward to `seq` while `node` holds the lease.
/// Returns false when the lease was lost (another broker took over) or the
/// cursor is already at or past `seq`.
pub async fn advance(db: &Db, sink: &str, node: &str, seq: i64, now_us: i64) -> Result<bool> {
    let moved = relaxed_tx!(db, tx => {
        sqlx::query(
            "UPDATE export_cursors SET seq = $3, updated_at = $4 WHERE sink = $1 AND owner = $2 AND seq < $3",
        )
        .bind(sink)
        .bind(node)
        .bind(seq)
        .bind(now_us)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    });
    Ok(moved == 1)
}

/// Gives the lease up (clean shutdown), so that another broker of a fleet
/// takes the sink over at once.
pub async fn release(db: &Db, sink: &str, node: &str) -> Result<()> {
    relaxed_tx!(db, tx => {
        sqlx::query(
            "UPDATE export_cursors SET owner = NULL, lease_until = 0 WHERE sink = $1 AND owner = $2",
        )
        .bind(sink)
        .bind(node)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    });
    Ok(())
}

/// Every sink's cursor, by name.
pub async fn cursors(db: &Db) -> Result<Vec<Cursor>> {
    with_db!(db, pool => {
        let rows = sqlx::query(
            "SELECT sink, seq, owner, lease_until, updated_at FROM export_cursors ORDER BY sink",
        )
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Cursor {
                    sink: r.try_get("sink")?,
                    seq: r.try_get("seq")?,
                    owner: r.try_get("owner")?,
                    lease_until: r.try_get("lease_until")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    })
}

/// The retention hook: the highest `seq` that every sink in `sinks` has
/// exported (0 when a sink has exported nothing yet, or has no cursor). An
/// event may be pruned only when its `seq` is at most this value; with no
/// sinks configured nothing constrains pruning (`i64::MAX`).
pub async fn exported_by_all(db: &Db, sinks: &[String]) -> Result<i64> {
    if sinks.is_empty() {
        return Ok(i64::MAX);
    }
    let cursors = cursors(db).await?;
    Ok(sinks
        .iter()
        .map(|name| {
            cursors
                .iter()
                .find(|c| &c.sink == name)
                .map_or(0, |c| c.seq)
        })
        .min()
        .unwrap_or(0))
}
