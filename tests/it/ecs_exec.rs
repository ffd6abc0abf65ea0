//! ECS Exec shells and SSM port routes end to end: `pam::ecs` and
//! `pam::ssm` against the fake control plane and the protocol-faithful
//! agent in `support::fake_aws` (a real `/bin/sh` in a PTY, real TCP
//! services, moto's KMS), including lost, duplicated, reordered and
//! corrupted messages and dropped sockets.

use std::time::Duration;

use pam::config::EcsTarget;
use pam::ecs;
use pam::ssm::{self, Event, Options, Session};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::fake_aws::{self, App, FakeAws, Faults, Kms, Plan, Task, wire};

const WAIT: Duration = Duration::from_secs(30);

async fn fake() -> FakeAws {
    crate::support::init_logging();
    let fake = FakeAws::start(std::env::var("PAM_TEST_MOTO_URL").ok()).await;
    fake.add_task(Task::running("prod", "orders-api", "abc123", "app"));
    fake
}

fn target() -> EcsTarget {
    EcsTarget {
        cluster: "prod".into(),
        service: Some("orders-api".into()),
        task: None,
        container: "app".into(),
        command: None,
    }
}

/// Anything that yields session events.
trait Events {
    async fn next_event(&mut self) -> Option<Event>;
}

impl Events for ecs::Shell {
    async fn next_event(&mut self) -> Option<Event> {
        self.recv().await
    }
}

impl Events for Session {
    async fn next_event(&mut self) -> Option<Event> {
        self.recv().await
    }
}

