//! ECS Exec shells: the codec's golden vector, commands, PTY sizes, close and abandoned shells.

use super::*;

#[test]
fn the_fake_agent_codec_matches_the_golden_vector_and_ours() {
    const GOLDEN: &str = concat!(
        "00000074",
        "696e7075745f73747265616d5f64617461202020202020202020202020202020",
        "00000001",
        "0000015e0baa7884",
        "0000000000000007",
        "0000000000000000",
        "a508b5f073f31b16dd01e56bff48483e",
        "1d887ce0f8672e4914d9000e801cd74ecd805dd9366c0bc42dc16adc0197dc2f",
        "00000001",
        "00000003",
        "6c730d",
    );
    let id = uuid::Uuid::parse_str("dd01e56b-ff48-483e-a508-b5f073f31b16").unwrap();
    let frame = wire::encode("input_stream_data", 7, 0, 1, id, 1503434274948, b"ls\r");
    assert_eq!(hex::encode(&frame), GOLDEN);
    // Each side reads the other's frames.
    let ours = ssm::codec::decode(bytes::Bytes::from(frame)).unwrap();
    ours.validate().unwrap();
    assert_eq!(ours.message_id, id);
    let header = ssm::codec::Header {
        message_type: ssm::codec::MessageType::OutputStreamData,
        created_date: 1,
        sequence_number: 42,
        flags: 0,
        message_id: id,
        payload_type: ssm::codec::PayloadType::StdErr,
    };
    let theirs = wire::decode(&ssm::codec::encode(&header, &[b"err"])).unwrap();
    assert!(theirs.digest_ok);
    assert_eq!(
        (
            theirs.message_type.as_str(),
            theirs.sequence,
            theirs.payload_type,
            theirs.id
        ),
        ("output_stream_data", 42, 11, id)
    );
    let ack = wire::decode(&ssm::codec::encode_ack(&ours)).unwrap();
    assert_eq!((ack.sequence, ack.flags, ack.payload_type), (0, 3, 0));
}

#[tokio::test]
async fn an_interactive_shell_runs_commands_and_reports_the_exit_status() {
    let fake = fake().await;
    let aws = fake.aws();
    let mut shell = ecs::open(&target(), &aws, None, (80, 24)).await.unwrap();

    let meta = shell.meta().clone();
    assert_eq!(meta.cluster, "prod");
    assert_eq!(
        meta.task_arn,
        "arn:aws:ecs:us-east-1:123456789012:task/prod/abc123"
    );
    assert_eq!(meta.container, "app");
    assert_eq!(meta.container_runtime_id, "abc123-1234567890");
    assert_eq!(meta.ssm_target, "ecs:prod_abc123_abc123-1234567890");
    assert_eq!(meta.command, "/bin/sh");
    assert!(meta.session_id.starts_with("ecs-execute-command-"));
    assert_eq!(meta.agent_version.as_deref(), Some("3.3.987.0"));
    assert_eq!(meta.session_type, "InteractiveCommands");
    assert_eq!(meta.kms_key_id, None);

    let exec = fake.calls("ExecuteCommand");
    assert_eq!(exec.len(), 1);
    assert_eq!(exec[0]["cluster"], "prod");
    assert_eq!(exec[0]["task"], meta.task_arn.as_str());
    assert_eq!(exec[0]["container"], "app");
    assert_eq!(exec[0]["command"], "/bin/sh");
    assert_eq!(exec[0]["interactive"], true);
    assert_eq!(fake.calls("ListTasks")[0]["serviceName"], "orders-api");
    assert_eq!(fake.calls("ListTasks")[0]["desiredStatus"], "RUNNING");

    shell
        .send_input(b"echo hi-$((40+2)); exit 3\r")
        .await
        .unwrap();
    let (output, exit, end) = drain(&mut shell).await;
    assert!(output.contains("hi-42"), "{output:?}");
    assert_eq!(exit, Some(3));
    assert_eq!(end, "closed: None");

    let stats = fake.stats(&meta.session_id);
    assert_eq!(stats.exit_status, Some(3));
    assert_eq!(
        stats.bad_acks, 0,
        "acks carry seq 0, flags 3, payload type 0"
    );
    assert_eq!(stats.bad_digests, 0);
    // The handshake response is the plugin's.
    let response = stats.handshake_response.unwrap();
    assert_eq!(response["ClientVersion"], ssm::CLIENT_VERSION);
    assert_eq!(
        response["ProcessedClientActions"][0]["ActionType"],
        "SessionType"
    );
    assert_eq!(response["ProcessedClientActions"][0]["ActionStatus"], 1);
    assert_eq!(response["Errors"], serde_json::Value::Null);
    let open = &stats.open_inputs[0];
    assert_eq!(open["MessageSchemaVersion"], "1.0");
    assert_eq!(open["ClientVersion"], ssm::CLIENT_VERSION);
    assert_eq!(
        stats.sizes[0],
        (80, 24),
        "the size goes out right after the handshake"
    );
}

