//! CloudWatch Logs and S3 sinks against moto, read back with the AWS CLI; a sink whose secret is missing.

use super::*;

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

    // The cursor is read before the stream: events the broker writes after
    // catching up (and exports meanwhile) are past it, not missing from it.
    let upto = cursor(&app, "cw").await;
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
    assert_complete(&store, &by_seq(&messages), upto);
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
