//! Lost, duplicated, reordered and corrupted messages, dropped sockets, acks, keepalives and handshake failures.

use super::*;

#[tokio::test]
async fn lost_duplicated_reordered_and_corrupted_messages_are_recovered() {
    let fake = fake().await;
    let plan = Plan {
        faults: Faults {
            drop_every: 7,
            duplicate_every: 5,
            reorder_every: 4,
            bad_digest_every: 11,
            drop_acks_every: 6,
            ..Faults::default()
        },
        ..Plan::default()
    };
    let mut session = echo_session(&fake, "s-faults", plan, |_| {}).await;
    // Both directions: every input chunk comes back, in order, exactly once.
    let data = payload(200 * 1024, 7);
    let writer = session.input().clone();
    let to_send = data.clone();
    let sending = tokio::spawn(async move {
        for chunk in to_send.chunks(700) {
            writer.send_input(chunk).await.unwrap();
        }
    });
    let echoed = read_exactly(&mut session, data.len()).await;
    sending.await.unwrap();
    assert!(echoed == data, "echo differs from what was sent");

    let stats = fake.stats("s-faults");
    assert!(stats.dropped > 10, "{stats:?}");
    assert!(stats.duplicated > 10, "{stats:?}");
    assert!(stats.reordered > 10, "{stats:?}");
    assert!(stats.corrupted > 10, "{stats:?}");
    assert!(stats.acks_dropped > 10, "{stats:?}");
    // Unacknowledged input was resent, and the agent saw those copies.
    assert!(stats.duplicates >= stats.acks_dropped / 2, "{stats:?}");
    assert_eq!(stats.bad_digests, 0);
    assert!(stats.input.0 == data, "the agent got different input");
}

#[tokio::test]
async fn corrupted_output_is_never_delivered() {
    let fake = fake().await;
    let plan = Plan {
        faults: Faults {
            bad_digest_every: 3,
            ..Faults::default()
        },
        ..Plan::default()
    };
    let mut session = echo_session(&fake, "s-digest", plan, |_| {}).await;
    let total = 1 << 20;
    session
        .send_input(format!("\0bulk:{total}").as_bytes())
        .await
        .unwrap();
    let output = read_exactly(&mut session, total).await;
    assert!(
        output
            .iter()
            .enumerate()
            .all(|(i, &b)| b == fake_aws::apps::bulk_byte(i)),
        "output differs from the pattern"
    );
    assert!(fake.stats("s-digest").corrupted > 300);
}

