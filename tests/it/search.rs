//! Full-text search (`/api/v1/audit/search`, `/ui/search`, `pam audit
//! search`) over real sessions: OpenSSH output and commands, psql
//! statements; input with FTS, regex or SQL syntax is literal text; a user
//! without `view_audit` is refused and that is audited.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{TestApp, pam_bin};

/// A search through the API as the holder of `token`: (status, body).
async fn search(app: &TestApp, token: &str, q: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .get(app.url("/api/v1/audit/search"))
        .query(&[("q", q)])
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits until searching `q` finds something (sessions are indexed once
/// they have ended, by a background task); returns the hits.
async fn found(app: &TestApp, token: &str, q: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = search(app, token, q).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let hits = body["hits"].as_array().cloned().unwrap_or_default();
        if !hits.is_empty() {
            return hits;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing found for {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sources(hits: &[Value]) -> Vec<&str> {
    hits.iter().map(|h| h["source"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_output_and_commands_are_found_and_syntax_is_text() {
    let w = crate::ssh::world("bob").await;
    let out = w
        .ssh("web-dev")
        .arg("echo marmalade-$((6*7)); printf 'zebra crossing\\n'")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let session = w.app.events("session.start").await[0]
        .session_id
        .clone()
        .unwrap();
    let erin = w.app.sso_login("erin").await.unwrap().response.token;

    // The output (what the target printed), not the command that made it.
    let hits = found(&w.app, &erin, "marmalade-42").await;
    assert_eq!(sources(&hits), ["output"], "{hits:?}");
    assert_eq!(hits[0]["session_id"], session.as_str());
    assert_eq!(hits[0]["user"], "bob@example.test");
    assert!(
        hits[0]["snippet"]
            .as_str()
            .unwrap()
            .contains("marmalade-42")
    );
    // The exec command itself.
    let hits = found(&w.app, &erin, "6*7").await;
    assert_eq!(sources(&hits), ["command"], "{hits:?}");
    // Words in order, next to each other, whatever the case: printed, and
    // in the command that printed them.
    let mut both = sources(&found(&w.app, &erin, "ZEBRA crossing").await)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    both.sort();
    assert_eq!(both, ["command", "output"]);

    // Syntax of FTS5, tsquery, regular expressions or SQL is text.
    for (q, expect) in [
        ("\"marmalade-42\"", 1),
        ("marmalade*", 1),
        ("zebra OR nothing", 0),
        ("NEAR(zebra crossing)", 0),
        ("-zebra", 1),
        ("output:zebra", 0),
        ("zebra & !crossing", 1),
        ("zebra <-> crossing", 1),
        ("^zeb.*ing$", 0),
        ("'; DROP TABLE search_chunks; --", 0),
        ("\\", 0),
        ("***", 0),
    ] {
        let (status, body) = search(&w.app, &erin, q).await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        let n = body["hits"].as_array().unwrap().len();
        assert!(n == expect || (expect == 1 && n >= 1), "{q}: {body}");
    }
    for q in ["", "   ", &"x".repeat(201)] {
        let (status, body) = search(&w.app, &erin, q).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("search"),
            "{body}"
        );
    }

    // Someone not allowed to read the trail is refused, on the record.
    let bob = w.login.response.token.clone();
    let (status, _) = search(&w.app, &bob, "marmalade").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let decisions = w.app.events("policy.decision").await;
    assert!(
        decisions
            .iter()
            .any(|e| e.actor.as_deref() == Some("bob@example.test")
                && e.outcome == "denied"
                && e.details.contains("view_audit")),
        "{decisions:?}"
    );
    // Every search is recorded with its text (escaped like all input);
    // refused ones too.
    let views = w.app.events("audit.view").await;
    let search_views: Vec<_> = views
        .iter()
        .filter(|e| e.details.contains("api:search"))
        .collect();
    assert!(
        search_views
            .iter()
            .any(|e| e.details.contains("NEAR(zebra crossing)"))
    );
    assert!(
        search_views
            .iter()
            .any(|e| e.outcome == "failure" && e.details.contains("refused"))
    );

    // The CLI, through the broker as the logged-in auditor.
    let home = tempfile::tempdir().unwrap();
    crate::support::cli_login(&w.app, home.path(), "erin").await;
    let cli = tokio::process::Command::new(pam_bin())
        .args(["audit", "search", "marmalade 42", "--json"])
        .env("PAM_HOME", home.path())
        .env_remove("PAM_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let line: Value =
        serde_json::from_str(String::from_utf8_lossy(&cli.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["session_id"], session.as_str());
    let refused = tokio::process::Command::new(pam_bin())
        .args(["audit", "search", " "])
        .env("PAM_HOME", home.path())
        .env_remove("PAM_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the search is empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psql_statement_is_found_in_its_query_log() {
    use crate::postgres::{ScramDb, broker, psql, stdout, target, token, via_broker};
    let db = ScramDb::create().await;
    let app = broker(target("orders-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "orders-dev");
    let out = psql(
        &conn,
        &bob,
        &["-c", "select 'quince' as fruit_of_the_month"],
    )
    .await;
    assert!(stdout(&out).contains("quince"));
    let alice = token(&app, "alice").await;
    let hits = found(&app, &alice, "fruit_of_the_month").await;
    assert_eq!(sources(&hits), ["sql"], "{hits:?}");
    assert_eq!(hits[0]["kind"], "postgres");
    assert!(
        hits[0]["snippet"].as_str().unwrap().contains("'quince'"),
        "{hits:?}"
    );
}