/// Reads output until it contains `needle`; returns all of it.
async fn read_until(events: &mut impl Events, needle: &str) -> String {
    let mut seen = Vec::new();
    let result = tokio::time::timeout(WAIT, async {
        loop {
            match events.next_event().await {
                Some(Event::Output(bytes)) | Some(Event::StdErr(bytes)) => {
                    seen.extend_from_slice(&bytes);
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        return;
                    }
                }
                Some(Event::ExitCode(_)) | Some(Event::Flag(_)) => {}
                other => panic!(
                    "session ended before {needle:?}: {other:?}; output so far: {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "timed out waiting for {needle:?}; output so far: {:?}",
        String::from_utf8_lossy(&seen)
    );
    String::from_utf8_lossy(&seen).into_owned()
}

/// Exactly `len` output bytes.
async fn read_exactly(events: &mut impl Events, len: usize) -> Vec<u8> {
    let mut seen = Vec::with_capacity(len);
    tokio::time::timeout(WAIT, async {
        while seen.len() < len {
            match events.next_event().await {
                Some(Event::Output(bytes)) => seen.extend_from_slice(&bytes),
                other => panic!("unexpected {other:?} after {} bytes", seen.len()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {} of {len} bytes", seen.len()));
    assert_eq!(seen.len(), len, "more output than expected");
    seen
}

/// Everything up to the end: (output, exit code, how it ended).
async fn drain(events: &mut impl Events) -> (String, Option<i32>, String) {
    let mut output = Vec::new();
    let mut exit = None;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match events.next_event().await {
                Some(Event::Output(bytes)) | Some(Event::StdErr(bytes)) => {
                    output.extend_from_slice(&bytes)
                }
                Some(Event::ExitCode(code)) => exit = Some(code),
                Some(Event::Flag(_)) => {}
                Some(Event::Closed(reason)) => return format!("closed: {reason:?}"),
                Some(Event::Failed(e)) => return format!("failed: {e}"),
                None => return "none".to_owned(),
            }
        }
    })
    .await
    .expect("the session did not end");
    (String::from_utf8_lossy(&output).into_owned(), exit, end)
}

fn options(session_id: &str) -> Options {
    let mut options = Options::new(session_id, "i-0123456789abcdef0");
    options.handshake_timeout = Duration::from_secs(10);
    options
}

/// A session on the fake agent without the control plane.
async fn echo_session(
    fake: &FakeAws,
    id: &str,
    plan: Plan,
    tune: impl FnOnce(&mut Options),
) -> Session {
    fake.set_plan(plan);
    let (url, token) = fake.create_session(id, "i-0123456789abcdef0", App::Echo, "Standard_Stream");
    let mut options = options(id);
    tune(&mut options);
    Session::connect(&url, &SecretString::from(token), options)
        .await
        .expect("connecting to the fake agent")
}

/// A deterministic pseudo-random payload.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

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

#[tokio::test]
async fn a_kms_encrypted_session_works_end_to_end() {
    let moto = crate::support::peers::required_env("PAM_TEST_MOTO_URL");
    let fake = fake().await;
    let kms = Kms::moto(&moto).await;
    let key_id = kms.key_id.clone();
    fake.set_plan(Plan {
        kms: Some(kms),
        ..Plan::default()
    });
    let mut shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    assert_eq!(shell.meta().kms_key_id.as_deref(), Some(key_id.as_str()));
    shell
        .send_input(b"echo secret-$((6*7)); exit 5\r")
        .await
        .unwrap();
    let (output, exit, _) = drain(&mut shell).await;
    assert!(output.contains("secret-42"), "{output:?}");
    assert_eq!(exit, Some(5), "the exit code is decrypted too");

    let stats = fake.stats(&fake.last_session().id);
    assert!(
        stats.encrypted,
        "the challenge was answered: {:?}",
        stats.kms_error
    );
    assert!(stats.encrypted_inputs > 0);
    assert_eq!(stats.kms_error, None);
    let actions = &stats.handshake_response.unwrap()["ProcessedClientActions"];
    let kms_action = actions
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ActionType"] == "KMSEncryption")
        .unwrap();
    assert_eq!(kms_action["ActionStatus"], 1);
    assert!(kms_action["ActionResult"]["KMSCipherTextKey"].is_string());
}

#[tokio::test]
async fn encryption_without_kms_access_is_refused() {
    let moto = crate::support::peers::required_env("PAM_TEST_MOTO_URL");
    let fake = fake().await;
    fake.set_plan(Plan {
        kms: Some(Kms::moto(&moto).await),
        ..Plan::default()
    });
    let (url, token) = fake.create_session("s-nokms", "i-1", App::Echo, "Standard_Stream");
    let error = Session::connect(&url, &SecretString::from(token), options("s-nokms"))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, ssm::Error::Encryption(_)), "{error}");
    assert!(
        crate::support::eventually(WAIT, || async {
            fake.stats("s-nokms").handshake_response.is_some()
        })
        .await
    );
    let response = fake.stats("s-nokms").handshake_response.unwrap();
    let kms_action = &response["ProcessedClientActions"][1];
    assert_eq!(kms_action["ActionType"], "KMSEncryption");
    assert_eq!(kms_action["ActionStatus"], 2);
}

#[tokio::test]
async fn unusable_ecs_targets_fail_with_a_clear_reason() {
    let fake = fake().await;
    let aws = fake.aws();
    let check = |target: EcsTarget, expect: &'static str| {
        let aws = aws.clone();
        async move {
            let error = ecs::open(&target, &aws, None, (80, 24))
                .await
                .err()
                .unwrap();
            assert_eq!(error.to_string(), expect);
        }
    };
    let mut other_service = target();
    other_service.service = Some("payments".into());
    check(
        other_service,
        "ECS service payments in cluster prod has no running task",
    )
    .await;
    let mut other_container = target();
    other_container.container = "sidecar".into();
    check(
        other_container,
        "task arn:aws:ecs:us-east-1:123456789012:task/prod/abc123: no container named sidecar (it has app)",
    )
    .await;
    let mut no_exec = Task::running("prod", "legacy", "old1", "app");
    no_exec.enable_execute_command = false;
    fake.add_task(no_exec);
    let mut legacy = target();
    legacy.service = Some("legacy".into());
    check(
        legacy,
        "task arn:aws:ecs:us-east-1:123456789012:task/prod/old1: ECS Exec is not enabled on the task (enableExecuteCommand)",
    )
    .await;
    // A task named explicitly that ECS does not know.
    let mut gone = target();
    gone.service = None;
    gone.task = Some("deadbeef".into());
    check(
        gone,
        "ECS service deadbeef in cluster prod has no running task",
    )
    .await;
    assert!(fake.calls("ExecuteCommand").is_empty());
}

#[tokio::test]
async fn the_newest_usable_task_is_chosen() {
    let fake = fake().await;
    let mut newer = Task::running("prod", "orders-api", "new456", "app");
    newer.started_at = 1_800_000_000.0;
    fake.add_task(newer);
    let mut newest_but_stopped_container = Task::running("prod", "orders-api", "bad789", "app");
    newest_but_stopped_container.started_at = 1_900_000_000.0;
    newest_but_stopped_container.containers[0].1 = "STOPPED".into();
    fake.add_task(newest_but_stopped_container);
    let shell = ecs::open(&target(), &fake.aws(), None, (80, 24))
        .await
        .unwrap();
    assert!(shell.meta().task_arn.ends_with("/new456"));
    shell.close().await.unwrap();
}

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
