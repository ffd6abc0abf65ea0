//! SSM port routes: smux and basic port forwarding, PostgreSQL through a route, refused destinations.

use super::*;

/// A loopback TCP echo server; returns its address.
async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    address
}

/// Writes `data` and reads everything back until EOF; returns SHA-256 of both.
async fn round_trip(stream: ssm::port::Stream, data: Vec<u8>) -> ([u8; 32], [u8; 32]) {
    let sent = Sha256::digest(&data).into();
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), r.read_to_end(&mut received))
        .await
        .expect("echo timed out")
        .unwrap();
    writer.await.unwrap();
    (sent, Sha256::digest(&received).into())
}

#[tokio::test]
async fn smux_port_forwarding_echoes_10_mib_and_concurrent_streams() {
    let fake = fake().await;
    let echo = echo_server().await;
    let port = ecs::open_port(&fake.aws(), "i-0123456789abcdef0", "127.0.0.1", echo.port())
        .await
        .unwrap();
    let meta = port.meta().clone();
    assert_eq!(meta.mode, ssm::port::Mode::Mux);
    assert_eq!(meta.document, "AWS-StartPortForwardingSessionToRemoteHost");
    let start = &fake.calls("StartSession")[0];
    assert_eq!(start["Target"], "i-0123456789abcdef0");
    assert_eq!(
        start["DocumentName"],
        "AWS-StartPortForwardingSessionToRemoteHost"
    );
    assert_eq!(
        start["Parameters"]["host"],
        serde_json::json!(["127.0.0.1"])
    );
    assert_eq!(
        start["Parameters"]["portNumber"],
        serde_json::json!([echo.port().to_string()])
    );

    let big = port.connect().await.unwrap();
    let small_a = port.connect().await.unwrap();
    let small_b = port.connect().await.unwrap();
    assert_eq!((big.id(), small_a.id(), small_b.id()), (3, 5, 7));
    let (big, a, b) = tokio::join!(
        round_trip(big, payload(10 << 20, 1)),
        round_trip(small_a, payload(300_000, 2)),
        round_trip(small_b, payload(77_777, 3)),
    );
    assert_eq!(big.0, big.1, "10 MiB echo differs");
    assert_eq!(a.0, a.1);
    assert_eq!(b.0, b.1);
    let session_id = meta.session_id.clone();
    port.close().await.unwrap();
    assert_eq!(
        fake.calls("TerminateSession")[0]["SessionId"],
        session_id.as_str()
    );
    assert!(
        fake.stats(&session_id).flags.contains(&2),
        "TerminateSession flag"
    );
}

#[tokio::test]
async fn smux_port_forwarding_carries_postgresql() {
    let fake = fake().await;
    let admin = std::env::var("PAM_TEST_PG_ADMIN")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pg = url::Url::parse(&admin).unwrap();
    let port = std::sync::Arc::new(
        ecs::open_port(
            &fake.aws(),
            "ecs:prod_abc123_abc123-1234567890",
            pg.host_str().unwrap(),
            pg.port().unwrap_or(5432),
        )
        .await
        .unwrap(),
    );
    // A local listener whose every connection is a stream of the tunnel,
    // the way the PostgreSQL room will use it as an upstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let route = port.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let mut upstream = route.connect().await.unwrap();
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    let mut through = pg.clone();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(local.port())).unwrap();
    let url = through.to_string();
    let (one, two) = tokio::join!(query(&url, "SELECT 1"), query(&url, "SELECT 40 + 2"));
    assert_eq!((one, two), (1, 42));
    // And the real psql, if the machine has it.
    if let Ok(output) = tokio::process::Command::new("psql")
        .args([url.as_str(), "-XAtc", "SELECT 'psql-through-ssm'"])
        .output()
        .await
    {
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "psql-through-ssm",
            "{output:?}"
        );
    }
    port.terminator().terminate().await;
}

async fn query(url: &str, sql: &str) -> i32 {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let value: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    value
}

#[tokio::test]
async fn basic_port_forwarding_serves_one_connection_at_a_time() {
    let fake = fake().await;
    fake.set_plan(Plan {
        agent_version: "3.0.0.0".into(),
        ..Plan::default()
    });
    let echo = echo_server().await;
    let port = ecs::open_port(&fake.aws(), "i-1", "127.0.0.1", echo.port())
        .await
        .unwrap();
    assert_eq!(port.meta().mode, ssm::port::Mode::Basic);
    let session_id = port.meta().session_id.clone();
    for word in ["first", "second", "third"] {
        let mut stream = port.connect().await.unwrap();
        assert_eq!(stream.id(), 0);
        stream.write_all(word.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; word.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buffer, word.as_bytes());
        // A second connection waits for this one.
        let waiting = tokio::time::timeout(Duration::from_millis(200), port.connect()).await;
        assert!(waiting.is_err(), "basic mode has one connection at a time");
        stream.shutdown().await.unwrap();
    }
    assert!(
        crate::support::eventually(WAIT, || async {
            fake.stats(&session_id)
                .flags
                .iter()
                .filter(|&&f| f == 1)
                .count()
                == 3
        })
        .await,
        "DisconnectToPort after each connection: {:?}",
        fake.stats(&session_id).flags
    );
    port.close().await.unwrap();
}

#[tokio::test]
async fn a_refused_destination_is_reported_on_the_stream() {
    let fake = fake().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let port = ecs::open_port(&fake.aws(), "i-1", "127.0.0.1", closed.port())
        .await
        .unwrap();
    let mut stream = port.connect().await.unwrap();
    let mut buffer = [0u8; 16];
    let error = tokio::time::timeout(WAIT, stream.read(&mut buffer))
        .await
        .unwrap()
        .expect_err("the agent could not connect");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    // The tunnel itself is still usable.
    assert!(port.tunnel().ended().is_none());
    port.close().await.unwrap();
}

#[tokio::test]
async fn smux_keepalives_go_to_agents_that_want_them() {
    let fake = fake().await;
    let echo = echo_server().await;
    for (version, wants) in [("3.1.1511.0", true), ("3.1.1512.0", false)] {
        let id = format!("s-nop-{version}");
        fake.set_plan(Plan {
            agent_version: version.into(),
            properties: serde_json::json!({"portNumber": echo.port().to_string(), "type": "LocalPortForwarding"}),
            ..Plan::default()
        });
        let app = App::Port {
            target: echo.to_string(),
            mux: true,
        };
        let (url, token) = fake.create_session(&id, "i-1", app, "Port");
        let session = Session::connect(&url, &SecretString::from(token), options(&id))
            .await
            .unwrap();
        let tunnel = ssm::port::Tunnel::with_keepalive(session, Duration::from_millis(50)).unwrap();
        assert_eq!(tunnel.mode(), ssm::port::Mode::Mux);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let nops = fake.stats(&id).nops;
        assert_eq!(nops > 2, wants, "agent {version}: {nops} NOPs");
        tunnel.close().await;
        assert!(tunnel.closed().await.contains("closed"));
    }
}

#[tokio::test]
async fn a_port_route_needs_a_port_session() {
    let fake = fake().await;
    fake.set_plan(Plan {
        session_type: Some("Standard_Stream".into()),
        ..Plan::default()
    });
    let error = ecs::open_port(&fake.aws(), "i-1", "127.0.0.1", 5432)
        .await
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "the agent opened a Standard_Stream session, expected Port"
    );
    assert_eq!(
        fake.calls("TerminateSession").len(),
        1,
        "the useless session is terminated"
    );
}
