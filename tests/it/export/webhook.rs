//! The webhook sink: outages, restarts mid-delivery, and tampered copies failing verification.

use super::*;

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
