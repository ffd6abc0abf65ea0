//! Idle timeout, termination, `pam db connect`, startup negotiation, SSM port routes and the password's protection.

use super::*;

#[tokio::test]
async fn idle_sessions_are_warned_then_ended_with_57p05() {
    let db = ScramDb::create().await;
    let toml = format!(
        "[session]\nidle_timeout = \"4s\"\nwarn_before = \"2s\"\n{}",
        target("idle-dev", &db, r#"env = "dev""#).await
    );
    let app = broker(toml).await;
    let bob = token(&app, "bob").await;
    let mut wire = Wire::connect(&app, "bob@example.test", "idle-dev", &bob)
        .await
        .unwrap();
    let rows = wire.query("select 1").await;
    assert!(rows.iter().any(|(tag, _)| *tag == b'D'));
    let mut warned = false;
    let fatal = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some((tag, body)) = wire.next().await {
            match protocol::parse_backend(tag, &body).unwrap() {
                Backend::Notice(fields) => {
                    assert_eq!(fields.severity, b"WARNING");
                    warned = true;
                }
                Backend::Error(fields) => return Some(fatal(&fields)),
                _ => {}
            }
        }
        None
    })
    .await
    .expect("the session did not end")
    .expect("no FATAL before close");
    assert!(warned, "no warning before the end");
    assert_eq!(fatal.code, "57P05");
    assert!(fatal.message.contains("idle"), "{fatal:?}");
    assert!(wire.next().await.is_none(), "closed after the FATAL");
    let ended = eventually(Duration::from_secs(5), || async {
        app.event_details("session.end")
            .await
            .iter()
            .any(|d| d["end_reason"] == "idle_timeout")
    })
    .await;
    assert!(ended);
}

