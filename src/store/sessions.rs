//! The sessions table: brokered sessions, live and ended, and the
//! termination requests that reach them across brokers.

use sqlx::Row;

use super::{Db, Result, relaxed_tx, sql, with_db};
use crate::domain::session::{SessionFilter, SessionRecord};

/// What ending a session writes.
#[derive(Debug, Clone, Default)]
pub struct SessionEnd {
    pub ended_at: i64,
    pub end_reason: String,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub recording_sha256: Option<String>,
    pub exit_status: Option<i64>,
}

const COLUMNS: &str = "id, kind, user_email, broker_session, target, login, node, source_ip, client, started_at, ended_at, \
    status, end_reason, bytes_in, bytes_out, recording, recording_sha256, exit_status, details, \
    terminate_requested_at, terminate_by, terminate_reason";

pub async fn insert(db: &Db, s: &SessionRecord) -> Result<()> {
    relaxed_tx!(db, tx => {
        sqlx::query(
            "INSERT INTO sessions (id, kind, user_email, broker_session, target, login, node, source_ip, client, started_at, status, recording, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'live', $11, $12)",
        )
        .bind(&s.id)
        .bind(s.kind.as_str())
        .bind(&s.user_email)
        .bind(&s.broker_session)
        .bind(&s.target)
        .bind(&s.login)
        .bind(&s.node)
        .bind(&s.source_ip)
        .bind(&s.client)
        .bind(s.started_at)
        .bind(&s.recording)
        .bind(&s.details)
        .execute(&mut *tx)
        .await?;
        Ok(())
    })
}

pub async fn finish(db: &Db, id: &str, end: &SessionEnd) -> Result<()> {
    relaxed_tx!(db, tx => {
        sqlx::query(
            "UPDATE sessions SET status = 'ended', ended_at = $1, end_reason = $2, bytes_in = $3, bytes_out = $4, \
             recording_sha256 = $5, exit_status = $6 WHERE id = $7",
        )
        .bind(end.ended_at)
        .bind(&end.end_reason)
        .bind(end.bytes_in)
        .bind(end.bytes_out)
        .bind(&end.recording_sha256)
        .bind(end.exit_status)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    })
}

/// Byte counters of a live session, written now and then for the web view.
pub async fn update_bytes(db: &Db, id: &str, bytes_in: i64, bytes_out: i64) -> Result<()> {
    with_db!(db, pool => {
        sqlx::query("UPDATE sessions SET bytes_in = $1, bytes_out = $2 WHERE id = $3 AND status = 'live'")
            .bind(bytes_in)
            .bind(bytes_out)
            .bind(id)
            .execute(pool)
            .await?;
        Ok(())
    })
}

