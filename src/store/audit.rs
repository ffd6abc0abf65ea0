//! Audit tables: chained appends under the head lock, range reads for
//! verification, filtered keyset pages for listing.

use sqlx::Row;

use super::{Db, Result, sql, with_db};
use crate::domain::audit::{Checkpoint, EventFilter, EventRecord};

/// The end of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: Vec<u8>,
}

/// What an appender computed from the head it locked.
#[derive(Debug, Default)]
pub struct Prepared {
    pub events: Vec<EventRecord>,
    pub checkpoints: Vec<Checkpoint>,
}

const COLUMNS: &str =
    "seq, id, ts, kind, actor, source_ip, target, session_id, outcome, details, prev_hash, hash";

/// Rows per INSERT statement, largest first. A batch is cut into these
/// sizes so that only a handful of statements exist and each is prepared
/// once per connection. SQLite stays at 16 rows: sqlx binds `$N` by name,
/// and that lookup is quadratic in the parameters of one statement.
const INSERT_SIZES_POSTGRES: [usize; 5] = [256, 64, 16, 4, 1];
const INSERT_SIZES_SQLITE: [usize; 3] = [16, 4, 1];

/// Locks the head, lets `prepare` chain the new events onto it, writes them
/// and moves the head, all in one transaction. Writers in other processes
/// wait on the head row, so the chain stays a single line.
pub async fn append<F>(db: &Db, writer: &str, now_us: i64, prepare: F) -> Result<Head>
where
    F: FnOnce(Head) -> Prepared,
{
    let sizes: &[usize] = match db.pool() {
        super::Pool::Sqlite(_) => &INSERT_SIZES_SQLITE,
        super::Pool::Postgres(_) => &INSERT_SIZES_POSTGRES,
    };
    with_db!(db, pool => {
        let mut tx = pool.begin().await?;
        // The first statement writes, so SQLite takes its write lock at once
        // and PostgreSQL locks the row: no other appender can interleave.
        let row = sqlx::query("UPDATE audit_head SET writer = $1 WHERE id = 1 RETURNING seq, hash")
            .bind(writer)
            .fetch_one(&mut *tx)
            .await?;
        let head = Head { seq: row.try_get("seq")?, hash: row.try_get("hash")? };
        let prepared = prepare(head);
        let Some(last) = prepared.events.last() else {
            tx.rollback().await?;
            return Err(super::Error::Invalid("nothing to append".into()));
        };
        let new_head = Head { seq: last.seq, hash: last.hash.clone() };
        for chunk in insert_chunks(&prepared.events, sizes) {
            let text = insert_sql(chunk.len());
            let mut query = sqlx::query(sql(text));
            for e in chunk {
                query = query
                    .bind(e.seq)
                    .bind(&e.id)
                    .bind(e.time_us)
                    .bind(&e.kind)
                    .bind(&e.actor)
                    .bind(&e.source_ip)
                    .bind(&e.target)
                    .bind(&e.session_id)
                    .bind(&e.outcome)
                    .bind(&e.details)
                    .bind(&e.prev_hash)
                    .bind(&e.hash);
            }
            query.execute(&mut *tx).await?;
        }
        for c in &prepared.checkpoints {
            sqlx::query(
                "INSERT INTO audit_checkpoints (seq, ts, hash, key_id, signature) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(c.seq)
            .bind(c.time_us)
            .bind(&c.hash)
            .bind(&c.key_id)
            .bind(&c.signature)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2, updated_at = $3 WHERE id = 1")
            .bind(new_head.seq)
            .bind(&new_head.hash)
            .bind(now_us)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(new_head)
    })
}

/// Signs the head when it has moved since the last checkpoint (periodic and
/// shutdown checkpoints). Runs under the head lock like an append.
pub async fn checkpoint_head<F>(db: &Db, writer: &str, sign: F) -> Result<Option<Checkpoint>>
where
    F: FnOnce(&Head) -> Checkpoint,
{
    with_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let row = sqlx::query("UPDATE audit_head SET writer = $1 WHERE id = 1 RETURNING seq, hash")
            .bind(writer)
            .fetch_one(&mut *tx)
            .await?;
        let head = Head { seq: row.try_get("seq")?, hash: row.try_get("hash")? };
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_checkpoints")
            .fetch_one(&mut *tx)
            .await?;
        if head.seq == 0 || last.is_some_and(|s| s >= head.seq) {
            tx.rollback().await?;
            return Ok(None);
        }
        let checkpoint = sign(&head);
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, ts, hash, key_id, signature) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(checkpoint.seq)
        .bind(checkpoint.time_us)
        .bind(&checkpoint.hash)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(checkpoint))
    })
}

pub async fn head(db: &Db) -> Result<Head> {
    with_db!(db, pool => {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(pool)
            .await?;
        Ok(Head { seq: row.try_get("seq")?, hash: row.try_get("hash")? })
    })
}