#[tokio::test]
async fn an_administrator_terminates_a_session_by_id() {
    let db = ScramDb::create().await;
    let app = broker(target("term-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let alice = token(&app, "alice").await;
    let mut wire = Wire::connect(&app, "bob@example.test", "term-dev", &bob)
        .await
        .unwrap();
    wire.query("select 1").await;
    let start = app
        .events("session.start")
        .await
        .into_iter()
        .find(|e| e.outcome == "success")
        .unwrap();
    let id = start.session_id.unwrap();
    let response = app
        .client
        .post(app.url(&format!("/api/v1/sessions/{id}/terminate")))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"reason": "suspicious queries"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let fatal = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((tag, body)) = wire.next().await {
            if let Backend::Error(fields) = protocol::parse_backend(tag, &body).unwrap() {
                return Some(fatal(&fields));
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("a FATAL");
    assert_eq!(fatal.code, "57P01");
    assert!(fatal.message.contains("suspicious queries"), "{fatal:?}");
    let ended = eventually(Duration::from_secs(5), || async {
        app.event_details("session.end")
            .await
            .iter()
            .any(|d| d["end_reason"] == "terminated")
    })
    .await;
    assert!(ended);
}

#[tokio::test]
async fn pam_db_connect_tunnels_with_the_saved_login() {
    let db = ScramDb::create().await;
    let app = broker(target("tunnel-dev", &db, r#"env = "dev""#).await).await;
    let login = app.sso_login("bob").await.expect("login").response;
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), &login.token).unwrap();
    std::fs::write(
        home.path().join("session.json"),
        serde_json::json!({
            "broker": app.base_url,
            "user": login.user,
            "groups": login.groups,
            "mfa": login.mfa,
            "postgres_addr": login.postgres_addr,
        })
        .to_string(),
    )
    .unwrap();
    let port = free_port();
    let mut tunnel = crate::support::pam_command()
        .args(["db", "connect", "tunnel-dev", "--port", &port.to_string()])
        .env("PAM_HOME", home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = tunnel.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while !text.contains('\n') {
            let n = std::io::Read::read(&mut out, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    })
    .await
    .unwrap();
    if !printed.contains(&format!("port={port}")) {
        let _ = tunnel.kill();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut tunnel.stderr.take().unwrap(), &mut err).unwrap();
        panic!("pam db connect printed {printed:?}; stderr: {err}");
    }
    assert!(printed.starts_with("psql "), "{printed}");
    let local = format!(
        "host=127.0.0.1 port={port} user=bob@example.test dbname=tunnel-dev sslmode=disable"
    );
    let who = psql(&local, "", &["-c", "select current_user"]).await;
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert_eq!(stdout(&who).trim(), db.role);
    let starts = app.events("session.start").await;
    assert!(starts.iter().any(|e| e.outcome == "success"
        && e.actor.as_deref() == Some("bob@example.test")
        && e.target.as_deref() == Some("tunnel-dev")));
}

#[tokio::test]
async fn gssapi_is_declined_tls_is_offered_and_unknown_cancel_keys_are_dropped() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn_with(Options {
        env: aws_env(),
        ..Options::default()
    })
    .await;
    // The generated certificate's key is private to the broker.
    let key = app.config.keys_dir().join("postgres-tls.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut tcp = tokio::net::TcpStream::connect(app.postgres).await.unwrap();
    let mut gss = 8i32.to_be_bytes().to_vec();
    gss.extend_from_slice(&protocol::GSSENC_REQUEST.to_be_bytes());
    tcp.write_all(&gss).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N', "GSSAPI encryption is declined");
    tcp.write_all(&protocol::ssl_request()).await.unwrap();
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S', "then TLS is offered");

    let mut cancel = tokio::net::TcpStream::connect(app.postgres).await.unwrap();
    cancel
        .write_all(&protocol::cancel_request(12345, &[1, 2, 3, 4]))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), cancel.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "no answer, just closed");
    let dropped = eventually(Duration::from_secs(5), || async {
        app.events("db.query")
            .await
            .iter()
            .any(|e| e.outcome == "denied" && e.details.contains("unknown cancel key"))
    })
    .await;
    assert!(dropped, "the unknown cancel key is audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_behind_an_ssm_port_route_works_like_a_direct_one() {
    // The broker runs outside the VPC: it reaches the database through an
    // SSM port-forwarding session (the fake control plane and agent in
    // tests/, bridging to the real SCRAM PostgreSQL), TLS end to end.
    let db = ScramDb::create().await;
    let fake = crate::support::fake_aws::FakeAws::start(None).await;
    let toml = format!(
        "{}via = {{ ssm_target = \"i-0123456789abcdef0\" }}\n",
        target("orders-routed", &db, r#"env = "dev""#).await
    );
    let mut env = aws_env();
    env.insert("AWS_ENDPOINT_URL_SSM".into(), fake.url.clone());
    let app = TestApp::spawn_with(Options {
        toml,
        env,
        idp: true,
        ..Options::default()
    })
    .await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "orders-routed");
    let sql = "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let through = stdout(&psql(&conn, &bob, &["-c", sql]).await);
    assert_eq!(
        through.trim(),
        format!("{}|t", db.role),
        "TLS to the database over the route"
    );
    // Cancelling goes over a route of its own.
    let slow = psql(
        &conn,
        &bob,
        &[
            "-c",
            "set statement_timeout = '20s'",
            "-c",
            "select pg_sleep(0.2)",
        ],
    )
    .await;
    stdout(&slow);

    let starts = fake.calls("StartSession");
    assert!(!starts.is_empty());
    assert_eq!(starts[0]["Target"], "i-0123456789abcdef0");
    assert_eq!(
        starts[0]["DocumentName"],
        "AWS-StartPortForwardingSessionToRemoteHost"
    );
    assert_eq!(starts[0]["Parameters"]["host"][0], "127.0.0.1");
    assert_eq!(
        starts[0]["Parameters"]["portNumber"][0],
        db.port.to_string()
    );
    let sessions = app.event_details("session.start").await;
    assert_eq!(
        sessions[0]["details"]["via_ssm_target"], "i-0123456789abcdef0",
        "{sessions:?}"
    );
    // Every route is closed once its session ends (TerminateSession).
    let _ = queries(&app).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            fake.calls("TerminateSession").len() >= starts.len()
        })
        .await,
        "routes left open: {} started, {} terminated",
        fake.calls("StartSession").len(),
        fake.calls("TerminateSession").len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_never_goes_in_cleartext_or_as_md5_unless_the_target_allows_it() {
    for (group, sent) in [
        ("pam_weak_md5", "as MD5"),
        ("pam_weak_password", "in cleartext"),
    ] {
        let db = ScramDb::create_in(Some(group)).await;
        // The cluster really logs this role in that way.
        stdout(&psql(&db.direct(), &db.password, &["-c", "select 1"]).await);
        let strict = target("strict", &db, r#"env = "dev""#).await;
        let lenient = target("lenient", &db, r#"env = "dev""#).await.replace(
            "connect_timeout = \"5s\"",
            "connect_timeout = \"5s\"\nallow_weak_auth = true",
        );
        assert!(lenient.contains("allow_weak_auth"));
        let app = broker(format!("{strict}{lenient}")).await;
        let bob = token(&app, "bob").await;

        let refused = psql(
            &via_broker(&app, "bob@example.test", "strict"),
            &bob,
            &["-c", "select 1"],
        )
        .await;
        assert!(!refused.status.success(), "{group}");
        let message = text(&refused);
        assert!(
            message.contains(&format!("asked for the password {sent}"))
                && message.contains("allow_weak_auth"),
            "{group}: {message}"
        );
        assert!(app.events("db.weak_auth").await.is_empty());

        let allowed = psql(
            &via_broker(&app, "bob@example.test", "lenient"),
            &bob,
            &["-c", "select current_user"],
        )
        .await;
        assert_eq!(stdout(&allowed).trim(), db.role, "{group}");
        let weak = app.events("db.weak_auth").await;
        assert_eq!(weak.len(), 1, "{group}: audited at use");
        assert_eq!(weak[0].target.as_deref(), Some("lenient"));
        assert_eq!(weak[0].actor.as_deref(), Some("bob@example.test"));
        let details = &app.event_details("db.weak_auth").await[0];
        assert_eq!(details["password_sent"], sent);
        assert_eq!(details["db_user"], db.role.as_str());
        assert!(!whole_trail(&app).await.contains(&db.password));
    }
}
