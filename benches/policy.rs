//! Policy decisions per second on one core (issue 4): the shipped policies
//! plus generated ones (100 in all) over 1,000 targets.
//!
//!     cargo bench --bench policy

use std::collections::BTreeMap;
use std::time::Instant;

use pam::domain::policy::{Action, RequestContext, Resource, TargetKind, TargetRef};
use pam::domain::principal::{LoginMethod, UserIdentity};
use pam::policy::Engine;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut count = 0;
    for entry in std::fs::read_dir(&shipped)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
        if entry.file_name().to_string_lossy().ends_with(".cedar") {
            count += std::fs::read_to_string(entry.path())?
                .matches("@id(")
                .count();
        }
    }
    // Team policies: each team reaches its own services, some only in business hours.
    let mut generated = String::new();
    let mut n = 0;
    while count + n < 100 {
        generated.push_str(&format!(
            "@id(\"team-{n}\")\npermit(principal in Group::\"team-{n}\", action in [Action::\"ssh\", Action::\"db_connect\"], resource is Target)\n\
             when {{ resource.hasTag(\"team\") && resource.getTag(\"team\") == \"team-{n}\" && context.hour >= 6 && context.hour < 22 }};\n\n"
        ));
        n += 1;
    }
    std::fs::write(dir.path().join("teams.cedar"), generated)?;
    let engine = Engine::load(dir.path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let policies = engine.active().policy_ids().len();

    let targets: Vec<Resource> = (0..1000)
        .map(|i| {
            let mut tags = BTreeMap::new();
            tags.insert(
                "env".to_owned(),
                if i % 3 == 0 { "prod" } else { "dev" }.to_owned(),
            );
            tags.insert("team".to_owned(), format!("team-{}", i % 90));
            Resource::Target(TargetRef {
                name: format!("svc-{i}"),
                kind: if i % 2 == 0 {
                    TargetKind::Ssh
                } else {
                    TargetKind::Postgres
                },
                tags,
            })
        })
        .collect();
    let users: Vec<UserIdentity> = (0..50)
        .map(|i| UserIdentity {
            email: format!("user{i}@example.test"),
            subject: format!("user{i}"),
            name: None,
            groups: vec![
                format!("team-{}", i % 90),
                if i % 5 == 0 { "sre" } else { "engineers" }.to_owned(),
            ],
            amr: vec!["pwd".into(), "otp".into()],
            mfa: i % 2 == 0,
            method: LoginMethod::Sso,
        })
        .collect();
    let context = RequestContext {
        reason: Some("INC-1".into()),
        time_us: 1_795_689_093_000_000,
        ..RequestContext::default()
    };

    let rounds = 200_000usize;
    let mut allowed = 0usize;
    // Warm up.
    for i in 0..10_000 {
        let _ = engine.decide(
            &users[i % users.len()],
            Action::Ssh,
            &targets[i % targets.len()],
            &context,
        );
    }
    let started = Instant::now();
    for i in 0..rounds {
        let action = if i % 2 == 0 {
            Action::Ssh
        } else {
            Action::DbConnect
        };
        if engine
            .decide(
                &users[i % users.len()],
                action,
                &targets[(i * 7) % targets.len()],
                &context,
            )
            .is_ok()
        {
            allowed += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "policy: {policies} policies, {} targets: {rounds} decisions in {:.2}s = {:.0} decisions/s on one core ({:.1} µs each; {allowed} allowed)",
        targets.len(),
        elapsed.as_secs_f64(),
        rounds as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / rounds as f64
    );
    Ok(())
}