/// Events with `seq >= from`, in chain order, at most `limit`.
pub async fn range(db: &Db, from: i64, limit: u32) -> Result<Vec<EventRecord>> {
    let text = format!("SELECT {COLUMNS} FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2");
    with_db!(db, pool => {
        let rows = sqlx::query(sql(text))
            .bind(from)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
        rows.iter().map(decode).collect::<std::result::Result<Vec<_>, sqlx::Error>>().map_err(Into::into)
    })
}

pub async fn checkpoints(db: &Db) -> Result<Vec<Checkpoint>> {
    with_db!(db, pool => {
        let rows = sqlx::query("SELECT seq, ts, hash, key_id, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    seq: r.try_get("seq")?,
                    time_us: r.try_get("ts")?,
                    hash: r.try_get("hash")?,
                    key_id: r.try_get("key_id")?,
                    signature: r.try_get("signature")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    })
}

/// A page of events matching `filter`, newest first unless `ascending`.
pub async fn list(db: &Db, filter: &EventFilter) -> Result<Vec<EventRecord>> {
    let (text, params) = list_sql(db, filter).await?;
    with_db!(db, pool => {
        let mut query = sqlx::query(sql(text));
        for p in params {
            query = match p {
                Param::Int(v) => query.bind(v),
                Param::Text(v) => query.bind(v),
            };
        }
        let rows = query.fetch_all(pool).await?;
        rows.iter().map(decode).collect::<std::result::Result<Vec<_>, sqlx::Error>>().map_err(Into::into)
    })
}

pub async fn get(db: &Db, id: &str) -> Result<Option<EventRecord>> {
    let text = format!("SELECT {COLUMNS} FROM audit_events WHERE id = $1");
    with_db!(db, pool => {
        let row = sqlx::query(sql(text)).bind(id).fetch_optional(pool).await?;
        row.as_ref().map(decode).transpose().map_err(Into::into)
    })
}

pub async fn count(db: &Db) -> Result<i64> {
    with_db!(db, pool => {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM audit_events").fetch_one(pool).await?)
    })
}

enum Param {
    Int(i64),
    Text(String),
}

/// Builds the listing query from fixed fragments; every value is bound.
/// Time bounds are turned into `seq` bounds first (through the `ts` index), so
/// that pages walk the primary key even over millions of events.
async fn list_sql(db: &Db, f: &EventFilter) -> Result<(String, Vec<Param>)> {
    let mut clauses: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    fn push(clauses: &mut Vec<String>, params: &mut Vec<Param>, clause: &str, param: Param) {
        params.push(param);
        clauses.push(clause.replace('?', &format!("${}", params.len())));
    }
    // One kind is a clause; several become one branch each (below), so
    // that every branch walks an index in `seq` order.
    let mut kind_holes = Vec::new();
    for kind in &f.kinds {
        params.push(Param::Text(kind.clone()));
        kind_holes.push(format!("${}", params.len()));
    }
    // With a more selective filter (an actor, an IP, a session, a target)
    // one walk of its index checks the kinds; otherwise each kind gets its
    // own walk of the kind index, merged (below).
    let narrowed =
        f.actor.is_some() || f.source_ip.is_some() || f.session_id.is_some() || f.target.is_some();
    if kind_holes.len() == 1 {
        clauses.push(format!("kind = {}", kind_holes[0]));
    } else if narrowed && !kind_holes.is_empty() {
        clauses.push(format!("kind IN ({})", kind_holes.join(", ")));
    }
    if let Some(v) = &f.actor {
        push(
            &mut clauses,
            &mut params,
            "actor = ?",
            Param::Text(v.clone()),
        );
    }
    if let Some(v) = &f.target {
        push(
            &mut clauses,
            &mut params,
            "target = ?",
            Param::Text(v.clone()),
        );
    }
    if let Some(v) = &f.session_id {
        push(
            &mut clauses,
            &mut params,
            "session_id = ?",
            Param::Text(v.clone()),
        );
    }
    if let Some(v) = &f.outcome {
        push(
            &mut clauses,
            &mut params,
            "outcome = ?",
            Param::Text(v.clone()),
        );
    }
    if let Some(v) = &f.source_ip {
        push(
            &mut clauses,
            &mut params,
            "source_ip = ?",
            Param::Text(v.clone()),
        );
    }
    if let Some(since) = f.since_us {
        // Every event at or after `since` has a seq at least this large.
        if let Some(low) = seq_bound(db, "MIN", "ts >= $1", since).await? {
            push(&mut clauses, &mut params, "seq >= ?", Param::Int(low));
        }
        push(&mut clauses, &mut params, "ts >= ?", Param::Int(since));
    }
    if let Some(until) = f.until_us {
        if let Some(high) = seq_bound(db, "MAX", "ts < $1", until).await? {
            push(&mut clauses, &mut params, "seq <= ?", Param::Int(high));
        }
        push(&mut clauses, &mut params, "ts < ?", Param::Int(until));
    }
    if let Some(v) = f.before_seq {
        push(&mut clauses, &mut params, "seq < ?", Param::Int(v));
    }
    if let Some(v) = f.after_seq {
        push(&mut clauses, &mut params, "seq > ?", Param::Int(v));
    }
    let order = if f.ascending {
        " ORDER BY seq ASC"
    } else {
        " ORDER BY seq DESC"
    };
    params.push(Param::Int(i64::from(f.limit.clamp(1, 10_000))));
    let limit = format!(" LIMIT ${}", params.len());
    // SQLite, without statistics (no ANALYZE), picks indexes that lose the
    // `seq` order and then sorts every matching event (hundreds of ms at
    // 10 million events). Name the index for the most selective filter;
    // each keeps `seq` order within its key.
    let hint = match db.pool() {
        super::Pool::Sqlite(_) => {
            if f.session_id.is_some() {
                " INDEXED BY audit_events_session"
            } else if f.actor.is_some() {
                " INDEXED BY audit_events_actor_seq"
            } else if f.source_ip.is_some() {
                " INDEXED BY audit_events_ip_seq"
            } else if f.target.is_some() {
                " INDEXED BY audit_events_target_seq"
            } else if !f.kinds.is_empty() && f.outcome.is_some() {
                " INDEXED BY audit_events_kind_outcome_seq"
            } else if !f.kinds.is_empty() {
                " INDEXED BY audit_events_kind_seq"
            } else {
                ""
            }
        }
        super::Pool::Postgres(_) => "",
    };
    let select = |kind: Option<&str>| {
        let mut text = format!("SELECT {COLUMNS} FROM audit_events{hint}");
        let mut all: Vec<String> = kind.map(|k| format!("kind = {k}")).into_iter().collect();
        all.extend(clauses.iter().cloned());
        if !all.is_empty() {
            text.push_str(" WHERE ");
            text.push_str(&all.join(" AND "));
        }
        text.push_str(order);
        text.push_str(&limit);
        text
    };
    if kind_holes.len() <= 1 || narrowed {
        return Ok((select(None), params));
    }
    // Several kinds: newest (or oldest) `limit` of each through the
    // (kind, ...) indexes, merged. A single `kind IN (...)` made SQLite
    // sort every event of those kinds (300 ms at 10 million events).
    let branches: Vec<String> = kind_holes
        .iter()
        .enumerate()
        .map(|(i, hole)| format!("SELECT * FROM ({}) AS k{i}", select(Some(hole))))
        .collect();
    let text = format!("{}{order}{limit}", branches.join(" UNION ALL "));
    Ok((text, params))
}

/// `MIN(seq)` / `MAX(seq)` of the events on one side of a time, through
/// the `ts` index. Left alone, both planners answer `MIN(seq) WHERE ts >= x`
/// by walking the primary key until `ts` matches: every event older than
/// `x` (a second over 10 million events).
async fn seq_bound(
    db: &Db,
    aggregate: &'static str,
    condition: &'static str,
    ts: i64,
) -> Result<Option<i64>> {
    match db.pool() {
        super::Pool::Sqlite(pool) => {
            let text = format!(
                "SELECT {aggregate}(seq) FROM audit_events INDEXED BY audit_events_ts WHERE {condition}"
            );
            Ok(
                sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(text))
                    .bind(ts)
                    .fetch_one(pool)
                    .await?,
            )
        }
        super::Pool::Postgres(pool) => {
            // OFFSET 0 keeps the subquery from being flattened into the
            // min/max rewrite.
            let text = format!(
                "SELECT {aggregate}(seq) FROM (SELECT seq FROM audit_events WHERE {condition} OFFSET 0) AS t"
            );
            Ok(
                sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(text))
                    .bind(ts)
                    .fetch_one(pool)
                    .await?,
            )
        }
    }
}

