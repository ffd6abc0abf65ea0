//! The audit trail against a hostile user and an insider: strings from the
//! network cannot poison the trail or an auditor's terminal, one refused
//! event never costs another, a cut tail is caught by a saved head, a
//! recording is checked against the chain (not a mutable column), and every
//! read of the trail is itself recorded.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pam::domain::audit::{AuditEvent, EventKind, Outcome};
use pam::store::{Db, Pool};

use crate::support::aws::moto_url;
use crate::support::{Options, TestApp, eventually};

/// What a hostile client puts in every string it controls: a NUL (which
/// PostgreSQL refuses in text), a terminal escape (which repaints an
/// auditor's terminal) and a C1 control.
const HOSTILE: &str = "x\0\x1b]0;owned\x07\x1b[2J\u{9b}31m";

async fn exec(db: &Db, statement: &str) {
    match db.pool() {
        Pool::Sqlite(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                .execute(pool)
                .await
                .unwrap();
        }
        Pool::Postgres(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// No control character but the line ends.
fn assert_no_control(what: &str, text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r'))
        .collect();
    assert!(
        bad.is_empty(),
        "{what} carries control characters {bad:?}:\n{text}"
    );
}

async fn aws_app() -> TestApp {
    let env = [
        ("AWS_ENDPOINT_URL_STS", moto_url()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    TestApp::spawn_with(Options {
        idp: true,
        toml: r#"
[[target]]
name = "dev-readonly"
kind = "aws"
role_arn = "arn:aws:iam::123456789012:role/pam-dev-readonly"
max_duration = "1h"
tags = { env = "dev" }
"#
        .into(),
        env,
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_string_never_costs_another_users_event() {
    let app = aws_app().await;
    let alice = app.sso_login("alice").await.unwrap().response.token;
    let bob = app.sso_login("bob").await.unwrap().response.token;
    let base = app.url("/api/v1/aws/credentials");
    // Alice floods the broker with hostile role names (each a recorded
    // refusal) while Bob gets credentials: their events share batches.
    const FLOOD: usize = 300;
    const WORK: usize = 30;
    let http = reqwest::Client::new();
    let flood = {
        let (http, base, alice) = (http.clone(), base.clone(), alice.clone());
        tokio::spawn(async move {
            use futures_util::StreamExt;
            // 16 at a time: enough to fill every batch, not so many that
            // the connection pool itself turns requests away.
            futures_util::stream::iter(0..FLOOD)
                .map(|i| {
                    let body = serde_json::json!({"role": format!("{HOSTILE}{i}")});
                    let request = http.post(&base).bearer_auth(&alice).json(&body).send();
                    async move { request.await.unwrap().status().as_u16() }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
        })
    };
    let work = {
        let (http, base, bob) = (http.clone(), base.clone(), bob.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..WORK {
                let body = serde_json::json!({"role": "dev-readonly"});
                let r = http
                    .post(&base)
                    .bearer_auth(&bob)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        })
    };
    let flood = flood.await.unwrap();
    let work = work.await.unwrap();
    // Also with curl, the real client: a NUL and an escape in the JSON body.
    let curl = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "content-type: application/json"])
        .arg("-H")
        .arg(format!("authorization: Bearer {alice}"))
        .args(["--data", r#"{"role":"curl\u0000\u001b[31m"}"#, &base])
        .output()
        .await
        .unwrap();
    assert_eq!(stdout_of(&curl), "400");

    assert!(flood.iter().all(|s| *s == 400), "{flood:?}");
    assert!(work.iter().all(|s| *s == 200), "{work:?}");
    let issued = app.events("aws.credentials.issued").await;
    let bobs = issued
        .iter()
        .filter(|e| e.actor.as_deref() == Some("bob@example.test"))
        .count();
    assert_eq!(bobs, WORK, "every one of Bob's credentials is on record");
    let decisions = app.events("policy.decision").await;
    let bob_decisions = decisions
        .iter()
        .filter(|e| e.actor.as_deref() == Some("bob@example.test"))
        .count();
    assert_eq!(
        bob_decisions, WORK,
        "every one of Bob's decisions is on record"
    );
    // Alice's attempts are on record too, faithfully escaped, none lost.
    let alices: Vec<_> = issued
        .iter()
        .filter(|e| e.actor.as_deref() == Some("alice@example.test"))
        .collect();
    assert_eq!(alices.len(), FLOOD + 1);
    for e in &alices {
        let target = e.target.as_deref().unwrap();
        assert_no_control("a stored target", target);
        assert!(
            target.starts_with("x\\0\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}31m")
                || target == "curl\\0\\u{1b}[31m",
            "{target}"
        );
        assert_no_control("stored details", &e.details);
    }
    assert!(app.events("audit.write_failed").await.is_empty());
    let verify = app
        .pam()
        .args(["audit", "verify", "--config"])
        .arg(&app.config_path)
        .output()
        .unwrap();
    stdout_of(&verify);
}

/// A writer that is not running yet: events submitted now form one batch.
async fn idle_writer(app: &TestApp) -> (pam::audit::Audit, pam::audit::Writer) {
    let keys = pam::keys::KeyMaterial::load(&app.config.keys_dir()).unwrap();
    pam::audit::start(
        app.db().await,
        keys.audit,
        &app.config.audit,
        "second-writer".into(),
        Arc::new(pam::metrics::Metrics::default()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_store_refuses_fails_alone_and_is_itself_on_record() {
    let app = TestApp::spawn().await;
    // An event the store must refuse whatever its content: the id of an
    // event already in the chain (ids are unique).
    let taken = app.events("server.start").await[0].id.clone();
    let (audit, writer) = idle_writer(&app).await;
    let mut pending = Vec::new();
    for i in 0..40 {
        let mut event = AuditEvent::new(EventKind::SshExec, Outcome::Success)
            .actor(format!("user{i}@example.test"))
            .details(serde_json::json!({"command": format!("echo {i}")}));
        if i == 20 {
            event.id = taken.parse().unwrap();
            event.actor = Some("mallory@example.test".into());
        }
        pending.push(audit.submit(event).await.unwrap());
    }
    let running = tokio::spawn(writer.run());
    let mut results = Vec::new();
    for p in pending {
        results.push(p.wait().await);
    }
    for (i, result) in results.iter().enumerate() {
        if i == 20 {
            assert!(result.is_err(), "the refused event's caller learns it");
        } else {
            assert!(result.is_ok(), "event {i} was lost: {result:?}");
        }
    }
    let execs = app.events("ssh.exec").await;
    assert_eq!(execs.len(), 39);
    let failed = app.event_details("audit.write_failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["event_id"], taken.as_str());
    assert_eq!(failed[0]["kind"], "ssh.exec");
    let record = &app.events("audit.write_failed").await[0];
    assert_eq!(record.actor.as_deref(), Some("mallory@example.test"));
    audit.close().await;
    running.await.unwrap();
    let verify = app
        .pam()
        .args(["audit", "verify", "--config"])
        .arg(&app.config_path)
        .output()
        .unwrap();
    stdout_of(&verify);
}

async fn head_token(app: &TestApp) -> String {
    let out = app
        .pam()
        .args(["audit", "head", "--config"])
        .arg(&app.config_path)
        .output()
        .unwrap();
    let token = stdout_of(&out).trim().to_owned();
    let (seq, hash) = token.split_once(':').expect("SEQ:HASH");
    assert!(seq.parse::<i64>().unwrap() > 0, "{token}");
    assert_eq!(hash.len(), 64, "{token}");
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    token
}

fn verify(app: &TestApp, extra: &[&str]) -> std::process::Output {
    app.pam()
        .args(["audit", "verify", "--config"])
        .arg(&app.config_path)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_cut_by_an_insider_fails_verification_against_a_saved_head() {
    let app = TestApp::spawn_with(Options {
        idp: true,
        ..Options::default()
    })
    .await;
    app.sso_login("alice").await.unwrap();
    // The auditor saves the head.
    let saved = head_token(&app).await;
    let saved_seq: i64 = saved.split_once(':').unwrap().0.parse().unwrap();
    let out = verify(&app, &["--expect", &saved]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // More happens, then the broker stops (its final checkpoint seals it).
    app.sso_login("bob").await.unwrap();
    let config = app.config_path.clone();
    let (dir, database) = app.stop().await;
    let db = pam::store::Db::connect(&database.url, Duration::from_secs(10))
        .await
        .unwrap();
    // The insider cuts the tail back to before the saved head: events and
    // checkpoints deleted, the head row rewound onto the new last event.
    let keep = saved_seq - 1;
    exec(&db, &format!("DELETE FROM audit_events WHERE seq > {keep}")).await;
    exec(
        &db,
        &format!("DELETE FROM audit_checkpoints WHERE seq > {keep}"),
    )
    .await;
    exec(
        &db,
        &format!(
            "UPDATE audit_head SET seq = {keep}, hash = (SELECT hash FROM audit_events WHERE seq = {keep}) WHERE id = 1"
        ),
    )
    .await;
    db.close().await;
    let out = pam_verify(&config, &["--expect", &saved]);
    assert!(!out.status.success(), "a cut tail passed --expect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("expected head {saved} is no longer in the store")),
        "{text}"
    );
    drop(dir);
}

fn pam_verify(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    crate::support::pam_command()
        .args(["audit", "verify", "--config"])
        .arg(config)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_no_checkpoint_seals_for_twice_the_interval_fail_verification() {
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: "[audit]\ncheckpoint_interval = \"1s\"\n".into(),
        ..Options::default()
    })
    .await;
    app.sso_login("alice").await.unwrap();
    let config = app.config_path.clone();
    let (dir, database) = app.stop().await;
    let out = pam_verify(&config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("newest signed checkpoint at seq"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The insider deletes the checkpoints that sealed the newest events.
    let db = pam::store::Db::connect(&database.url, Duration::from_secs(10))
        .await
        .unwrap();
    exec(
        &db,
        "DELETE FROM audit_checkpoints WHERE seq > (SELECT seq FROM audit_head) - 3",
    )
    .await;
    db.close().await;
    // Older than twice the interval, and nothing sealed them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = pam_verify(&config, &[]);
    assert!(!out.status.success(), "unsealed events passed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no checkpoint seals them"), "{text}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_human_readable_view_of_the_trail_carries_a_terminal_escape() {
    let app = TestApp::spawn_with(Options {
        idp: true,
        ..Options::default()
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // A break-glass user name (no such account: a login.failure).
    let breakglass = http
        .post(app.url("/api/v1/auth/breakglass"))
        .json(&serde_json::json!({
            "username": "ops\x1b]0;bg\x07\x1b[2J", "password": "x", "totp": "000000",
            "public_key": "ssh-ed25519 AAAA", "proof": "x",
        }))
        .send()
        .await
        .unwrap();
    assert!(
        breakglass.status().is_client_error(),
        "{}",
        breakglass.status()
    );
    // The OIDC error parameter of a callback for a login in flight.
    let start = http
        .get(app.url(&format!(
            "/auth/login?cli_port={}&cli_challenge={}",
            crate::support::free_port(),
            pam::identity::oidc::pkce().challenge
        )))
        .send()
        .await
        .unwrap();
    let location = url::Url::parse(start.headers()["location"].to_str().unwrap()).unwrap();
    let state = location
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let mut callback = url::Url::parse(&app.url("/auth/callback")).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("state", &state)
        .append_pair("error", "\x1b]0;oidc\x07\x1b[2Jaccess_denied")
        .append_pair("error_description", "\x1b[31mred\u{9b}1m");
    // From the browser that started the login (its pre-login cookie), so
    // the callback gets as far as the IdP's error.
    let cookies: Vec<String> = start
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect();
    assert!(!cookies.is_empty(), "no pre-login cookie was set");
    let answer = http
        .get(callback.as_str())
        .header("cookie", cookies.join("; "))
        .send()
        .await
        .unwrap();
    assert!(!answer.status().is_success(), "{}", answer.status());
    // PostgreSQL startup parameters, from the real psql.
    let psql = tokio::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} sslmode=require connect_timeout=5",
            app.postgres.port()
        ))
        .env("PGUSER", "pg\x1b]0;pguser\x07\x1b[2J")
        .env("PGDATABASE", "db\x1b]0;pgdb\x07")
        .env("PGPASSWORD", "not-a-token")
        .args(["-c", "select 1"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!psql.status.success());
    assert!(
        eventually(Duration::from_secs(5), || async {
            !app.events("token.rejected").await.is_empty()
        })
        .await
    );
    let logins = app.event_details("login.failure").await;
    assert!(logins.len() >= 2, "{logins:?}");

    let bob = app.sso_login("erin").await.unwrap().response.token;
    for (args, what) in [
        (vec!["logins"], "pam audit logins"),
        (vec!["events"], "pam audit events"),
        (vec!["sessions"], "pam audit sessions"),
    ] {
        let text = stdout_of(
            &app.pam()
                .arg("audit")
                .args(&args)
                .arg("--config")
                .arg(&app.config_path)
                .output()
                .unwrap(),
        );
        assert_no_control(what, &text);
        // JSON stays JSON, one object a line.
        let json = stdout_of(
            &app.pam()
                .arg("audit")
                .args(&args)
                .args(["--json", "--config"])
                .arg(&app.config_path)
                .output()
                .unwrap(),
        );
        for line in json.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
    let events = stdout_of(
        &app.pam()
            .args(["audit", "events", "--config"])
            .arg(&app.config_path)
            .output()
            .unwrap(),
    );
    // The evidence is all there, escaped.
    for mark in [
        "\\u{1b}]0;bg",
        "\\u{1b}]0;oidc",
        "\\u{1b}]0;pguser",
        "\\u{1b}]0;pgdb",
    ] {
        assert!(events.contains(mark), "{mark} missing from:\n{events}");
    }
    for view in ["logins", "events", "sessions"] {
        let csv = http
            .get(app.url(&format!("/api/v1/audit/export?view={view}&format=csv")))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        assert_eq!(csv.status(), 200);
        let csv = csv.text().await.unwrap();
        assert_no_control(&format!("the {view} CSV"), &csv);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_of_the_sessions_api_is_recorded_as_audit_view() {
    let app = TestApp::spawn_with(Options {
        idp: true,
        ..Options::default()
    })
    .await;
    let erin = app.sso_login("erin").await.unwrap().response.token;
    let http = reqwest::Client::new();
    let list = http
        .get(app.url("/api/v1/sessions?status=ended"))
        .bearer_auth(&erin)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let one = http
        .get(app.url("/api/v1/sessions/0192e8a0-0000-7000-8000-000000000000"))
        .bearer_auth(&erin)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 404);
    let views = app.events("audit.view").await;
    let seen: Vec<serde_json::Value> = views
        .iter()
        .filter(|e| e.actor.as_deref() == Some("erin@example.test"))
        .map(|e| serde_json::from_str(&e.details).unwrap())
        .collect();
    assert!(
        seen.iter()
            .any(|d| d["view"] == "api:sessions" && d["filters"]["status"] == "ended"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|d| d["view"] == "api:session"
            && d["filters"]["session"] == "0192e8a0-0000-7000-8000-000000000000"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_rewritten_with_its_sessions_row_is_still_caught() {
    let w = crate::ssh::world("bob").await;
    let run = w.ssh("web-dev").arg("echo genuine").output().await.unwrap();
    assert!(run.status.success());
    assert!(
        eventually(Duration::from_secs(10), || async {
            !w.app.events("session.end").await.is_empty()
        })
        .await
    );
    let end = &w.app.events("session.end").await[0];
    let session = end.session_id.clone().unwrap();
    let details: serde_json::Value = serde_json::from_str(&end.details).unwrap();
    let path = w
        .app
        .config
        .recordings_dir()
        .join(details["recording"].as_str().unwrap());
    let ok = pam_verify(&w.app.config_path, &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // The insider rewrites the file and the sessions row consistently.
    let forged = std::fs::read_to_string(&path)
        .unwrap()
        .replace("genuine", "harmless");
    std::fs::write(&path, &forged).unwrap();
    let forged_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(forged.as_bytes()))
    };
    let db = w.app.db().await;
    exec(
        &db,
        &format!("UPDATE sessions SET recording_sha256 = '{forged_sha}' WHERE id = '{session}'"),
    )
    .await;
    db.close().await;
    // `pam audit verify` (the store) and the web API's verification flag it.
    let out = pam_verify(&w.app.config_path, &[]);
    assert!(!out.status.success(), "a rewritten recording passed verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("the recording of session {session}")),
        "{text}"
    );
    let erin = w.app.sso_login("erin").await.unwrap().response.token;
    let report: serde_json::Value = reqwest::Client::new()
        .get(w.app.url("/api/v1/audit/verify"))
        .bearer_auth(&erin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "recording"),
        "{report}"
    );
    // Replaying it warns.
    let play = w
        .app
        .pam()
        .args(["audit", "play", &session, "--speed", "1000", "--config"])
        .arg(&w.app.config_path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&play.stderr).contains("does not match the SHA-256 in session.end"),
        "{}",
        String::from_utf8_lossy(&play.stderr)
    );
}
