//! Discovery of many tagged resources (issue 15): how long one refresh of
//! an `iam-roles` source takes with N tagged roles (ListRoles pages plus one
//! ListRoleTags per role, 8 at a time) and turning them into targets,
//! against the default refresh interval of 5 minutes; and what a reader of
//! the target set (every session start) pays while refreshes publish.
//!
//!     bench/discovery.sh                  # moto, 5,000 roles, prints the numbers
//!     PAM_BENCH_ROLES=5000 AWS_ENDPOINT_URL=http://127.0.0.1:PORT cargo bench --bench discovery
//!
//! `PAM_BENCH_TAG` names the discovery tag (default `pam:bench-PID`).
//!
//! Numbers are printed; nothing is asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pam::config::{DiscoveryConfig, DiscoverySource, HumanDuration};

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let roles: usize = std::env::var("PAM_BENCH_ROLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    if !env.contains_key("AWS_ENDPOINT_URL") {
        anyhow::bail!("set AWS_ENDPOINT_URL to a moto server (bench/discovery.sh does)");
    }
    let aws = pam::aws::Aws::load(&pam::config::AwsConfig::default(), &env).await;
    // bench/discovery.sh names the tag, and then measures sessions of a
    // broker discovering these roles.
    let tag = std::env::var("PAM_BENCH_TAG")
        .unwrap_or_else(|_| format!("pam:bench-{}", std::process::id()));
    let iam = aws.iam();
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..roles {
        let iam = iam.clone();
        let tag = tag.clone();
        let semaphore = semaphore.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let tags = [
                aws_sdk_iam::types::Tag::builder()
                    .key(&tag)
                    .value(format!("bench-{i}"))
                    .build(),
                aws_sdk_iam::types::Tag::builder()
                    .key("pam:env")
                    .value("dev")
                    .build(),
            ];
            iam.create_role()
                .role_name(format!("bench-{}-{i}", std::process::id()))
                .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
                .set_tags(Some(tags.into_iter().filter_map(Result::ok).collect()))
                .send()
                .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    println!(
        "created {roles} tagged roles in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let source = DiscoveryConfig {
        source: DiscoverySource::IamRoles,
        tag: tag.clone(),
        clusters: Vec::new(),
        interval: HumanDuration::secs(300),
    };
    for round in 1..=3 {
        let started = Instant::now();
        let found = pam::discovery::sources::read(&aws, &source).await?;
        let read = started.elapsed();
        let mapped = found
            .iter()
            .filter(|f| pam::discovery::resource::to_target(f, &tag).is_ok())
            .count();
        let total = started.elapsed();
        println!(
            "refresh {round}: {} roles found, {mapped} targets, read {:.1}s, total {:.1}s ({:.1}% of the 5 min interval)",
            found.len(),
            read.as_secs_f64(),
            total.as_secs_f64(),
            100.0 * total.as_secs_f64() / 300.0
        );
    }

    // Readers of the set (every session start looks its target up) while a
    // writer swaps in a set of this size as fast as it can.
    let targets: Vec<_> = pam::discovery::sources::read(&aws, &source)
        .await?
        .iter()
        .filter_map(|f| pam::discovery::resource::to_target(f, &tag).ok())
        .map(|d| d.target)
        .collect();
    let set = pam::discovery::Targets::new(targets.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let set = set.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                set.replace_for_bench(targets.clone());
                swaps += 1;
            }
            swaps
        })
    };
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut i = 0usize;
    while Instant::now() < deadline {
        let name = format!("bench-{}", i % roles.max(1));
        let t = Instant::now();
        std::hint::black_box(set.get(&name));
        samples.push(t.elapsed());
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = writer.join().unwrap_or(0);
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "target lookups during {swaps} swaps of {roles} targets: {} lookups, p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        pct(0.50),
        pct(0.99),
        samples.last().copied().unwrap_or_default()
    );
    Ok(())
}