/// Decodes a row of [`COLUMNS`] by position (cheaper than by name, which
/// matters when verification reads millions of rows).
fn decode<R: Row>(row: &R) -> std::result::Result<EventRecord, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(EventRecord {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        time_us: row.try_get(2)?,
        kind: row.try_get(3)?,
        actor: row.try_get(4)?,
        source_ip: row.try_get(5)?,
        target: row.try_get(6)?,
        session_id: row.try_get(7)?,
        outcome: row.try_get(8)?,
        details: row.try_get(9)?,
        prev_hash: row.try_get(10)?,
        hash: row.try_get(11)?,
    })
}

/// Cuts `events` into runs of `sizes` (largest first).
fn insert_chunks<'a>(events: &'a [EventRecord], sizes: &[usize]) -> Vec<&'a [EventRecord]> {
    let mut out = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let size = sizes
            .iter()
            .copied()
            .find(|size| *size <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(size);
        out.push(chunk);
        rest = tail;
    }
    out
}

fn insert_sql(rows: usize) -> String {
    let mut text = format!("INSERT INTO audit_events ({COLUMNS}) VALUES ");
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        for col in 0..12 {
            if col > 0 {
                text.push_str(", ");
            }
            n += 1;
            text.push('$');
            text.push_str(&n.to_string());
        }
        text.push(')');
    }
    text
}