#[tokio::test]
async fn a_dropped_socket_is_resumed_with_the_sequence_state_kept() {
    let fake = fake().await;
    let plan = Plan {
        faults: Faults {
            kill_socket_after: 40,
            kill_socket_times: 3,
            ..Faults::default()
        },
        app: Some(App::Echo),
        ..Plan::default()
    };
    fake.set_plan(plan);
    fake.fail_resumes(1);
    let shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    let session_id = shell.meta().session_id.clone();
    let (mut session, _terminator) = shell.into_session();
    // Ping-pong, so the kills land while data is flowing both ways.
    let data = payload(200 * 1000, 3);
    for chunk in data.chunks(1000) {
        session.send_input(chunk).await.unwrap();
        let echoed = read_exactly(&mut session, chunk.len()).await;
        assert!(echoed == chunk, "echo differs after reconnects");
    }

    let stats = fake.stats(&session_id);
    assert_eq!(stats.kills, 3);
    assert_eq!(stats.connections, 4, "{stats:?}");
    // One throttled ResumeSession was retried.
    let resumes = fake.calls("ResumeSession");
    assert_eq!(resumes.len(), 4);
    assert!(
        resumes
            .iter()
            .all(|r| r["SessionId"] == session_id.as_str())
    );
    // Every connection used the token of its own ResumeSession.
    let tokens: std::collections::HashSet<_> = stats
        .open_inputs
        .iter()
        .map(|o| o["TokenValue"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens.len(), 4);
    assert_eq!(stats.rejected_tokens, 0);
    assert!(stats.input.0 == data, "the agent got different input");
}

#[tokio::test]
async fn an_expired_session_ends_with_a_clear_failure() {
    let fake = fake().await;
    fake.set_plan(Plan {
        faults: Faults {
            kill_socket_after: 2,
            kill_socket_times: 1,
            ..Faults::default()
        },
        app: Some(App::Echo),
        ..Plan::default()
    });
    fake.expire_on_resume(true);
    let mut shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    shell.send_input(b"one").await.unwrap();
    shell.send_input(b"two").await.unwrap();
    let (_, _, end) = drain(&mut shell).await;
    assert_eq!(
        end,
        "failed: the session expired while the data channel was lost"
    );
}

#[tokio::test]
async fn without_resume_a_lost_socket_fails_the_session() {
    let fake = fake().await;
    let plan = Plan {
        faults: Faults {
            kill_socket_after: 1,
            kill_socket_times: 1,
            ..Faults::default()
        },
        ..Plan::default()
    };
    let mut session = echo_session(&fake, "s-noresume", plan, |_| {}).await;
    session.send_input(b"x").await.unwrap();
    let (_, _, end) = drain(&mut session).await;
    assert!(
        end.starts_with("failed: the data channel connection was lost"),
        "{end}"
    );
}

#[tokio::test]
async fn a_strict_agent_with_delayed_acks_gets_each_message_once() {
    // The real agent drops duplicates without acking them; with acks slower
    // than the initial RTO, the client resends, and the late original ack
    // must still clear the message.
    let fake = fake().await;
    let plan = Plan {
        strict_duplicates: true,
        faults: Faults {
            ack_delay: Duration::from_millis(400),
            ..Faults::default()
        },
        ..Plan::default()
    };
    let mut session = echo_session(&fake, "s-strict", plan, |_| {}).await;
    for word in ["alpha", "beta", "gamma"] {
        session.send_input(word.as_bytes()).await.unwrap();
        read_until(&mut session, word).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = fake.stats("s-strict");
    assert!(stats.duplicates > 0, "the client retransmitted: {stats:?}");
    assert_eq!(stats.input.0, b"alphabetagamma");
    session.send_input(b"delta").await.unwrap();
    read_until(&mut session, "delta").await;
}

#[tokio::test]
async fn unacknowledged_messages_fail_the_session_after_the_resend_bound() {
    let fake = fake().await;
    let plan = Plan {
        strict_duplicates: true,
        faults: Faults {
            drop_acks_every: 1,
            ..Faults::default()
        },
        ..Plan::default()
    };
    let mut session = echo_session(&fake, "s-bound", plan, |o| o.resend_max_attempts = 4).await;
    session.send_input(b"never acked").await.unwrap();
    let (output, _, end) = drain(&mut session).await;
    assert!(output.contains("never acked"), "the agent still got it");
    assert!(
        end.contains("not acknowledged after 4 retransmissions"),
        "{end}"
    );
    assert_eq!(fake.stats("s-bound").duplicates, 4);
}

#[tokio::test]
async fn close_works_while_writers_wait_for_acks() {
    let fake = fake().await;
    let plan = Plan {
        strict_duplicates: true,
        faults: Faults {
            drop_acks_every: 1,
            ..Faults::default()
        },
        ..Plan::default()
    };
    let mut session = echo_session(&fake, "s-close", plan, |o| o.max_unacked = 4).await;
    let input = session.input().clone();
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            if input.send_input(b"x").await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the writer waits for acks");
    session.close().await;
    let (_, _, end) = drain(&mut session).await;
    assert_eq!(end, "closed: None");
    tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stalled_reader_loses_nothing() {
    let fake = fake().await;
    let mut session = echo_session(&fake, "s-stall", Plan::default(), |_| {}).await;
    let total = 3 << 20;
    session
        .send_input(format!("\0bulk:{total}").as_bytes())
        .await
        .unwrap();
    // Nobody reads for a while: the channel stops reading the socket.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let output = read_exactly(&mut session, total).await;
    assert!(
        output
            .iter()
            .enumerate()
            .all(|(i, &b)| b == fake_aws::apps::bulk_byte(i))
    );
}

#[tokio::test]
async fn keepalive_pings_reach_the_agent() {
    let fake = fake().await;
    let session = echo_session(&fake, "s-ping", Plan::default(), |o| {
        o.keepalive = Duration::from_millis(100)
    })
    .await;
    assert!(crate::support::eventually(WAIT, || async { fake.stats("s-ping").pings >= 3 }).await);
    drop(session);
}

#[tokio::test]
async fn a_wrong_token_is_rejected() {
    let fake = fake().await;
    let (url, _token) = fake.create_session("s-token", "i-1", App::Echo, "Standard_Stream");
    let error = Session::connect(
        &url,
        &SecretString::from("tok-forged".to_owned()),
        options("s-token"),
    )
    .await
    .err()
    .expect("a forged token is refused");
    assert!(matches!(error, ssm::Error::Disconnected(_)), "{error}");
    assert_eq!(fake.stats("s-token").rejected_tokens, 1);
    assert_eq!(fake.stats("s-token").connections, 0);
}

#[tokio::test]
async fn an_unsupported_session_type_fails_the_handshake() {
    let fake = fake().await;
    fake.set_plan(Plan {
        session_type: Some("Teleport".into()),
        ..Plan::default()
    });
    let (url, token) = fake.create_session("s-type", "i-1", App::Echo, "Teleport");
    let error = Session::connect(&url, &SecretString::from(token), options("s-type"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "the agent asked for session type \"Teleport\", which is not supported"
    );
    assert!(
        crate::support::eventually(WAIT, || async {
            fake.stats("s-type").handshake_response.is_some()
        })
        .await
    );
    let response = fake.stats("s-type").handshake_response.unwrap();
    assert_eq!(response["ProcessedClientActions"][0]["ActionStatus"], 2);
    assert!(response["Errors"][0].as_str().unwrap().contains("Teleport"));
}

#[tokio::test]
async fn an_agent_older_than_the_handshake_gets_a_shell() {
    let fake = fake().await;
    fake.set_plan(Plan {
        handshake: false,
        ..Plan::default()
    });
    let mut shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    assert_eq!(shell.meta().agent_version, None);
    assert_eq!(shell.meta().session_type, "Standard_Stream");
    shell.send_input(b"echo legacy-ok\r").await.unwrap();
    read_until(&mut shell, "legacy-ok\r\n").await;
    shell.close().await.unwrap();
}

#[tokio::test]
async fn a_customer_message_is_passed_on() {
    let fake = fake().await;
    fake.set_plan(Plan {
        customer_message: "Sessions are logged.".into(),
        ..Plan::default()
    });
    let shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    assert_eq!(
        shell.info().customer_message.as_deref(),
        Some("Sessions are logged.")
    );
    shell.close().await.unwrap();
}