#[tokio::test]
async fn the_pty_sees_the_initial_size_and_every_resize() {
    let fake = fake().await;
    let mut shell = ecs::open(&target(), &fake.aws(), None, (100, 30))
        .await
        .unwrap();
    shell.send_input(b"stty size\r").await.unwrap();
    read_until(&mut shell, "30 100").await;
    shell.resize(132, 43).await.unwrap();
    shell
        .send_input(b"stty size; echo end-$((2+3))\r")
        .await
        .unwrap();
    let output = read_until(&mut shell, "end-5").await;
    assert!(output.contains("43 132"), "{output:?}");
    let session_id = shell.meta().session_id.clone();
    shell.close().await.unwrap();
    assert_eq!(fake.stats(&session_id).sizes, vec![(100, 30), (132, 43)]);
}

#[tokio::test]
async fn a_command_override_and_the_targets_command_are_run() {
    let fake = fake().await;
    let mut with_command = target();
    with_command.command = Some("/bin/sh -i".into());
    let shell = ecs::open(&with_command, &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    assert_eq!(shell.meta().command, "/bin/sh -i");
    shell.close().await.unwrap();
    let shell = ecs::open(&with_command, &fake.aws(), Some("/bin/sh"), (80, 24))
        .await
        .unwrap();
    assert_eq!(shell.meta().command, "/bin/sh");
    shell.close().await.unwrap();
    let commands: Vec<_> = fake
        .calls("ExecuteCommand")
        .iter()
        .map(|c| c["command"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(commands, ["/bin/sh -i", "/bin/sh"]);
}

#[tokio::test]
async fn close_terminates_the_session_and_channel_closed_carries_its_message() {
    let fake = fake().await;
    let shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    let session_id = shell.meta().session_id.clone();
    shell.close().await.unwrap();
    assert_eq!(
        fake.calls("TerminateSession")[0]["SessionId"],
        session_id.as_str()
    );
    assert!(
        crate::support::eventually(WAIT, || async { fake.stats(&session_id).terminated }).await
    );

    // The service ending the session: channel_closed with its text.
    fake.set_plan(Plan {
        closed_output: Some("Session terminated by admin".into()),
        ..Plan::default()
    });
    let mut shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    let terminator = shell.terminator();
    let session_id = terminator.session_id().to_owned();
    // Another task (a kill switch) ends it.
    fake.session(&session_id).terminate.cancel();
    let (_, _, end) = drain(&mut shell).await;
    assert_eq!(end, "closed: Some(\"Session terminated by admin\")");
    assert!(shell.recv().await.is_none(), "nothing after the last event");
}

#[tokio::test]
async fn an_abandoned_shell_is_terminated() {
    let fake = fake().await;
    let shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    let session_id = shell.meta().session_id.clone();
    let (session, terminator) = shell.into_session();
    drop(session);
    assert!(
        fake.calls("TerminateSession").is_empty(),
        "the terminator still owns it"
    );
    drop(terminator);
    assert!(
        crate::support::eventually(WAIT, || async { fake.calls("TerminateSession").len() == 1 })
            .await
    );
    assert_eq!(
        fake.calls("TerminateSession")[0]["SessionId"],
        session_id.as_str()
    );
    // Closed sessions are not terminated twice.
    let shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    let terminator = shell.terminator();
    shell.close().await.unwrap();
    terminator.terminate().await;
    drop(terminator);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.calls("TerminateSession").len(), 2);
}
