//! KMS-encrypted sessions and how ECS targets and tasks are chosen or refused.

use super::*;

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
