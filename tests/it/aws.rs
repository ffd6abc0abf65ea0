//! AWS credentials against moto (STS) behind a recording proxy, and the
//! real AWS CLI with `credential_process = pam aws creds ROLE`.
// Test doubles lock with `.lock().unwrap()`: a poisoned lock here means a
// test already failed (the broker's own rule is `pam::sync`).
#![allow(clippy::disallowed_methods)]

use std::process::Stdio;

use crate::support::aws::{Federation, RecordingProxy, moto_url};
use crate::support::peers::{peers_dir, required_env};
use crate::support::{Options, TestApp, free_port, pam_command};

const ROLES: &str = r#"
[[target]]
name = "dev-readonly"
kind = "aws"
role_arn = "arn:aws:iam::123456789012:role/pam-dev-readonly"
max_duration = "1h"
external_id = "pam-external-id"
tags = { env = "dev" }

[[target]]
name = "prod-admin"
kind = "aws"
role_arn = "arn:aws:iam::123456789012:role/pam-prod-admin"
max_duration = "4h"
tags = { env = "prod" }
"#;

async fn app_with(sts: &str, federation: Option<&str>) -> TestApp {
    let mut env: std::collections::HashMap<String, String> = [
        ("AWS_ENDPOINT_URL_STS", sts.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(url) = federation {
        env.insert("PAM_AWS__FEDERATION_URL".into(), url.to_owned());
    }
    TestApp::spawn_with(Options {
        idp: true,
        toml: ROLES.into(),
        env,
        ..Options::default()
    })
    .await
}

async fn post(
    app: &TestApp,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_carry_the_user_as_source_identity_and_are_audited_without_secrets() {
    let proxy = RecordingProxy::start(&moto_url()).await;
    let app = app_with(&proxy.url, None).await;
    let bob = app.sso_login("bob").await.unwrap().response;
    let (status, body) = post(
        &app,
        &bob.token,
        "/api/v1/aws/credentials",
        serde_json::json!({"role": "dev-readonly"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Version"], 1);
    let key = body["AccessKeyId"].as_str().unwrap().to_owned();
    let secret = body["SecretAccessKey"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ASIA"), "{key}");
    assert!(body["SessionToken"].as_str().unwrap().len() > 10);
    assert!(body["Expiration"].as_str().unwrap().ends_with('Z'));

    // What the broker asked STS for (moto ignores most of it).
    let assumed = proxy.actions("AssumeRole");
    assert_eq!(assumed.len(), 1);
    let form = assumed[0].form();
    assert_eq!(
        form["RoleArn"],
        "arn:aws:iam::123456789012:role/pam-dev-readonly"
    );
    assert_eq!(form["RoleSessionName"], "bob@example.test");
    assert_eq!(form["SourceIdentity"], "bob@example.test");
    assert_eq!(form["DurationSeconds"], "3600");
    assert_eq!(form["ExternalId"], "pam-external-id");
    let tags: std::collections::HashMap<String, String> = (1..=3)
        .map(|i| {
            (
                form[&format!("Tags.member.{i}.Key")].clone(),
                form[&format!("Tags.member.{i}.Value")].clone(),
            )
        })
        .collect();
    assert_eq!(tags["pam-user"], "bob@example.test");
    assert_eq!(tags["pam-groups"], "engineers");
    assert_eq!(tags["pam-session"], bob.session_id);

    // A shorter duration is honoured; the role's maximum caps a longer one.
    let (_, _) = post(
        &app,
        &bob.token,
        "/api/v1/aws/credentials",
        serde_json::json!({"role": "dev-readonly", "duration_secs": 1200}),
    )
    .await;
    let (_, _) = post(
        &app,
        &bob.token,
        "/api/v1/aws/credentials",
        serde_json::json!({"role": "dev-readonly", "duration_secs": 7200}),
    )
    .await;
    let durations: Vec<String> = proxy
        .actions("AssumeRole")
        .iter()
        .map(|r| r.form()["DurationSeconds"].clone())
        .collect();
    assert_eq!(durations, ["3600", "1200", "3600"]);

    let issued = app.events("aws.credentials.issued").await;
    assert_eq!(issued.len(), 3);
    assert!(
        !issued[0].details.contains(&secret),
        "the secret key never reaches the audit trail"
    );
    let details: serde_json::Value = serde_json::from_str(&issued[0].details).unwrap();
    assert_eq!(details["access_key_id"], key.as_str());
    assert_eq!(details["source_identity"], "bob@example.test");
    assert_eq!(details["duration"], 3600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_uses_pam_as_credential_process_and_the_cache() {
    let proxy = RecordingProxy::start(&moto_url()).await;
    let app = app_with(&proxy.url, None).await;
    let home = tempfile::tempdir().unwrap();
    let browser = format!("python3 {}", peers_dir().join("browser.py").display());
    let login = pam_command()
        .args(["login", "--broker", &app.base_url, "--login-hint", "bob"])
        .env("PAM_HOME", home.path())
        .env("BROWSER", &browser)
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let config = pam_command()
        .args(["config", "aws"])
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    let profiles = String::from_utf8(config.stdout).unwrap();
    assert!(
        profiles.contains("[profile pam-dev-readonly]"),
        "{profiles}"
    );
    assert!(
        !profiles.contains("prod-admin"),
        "only roles policy allows: {profiles}"
    );
    let aws_config = home.path().join("aws-config");
    std::fs::write(&aws_config, format!("{profiles}\n")).unwrap();
    let aws = std::path::Path::new(&required_env("PAM_TEST_PEERS_DIR")).join("venv/bin/aws");
    let caller = |home: &std::path::Path| {
        std::process::Command::new(&aws)
            .args([
                "sts",
                "get-caller-identity",
                "--profile",
                "pam-dev-readonly",
                "--output",
                "json",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("PAM_HOME", home)
            .env("AWS_CONFIG_FILE", &aws_config)
            .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL", moto_url())
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = caller(home.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let identity: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        identity["Arn"],
        "arn:aws:sts::123456789012:assumed-role/pam-dev-readonly/bob@example.test"
    );
    // The second call is served from the cache: no new AssumeRole.
    let out = caller(home.path());
    assert!(out.status.success());
    assert_eq!(proxy.actions("AssumeRole").len(), 1);
    // Credentials within five minutes of expiry are refreshed.
    let cache = home.path().join("aws/dev-readonly.json");
    let mut entry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::minutes(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    entry["credentials"]["Expiration"] = serde_json::json!(soon);
    std::fs::write(&cache, entry.to_string()).unwrap();
    assert!(caller(home.path()).status.success());
    assert_eq!(proxy.actions("AssumeRole").len(), 2);
    // `pam aws env` prints export lines.
    let env = pam_command()
        .args(["aws", "env", "dev-readonly"])
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    let text = String::from_utf8(env.stdout).unwrap();
    assert!(text.contains("export AWS_ACCESS_KEY_ID=ASIA"), "{text}");
    assert!(text.contains("export AWS_SESSION_TOKEN="), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_clearly_and_audited() {
    let proxy = RecordingProxy::start(&moto_url()).await;
    let app = app_with(&proxy.url, None).await;
    let bob = app.sso_login("bob").await.unwrap().response;
    let cases = [
        (serde_json::json!({"role": "prod-admin"}), 403, "denied"),
        (
            serde_json::json!({"role": "no-such-role"}),
            404,
            "no AWS role",
        ),
        (
            serde_json::json!({"role": "../../etc/passwd"}),
            400,
            "invalid role name",
        ),
        (
            serde_json::json!({"role": "dev;rm -rf /"}),
            400,
            "invalid role name",
        ),
        (
            serde_json::json!({"role": "$(id)"}),
            400,
            "invalid role name",
        ),
        (
            serde_json::json!({"role": "dev-readonly", "duration_secs": 100}),
            400,
            "900s to 12h",
        ),
        (
            serde_json::json!({"role": "dev-readonly", "duration_secs": 50000}),
            400,
            "900s to 12h",
        ),
    ];
    for (body, status, needle) in &cases {
        let (got, answer) = post(&app, &bob.token, "/api/v1/aws/credentials", body.clone()).await;
        assert_eq!(got, *status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    assert!(
        proxy.actions("AssumeRole").is_empty(),
        "nothing reached STS"
    );
    let refused = app.events("aws.credentials.issued").await;
    assert_eq!(
        refused.len(),
        cases.len() - 1,
        "every refusal but the policy denial (audited as policy.decision)"
    );
    assert!(refused.iter().all(|e| e.outcome == "denied"));
    assert!(
        app.event_details("policy.decision")
            .await
            .iter()
            .any(|d| d["action"] == "aws_assume" && d["decision"] == "deny")
    );

    // A revoked broker session gets nothing.
    app.client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    let (status, _) = post(
        &app,
        &bob.token,
        "/api/v1/aws/credentials",
        serde_json::json!({"role": "dev-readonly"}),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_unavailable_is_a_clear_error_and_nothing_is_cached() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let app = app_with(&closed, None).await;
    let home = tempfile::tempdir().unwrap();
    let browser = format!("python3 {}", peers_dir().join("browser.py").display());
    let login = pam_command()
        .args(["login", "--broker", &app.base_url, "--login-hint", "bob"])
        .env("PAM_HOME", home.path())
        .env("BROWSER", &browser)
        .output()
        .unwrap();
    assert!(login.status.success());
    let out = pam_command()
        .args(["aws", "creds", "dev-readonly"])
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("STS is unreachable"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!home.path().join("aws/dev-readonly.json").exists());
    let failed = app.event_details("aws.credentials.issued").await;
    assert_eq!(
        app.events("aws.credentials.issued").await[0].outcome,
        "failure"
    );
    assert!(failed[0]["error"].as_str().unwrap().contains("unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_goes_through_the_federation_endpoint() {
    let proxy = RecordingProxy::start(&moto_url()).await;
    let federation = Federation::start().await;
    let app = app_with(&proxy.url, Some(&federation.url)).await;
    let bob = app.sso_login("bob").await.unwrap().response;
    let (status, body) = post(
        &app,
        &bob.token,
        "/api/v1/aws/console",
        serde_json::json!({"role": "dev-readonly"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let url = url::Url::parse(body["url"].as_str().unwrap()).unwrap();
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(query["Action"], "login");
    assert_eq!(query["SigninToken"], "stand-in-signin-token");
    assert_eq!(query["Destination"], "https://console.aws.amazon.com/");
    let calls = federation.calls.lock().unwrap().clone();
    assert_eq!(calls[0]["Action"], "getSigninToken");
    let console = app.events("aws.console.issued").await;
    assert_eq!(console.len(), 1);
    assert!(
        !console[0].details.contains("stand-in-signin-token"),
        "the sign-in token is not audited"
    );
}
