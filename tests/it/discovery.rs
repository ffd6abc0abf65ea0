//! `[[discovery]]` against moto: IAM roles, ECS services, RDS instances and
//! EC2 instances tagged as targets, set up with the real AWS CLI, appear
//! like configured targets (policy sees their `pam:*` tags), changes and
//! removals are audited, a failing source keeps its last good set and says
//! why. moto has no SSM DescribeInstanceInformation: the fake control plane
//! (tests/it/support/fake_aws) answers it in the real wire format.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::aws::{FailingProxy, aws_cli, moto_url};
use crate::support::fake_aws::FakeAws;
use crate::support::{Options, TestApp, eventually};

const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":["sts:AssumeRole","sts:SetSourceIdentity","sts:TagSession"]}]}"#;

pub(crate) fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

pub(crate) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("AWS_ENDPOINT_URL", moto_url()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in pairs {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

pub(crate) fn tags_json(tags: &[(&str, &str)]) -> String {
    serde_json::to_string(
        &tags
            .iter()
            .map(|(k, v)| serde_json::json!({"Key": k, "Value": v}))
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

fn create_role(name: &str, tags: &[(&str, &str)]) {
    aws_cli(&[
        "iam",
        "create-role",
        "--role-name",
        name,
        "--assume-role-policy-document",
        TRUST,
        "--tags",
        &tags_json(tags),
    ]);
}

/// The names of the targets `token`'s user may use, by kind.
pub(crate) async fn listed(app: &TestApp, token: &str) -> Vec<(String, String)> {
    let response = app
        .client
        .get(app.url("/api/v1/targets"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let body: Vec<serde_json::Value> = response.json().await.unwrap_or_default();
    body.iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_owned(),
                t["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

pub(crate) async fn readyz(app: &TestApp) -> String {
    app.client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_roles_become_targets_policy_sees_their_tags_and_changes_are_audited() {
    let id = unique();
    let tag = format!("pam:target-{id}");
    let role = format!("disc-{id}");
    let name = format!("dev-ro-{id}");
    let iam = FailingProxy::start(&moto_url()).await;
    create_role(&role, &[(&tag, &name), ("pam:env", "dev")]);
    // Hostile: a name outside the target charset, one of 200 characters.
    create_role(
        &format!("disc-bad-{id}"),
        &[(&tag, "bad name; rm -rf"), ("pam:env", "dev")],
    );
    create_role(
        &format!("disc-long-{id}"),
        &[(&tag, &"x".repeat(200)), ("pam:env", "dev")],
    );
    // Without the discovery tag: never a target.
    create_role(&format!("disc-untagged-{id}"), &[("pam:env", "dev")]);
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: format!(
            "[[target]]\nname = \"configured-{id}\"\nkind = \"aws\"\nrole_arn = \"arn:aws:iam::123456789012:role/x\"\ntags = {{ env = \"dev\" }}\n\n[[discovery]]\nsource = \"iam-roles\"\ntag = \"{tag}\"\ninterval = \"1s\"\n"
        ),
        env: env(&[("AWS_ENDPOINT_URL_IAM", &iam.url)]),
        ..Options::default()
    })
    .await;
    let bob = app.sso_login("bob").await.unwrap().response.token;

    // Discovered, listed for an engineer (policy permits env == "dev").
    assert!(
        eventually(Duration::from_secs(20), || async {
            listed(&app, &bob)
                .await
                .contains(&(name.clone(), "aws".into()))
        })
        .await,
        "{:?}\n{}",
        listed(&app, &bob).await,
        readyz(&app).await
    );
    assert!(
        listed(&app, &bob)
            .await
            .contains(&(format!("configured-{id}"), "aws".into()))
    );
    let discovered = app.events("target.discovered").await;
    let ok: Vec<_> = discovered
        .iter()
        .filter(|e| e.outcome == "success")
        .collect();
    assert_eq!(ok.len(), 1, "{discovered:?}");
    assert_eq!(ok[0].target.as_deref(), Some(name.as_str()));
    let details: serde_json::Value = serde_json::from_str(&ok[0].details).unwrap();
    assert_eq!(details["source"], "iam-roles");
    assert_eq!(
        details["settings"]["role_arn"],
        format!("arn:aws:iam::123456789012:role/{role}")
    );
    assert_eq!(details["tags"]["env"], "dev");
    // The hostile ones are refused, audited with a printable reason.
    let refused: Vec<serde_json::Value> = discovered
        .iter()
        .filter(|e| e.outcome == "failure")
        .map(|e| serde_json::from_str(&e.details).unwrap())
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    for r in &refused {
        assert!(r["error"].as_str().unwrap().contains("target name"), "{r}");
    }
    assert!(readyz(&app).await.contains("discovery iam-roles"));

    // A failing source keeps its last good set and says why.
    iam.fail(400, "Throttling");
    assert!(
        eventually(Duration::from_secs(20), || async {
            readyz(&app).await.contains("Throttling")
        })
        .await,
        "{}",
        readyz(&app).await
    );
    let ready = readyz(&app).await;
    assert!(
        ready.contains("failing") && ready.contains("keeping 1 targets"),
        "{ready}"
    );
    assert!(
        listed(&app, &bob)
            .await
            .contains(&(name.clone(), "aws".into()))
    );
    iam.fail(403, "AccessDenied");
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.event_details("target.discovery_failed").await.len() >= 2
        })
        .await
    );
    let failed = app.event_details("target.discovery_failed").await;
    assert!(
        failed[0]["error"].as_str().unwrap().contains("Throttling"),
        "{failed:?}"
    );
    assert!(
        failed[1]["error"]
            .as_str()
            .unwrap()
            .contains("AccessDenied"),
        "{failed:?}"
    );
    assert_eq!(failed[1]["kept"], 1);
    iam.heal();

    // A changed tag is a change, and policy follows it: env=prod is not
    // for engineers.
    aws_cli(&[
        "iam",
        "tag-role",
        "--role-name",
        &role,
        "--tags",
        &tags_json(&[("pam:env", "prod")]),
    ]);
    assert!(
        eventually(Duration::from_secs(20), || async {
            !app.events("target.changed").await.is_empty()
        })
        .await
    );
    let changed = app.event_details("target.changed").await;
    assert_eq!(changed[0]["tags"]["env"], "prod", "{changed:?}");
    assert_eq!(changed[0]["before"]["tags"]["env"], "dev", "{changed:?}");
    assert!(!listed(&app, &bob).await.iter().any(|(n, _)| n == &name));
    assert!(!readyz(&app).await.contains("failing"));

    // Gone from AWS: removed.
    aws_cli(&["iam", "delete-role", "--role-name", &role]);
    assert!(
        eventually(Duration::from_secs(20), || async {
            !app.events("target.removed").await.is_empty()
        })
        .await
    );
    let removed = app.events("target.removed").await;
    assert_eq!(removed[0].target.as_deref(), Some(name.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_name_that_clashes_keeps_the_configured_target_and_says_so() {
    let id = unique();
    let tag = format!("pam:target-{id}");
    let name = format!("clash-{id}");
    create_role(
        &format!("disc-clash-{id}"),
        &[(&tag, &name), ("pam:env", "dev")],
    );
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: format!(
            "[[target]]\nname = \"{name}\"\nkind = \"aws\"\nrole_arn = \"arn:aws:iam::123456789012:role/configured\"\ntags = {{ env = \"dev\" }}\n\n[[discovery]]\nsource = \"iam-roles\"\ntag = \"{tag}\"\ninterval = \"1s\"\n"
        ),
        env: env(&[]),
        ..Options::default()
    })
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            !app.events("target.discovered").await.is_empty()
        })
        .await
    );
    let events = app.events("target.discovered").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].outcome, "failure");
    assert!(events[0].details.contains("configured target is kept"));
    // The configured role is the one used.
    let bob = app.sso_login("bob").await.unwrap().response.token;
    assert_eq!(
        listed(&app, &bob)
            .await
            .iter()
            .filter(|(n, _)| n == &name)
            .count(),
        1
    );
    let response = app
        .client
        .post(app.url("/api/v1/aws/credentials"))
        .bearer_auth(&bob)
        .json(&serde_json::json!({"role": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let issued = app.event_details("aws.credentials.issued").await;
    assert_eq!(
        issued[0]["role_arn"], "arn:aws:iam::123456789012:role/configured",
        "{issued:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_services_rds_databases_and_ssm_instances_become_targets() {
    let id = unique();
    let tag = format!("pam:target-{id}");
    let cluster = format!("disc-{id}");
    // ECS: a cluster, a one-container task definition, a tagged service,
    // and an untagged one.
    aws_cli(&["ecs", "create-cluster", "--cluster-name", &cluster]);
    let family = format!("disc-{id}");
    aws_cli(&[
        "ecs",
        "register-task-definition",
        "--family",
        &family,
        "--container-definitions",
        r#"[{"name":"app","image":"nginx","memory":128}]"#,
    ]);
    aws_cli(&[
        "ecs",
        "create-service",
        "--cluster",
        &cluster,
        "--service-name",
        "orders-api",
        "--task-definition",
        &family,
        "--desired-count",
        "1",
        "--tags",
        &format!(r#"[{{"key":"{tag}","value":"orders-{id}"}},{{"key":"pam:env","value":"dev"}}]"#),
    ]);
    aws_cli(&[
        "ecs",
        "create-service",
        "--cluster",
        &cluster,
        "--service-name",
        "untagged",
        "--task-definition",
        &family,
        "--desired-count",
        "1",
    ]);
    // RDS: PostgreSQL with IAM authentication; and one without it that
    // names no secret (refused).
    aws_cli(&[
        "rds",
        "create-db-instance",
        "--db-instance-identifier",
        &format!("ordersdb-{id}"),
        "--db-instance-class",
        "db.t3.micro",
        "--engine",
        "postgres",
        "--db-name",
        "orders",
        "--master-username",
        "admin",
        "--master-user-password",
        "not-a-real-password",
        "--allocated-storage",
        "20",
        "--enable-iam-database-authentication",
        "--tags",
        &tags_json(&[(&tag, ""), ("pam:db_user", "pam_ro"), ("pam:env", "dev")]),
    ]);
    aws_cli(&[
        "rds",
        "create-db-instance",
        "--db-instance-identifier",
        &format!("nosecret-{id}"),
        "--db-instance-class",
        "db.t3.micro",
        "--engine",
        "postgres",
        "--master-username",
        "admin",
        "--master-user-password",
        "not-a-real-password",
        "--allocated-storage",
        "20",
        "--tags",
        &tags_json(&[(&tag, ""), ("pam:env", "dev")]),
    ]);
    // EC2: two tagged instances; SSM manages one.
    let image = aws_cli(&["ec2", "describe-images", "--owners", "amazon"])["Images"][0]["ImageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let host_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let run = |name: &str| {
        aws_cli(&[
            "ec2",
            "run-instances",
            "--image-id",
            &image,
            "--count",
            "1",
            "--instance-type",
            "t3.micro",
            "--tag-specifications",
            &format!(
                r#"[{{"ResourceType":"instance","Tags":{}}}]"#,
                tags_json(&[(&tag, name), ("pam:host_key", host_key), ("pam:env", "dev")])
            ),
        ])["Instances"][0]["InstanceId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let managed = run(&format!("bastion-{id}"));
    let _unmanaged = run(&format!("lost-{id}"));
    let fake = FakeAws::start(Some(moto_url())).await;
    fake.add_managed_instance(&managed, "Online");

    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: format!(
            "[[discovery]]\nsource = \"ecs-services\"\ntag = \"{tag}\"\nclusters = [\"{cluster}\"]\n\n[[discovery]]\nsource = \"rds\"\ntag = \"{tag}\"\n\n[[discovery]]\nsource = \"ec2-ssm\"\ntag = \"{tag}\"\n"
        ),
        env: env(&[("AWS_ENDPOINT_URL_SSM", &fake.url)]),
        ..Options::default()
    })
    .await;
    let bob = app.sso_login("bob").await.unwrap().response.token;
    let want = [
        (format!("orders-{id}"), "ecs".to_owned()),
        (format!("ordersdb-{id}"), "postgres".to_owned()),
        (format!("bastion-{id}"), "ssh".to_owned()),
    ];
    assert!(
        eventually(Duration::from_secs(30), || async {
            let got = listed(&app, &bob).await;
            want.iter().all(|w| got.contains(w))
        })
        .await,
        "{:?}\n{}",
        listed(&app, &bob).await,
        readyz(&app).await
    );
    let got = listed(&app, &bob).await;
    assert_eq!(got.len(), 3, "only the tagged, usable ones: {got:?}");
    let details = app.event_details("target.discovered").await;
    let by_name = |n: &str| {
        details
            .iter()
            .find(|d| d["resource"].as_str().is_some_and(|r| r.contains(n)))
            .cloned()
            .unwrap_or_default()
    };
    let ecs = by_name("orders-api");
    assert_eq!(ecs["settings"]["container"], "app", "{details:?}");
    assert_eq!(ecs["settings"]["cluster"], cluster.as_str());
    let db = by_name(&format!("ordersdb-{id}"));
    assert_eq!(db["settings"]["credential"]["from"], "rds-iam", "{db}");
    assert_eq!(db["settings"]["credential"]["db_user"], "pam_ro");
    assert_eq!(db["settings"]["database"], "orders");
    let ssh = by_name(&managed);
    assert_eq!(ssh["settings"]["via"], managed.as_str(), "{ssh}");
    assert_eq!(ssh["settings"]["host_key"], host_key);
    // The refusals say what to change.
    let refused: Vec<String> = details
        .iter()
        .filter_map(|d| d["error"].as_str().map(str::to_owned))
        .collect();
    assert!(
        refused.iter().any(|e| e.contains("pam:secret")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|e| e.contains("not managed by SSM")),
        "{refused:?}"
    );
    // DescribeInstanceInformation was asked about the tagged instances only.
    let calls = fake.calls("DescribeInstanceInformation");
    assert!(!calls.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refreshes_discovery_of_a_running_broker() {
    let id = unique();
    let tag = format!("pam:target-{id}");
    let dir = tempfile::tempdir().unwrap();
    let database = crate::support::TestDatabase::create(dir.path()).await;
    let config = dir.path().join("pam.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:0\"\nssh_listen = \"127.0.0.1:0\"\npostgres_listen = \"127.0.0.1:0\"\n\
             data_dir = \"{}\"\ndatabase_url = \"{}\"\n[policy]\ndir = \"{}\"\n\n\
             [[discovery]]\nsource = \"iam-roles\"\ntag = \"{tag}\"\ninterval = \"1h\"\n",
            dir.path().join("data").display(),
            database.url,
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .display()
        ),
    )
    .unwrap();
    let mut child = crate::support::pam_command()
        .args(["serve", "--config"])
        .arg(&config)
        .envs(env(&[]))
        .env("PAM_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needles: &[&str]| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("broker output");
        let line = strip_ansi(&line);
        if needles.iter().all(|n| line.contains(n)) {
            return;
        }
    };
    wait_for(&["discovery refreshed", "targets=0"]);
    create_role(&format!("disc-hup-{id}"), &[(&tag, &format!("hup-{id}"))]);
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for(&["discovery refreshed", "targets=1"]);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = crate::support::pam_command()
        .args([
            "audit",
            "events",
            "--json",
            "--kind",
            "target.discovered",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let event: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["target"], format!("hup-{id}"), "{text}");
    assert_eq!(event["outcome"], "success", "{text}");
}

/// The log line without its colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
