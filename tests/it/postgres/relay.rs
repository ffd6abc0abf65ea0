//! psql, pgbench, COPY and cancel through the broker, each statement audited.

use super::*;

#[tokio::test]
async fn psql_through_the_broker_matches_a_direct_connection_and_every_statement_is_audited() {
    let db = ScramDb::create().await;
    let app = broker(target("orders-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "orders-dev");

    let setup = psql(
        &conn,
        &bob,
        &[
            "-c",
            "create table t (id int primary key, name text)",
            "-c",
            "insert into t values (1, 'one'), (2, 'two'), (3, 'three')",
        ],
    )
    .await;
    stdout(&setup);
    let checks = [
        "select id, name from t order by id",
        "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()",
        "update t set name = upper(name) where id > 1; select count(*) from t where name = upper(name)",
        "select string_agg(name, ',' order by id) from t",
    ];
    for sql in checks {
        let through = stdout(&psql(&conn, &bob, &["-c", sql]).await);
        let direct = stdout(&psql(&db.direct(), &db.password, &["-c", sql]).await);
        assert_eq!(through, direct, "{sql}");
    }
    let whoami = stdout(&psql(&conn, &bob, &["-c", "select current_user"]).await);
    assert_eq!(
        whoami.trim(),
        db.role,
        "the broker logs in as the database user"
    );
    // An error reaches the client as the server sent it.
    let failed = psql(&conn, &bob, &["-c", "select * from missing_table"]).await;
    assert!(!failed.status.success());
    assert!(text(&failed).contains("relation \"missing_table\" does not exist"));
    // A very long statement: bounded in the event, with the hash of the whole.
    let long = format!("select length('{}')", "x".repeat(40_000));
    assert_eq!(
        stdout(&psql(&conn, &bob, &["-c", &long]).await).trim(),
        "40000"
    );

    let events = queries(&app).await;
    let find = |needle: &str| {
        events
            .iter()
            .find(|d| {
                d["statement"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(needle))
            })
            .unwrap_or_else(|| panic!("no db.query for {needle}: {events:#?}"))
            .clone()
    };
    let insert = find("insert into t");
    assert_eq!(insert["rows"], 3);
    assert_eq!(insert["commands"][0], "INSERT 0 3");
    assert_eq!(insert["protocol"], "simple");
    let select = find("select id, name from t");
    assert_eq!(select["rows"], 3);
    assert_eq!(select["rows_sent"], 3);
    let both = find("update t set name");
    assert_eq!(
        both["commands"],
        serde_json::json!(["UPDATE 2", "SELECT 1"])
    );
    let missing = find("select * from missing_table");
    assert_eq!(missing["error"]["sqlstate"], "42P01");
    let long_event = find("select length('xxx");
    assert_eq!(long_event["truncated"], true);
    assert_eq!(long_event["statement_bytes"], long.len());
    assert_eq!(
        long_event["statement_sha256"],
        hex::encode(sha2::Sha256::digest(long.as_bytes()))
    );
    assert!(long_event["statement"].as_str().unwrap().len() <= pam::pg::query::TEXT_MAX);
    assert!(events.iter().all(|d| d["duration_us"].is_u64()));

    // Sessions: one per psql run, with byte counts, all ended.
    let starts = app.events("session.start").await;
    let ends = app.event_details("session.end").await;
    assert_eq!(starts.len(), checks.len() + 4);
    assert_eq!(ends.len(), starts.len());
    for end in &ends {
        assert_eq!(end["kind"], "postgres");
        assert_eq!(end["end_reason"], "closed");
        assert!(end["bytes_in"].as_i64().unwrap() > 0);
        assert!(end["bytes_out"].as_i64().unwrap() > 0);
    }
    // The query log holds the long statement whole; its hash is in session.end.
    let recordings = app.config.recordings_dir();
    let mut logs = String::new();
    for end in &ends {
        let relative = end["recording"].as_str().expect("a query log");
        let bytes = std::fs::read(recordings.join(relative)).unwrap();
        assert_eq!(
            end["recording_sha256"],
            hex::encode(sha2::Sha256::digest(&bytes)),
            "the query log's hash is in session.end"
        );
        for line in String::from_utf8(bytes).unwrap().lines().skip(1) {
            let event: Value = serde_json::from_str(line).unwrap();
            logs.push_str(event[2].as_str().unwrap());
        }
    }
    assert!(
        logs.contains(&format!("{long}\r\n")),
        "the long statement is in a query log"
    );
    assert!(logs.contains("insert into t values (1, 'one'), (2, 'two'), (3, 'three')\r\n"));
    let query_events = app.events("db.query").await;
    assert!(
        query_events
            .iter()
            .all(|e| e.actor.as_deref() == Some("bob@example.test")
                && e.target.as_deref() == Some("orders-dev")
                && e.session_id.is_some())
    );
    // Neither the token nor the database password is anywhere in the trail.
    let trail = whole_trail(&app).await;
    assert!(
        !trail.contains(&bob),
        "the broker token leaked into the trail"
    );
    assert!(
        !trail.contains(&db.password),
        "the database password leaked into the trail"
    );
}

#[tokio::test]
async fn pgbench_simple_and_prepared_modes_run_through_the_broker() {
    let db = ScramDb::create().await;
    let toml = format!(
        "[audit]\ndb_params = true\n{}",
        target("bench-dev", &db, r#"env = "dev""#).await
    );
    let app = broker(toml).await;
    let bob = token(&app, "bob").await;
    let mut init = Command::new("pgbench");
    init.args(["-i", "-q", "-s", "1"])
        .arg(db.direct())
        .env("PGPASSWORD", &db.password);
    let init = run(init, None).await;
    assert!(init.status.success(), "{}", text(&init));
    let conn = via_broker(&app, "bob@example.test", "bench-dev");
    for mode in ["simple", "extended", "prepared"] {
        let mut bench = Command::new("pgbench");
        bench
            .args(["-n", "-S", "-M", mode, "-c", "2", "-j", "1", "-t", "25"])
            .arg(&conn)
            .env("PGPASSWORD", &bob);
        let out = run(bench, None).await;
        let out_text = text(&out);
        assert!(out.status.success(), "{mode}: {out_text}");
        assert!(
            out_text.contains("number of transactions actually processed: 50/50"),
            "{mode}: {out_text}"
        );
    }
    let events = queries(&app).await;
    let selects: Vec<&Value> = events
        .iter()
        .filter(|d| {
            d["statement"]
                .as_str()
                .is_some_and(|s| s.contains("FROM pgbench_accounts"))
        })
        .collect();
    let by = |protocol: &str, prepared: bool| {
        selects
            .iter()
            .filter(|d| d["protocol"] == protocol && d.get("prepared").is_some() == prepared)
            .count()
    };
    assert_eq!(by("simple", false), 50, "{selects:#?}");
    assert_eq!(by("extended", false), 50);
    assert_eq!(
        by("extended", true),
        50,
        "prepared mode: one event per Execute"
    );
    let prepared = selects
        .iter()
        .find(|d| d.get("prepared").is_some())
        .unwrap();
    assert_eq!(prepared["params"], 1);
    assert!(
        prepared["param_values"][0]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok()
    );
    assert_eq!(prepared["rows"], 1);
    assert!(selects.iter().all(|d| d.get("error").is_none()));
}

#[tokio::test]
async fn copy_in_and_out_are_relayed_and_recorded() {
    let db = ScramDb::create().await;
    let app = broker(target("copy-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "copy-dev");
    stdout(&psql(&conn, &bob, &["-c", "create table c (n int, s text)"]).await);
    let rows: String = (1..=500).map(|n| format!("{n}\trow {n}\n")).collect();
    let mut copy_in = Command::new("psql");
    copy_in
        .arg(&conn)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", "\\copy c from stdin"])
        .env("PGPASSWORD", &bob);
    let copy_in = run(copy_in, Some(rows.clone())).await;
    assert!(copy_in.status.success(), "{}", text(&copy_in));
    let out = stdout(
        &psql(
            &conn,
            &bob,
            &["-c", "\\copy (select * from c order by n) to stdout"],
        )
        .await,
    );
    assert_eq!(out, rows);
    let events = queries(&app).await;
    let copy = |direction: &str| {
        events
            .iter()
            .find(|d| d["copy"]["direction"] == direction)
            .unwrap_or_else(|| panic!("no COPY {direction}: {events:#?}"))
            .clone()
    };
    let copied_in = copy("in");
    assert_eq!(copied_in["rows"], 500);
    assert_eq!(copied_in["copy"]["bytes"], rows.len());
    assert!(
        copied_in["statement"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("from stdin")
    );
    let copied_out = copy("out");
    assert_eq!(copied_out["rows"], 500);
    assert_eq!(copied_out["copy"]["bytes"], rows.len());
}

#[tokio::test]
async fn a_long_query_is_cancelled_through_the_broker() {
    let db = ScramDb::create().await;
    let app = broker(target("cancel-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "cancel-dev");
    let child = Command::new("psql")
        .arg(&conn)
        .args(["-X", "-c", "select pg_sleep(30)"])
        .env("PGPASSWORD", &bob)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the statement runs, then Ctrl-C: psql sends a CancelRequest.
    let running = eventually(Duration::from_secs(10), || async {
        let direct = psql(
            &db.direct(),
            &db.password,
            &["-c", "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'"],
        ).await;
        String::from_utf8_lossy(&direct.stdout).trim() == "1"
    })
    .await;
    assert!(running, "the query never started");
    let started = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
    assert!(
        text(&output).contains("canceling statement due to user request"),
        "{}",
        text(&output)
    );
    let ok = eventually(Duration::from_secs(5), || async {
        let events = queries(&app).await;
        events
            .iter()
            .any(|d| d["cancel_request"] == true && d["error"].is_null())
            && events.iter().any(|d| {
                d["statement"] == "select pg_sleep(30)" && d["error"]["sqlstate"] == "57014"
            })
    })
    .await;
    assert!(ok, "{:#?}", queries(&app).await);
    let cancel = app
        .events("db.query")
        .await
        .into_iter()
        .find(|e| e.details.contains("cancel_request"))
        .unwrap();
    assert_eq!(cancel.actor.as_deref(), Some("bob@example.test"));
    assert!(cancel.session_id.is_some());
}
