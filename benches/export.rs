//! SIEM export keeps up with the audit trail (issue 13): appends per second
//! into the SQLite store (the real writer, many concurrent callers, each
//! waiting for durability) against events per second a sink acknowledges
//! while the appends run, and how long the sink needs to drain what is left.
//!
//!     bench/export.sh                      # webhook + s3 (moto), prints the table
//!     PAM_BENCH_SECS=20 cargo bench --bench export
//!
//! Sinks: `webhook` posts to a receiver on loopback in this process (plain
//! HTTP, allowed to loopback; signature computed, receiver counts lines);
//! `s3` puts gzipped objects into moto when `PAM_BENCH_S3_URL`
//! (`s3://bucket/prefix`) and `AWS_ENDPOINT_URL_S3` are set. Numbers are
//! printed; nothing is asserted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pam::config::Config;
use pam::domain::audit::{AuditEvent, EventKind, Outcome};
use pam::keys::KeyMaterial;
use pam::metrics::Metrics;
use pam::store::Db;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("PAM_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let received = Arc::new(AtomicU64::new(0));
    let receiver = start_receiver(received.clone()).await?;
    let mut sinks = vec![(
        "webhook",
        format!(
            "[[export]]\nname = \"bench\"\nkind = \"webhook\"\nurl = \"{receiver}\"\nsecret_env = \"PAM_BENCH_SECRET\"\n"
        ),
    )];
    match std::env::var("PAM_BENCH_S3_URL") {
        Ok(url) => sinks.push((
            "s3",
            format!(
                "[[export]]\nname = \"bench\"\nkind = \"s3\"\nurl = \"{url}\"\nflush_interval = \"1s\"\n"
            ),
        )),
        Err(_) => println!("s3: skipped (set PAM_BENCH_S3_URL and AWS_ENDPOINT_URL_S3; bench/export.sh does)"),
    }
    println!(
        "{:<8} {:>12} {:>14} {:>14} {:>12} {:>10}",
        "sink", "appended", "appends/s", "exported/s", "lag at end", "drain"
    );
    for (name, toml) in sinks {
        let r = bench_sink(&toml, secs).await?;
        println!(
            "{:<8} {:>12} {:>14.0} {:>14.0} {:>12} {:>9.1}s",
            name, r.appended, r.appends_per_sec, r.exported_per_sec, r.lag_at_end, r.drain_secs
        );
    }
    Ok(())
}

struct Result {
    appended: u64,
    appends_per_sec: f64,
    exported_per_sec: f64,
    lag_at_end: i64,
    drain_secs: f64,
}

async fn bench_sink(toml: &str, secs: u64) -> anyhow::Result<Result> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let db = Db::connect(&url, Duration::from_secs(10)).await?;
    db.migrate().await?;
    let keys = KeyMaterial::load_or_generate(&dir.path().join("keys"))?.0;
    let mut env: HashMap<String, String> = std::env::vars().collect();
    env.insert("PAM_BENCH_SECRET".into(), "bench-secret".into());
    let table: toml::Table = toml::from_str(toml)?;
    let mut config = Config::from_parts(table, &env, true).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.server.data_dir = dir.path().to_owned();
    let metrics = Arc::new(Metrics::default());
    let (audit, writer) = pam::audit::start(
        db.clone(),
        keys.audit.clone(),
        &config.audit,
        "bench".into(),
        metrics.clone(),
    );
    let writer = tokio::spawn(writer.run());
    let aws = pam::aws::Aws::load_with_env(&config.aws, &env).await;
    let exporter = pam::export::Exporter::new(
        &config.exports,
        &env,
        db.clone(),
        audit.clone(),
        &aws,
        &metrics,
        "bench".into(),
    )?;
    let stop = CancellationToken::new();
    let export = tokio::spawn(exporter.run(stop.clone()));

    // Appends for `secs`, from many concurrent callers.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..256u64 {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let event = AuditEvent::new(EventKind::DbQuery, Outcome::Success)
                    .actor("bench@example.test")
                    .target(format!("db-{}", worker % 16))
                    .session(format!("s-{worker}"))
                    .details(
                        serde_json::json!({"sql": "select * from orders where id = $1", "rows": n}),
                    );
                if audit.record(event).await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        }));
    }
    let mut appended = 0;
    for task in tasks {
        appended += task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let exported_at_end = cursor(&db).await;
    let head = pam::store::audit::head(&db).await?.seq;
    let drain_started = Instant::now();
    while cursor(&db).await < head {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    stop.cancel();
    export.await?;
    audit.close().await;
    writer.await?;
    db.close().await;
    Ok(Result {
        appended,
        appends_per_sec: appended as f64 / elapsed,
        exported_per_sec: exported_at_end as f64 / elapsed,
        lag_at_end: head - exported_at_end,
        drain_secs,
    })
}

async fn cursor(db: &Db) -> i64 {
    pam::store::export::cursors(db)
        .await
        .ok()
        .and_then(|c| c.into_iter().find(|c| c.sink == "bench"))
        .map_or(0, |c| c.seq)
}

/// A receiver on loopback that counts lines and answers 200.
async fn start_receiver(received: Arc<AtomicU64>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
                received.fetch_add(lines, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/ingest", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}
