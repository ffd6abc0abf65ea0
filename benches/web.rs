//! Web view page times over a large trail (issue 9): the login history and
//! sessions pages, p50/p95/p99, with 10 million audit events (and 600,000
//! sessions) in SQLite. The goal is p95 < 150 ms.
//!
//!     cargo bench --bench web                    # 10,000,000 events
//!     PAM_BENCH_EVENTS=1000000 cargo bench --bench web
//!
//! The trail is seeded once (a real hash chain, written straight to the
//! file; a few minutes) and kept under `$CARGO_TARGET_DIR/bench-data/`.
//! Then a whole broker serves it and each page is fetched over loopback
//! HTTP with a web session cookie, one request at a time: the time is the
//! broker's (policy check, `audit.view` record made durable, queries,
//! rendering) plus one loopback round trip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pam::audit::chain;
use pam::domain::audit::EventRecord;
use pam::domain::principal::{LoginMethod, UserIdentity};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

const USERS: u64 = 2000;
const DAY_US: i64 = 86_400_000_000;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn mix(i: u64) -> u64 {
    // splitmix64: deterministic, well spread.
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn user(n: u64) -> String {
    format!("user{n}@example.test")
}

async fn run() -> anyhow::Result<()> {
    let events: u64 = std::env::var("PAM_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let data_dir = target_dir.join(format!("bench-data/web-{events}"));
    seed(&data_dir, events).await?;

    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("PAM_SERVER__HTTP_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("PAM_SERVER__SSH_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("PAM_SERVER__POSTGRES_LISTEN".into(), "127.0.0.1:0".into());
    let config = pam::config::Config::dev(&data_dir, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let broker = tokio::spawn(pam::app::run(config, env, shutdown.clone(), Some(ready_tx)));
    let running = ready.await?;
    let base = format!("http://{}", running.http);
    let cookie = web_cookie(&data_dir, running.public_url.as_str()).await?;

    let http = reqwest::Client::new();
    let mut cursor_seq = events / 2;
    cursor_seq -= cursor_seq % 7;
    let pages = [
        ("login history, newest", "/ui/logins".to_owned()),
        (
            "login history, one user",
            format!("/ui/logins?user={}", user(42)),
        ),
        (
            "login history, failures",
            "/ui/logins?outcome=failure".to_owned(),
        ),
        (
            "login history, a page in the middle",
            format!("/ui/logins?before={cursor_seq}"),
        ),
        (
            "login history, last 24 h",
            "/ui/logins?since=24h".to_owned(),
        ),
        ("sessions, newest (live first)", "/ui/sessions".to_owned()),
        (
            "sessions, one user",
            format!("/ui/sessions?user={}", user(7)),
        ),
        (
            "sessions, a page in the middle",
            format!("/ui/sessions?before={}:zzzz", now_us() - 45 * DAY_US),
        ),
        (
            "sessions, postgres only",
            "/ui/sessions?kind=postgres".to_owned(),
        ),
    ];
    println!("web view page times, {events} events, SQLite, one request at a time over loopback:");
    for (name, path) in pages {
        let url = format!("{base}{path}");
        let mut times = Vec::new();
        for i in 0..120 {
            let started = Instant::now();
            let response = http
                .get(&url)
                .header("cookie", format!("pam_web={cookie}"))
                .send()
                .await?;
            let status = response.status();
            let body = response.text().await?;
            let elapsed = started.elapsed();
            anyhow::ensure!(status.is_success(), "{path}: HTTP {status}: {body}");
            anyhow::ensure!(body.contains("<table"), "{path}: no table");
            if i >= 20 {
                times.push(elapsed);
            }
        }
        times.sort();
        let p = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
        println!(
            "  {name:<40} p50 {:7.2} ms  p95 {:7.2} ms  p99 {:7.2} ms",
            p(0.5),
            p(0.95),
            p(0.99)
        );
    }
    shutdown.cancel();
    broker.await??;
    Ok(())
}

fn now_us() -> i64 {
    pam::domain::audit::now_us()
}

/// A web session for an auditor, minted the way the broker does after an
/// IdP login (session row + web-audience token signed with its key).
async fn web_cookie(data_dir: &Path, issuer: &str) -> anyhow::Result<String> {
    let keys = pam::keys::KeyMaterial::load_or_generate(&data_dir.join("keys"))?.0;
    let url = format!("sqlite://{}", data_dir.join("pam.db").display());
    let db = pam::store::Db::connect(&url, Duration::from_secs(10)).await?;
    let identity = UserIdentity {
        email: "auditor@example.test".into(),
        subject: "auditor".into(),
        name: None,
        groups: vec!["auditors".into()],
        amr: vec!["pwd".into(), "otp".into()],
        mfa: true,
        method: LoginMethod::Sso,
    };
    let now = now_us();
    let jti = uuid::Uuid::now_v7().to_string();
    pam::store::identity::insert_session(
        &db,
        &jti,
        &identity,
        Some("127.0.0.1"),
        Some("bench"),
        now,
        now + 3600 * 1_000_000,
    )
    .await?;
    db.close().await;
    let tokens = pam::identity::token::TokenKeys::new(&keys.token_signing, issuer);
    let token = tokens.sign(&pam::identity::token::Claims {
        iss: tokens.issuer().to_owned(),
        sub: identity.email.clone(),
        aud: pam::identity::token::WEB_AUDIENCE.into(),
        exp: now / 1_000_000 + 3600,
        iat: now / 1_000_000,
        nbf: now / 1_000_000,
        jti,
        groups: identity.groups.clone(),
        mfa: true,
        amr: identity.amr.clone(),
        method: "sso".into(),
    })?;
    Ok(token)
}

/// Writes `events` chained events and their sessions, unless already there.
async fn seed(data_dir: &Path, events: u64) -> anyhow::Result<()> {
    let done = data_dir.join("seeded");
    if done.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("pam.db");
    let _ = std::fs::remove_file(&path);
    {
        // Migrations through the store, as the broker would.
        let db = pam::store::Db::connect(
            &format!("sqlite://{}", path.display()),
            Duration::from_secs(10),
        )
        .await?;
        db.migrate().await?;
        db.close().await;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Off),
        )
        .await?;
    let started = Instant::now();
    let start_us = now_us() - 90 * DAY_US;
    let step_us = (90 * DAY_US) / events as i64;
    let mut prev = chain::GENESIS.to_vec();
    let mut batch: Vec<EventRecord> = Vec::with_capacity(500);
    let mut sessions: Vec<(String, String, String, i64, bool, String)> = Vec::new();
    let mut tx = pool.begin().await?;
    for i in 0..events {
        let r = mix(i);
        let who = user(r % USERS);
        let ts = start_us + i as i64 * step_us;
        let ip = format!(
            "10.{}.{}.{}",
            (r >> 8) % 4,
            (r >> 16) % 256,
            (r >> 24) % 256
        );
        let target = [
            "web-prod",
            "web-dev",
            "orders-db",
            "orders-api-prod",
            "prod-readonly",
        ][((r >> 32) % 5) as usize];
        let session_id = uuid::Uuid::from_u64_pair(r, i).to_string();
        let (kind, outcome, details, target, session) = match i % 100 {
            0..3 => (
                "login.success",
                "success",
                json!({"method": "sso", "amr": ["pwd", "otp"], "mfa": true, "user_agent": "pam-cli/0.1", "groups": ["engineers"]}),
                None,
                None,
            ),
            3 => (
                "login.failure",
                "failure",
                json!({"method": "sso", "reason": "the identity provider did not report a second factor"}),
                None,
                None,
            ),
            4..6 => (
                "token.issued",
                "success",
                json!({"method": "sso"}),
                None,
                None,
            ),
            6..30 => (
                "policy.decision",
                if r.is_multiple_of(10) {
                    "denied"
                } else {
                    "success"
                },
                json!({"action": "ssh", "decision": if r.is_multiple_of(10) { "deny" } else { "allow" }, "policies": ["engineers-dev-shell"]}),
                Some(target),
                None,
            ),
            30..36 => {
                let kind = ["ssh", "ecs", "postgres"][(r % 3) as usize];
                let live = i + 2000 > events && i % 300 == 30;
                sessions.push((
                    session_id.clone(),
                    kind.to_owned(),
                    who.clone(),
                    ts,
                    live,
                    target.to_owned(),
                ));
                (
                    "session.start",
                    "success",
                    json!({"kind": kind}),
                    Some(target),
                    Some(session_id),
                )
            }
            36..42 => (
                "session.end",
                "success",
                json!({"end_reason": "closed"}),
                Some(target),
                Some(session_id),
            ),
            42..80 => (
                "db.query",
                "success",
                json!({"statement": "SELECT id, status FROM orders WHERE id = $1", "duration_us": 412, "rows": 1}),
                Some("orders-db"),
                Some(session_id),
            ),
            80..92 => (
                "ssh.exec",
                "success",
                json!({"command": "systemctl status app"}),
                Some(target),
                Some(session_id),
            ),
            92..95 => (
                "aws.credentials.issued",
                "success",
                json!({"role": "prod-readonly", "duration": 3600}),
                Some("prod-readonly"),
                None,
            ),
            _ => (
                "audit.view",
                "success",
                json!({"view": "logins"}),
                None,
                None,
            ),
        };
        let mut record = EventRecord {
            seq: i as i64 + 1,
            id: uuid::Uuid::from_u64_pair(i, r).to_string(),
            time_us: ts,
            kind: kind.into(),
            actor: Some(who),
            source_ip: Some(ip),
            target: target.map(String::from),
            session_id: session,
            outcome: outcome.into(),
            details: chain::canonical_json(&details),
            prev_hash: prev.clone(),
            hash: Vec::new(),
        };
        record.hash = chain::hash(&record).to_vec();
        prev = record.hash.clone();
        batch.push(record);
        if batch.len() == 500 {
            insert_events(&mut tx, &batch).await?;
            batch.clear();
        }
        if (i + 1) % 200_000 == 0 {
            tx.commit().await?;
            tx = pool.begin().await?;
            eprintln!(
                "seeding: {} / {events} events ({:.0}/s)",
                i + 1,
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    insert_events(&mut tx, &batch).await?;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2, updated_at = $3 WHERE id = 1")
        .bind(events as i64)
        .bind(&prev)
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
    for chunk in sessions.chunks(500) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO sessions (id, kind, user_email, target, node, started_at, ended_at, status, end_reason, bytes_in, bytes_out, details) ",
        );
        q.push_values(chunk, |mut b, (id, kind, who, ts, live, target)| {
            b.push_bind(id)
                .push_bind(kind)
                .push_bind(who)
                .push_bind(target)
                .push_bind("bench")
                .push_bind(ts)
                .push_bind(if *live { None } else { Some(ts + 600_000_000) })
                .push_bind(if *live { "live" } else { "ended" })
                .push_bind(if *live { None } else { Some("closed") })
                .push_bind(4096_i64)
                .push_bind(65536_i64)
                .push_bind("{}");
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    pool.close().await;
    eprintln!(
        "seeded {events} events and {} sessions in {:.0} s",
        sessions.len(),
        started.elapsed().as_secs_f64()
    );
    std::fs::write(done, b"")?;
    Ok(())
}

async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    batch: &[EventRecord],
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO audit_events (seq, id, ts, kind, actor, source_ip, target, session_id, outcome, details, prev_hash, hash) ",
    );
    q.push_values(batch, |mut b, e| {
        b.push_bind(e.seq)
            .push_bind(&e.id)
            .push_bind(e.time_us)
            .push_bind(&e.kind)
            .push_bind(&e.actor)
            .push_bind(&e.source_ip)
            .push_bind(&e.target)
            .push_bind(&e.session_id)
            .push_bind(&e.outcome)
            .push_bind(&e.details)
            .push_bind(&e.prev_hash)
            .push_bind(&e.hash);
    });
    q.build().execute(&mut **tx).await?;
    Ok(())
}
