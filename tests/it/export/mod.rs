//! SIEM export (issue 13): `[[export]]` sinks against real receivers: a
//! test-owned HTTPS webhook receiver that checks the signature, moto for
//! CloudWatch Logs and S3 (Object Lock), read back with the real AWS CLI;
//! and `pam audit verify --against` on what they received.

mod aws;
mod ocsf;
mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use pam::domain::audit::{AuditEvent, EventKind, EventRecord, Outcome};

use crate::support::aws::moto_url;
use crate::support::gate::Gate;
use crate::support::peers::required_env;
use crate::support::webhook::{Mode, Receiver};
use crate::support::{Options, TestApp, eventually};

const SECRET: &str = "webhook-signing-secret-for-tests";

fn webhook_toml(receiver: &Receiver, extra: &str) -> String {
    format!(
        r#"
[[export]]
name = "siem"
kind = "webhook"
url = "{url}"
secret_env = "PAM_TEST_WEBHOOK_SECRET"
ca_file = "{ca}"
retry_max = "1s"
{extra}
"#,
        url = receiver.url,
        ca = receiver.ca_file.display(),
    )
}

fn webhook_env() -> HashMap<String, String> {
    [("PAM_TEST_WEBHOOK_SECRET".to_owned(), SECRET.to_owned())].into()
}

fn aws_env(endpoints: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (service, url) in endpoints {
        env.insert(format!("AWS_ENDPOINT_URL_{service}"), (*url).to_owned());
    }
    env
}

/// Appends `events` to the broker's chain through a writer of its own (like
/// `pam audit stress`), waiting until each is durable.
async fn append(app: &TestApp, events: Vec<AuditEvent>) {
    let db = app.db().await;
    let keys = pam::keys::KeyMaterial::load(&app.config.keys_dir()).unwrap();
    let (audit, writer) = pam::audit::start(
        db.clone(),
        keys.audit.clone(),
        &app.config.audit,
        "export-test".into(),
        std::sync::Arc::new(pam::metrics::Metrics::default()),
    );
    let writer = tokio::spawn(writer.run());
    audit.record_all(events).await.unwrap();
    audit.close().await;
    writer.await.unwrap();
    db.close().await;
}

fn synthetic(n: usize) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| {
            AuditEvent::new(EventKind::AdminChange, Outcome::Success)
                .actor("export-test@example.test")
                .target(format!("t-{}", i % 7))
                .details(serde_json::json!({"n": i, "note": "é \"quoted\" \n line"}))
        })
        .collect()
}

/// Every event in the store, oldest first.
async fn store_events(app: &TestApp) -> Vec<EventRecord> {
    let db = app.db().await;
    let mut out = Vec::new();
    loop {
        let from = out.last().map_or(1, |e: &EventRecord| e.seq + 1);
        let page = pam::store::audit::range(&db, from, 10_000).await.unwrap();
        if page.is_empty() {
            break;
        }
        out.extend(page);
    }
    db.close().await;
    out
}

async fn cursor(app: &TestApp, sink: &str) -> i64 {
    let db = app.db().await;
    let cursors = pam::store::export::cursors(&db).await.unwrap();
    db.close().await;
    cursors.iter().find(|c| c.sink == sink).map_or(0, |c| c.seq)
}

async fn head(app: &TestApp) -> i64 {
    let db = app.db().await;
    let head = pam::store::audit::head(&db).await.unwrap().seq;
    db.close().await;
    head
}

/// Waits until `sink` has exported everything up to the head (which may
/// move while it waits: export.lagging events).
async fn caught_up(app: &TestApp, sink: &str) -> bool {
    eventually(Duration::from_secs(60), || async {
        let h = head(app).await;
        cursor(app, sink).await >= h
    })
    .await
}

async fn metric(app: &TestApp, name: &str) -> Option<f64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// The `state` of every export.lagging event, oldest first.
async fn lagging_states(app: &TestApp) -> Vec<String> {
    app.event_details("export.lagging")
        .await
        .iter()
        .map(|d| d["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Lines by seq; panics if one seq came with two different contents.
fn by_seq(lines: &[serde_json::Value]) -> BTreeMap<i64, serde_json::Value> {
    let mut out: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    for line in lines {
        let seq = line["seq"].as_i64().expect("every line carries its seq");
        if let Some(seen) = out.get(&seq) {
            assert_eq!(
                seen, line,
                "seq {seq} was delivered twice with different content"
            );
        }
        out.insert(seq, line.clone());
    }
    out
}

/// Every event of the store is in `lines`, with the store's hash and prev_hash.
fn assert_complete(store: &[EventRecord], lines: &BTreeMap<i64, serde_json::Value>, upto: i64) {
    for event in store.iter().filter(|e| e.seq <= upto) {
        let line = lines
            .get(&event.seq)
            .unwrap_or_else(|| panic!("seq {} never reached the sink", event.seq));
        assert_eq!(line["hash"], hex::encode(&event.hash), "seq {}", event.seq);
        assert_eq!(
            line["prev_hash"],
            hex::encode(&event.prev_hash),
            "seq {}",
            event.seq
        );
    }
}

fn write_copy(path: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// `pam audit verify --against FILES --config ...`: (exit ok, stdout, stderr).
fn verify_against(app: &TestApp, files: &[&Path], json: bool) -> (bool, String, String) {
    let mut cmd = crate::support::pam_command();
    cmd.args(["audit", "verify", "--config"])
        .arg(&app.config_path);
    for file in files {
        cmd.arg("--against").arg(file);
    }
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
