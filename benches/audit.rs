//! Audit trail benchmarks (issue 2): appends per second through the real
//! writer (batched, durable), `verify` events per second, and filtered
//! listings over a large trail (p50/p95/p99).
//!
//!     cargo bench --bench audit                       # SQLite, 1M events
//!     PAM_BENCH_EVENTS=10000000 cargo bench --bench audit
//!     PAM_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pam_bench cargo bench --bench audit
//!
//! Numbers are printed, one line each; nothing is asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pam::config::Config;
use pam::domain::audit::{AuditEvent, EventFilter, EventKind, Outcome, now_us};
use pam::keys::KeyMaterial;
use pam::metrics::Metrics;
use pam::store::Db;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let total: u64 = std::env::var("PAM_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let url = match std::env::var("PAM_BENCH_DATABASE_URL") {
        Ok(url) => url,
        Err(_) => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let db = Db::connect(&url, Duration::from_secs(10)).await?;
    db.migrate().await?;
    let keys = KeyMaterial::load_or_generate(&dir.path().join("keys"))?.0;
    let config =
        Config::dev(dir.path(), &Default::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("backend: {} ({} events)", db.backend(), total);

    // 1. Appends: many concurrent callers, each waiting for durability.
    let (audit, writer) = pam::audit::start(
        db.clone(),
        keys.audit.clone(),
        &config.audit,
        "bench".into(),
        Arc::new(Metrics::default()),
    );
    let writer = tokio::spawn(writer.run());
    let concurrency = 512u64;
    let users = [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
        "dave@example.test",
        "erin@example.test",
    ];
    let kinds = [
        EventKind::DbQuery,
        EventKind::DbQuery,
        EventKind::DbQuery,
        EventKind::PolicyDecision,
        EventKind::SessionStart,
        EventKind::SessionEnd,
        EventKind::LoginSuccess,
        EventKind::LoginFailure,
        EventKind::SshExec,
        EventKind::AwsCredentialsIssued,
    ];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while n < total {
                let kind = kinds[(n % kinds.len() as u64) as usize];
                let user = users[(n / 7 % users.len() as u64) as usize];
                let outcome = if kind == EventKind::LoginFailure { Outcome::Failure } else { Outcome::Success };
                let event = AuditEvent::new(kind, outcome)
                    .actor(user)
                    .target(format!("target-{}", n % 40))
                    .session(format!("s-{}", n / 100))
                    .details(serde_json::json!({"statement": "select * from orders where id = $1", "rows": n % 17, "n": n}));
                audit.record(event).await.expect("append");
                n += concurrency;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    println!(
        "appends: {total} events in {:.2}s = {:.0} events/s (concurrency {concurrency}, durable before ack)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    audit.close().await;
    writer.await?;

    // 2. Verify the whole chain.
    let options = pam::audit::verify::Options::default();
    let report =
        pam::audit::verify::verify(&db, &keys.audit.public_bytes(), &options, |_| {}).await?;
    assert!(report.ok(), "{:?}", report.problems.first());
    println!(
        "verify: {} events in {:.2}s = {:.0} events/s",
        report.events,
        report.elapsed.as_secs_f64(),
        report.events as f64 / report.elapsed.as_secs_f64()
    );

    // 3. Filtered listings, newest first, a page of 50.
    let now = now_us();
    let filters: Vec<(&str, EventFilter)> = vec![
        (
            "kind=login.failure",
            EventFilter {
                kinds: vec!["login.failure".into()],
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "actor=bob",
            EventFilter {
                actor: Some("bob@example.test".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "kind=db.query target=target-0",
            EventFilter {
                kinds: vec!["db.query".into()],
                target: Some("target-0".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "since 1m, kind=session.start",
            EventFilter {
                kinds: vec!["session.start".into()],
                since_us: Some(now - 60_000_000),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "session=s-4242",
            EventFilter {
                session_id: Some("s-4242".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "outcome=failure (no index)",
            EventFilter {
                outcome: Some("failure".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "all, deep page",
            EventFilter {
                before_seq: Some(total as i64 / 2),
                limit: 50,
                ..Default::default()
            },
        ),
    ];
    for (name, filter) in filters {
        let mut times = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let page = pam::store::audit::list(&db, &filter).await?;
            times.push(t.elapsed());
            assert!(!page.is_empty(), "{name}");
        }
        times.sort();
        let p = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
        println!(
            "query {name}: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            p(0.5),
            p(0.95),
            p(0.99)
        );
    }
    db.close().await;
    Ok(())
}
