//! SIEM export (issue 13): `[[export]]` sinks against real receivers: a
//! test-owned HTTPS webhook receiver that checks the signature, moto for
//! CloudWatch Logs and S3 (Object Lock), read back with the real AWS CLI;
//! and `pam audit verify --against` on what they received.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_for_a_while_gets_every_event_once_it_is_back() {
    let mut receiver = Receiver::start(SECRET).await;
    let app = TestApp::spawn_with(Options {
        toml: webhook_toml(&receiver, "lag_events = 50\nlag_time = \"3s\""),
        env: webhook_env(),
        ..Options::default()
    })
    .await;
    append(&app, synthetic(20)).await;
    assert!(
        caught_up(&app, "siem").await,
        "the first events were exported"
    );

    // The receiver goes away; appends go on (they only wait for the store).
    receiver.stop();
    append(&app, synthetic(300)).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            metric(&app, "pam_export_lag_events{sink=\"siem\"}")
                .await
                .is_some_and(|lag| lag >= 300.0)
        })
        .await,
        "/metrics shows the lag"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            lagging_states(&app).await.contains(&"lagging".to_owned())
        })
        .await,
        "export.lagging was recorded"
    );
    let lagging = app.events("export.lagging").await;
    let details: serde_json::Value = serde_json::from_str(&lagging[0].details).unwrap();
    assert_eq!(details["sink"], "siem");
    assert_eq!(details["sink_kind"], "webhook");
    assert!(details["lag_events"].as_i64().unwrap() >= 50);
    assert!(
        !lagging[0].details.contains(SECRET),
        "no secret in the trail: {details}"
    );
    assert_eq!(lagging[0].outcome, "failure");

    // Back: everything arrives, and the recovery is recorded once.
    receiver.start_again();
    assert!(
        eventually(Duration::from_secs(60), || async {
            lagging_states(&app).await.contains(&"recovered".to_owned())
        })
        .await,
        "the recovery was recorded"
    );
    assert!(caught_up(&app, "siem").await, "the backlog was exported");
    assert_eq!(
        lagging_states(&app).await,
        ["lagging", "recovered"],
        "reported once when it started lagging, once when it recovered"
    );
    let store = store_events(&app).await;
    let lines = receiver.lines();
    let received = by_seq(&lines);
    assert_complete(&store, &received, cursor(&app, "siem").await);
    assert_eq!(receiver.rejected(), 0, "every request was signed and fresh");
    assert_eq!(
        metric(&app, "pam_export_lag_events{sink=\"siem\"}").await,
        Some(0.0)
    );

    // The copy verifies against the chain.
    let copy = app.dir.path().join("copy.jsonl");
    write_copy(&copy, &lines);
    let (ok, stdout, stderr) = verify_against(&app, &[&copy], false);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("exported copy OK"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_mid_delivery_resends_so_nothing_is_missing_and_duplicates_are_recognisable()
 {
    let receiver = Receiver::start(SECRET).await;
    let toml = webhook_toml(&receiver, "batch_max = 40\ntimeout = \"120s\"");
    let app = TestApp::spawn_with(Options {
        toml: toml.clone(),
        env: webhook_env(),
        ..Options::default()
    })
    .await;
    assert!(caught_up(&app, "siem").await);
    let before = receiver.lines().len();
    // The receiver takes the next batch in but never answers: the broker
    // stops while it waits for the acknowledgement.
    receiver.set_mode(Mode::Hang);
    append(&app, synthetic(150)).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            receiver.lines().len() > before
        })
        .await
    );
    let hung: Vec<i64> = receiver.lines()[before..]
        .iter()
        .map(|l| l["seq"].as_i64().unwrap())
        .collect();
    let (dir, database) = app.stop().await;
    let db = pam::store::Db::connect(&database.url, Duration::from_secs(5))
        .await
        .unwrap();
    let stored = pam::store::export::cursors(&db).await.unwrap();
    db.close().await;
    assert!(
        stored[0].seq < hung[0],
        "the unacknowledged batch was not counted as exported"
    );
    assert_eq!(stored[0].owner, None, "the lease was released at shutdown");

    receiver.set_mode(Mode::Accept);
    let app = TestApp::start(
        dir,
        database,
        Options {
            toml,
            env: webhook_env(),
            ..Options::default()
        },
    )
    .await;
    assert!(
        caught_up(&app, "siem").await,
        "the restarted broker resumed"
    );
    let lines = receiver.lines();
    let received = by_seq(&lines);
    let store = store_events(&app).await;
    assert_complete(&store, &received, cursor(&app, "siem").await);
    for seq in &hung {
        let copies = lines.iter().filter(|l| l["seq"] == *seq).count();
        assert_eq!(
            copies, 2,
            "seq {seq}: delivered before the restart and again after"
        );
    }
    let copy = app.dir.path().join("copy.jsonl");
    write_copy(&copy, &lines);
    let (ok, stdout, stderr) = verify_against(&app, &[&copy], true);
    assert!(ok, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["duplicates"], hung.len());
    assert_eq!(report["problems"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_copy_fails_verification_naming_the_seq() {
    let receiver = Receiver::start(SECRET).await;
    let app = TestApp::spawn_with(Options {
        toml: webhook_toml(&receiver, ""),
        env: webhook_env(),
        ..Options::default()
    })
    .await;
    append(&app, synthetic(30)).await;
    assert!(caught_up(&app, "siem").await);
    let lines: Vec<serde_json::Value> = by_seq(&receiver.lines()).into_values().collect();
    let dir = app.dir.path();
    let check = |name: &str, lines: &[serde_json::Value], needle: &str| {
        let path = dir.join(name);
        write_copy(&path, lines);
        let (ok, stdout, stderr) = verify_against(&app, &[&path], false);
        assert!(!ok, "{name}: a broken copy must fail: {stdout}");
        assert!(
            stdout.contains(needle) && stderr.contains(needle),
            "{name}: expected {needle:?} in\n{stdout}\n{stderr}"
        );
    };
    // A field changed in the copy.
    let mut changed = lines.clone();
    changed[9]["actor"] = "mallory@example.test".into();
    check("changed.jsonl", &changed, "seq 10");
    // An event left out.
    let mut gap = lines.clone();
    gap.remove(14);
    check("gap.jsonl", &gap, "seq 15 is missing");
    // An event rewritten with a recomputed hash: consistent in itself, but
    // not the store's event.
    let mut forged = lines.clone();
    forged[19]["hash"] = hex::encode([7u8; 32]).into();
    check("forged.jsonl", &forged, "seq 20");
    // Not an export at all.
    check(
        "junk.jsonl",
        &[serde_json::json!({"hello": "world"})],
        "no seq",
    );
    // The untouched copy, with a duplicate, passes.
    let mut fine = lines.clone();
    fine.push(lines[3].clone());
    let path = dir.join("fine.jsonl");
    write_copy(&path, &fine);
    let (ok, stdout, stderr) = verify_against(&app, &[&path], false);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("1 duplicate"), "{stdout}");
}

/// Required attributes of the OCSF classes the export writes (OCSF 1.3:
/// base event, Authentication 3002, Authorize Session 3003, API Activity
/// 6003, and the objects they require), checked line by line.
fn ocsf_problems(event: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_owned());
        }
    };
    let int = |key: &str| event[key].as_u64();
    for key in [
        "activity_id",
        "category_uid",
        "class_uid",
        "severity_id",
        "time",
        "type_uid",
    ] {
        need(int(key).is_some(), key);
    }
    let class = int("class_uid").unwrap_or(0);
    need(
        int("type_uid") == Some(class * 100 + int("activity_id").unwrap_or(0)),
        "type_uid = class_uid * 100 + activity_id",
    );
    need(int("category_uid") == Some(class / 1000), "category_uid");
    need(
        event["metadata"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "metadata.version 1.x",
    );
    need(
        event["metadata"]["product"]["name"].is_string(),
        "metadata.product",
    );
    let user_ok = |user: &serde_json::Value| {
        user.is_object()
            && ["account", "name", "uid"]
                .iter()
                .any(|k| !user[*k].is_null())
    };
    let endpoint_ok = |endpoint: &serde_json::Value| {
        endpoint.is_object()
            && [
                "ip",
                "uid",
                "name",
                "hostname",
                "svc_name",
                "instance_uid",
                "domain",
            ]
            .iter()
            .any(|k| !endpoint[*k].is_null())
    };
    match class {
        3002 => {
            need(user_ok(&event["user"]), "3002 user");
            need(
                event["service"].is_object() || endpoint_ok(&event["dst_endpoint"]),
                "3002 service or dst_endpoint",
            );
        }
        3003 => {
            need(user_ok(&event["user"]), "3003 user");
            need(
                ["privileges", "groups", "iam_roles"]
                    .iter()
                    .any(|k| event[*k].is_array()),
                "3003 privileges, groups or iam_roles",
            );
        }
        6003 => {
            let actor = &event["actor"];
            need(
                ["process", "user", "session", "app_name", "app_uid"]
                    .iter()
                    .any(|k| !actor[*k].is_null()),
                "6003 actor",
            );
            if !actor["user"].is_null() {
                need(user_ok(&actor["user"]), "6003 actor.user");
            }
            need(event["api"]["operation"].is_string(), "6003 api.operation");
            need(endpoint_ok(&event["src_endpoint"]), "6003 src_endpoint");
        }
        other => need(false, &format!("unexpected class {other}")),
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_output_has_every_required_field_of_its_class_and_still_verifies() {
    let receiver = Receiver::start(SECRET).await;
    let app = TestApp::spawn_with(Options {
        toml: webhook_toml(&receiver, "format = \"ocsf\""),
        env: webhook_env(),
        ..Options::default()
    })
    .await;
    let ip: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let alice = "alice@example.test";
    let events = vec![
        AuditEvent::new(EventKind::LoginSuccess, Outcome::Success)
            .actor(alice)
            .source_ip(Some(ip))
            .session("jti-1")
            .details(serde_json::json!({"method": "oidc", "mfa": true, "amr": ["pwd", "otp"]})),
        AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
            .source_ip(Some(ip))
            .details(serde_json::json!({"method": "oidc", "reason": "no second factor"})),
        AuditEvent::new(EventKind::Logout, Outcome::Success)
            .actor(alice)
            .session("jti-1"),
        AuditEvent::new(EventKind::PolicyDecision, Outcome::Success)
            .actor(alice)
            .target("orders-prod")
            .details(
                serde_json::json!({"action": "db_connect", "decision": "allow", "groups": ["dba"]}),
            ),
        AuditEvent::new(EventKind::PolicyDecision, Outcome::Denied)
            .actor(alice)
            .target("payments-prod")
            .details(
                serde_json::json!({"action": "ssh", "decision": "deny", "message": "no permit"}),
            ),
        AuditEvent::new(EventKind::SessionStart, Outcome::Success)
            .actor(alice)
            .source_ip(Some(ip))
            .target("orders-prod")
            .session("s-1"),
        AuditEvent::new(EventKind::DbQuery, Outcome::Success)
            .actor(alice)
            .target("orders-prod")
            .session("s-1")
            .details(serde_json::json!({"sql": "select 1"})),
        AuditEvent::new(EventKind::SessionEnd, Outcome::Success)
            .actor(alice)
            .target("orders-prod")
            .session("s-1"),
        AuditEvent::new(EventKind::AwsCredentialsIssued, Outcome::Success)
            .actor(alice)
            .target("prod-readonly"),
    ];
    append(&app, events).await;
    assert!(caught_up(&app, "siem").await);
    let lines = receiver.lines();
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    for line in &lines {
        let problems = ocsf_problems(line);
        assert!(problems.is_empty(), "{problems:?} missing in {line}");
        let kind = line["metadata"]["event_code"].as_str().unwrap().to_owned();
        classes.insert(kind, line["class_uid"].as_u64().unwrap());
        assert_eq!(line["metadata"]["sequence"], line["unmapped"]["pam"]["seq"]);
        assert!(line["unmapped"]["pam"]["hash"].is_string());
    }
    for (kind, class) in [
        ("login.success", 3002),
        ("login.failure", 3002),
        ("logout", 3002),
        ("policy.decision", 3003),
        ("session.start", 6003),
        ("session.end", 6003),
        ("db.query", 6003),
        ("aws.credentials.issued", 6003),
        ("server.start", 6003),
    ] {
        assert_eq!(classes.get(kind), Some(&class), "{kind}");
    }
    let logout = lines
        .iter()
        .find(|l| l["metadata"]["event_code"] == "logout")
        .unwrap();
    assert_eq!(logout["activity_id"], 2);
    let denied = lines
        .iter()
        .find(|l| l["metadata"]["event_code"] == "policy.decision" && l["status_id"] == 2)
        .unwrap();
    assert_eq!(denied["privileges"], serde_json::json!(["ssh"]));
    // OCSF lines carry the native event in raw_data: the copy verifies.
    let copy = app.dir.path().join("ocsf.jsonl");
    write_copy(&copy, &lines);
    let (ok, stdout, stderr) = verify_against(&app, &[&copy], false);
    assert!(ok, "{stdout}{stderr}");
}

fn aws_cli(args: &[&str]) -> serde_json::Value {
    let aws = Path::new(&required_env("PAM_TEST_PEERS_DIR")).join("venv/bin/aws");
    let out = std::process::Command::new(aws)
        .args(args)
        .args([
            "--endpoint-url",
            &moto_url(),
            "--region",
            "us-east-1",
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// Every message of a log stream, read back with the AWS CLI, in order.
fn log_messages(group: &str, stream: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut args = vec![
            "logs",
            "get-log-events",
            "--log-group-name",
            group,
            "--log-stream-name",
            stream,
            "--start-from-head",
        ];
        if let Some(t) = &token {
            args.extend(["--next-token", t.as_str()]);
        }
        let page = aws_cli(&args);
        let events = page["events"].as_array().cloned().unwrap_or_default();
        out.extend(
            events
                .iter()
                .map(|e| serde_json::from_str(e["message"].as_str().unwrap()).unwrap()),
        );
        let next = page["nextForwardToken"].as_str().map(str::to_owned);
        if events.is_empty() || next == token {
            break;
        }
        token = next;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_gets_every_event_in_order_after_being_unreachable_and_the_copy_verifies() {
    let group = format!("/pam/test/{}", uuid::Uuid::new_v4().simple());
    aws_cli(&["logs", "create-log-group", "--log-group-name", &group]);
    let mut gate = Gate::start(&moto_url());
    let app = TestApp::spawn_with(Options {
        toml: format!(
            "[[export]]\nname = \"cw\"\nkind = \"cloudwatch\"\nlog_group = \"{group}\"\nlog_stream = \"audit\"\nretry_max = \"1s\"\nlag_events = 100\n"
        ),
        env: aws_env(&[("CLOUDWATCH_LOGS", &gate.url)]),
        ..Options::default()
    })
    .await;
    append(&app, synthetic(40)).await;
    assert!(
        caught_up(&app, "cw").await,
        "exported, the stream created on the way"
    );

    gate.close();
    append(&app, synthetic(250)).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            metric(&app, "pam_export_lag_events{sink=\"cw\"}")
                .await
                .is_some_and(|lag| lag >= 250.0)
        })
        .await
    );
    gate.open();
    assert!(caught_up(&app, "cw").await, "caught up once moto was back");

    let messages = log_messages(&group, "audit");
    let seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] <= w[1]),
        "the stream holds the events in seq order"
    );
    let store = store_events(&app).await;
    assert_complete(&store, &by_seq(&messages), cursor(&app, "cw").await);
    let copy = app.dir.path().join("cloudwatch.jsonl");
    write_copy(&copy, &messages);
    let (ok, stdout, stderr) = verify_against(&app, &[&copy], false);
    assert!(ok, "{stdout}{stderr}");
}

