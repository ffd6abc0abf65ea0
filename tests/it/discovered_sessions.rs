//! Sessions to discovered targets, end to end with the real OpenSSH client:
//! an EC2 instance tagged in moto (set up with the AWS CLI) and managed by
//! SSM is reached through an SSM port route (the fake control plane and
//! agent in tests/it/support/fake_aws, bridging to a real sshd) with its
//! host key pinned from the `pam:host_key` tag; a wrong pin is refused and
//! audited, a missing one keeps the instance out. An ECS service tagged in
//! moto is reached through ECS Exec (the fake agent runs a real `sh`).

use std::time::Duration;

use crate::discovery::{env, listed, readyz, tags_json, unique};
use crate::ssh::{World, write_identity};
use crate::support::aws::{aws_cli, moto_url};
use crate::support::fake_aws::{FakeAws, Task};
use crate::support::peers::{SSH_LOGIN, Sshd};
use crate::support::{Options, TestApp, eventually};

/// A host key no sshd here has.
const IMPOSTOR: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJpueAFIo1aoPRJMKM6y3ugcWby1d5dPpCO+wc3jCHIN";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A broker with `[[discovery]]` sources in `toml`, bob logged in, sshd
/// trusting the broker's target CA.
async fn world(sshd: Sshd, toml: String, env: std::collections::HashMap<String, String>) -> World {
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml,
        env,
        ..Options::default()
    })
    .await;
    let ca = app
        .client
        .get(app.url("/api/v1/ca/ssh_target.pub"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sshd.trust_ca(&ca);
    let login = app.sso_login("bob").await.expect("login");
    let files = tempfile::tempdir().unwrap();
    write_identity(files.path(), &login);
    World {
        app,
        sshd,
        login,
        files,
    }
}

/// Waits until bob sees every `(name, kind)` of `want`.
async fn wait_listed(w: &World, want: &[(String, &str)]) {
    let token = w.login.response.token.clone();
    assert!(
        eventually(Duration::from_secs(30), || async {
            let got = listed(&w.app, &token).await;
            want.iter()
                .all(|(n, k)| got.contains(&(n.clone(), (*k).to_owned())))
        })
        .await,
        "{:?}\n{}",
        listed(&w.app, &token).await,
        readyz(&w.app).await
    );
}

/// Runs an instance in moto with `tags`; its id.
fn run_instance(tags: &[(&str, &str)]) -> String {
    let image = aws_cli(&["ec2", "describe-images", "--owners", "amazon"])["Images"][0]["ImageId"]
        .as_str()
        .unwrap()
        .to_owned();
    aws_cli(&[
        "ec2",
        "run-instances",
        "--image-id",
        &image,
        "--count",
        "1",
        "--instance-type",
        "t3.micro",
        "--tag-specifications",
        &format!(
            r#"[{{"ResourceType":"instance","Tags":{}}}]"#,
            tags_json(tags)
        ),
    ])["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_reaches_a_discovered_instance_through_an_ssm_route_with_the_tag_pinned_host_key() {
    let id = unique();
    let tag = format!("pam:target-{id}");
    let sshd = Sshd::start().await;
    let port = sshd.port.to_string();
    let (good, wrong, unpinned) = (
        format!("box-{id}"),
        format!("wrongkey-{id}"),
        format!("unpinned-{id}"),
    );
    let common = [
        ("pam:port", port.as_str()),
        ("pam:login", SSH_LOGIN),
        ("pam:env", "dev"),
    ];
    let with = |name: &str, key: Option<&str>| {
        let mut tags = vec![(tag.as_str(), name)];
        tags.extend(common);
        if let Some(key) = key {
            tags.push(("pam:host_key", key));
        }
        run_instance(&tags)
    };
    let good_id = with(&good, Some(&sshd.host_key));
    let wrong_id = with(&wrong, Some(IMPOSTOR));
    let unpinned_id = with(&unpinned, None);
    let fake = FakeAws::start(Some(moto_url())).await;
    for instance in [&good_id, &wrong_id, &unpinned_id] {
        fake.add_managed_instance(instance, "Online");
    }
    let w = world(
        sshd,
        format!("[[discovery]]\nsource = \"ec2-ssm\"\ntag = \"{tag}\"\n"),
        env(&[("AWS_ENDPOINT_URL_SSM", &fake.url)]),
    )
    .await;
    wait_listed(&w, &[(good.clone(), "ssh"), (wrong.clone(), "ssh")]).await;

    // Without a pinned host key the instance is no target, and says why.
    let token = w.login.response.token.clone();
    assert!(
        !listed(&w.app, &token)
            .await
            .iter()
            .any(|(n, _)| n == &unpinned)
    );
    let refused: Vec<_> = w
        .app
        .event_details("target.discovered")
        .await
        .into_iter()
        .filter(|d| d["resource"] == unpinned_id.as_str())
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("pam:host_key pins it"),
        "{refused:?}"
    );

    // The real OpenSSH client, through the broker, over the SSM route, to sshd.
    let out = w
        .ssh(&good)
        .arg("echo through-$((6*7)); whoami")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "stdout {:?} stderr {:?}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        w.sshd.log()
    );
    assert_eq!(text(&out.stdout), format!("through-42\n{SSH_LOGIN}\n"));
    let starts = fake.calls("StartSession");
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["Target"], good_id.as_str());
    assert_eq!(
        starts[0]["DocumentName"],
        "AWS-StartPortForwardingSessionToRemoteHost"
    );
    assert_eq!(starts[0]["Parameters"]["portNumber"][0], port.as_str());
    let start = &w.app.events("session.start").await[0];
    assert_eq!(start.target.as_deref(), Some(good.as_str()));

    // A pin that does not match what the instance offers: refused, clearly,
    // audited, and nothing ran.
    let out = w
        .ssh(&wrong)
        .arg("touch /tmp/never")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not match the pinned key"),
        "{}",
        text(&out.stderr)
    );
    let mismatch: Vec<_> = w
        .app
        .events("ssh.host_key_mismatch")
        .await
        .into_iter()
        .filter(|e| e.target.as_deref() == Some(wrong.as_str()))
        .collect();
    assert_eq!(mismatch.len(), 1);
    let details: serde_json::Value = serde_json::from_str(&mismatch[0].details).unwrap();
    assert_eq!(details["pinned"], IMPOSTOR);
    assert!(details["offered"].as_str().unwrap().starts_with("SHA256:"));
    assert_eq!(fake.calls("StartSession")[1]["Target"], wrong_id.as_str());
    // Both routes are closed once their sessions end.
    assert!(
        eventually(Duration::from_secs(10), || async {
            fake.calls("TerminateSession").len() >= 2
        })
        .await,
        "routes left open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_exec_reaches_a_discovered_service() {
    let id = unique();
    let tag = format!("pam:target-{id}");
    let cluster = format!("e2e-{id}");
    let name = format!("orders-{id}");
    aws_cli(&["ecs", "create-cluster", "--cluster-name", &cluster]);
    aws_cli(&[
        "ecs",
        "register-task-definition",
        "--family",
        &cluster,
        "--container-definitions",
        r#"[{"name":"app","image":"nginx","memory":128}]"#,
    ]);
    let service = |service: &str, tags: &[(&str, &str)]| {
        let tags: Vec<_> = tags
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        aws_cli(&[
            "ecs",
            "create-service",
            "--cluster",
            &cluster,
            "--service-name",
            service,
            "--task-definition",
            &cluster,
            "--desired-count",
            "1",
            "--tags",
            &serde_json::Value::from(tags).to_string(),
        ]);
    };
    service("orders-api", &[(&tag, &name), ("pam:env", "dev")]);
    // Hostile: a control byte in a policy tag refuses the whole service.
    service(
        "hostile",
        &[
            (&tag, &format!("hostile-{id}")),
            ("pam:env", "dev\u{7}\u{1b}[2J"),
        ],
    );
    let fake = FakeAws::start(Some(moto_url())).await;
    fake.add_task(Task::running(&cluster, "orders-api", &id, "app"));
    let w = world(
        Sshd::start().await,
        format!(
            "[[discovery]]\nsource = \"ecs-services\"\ntag = \"{tag}\"\nclusters = [\"{cluster}\"]\n"
        ),
        env(&[
            ("AWS_ENDPOINT_URL_ECS", &fake.url),
            ("AWS_ENDPOINT_URL_SSM", &fake.url),
        ]),
    )
    .await;
    wait_listed(&w, &[(name.clone(), "ecs")]).await;
    let refused: Vec<_> = w
        .app
        .event_details("target.discovered")
        .await
        .into_iter()
        .filter(|d| {
            d["resource"]
                .as_str()
                .is_some_and(|r| r.ends_with("/hostile"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let why = refused[0]["error"].as_str().unwrap();
    assert!(why.contains("control characters"), "{why}");
    assert!(!why.contains('\u{7}') && !why.contains('\u{1b}'), "{why:?}");

    let script = "echo in-container-$((40+2)); exit 5";
    let out = w.ssh(&name).arg(script).output().await.unwrap();
    assert!(
        text(&out.stdout).contains("in-container-42"),
        "stdout {:?} stderr {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let exec = fake.calls("ExecuteCommand");
    assert_eq!(exec.len(), 1);
    assert_eq!(exec[0]["cluster"], cluster.as_str());
    assert_eq!(exec[0]["container"], "app");
    assert_eq!(exec[0]["command"], script);
    let start = &w.app.events("session.start").await[0];
    assert_eq!(start.target.as_deref(), Some(name.as_str()));
    let details: serde_json::Value = serde_json::from_str(&start.details).unwrap();
    assert_eq!(details["kind"], "ecs");
    assert_eq!(details["details"]["cluster"], cluster.as_str());
}