/// Asks for a live session to end. False when no live session has this id.
pub async fn request_termination(
    db: &Db,
    id: &str,
    by: &str,
    reason: &str,
    now: i64,
) -> Result<bool> {
    with_db!(db, pool => {
        let done = sqlx::query(
            "UPDATE sessions SET terminate_requested_at = $1, terminate_by = $2, terminate_reason = $3 \
             WHERE id = $4 AND status = 'live' AND terminate_requested_at IS NULL",
        )
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Live sessions of `node` with a termination request: (id, by, reason).
pub async fn termination_requests(db: &Db, node: &str) -> Result<Vec<(String, String, String)>> {
    with_db!(db, pool => {
        let rows = sqlx::query(
            "SELECT id, terminate_by, terminate_reason FROM sessions \
             WHERE node = $1 AND status = 'live' AND terminate_requested_at IS NOT NULL",
        )
        .bind(node)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("id")?,
                    r.try_get::<Option<String>, _>("terminate_by")?.unwrap_or_default(),
                    r.try_get::<Option<String>, _>("terminate_reason")?.unwrap_or_default(),
                ))
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    })
}

/// Of these broker sessions, the ones revoked or expired.
pub async fn dead_broker_sessions(db: &Db, jtis: &[String], now: i64) -> Result<Vec<String>> {
    let mut dead = Vec::new();
    for chunk in jtis.chunks(200) {
        let holes: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let text = format!(
            "SELECT jti FROM broker_sessions WHERE jti IN ({}) AND (revoked_at IS NOT NULL OR expires_at <= $1)",
            holes.join(", ")
        );
        let found: Vec<String> = with_db!(db, pool => {
            let mut query = sqlx::query_scalar(sql(text)).bind(now);
            for jti in chunk {
                query = query.bind(jti);
            }
            query.fetch_all(pool).await?
        });
        dead.extend(found);
    }
    Ok(dead)
}

/// Marks sessions a crashed broker left `live` as ended (on start).
pub async fn close_orphans(db: &Db, node: &str, now: i64) -> Result<u64> {
    with_db!(db, pool => {
        let done = sqlx::query(
            "UPDATE sessions SET status = 'ended', ended_at = $1, end_reason = 'broker restarted' \
             WHERE node = $2 AND status = 'live'",
        )
        .bind(now)
        .bind(node)
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    })
}

pub async fn get(db: &Db, id: &str) -> Result<Option<SessionRecord>> {
    let text = format!("SELECT {COLUMNS} FROM sessions WHERE id = $1");
    with_db!(db, pool => {
        let row = sqlx::query(sql(text)).bind(id).fetch_optional(pool).await?;
        row.as_ref().map(decode).transpose().map_err(Into::into)
    })
}

pub async fn list(db: &Db, f: &SessionFilter) -> Result<Vec<SessionRecord>> {
    let mut clauses: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let mut push = |clause: &str, param: Param, clauses: &mut Vec<String>| {
        params.push(param);
        clauses.push(clause.replace('?', &format!("${}", params.len())));
    };
    for (clause, value) in [
        ("user_email = ?", &f.user),
        ("target = ?", &f.target),
        ("kind = ?", &f.kind),
        ("status = ?", &f.status),
    ] {
        if let Some(v) = value {
            push(clause, Param::Text(v.clone()), &mut clauses);
        }
    }
    if f.exclude_live {
        clauses.push("status <> 'live'".into());
    }
    if let Some(v) = f.since_us {
        push("started_at >= ?", Param::Int(v), &mut clauses);
    }
    if let Some(v) = f.until_us {
        push("started_at < ?", Param::Int(v), &mut clauses);
    }
    if let Some((ts, id)) = &f.before {
        // The plain range first: it lets the index seek to the page instead
        // of walking every newer session (the OR alone hides it).
        push("started_at <= ?", Param::Int(*ts), &mut clauses);
        push("(started_at < ?", Param::Int(*ts), &mut clauses);
        let first = clauses.pop().unwrap_or_default();
        push("started_at = ?", Param::Int(*ts), &mut clauses);
        let second = clauses.pop().unwrap_or_default();
        push("id < ?)", Param::Text(id.clone()), &mut clauses);
        let third = clauses.pop().unwrap_or_default();
        clauses.push(format!("{first} OR ({second} AND {third})"));
    }
    push(
        "LIMIT ?",
        Param::Int(i64::from(f.limit.clamp(1, 1000))),
        &mut clauses,
    );
    let limit = clauses.pop().unwrap_or_default();
    let mut text = format!("SELECT {COLUMNS} FROM sessions");
    if !clauses.is_empty() {
        text.push_str(" WHERE ");
        text.push_str(&clauses.join(" AND "));
    }
    if f.status.is_some() || f.exclude_live || f.by_start {
        // One status: the (status, started_at) or started_at index gives the order.
        text.push_str(" ORDER BY started_at DESC, id DESC ");
    } else {
        text.push_str(
            " ORDER BY CASE WHEN status = 'live' THEN 0 ELSE 1 END, started_at DESC, id DESC ",
        );
    }
    text.push_str(&limit);
    with_db!(db, pool => {
        let mut query = sqlx::query(sql(text));
        for p in &params {
            query = match p {
                Param::Int(v) => query.bind(*v),
                Param::Text(v) => query.bind(v.clone()),
            };
        }
        let rows = query.fetch_all(pool).await?;
        rows.iter().map(decode).collect::<std::result::Result<Vec<_>, sqlx::Error>>().map_err(Into::into)
    })
}

enum Param {
    Int(i64),
    Text(String),
}

fn decode<R: Row>(row: &R) -> std::result::Result<SessionRecord, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SessionRecord {
        id: row.try_get("id")?,
        kind: row.try_get::<String, _>("kind")?.parse().map_err(
            |e: crate::domain::session::UnknownKind| sqlx::Error::ColumnDecode {
                index: "kind".into(),
                source: e.into(),
            },
        )?,
        user_email: row.try_get("user_email")?,
        broker_session: row.try_get("broker_session")?,
        target: row.try_get("target")?,
        login: row.try_get("login")?,
        node: row.try_get("node")?,
        source_ip: row.try_get("source_ip")?,
        client: row.try_get("client")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        status: row.try_get("status")?,
        end_reason: row.try_get("end_reason")?,
        bytes_in: row.try_get("bytes_in")?,
        bytes_out: row.try_get("bytes_out")?,
        recording: row.try_get("recording")?,
        recording_sha256: row.try_get("recording_sha256")?,
        exit_status: row.try_get("exit_status")?,
        details: row.try_get("details")?,
        terminate_requested_at: row.try_get("terminate_requested_at")?,
        terminate_by: row.try_get("terminate_by")?,
        terminate_reason: row.try_get("terminate_reason")?,
    })
}