/// moto's PutLogEvents ignores sequence tokens and never throttles, so these
/// two answers come from captured responses of the real service
/// (tests/fixtures/cloudwatch/), served in front of moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_throttling_and_a_stale_sequence_token_are_retried_without_loss() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cloudwatch");
    let throttled = std::fs::read_to_string(fixtures.join("throttling.json")).unwrap();
    let stale = std::fs::read_to_string(fixtures.join("invalid_sequence_token.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&stale).unwrap();
    let expected = expected["expectedSequenceToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let fake = crate::support::aws::ScriptedProxy::start(
        &moto_url(),
        "Logs_20140328.PutLogEvents",
        vec![(400, throttled), (400, stale)],
    )
    .await;
    let group = format!("/pam/test/{}", uuid::Uuid::new_v4().simple());
    aws_cli(&["logs", "create-log-group", "--log-group-name", &group]);
    let app = TestApp::spawn_with(Options {
        toml: format!(
            "[[export]]\nname = \"cw\"\nkind = \"cloudwatch\"\nlog_group = \"{group}\"\nretry_max = \"1s\"\n"
        ),
        env: aws_env(&[("CLOUDWATCH_LOGS", &fake.url)]),
        ..Options::default()
    })
    .await;
    append(&app, synthetic(10)).await;
    assert!(caught_up(&app, "cw").await);
    let puts = fake.requests();
    assert!(puts.len() >= 3, "{puts:?}");
    let after_stale: serde_json::Value = serde_json::from_str(&puts[2]).unwrap();
    assert_eq!(
        after_stale["sequenceToken"], expected,
        "the retry carries the token CloudWatch asked for"
    );
    let messages = log_messages(&group, "pam-audit");
    let store = store_events(&app).await;
    assert_complete(&store, &by_seq(&messages), cursor(&app, "cw").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_are_date_partitioned_gzipped_locked_and_verify_against_the_chain() {
    let bucket = format!("pam-audit-{}", uuid::Uuid::new_v4().simple());
    aws_cli(&[
        "s3api",
        "create-bucket",
        "--bucket",
        &bucket,
        "--object-lock-enabled-for-bucket",
    ]);
    aws_cli(&[
        "s3api",
        "put-object-lock-configuration",
        "--bucket",
        &bucket,
        "--object-lock-configuration",
        r#"{"ObjectLockEnabled":"Enabled","Rule":{"DefaultRetention":{"Mode":"GOVERNANCE","Days":1}}}"#,
    ]);
    let mut gate = Gate::start(&moto_url());
    let app = TestApp::spawn_with(Options {
        toml: format!(
            "[[export]]\nname = \"lake\"\nkind = \"s3\"\nurl = \"s3://{bucket}/audit/prod\"\nbatch_max = 100\nflush_interval = \"1s\"\nretry_max = \"1s\"\n"
        ),
        env: aws_env(&[("S3", &gate.url)]),
        ..Options::default()
    })
    .await;
    append(&app, synthetic(120)).await;
    assert!(caught_up(&app, "lake").await);
    gate.close();
    append(&app, synthetic(130)).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            metric(&app, "pam_export_errors_total{sink=\"lake\"}")
                .await
                .is_some_and(|errors| errors >= 1.0)
        })
        .await
    );
    gate.open();
    assert!(caught_up(&app, "lake").await);

    let listing = aws_cli(&["s3api", "list-objects-v2", "--bucket", &bucket]);
    let keys: Vec<String> = listing["Contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["Key"].as_str().unwrap().to_owned())
        .collect();
    let pattern = regex_lite::Regex::new(
        r"^audit/prod/dt=\d{4}-\d{2}-\d{2}/hour=\d{2}/\d{20}-\d{20}\.jsonl\.gz$",
    )
    .unwrap();
    let dir = app.dir.path().join("objects");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        assert!(pattern.is_match(key), "{key}");
        // moto answers GetObjectRetention with HTTP 500 (not implemented);
        // HeadObject reports the same lock (x-amz-object-lock-* headers).
        let head = aws_cli(&["s3api", "head-object", "--bucket", &bucket, "--key", key]);
        assert_eq!(head["ObjectLockMode"], "GOVERNANCE", "{key}: {head}");
        assert!(
            head["ObjectLockRetainUntilDate"].is_string(),
            "{key}: {head}"
        );
        assert_eq!(head["Metadata"]["pam-sink"], "lake", "{key}: {head}");
        let file = dir.join(format!("{i}.jsonl.gz"));
        aws_cli(&[
            "s3api",
            "get-object",
            "--bucket",
            &bucket,
            "--key",
            key,
            file.to_str().unwrap(),
        ]);
        files.push(file);
    }
    assert!(keys.len() >= 3, "one object per batch: {keys:?}");
    let paths: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    let (ok, stdout, stderr) = verify_against(&app, &paths, true);
    assert!(ok, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["first_seq"], 1);
    assert!(report["last_seq"].as_i64().unwrap() >= 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_secret_is_missing_keeps_the_broker_from_starting() {
    let receiver = Receiver::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pam.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\nhttp_listen = \"127.0.0.1:0\"\nssh_listen = \"127.0.0.1:0\"\npostgres_listen = \"127.0.0.1:0\"\n[policy]\ndir = \"{}\"\n{}",
            dir.path().join("data").display(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").display(),
            webhook_toml(&receiver, "")
        ),
    )
    .unwrap();
    let out = crate::support::pam_command()
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("PAM_TEST_WEBHOOK_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PAM_TEST_WEBHOOK_SECRET"),
        "names the missing variable: {stderr}"
    );
}
