//! Broker-side time to turn a validated ID token into a broker token and a
//! signed SSH certificate (issue 3): the session row, the token, the
//! certificate, and their audit records made durable. p50/p95/p99.
//!
//!     cargo bench --bench identity
//!     PAM_BENCH_DATABASE_URL=postgres://... cargo bench --bench identity

use std::sync::Arc;
use std::time::{Duration, Instant};

use pam::config::Config;
use pam::domain::principal::{LoginMethod, UserIdentity};
use pam::identity::{Client, Identity, PublicAddrs};
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
    let dir = tempfile::tempdir()?;
    let url = std::env::var("PAM_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let db = Db::connect(&url, Duration::from_secs(10)).await?;
    db.migrate().await?;
    let keys = KeyMaterial::load_or_generate(&dir.path().join("keys"))?.0;
    let config =
        Config::dev(dir.path(), &Default::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics = Arc::new(Metrics::default());
    let (audit, writer) = pam::audit::start(
        db.clone(),
        keys.audit.clone(),
        &config.audit,
        "bench".into(),
        metrics.clone(),
    );
    let writer = tokio::spawn(writer.run());
    let identity = Identity::new(
        &config,
        &Default::default(),
        db.clone(),
        audit.clone(),
        metrics,
        &keys,
        PublicAddrs {
            ssh: "127.0.0.1:2222".into(),
            postgres: "127.0.0.1:6432".into(),
        },
    )?;
    let user = UserIdentity {
        email: "alice@example.test".into(),
        subject: "alice".into(),
        name: Some("Alice".into()),
        groups: vec!["pam-admins".into(), "engineers".into()],
        amr: vec!["pwd".into(), "otp".into()],
        mfa: true,
        method: LoginMethod::Sso,
    };
    let client = Client {
        ip: Some("10.0.0.7".parse()?),
        user_agent: Some("pam-cli/bench".into()),
    };
    let key = pam::identity::new_client_key();
    let rounds = 2000;
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 100 {
        let started = Instant::now();
        let response = identity
            .open_session(
                user.clone(),
                key.public_key(),
                &client,
                serde_json::json!({}),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if i >= 100 {
            times.push(started.elapsed());
        }
        assert!(!response.certificate.is_empty());
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "login ({}): validated identity -> broker token + SSH certificate, durable: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms ({rounds} logins, one at a time)",
        db.backend(),
        p(0.5),
        p(0.95),
        p(0.99)
    );
    audit.close().await;
    writer.await?;
    db.close().await;
    Ok(())
}
