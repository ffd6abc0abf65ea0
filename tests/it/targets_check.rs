//! `pam targets check` against moto, scene set with the real AWS CLI: IAM
//! roles (trust policy, MaxSessionDuration, ExternalId, a malformed trust
//! policy), STS AssumeRole, Secrets Manager secrets, RDS IAM authentication,
//! ECS services and their task roles. moto lacks SimulatePrincipalPolicy
//! (tests/fixtures/iam answers it) and drops enableExecuteCommand (the fake
//! control plane adds it to moto's DescribeServices answer).

use std::collections::HashMap;

use crate::support::aws::{FailingProxy, SimulateFixture, aws_cli, moto_url};
use crate::support::fake_aws::FakeAws;
use crate::support::{Options, TestApp, cli_login};

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

const FULL_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":["sts:AssumeRole","sts:SetSourceIdentity","sts:TagSession"],"Condition":{"StringEquals":{"sts:ExternalId":"ext-1"}}}]}"#;
const ASSUME_ONLY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}"#;

fn role(name: &str, trust: &str) {
    aws_cli(&[
        "iam",
        "create-role",
        "--role-name",
        name,
        "--assume-role-policy-document",
        trust,
    ]);
}

/// `pam targets check --json` lines by target, and the exit status.
fn check(
    app: &TestApp,
    home: &std::path::Path,
    names: &[&str],
) -> (bool, HashMap<String, serde_json::Value>, String) {
    let out = crate::support::pam_command()
        .args(["targets", "check", "--json"])
        .args(names)
        .env("PAM_HOME", home)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let reports = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["target"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    let _ = app;
    (out.status.success(), reports, text)
}

fn line<'a>(report: &'a serde_json::Value, check: &str) -> Vec<&'a serde_json::Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == check)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_check_proves_each_target_and_says_what_to_change() {
    let id = unique();
    role(&format!("good-{id}"), FULL_TRUST);
    role(&format!("weak-{id}"), ASSUME_ONLY);
    role(&format!("broken-{id}"), "{not json");
    aws_cli(&[
        "secretsmanager",
        "create-secret",
        "--name",
        &format!("db-ok-{id}"),
        "--secret-string",
        r#"{"username":"app","password":"s3cret-value-never-printed"}"#,
    ]);
    aws_cli(&[
        "secretsmanager",
        "create-secret",
        "--name",
        &format!("db-shape-{id}"),
        "--secret-string",
        r#"{"user":"app"}"#,
    ]);
    for (db, iam) in [("iamdb", true), ("pwdb", false)] {
        let mut args = vec![
            "rds".to_owned(),
            "create-db-instance".into(),
            "--db-instance-identifier".into(),
            format!("{db}-{id}"),
            "--db-instance-class".into(),
            "db.t3.micro".into(),
            "--engine".into(),
            "postgres".into(),
            "--master-username".into(),
            "admin".into(),
            "--master-user-password".into(),
            "not-a-real-password".into(),
            "--allocated-storage".into(),
            "20".into(),
        ];
        if iam {
            args.push("--enable-iam-database-authentication".into());
        }
        aws_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let endpoint = |db: &str| {
        let out = aws_cli(&[
            "rds",
            "describe-db-instances",
            "--db-instance-identifier",
            &format!("{db}-{id}"),
        ]);
        let e = &out["DBInstances"][0]["Endpoint"];
        format!("{}:{}", e["Address"].as_str().unwrap(), e["Port"])
    };
    // ECS: a task role allowed the ssmmessages channels, a service using
    // it with ECS Exec on, and one without a task role and without Exec.
    let task_role = format!("task-{id}");
    let ecs_trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    role(&task_role, ecs_trust);
    aws_cli(&[
        "iam",
        "put-role-policy",
        "--role-name",
        &task_role,
        "--policy-name",
        "exec",
        "--policy-document",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ssmmessages:CreateControlChannel","ssmmessages:CreateDataChannel","ssmmessages:OpenControlChannel","ssmmessages:OpenDataChannel"],"Resource":"*"}]}"#,
    ]);
    let cluster = format!("chk-{id}");
    aws_cli(&["ecs", "create-cluster", "--cluster-name", &cluster]);
    aws_cli(&[
        "ecs",
        "register-task-definition",
        "--family",
        &format!("good-{id}"),
        "--task-role-arn",
        &format!("arn:aws:iam::123456789012:role/{task_role}"),
        "--container-definitions",
        r#"[{"name":"app","image":"nginx","memory":128}]"#,
    ]);
    aws_cli(&[
        "ecs",
        "register-task-definition",
        "--family",
        &format!("bare-{id}"),
        "--container-definitions",
        r#"[{"name":"app","image":"nginx","memory":128}]"#,
    ]);
    for (service, family) in [("api", "good"), ("legacy", "bare")] {
        aws_cli(&[
            "ecs",
            "create-service",
            "--cluster",
            &cluster,
            "--service-name",
            service,
            "--task-definition",
            &format!("{family}-{id}"),
            "--desired-count",
            "1",
        ]);
    }
    let fake = FakeAws::start(Some(moto_url())).await;
    fake.enable_execute_command("api");
    let iam = SimulateFixture::start(&moto_url(), &["/pam_ro"]).await;

    let toml = format!(
        r#"
[[target]]
name = "good-role"
kind = "aws"
role_arn = "arn:aws:iam::123456789012:role/good-{id}"
max_duration = "1h"
external_id = "ext-1"

[[target]]
name = "weak-role"
kind = "aws"
role_arn = "arn:aws:iam::123456789012:role/weak-{id}"
max_duration = "4h"

[[target]]
name = "broken-role"
kind = "aws"
role_arn = "arn:aws:iam::123456789012:role/broken-{id}"

[[target]]
name = "missing-role"
kind = "aws"
role_arn = "arn:aws:iam::123456789012:role/missing-{id}"

[[target]]
name = "db-secret"
kind = "postgres"
address = "{pw}"
database = "app"
credential = {{ from = "secretsmanager", secret_id = "db-ok-{id}" }}

[[target]]
name = "db-bad-secret"
kind = "postgres"
address = "{pw}"
database = "app"
credential = {{ from = "secretsmanager", secret_id = "db-shape-{id}" }}

[[target]]
name = "db-iam"
kind = "postgres"
address = "{iamdb}"
database = "app"
credential = {{ from = "rds-iam", db_user = "pam_ro" }}

[[target]]
name = "db-iam-denied"
kind = "postgres"
address = "{iamdb}"
database = "app"
credential = {{ from = "rds-iam", db_user = "pam_admin" }}

[[target]]
name = "db-iam-off"
kind = "postgres"
address = "{pw}"
database = "app"
credential = {{ from = "rds-iam", db_user = "pam_ro" }}

[[target]]
name = "ecs-good"
kind = "ecs"
cluster = "{cluster}"
service = "api"
container = "app"

[[target]]
name = "ecs-legacy"
kind = "ecs"
cluster = "{cluster}"
service = "legacy"
container = "app"
"#,
        pw = endpoint("pwdb"),
        iamdb = endpoint("iamdb"),
    );
    let env: HashMap<String, String> = [
        ("AWS_ENDPOINT_URL", moto_url()),
        ("AWS_ENDPOINT_URL_IAM", iam.url.clone()),
        ("AWS_ENDPOINT_URL_ECS", fake.url.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml,
        env,
        ..Options::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    cli_login(&app, home.path(), "alice").await;

    let (ok, reports, text) = check(&app, home.path(), &[]);
    assert!(!ok, "some targets fail: exit status 1\n{text}");
    assert_eq!(reports.len(), 11, "{text}");
    assert!(
        !text.contains("s3cret-value-never-printed"),
        "a secret value was printed"
    );
    let pass = |t: &str| reports[t]["ok"] == true;
    for t in ["good-role", "db-secret", "db-iam", "ecs-good"] {
        assert!(pass(t), "{t}: {}", reports[t]);
    }
    for t in [
        "weak-role",
        "broken-role",
        "missing-role",
        "db-bad-secret",
        "db-iam-denied",
        "db-iam-off",
        "ecs-legacy",
    ] {
        assert!(!pass(t), "{t} should fail: {}", reports[t]);
        for c in reports[t]["checks"].as_array().unwrap() {
            if c["ok"] == false {
                assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
            }
        }
    }
    // What exactly fails, and why.
    let weak = &reports["weak-role"];
    let trust: Vec<_> = line(weak, "trust")
        .into_iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert_eq!(trust.len(), 2, "SetSourceIdentity and TagSession: {weak}");
    assert!(
        trust[0]["fix"]
            .as_str()
            .unwrap()
            .contains("fails at use time")
    );
    assert_eq!(line(weak, "duration")[0]["ok"], false, "{weak}");
    assert!(
        line(&reports["broken-role"], "trust")[0]["detail"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{}",
        reports["broken-role"]
    );
    assert!(
        line(&reports["missing-role"], "role")[0]["detail"]
            .as_str()
            .unwrap()
            .contains("no role")
    );
    assert_eq!(line(&reports["good-role"], "assume")[0]["ok"], true);
    assert_eq!(line(&reports["good-role"], "external-id")[0]["ok"], true);
    assert!(
        line(&reports["db-bad-secret"], "secret")[0]["detail"]
            .as_str()
            .unwrap()
            .contains("password")
    );
    assert_eq!(
        line(&reports["db-iam-denied"], "rds-db:connect")[0]["ok"],
        false
    );
    assert!(
        line(&reports["db-iam-denied"], "rds-db:connect")[0]["detail"]
            .as_str()
            .unwrap()
            .contains("implicitDeny")
    );
    assert_eq!(line(&reports["db-iam-off"], "iam-auth")[0]["ok"], false);
    assert!(
        line(&reports["db-iam-off"], "iam-auth")[0]["fix"]
            .as_str()
            .unwrap()
            .contains("--enable-iam-database-authentication")
    );
    let legacy = &reports["ecs-legacy"];
    assert_eq!(line(legacy, "exec")[0]["ok"], false, "{legacy}");
    assert_eq!(line(legacy, "task-role")[0]["ok"], false, "{legacy}");

    // Named targets only; all pass: exit 0, and the human lines.
    let (ok, reports, text) = check(&app, home.path(), &["good-role", "ecs-good"]);
    assert!(ok, "{text}");
    assert_eq!(reports.len(), 2);
    let human = crate::support::pam_command()
        .args(["targets", "check", "weak-role"])
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(human.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&human.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL weak-role (aws) trust:")
                && l.contains("-- fix: add sts:TagSession")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PASS weak-role (aws) role:")),
        "{stdout}"
    );

    // An engineer is no admin: refused, and the decision is audited.
    let bob_home = tempfile::tempdir().unwrap();
    cli_login(&app, bob_home.path(), "bob").await;
    let refused = crate::support::pam_command()
        .args(["targets", "check"])
        .env("PAM_HOME", bob_home.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_explain_summarises_what_a_role_may_do() {
    let id = unique();
    let name = format!("explain-{id}");
    role(&name, FULL_TRUST);
    let policy = aws_cli(&[
        "iam",
        "create-policy",
        "--policy-name",
        &format!("read-{id}"),
        "--policy-document",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":"arn:aws:s3:::orders-*"},{"Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}]}"#,
    ]);
    aws_cli(&[
        "iam",
        "attach-role-policy",
        "--role-name",
        &name,
        "--policy-arn",
        policy["Policy"]["Arn"].as_str().unwrap(),
    ]);
    aws_cli(&[
        "iam",
        "put-role-policy",
        "--role-name",
        &name,
        "--policy-name",
        "logs",
        "--policy-document",
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"logs:*","Resource":"*"}}"#,
    ]);
    let env: HashMap<String, String> = [
        ("AWS_ENDPOINT_URL", moto_url()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: format!(
            "[[target]]\nname = \"dev-role\"\nkind = \"aws\"\nrole_arn = \"arn:aws:iam::123456789012:role/{name}\"\ntags = {{ env = \"dev\" }}\n\n[[target]]\nname = \"prod-role\"\nkind = \"aws\"\nrole_arn = \"arn:aws:iam::123456789012:role/{name}\"\ntags = {{ env = \"prod\" }}\n"
        ),
        env,
        ..Options::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    cli_login(&app, home.path(), "bob").await;
    let out = crate::support::pam_command()
        .args(["ls", "--explain", "dev-role"])
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("policy read-{id} (attached")),
        "{text}"
    );
    assert!(text.contains("policy logs (inline)"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim() == "s3: GetObject, ListBucket on arn:aws:s3:::orders-*"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.trim() == "logs: *"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim().starts_with("s3 (denied): DeleteObject")),
        "{text}"
    );
    // A role policy does not let bob use is not explained to him.
    let out = crate::support::pam_command()
        .args(["ls", "--explain", "prod-role"])
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no AWS role"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_and_throttling_answers_are_failed_checks_that_say_what_to_do() {
    let id = unique();
    role(&format!("denied-{id}"), FULL_TRUST);
    let iam = FailingProxy::start(&moto_url()).await;
    let env: HashMap<String, String> = [
        ("AWS_ENDPOINT_URL", moto_url()),
        ("AWS_ENDPOINT_URL_IAM", iam.url.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: format!(
            "[[target]]\nname = \"guarded\"\nkind = \"aws\"\nrole_arn = \"arn:aws:iam::123456789012:role/denied-{id}\"\nmax_duration = \"1h\"\nexternal_id = \"ext-1\"\ntags = {{ env = \"dev\" }}\n"
        ),
        env,
        ..Options::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    cli_login(&app, home.path(), "alice").await;
    let (ok, _, text) = check(&app, home.path(), &["guarded"]);
    assert!(ok, "passes while IAM answers: {text}");
    for (status, code, fix) in [
        (403, "AccessDenied", "give the broker's role iam:GetRole"),
        (400, "Throttling", "AWS throttled the call"),
    ] {
        iam.fail(status, code);
        let (ok, reports, text) = check(&app, home.path(), &["guarded"]);
        assert!(!ok, "{code}: exit status 1\n{text}");
        let role = line(&reports["guarded"], "role");
        assert_eq!(role.len(), 1, "{text}");
        assert_eq!(role[0]["ok"], false);
        assert!(role[0]["detail"].as_str().unwrap().contains(code), "{text}");
        assert!(role[0]["fix"].as_str().unwrap().contains(fix), "{text}");
    }
    iam.heal();
    let (ok, _, text) = check(&app, home.path(), &["guarded"]);
    assert!(ok, "passes again: {text}");
}
