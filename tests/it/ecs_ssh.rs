//! ECS containers as SSH targets: the real OpenSSH client through the
//! broker's SSH room, which opens ECS Exec against the fake control plane
//! and protocol-faithful agent (`support::fake_aws`, a real `sh -c` in a
//! PTY, as the SSM agent runs it). Policy, audit and recording are the
//! same as for hosts.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::ssh::write_identity;
use crate::support::fake_aws::{FakeAws, Task};
use crate::support::{Login, Options, TestApp, eventually};

struct World {
    app: TestApp,
    fake: FakeAws,
    files: tempfile::TempDir,
    _login: Login,
}

const TARGETS: &str = r#"
[[target]]
name = "orders-dev"
kind = "ecs"
cluster = "dev"
service = "orders-api"
container = "app"
tags = { env = "dev" }

[[target]]
name = "orders-prod"
kind = "ecs"
cluster = "prod"
service = "orders-api"
container = "app"
tags = { env = "prod" }

[[target]]
name = "scaled-to-zero"
kind = "ecs"
cluster = "dev"
service = "nothing-running"
container = "app"
tags = { env = "dev" }
"#;

async fn world(user: &str) -> World {
    let fake = FakeAws::start(None).await;
    fake.add_task(Task::running("dev", "orders-api", "abc123", "app"));
    fake.add_task(Task::running("prod", "orders-api", "def456", "app"));
    let env = [
        ("AWS_ENDPOINT_URL_ECS", fake.url.clone()),
        ("AWS_ENDPOINT_URL_SSM", fake.url.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: TARGETS.into(),
        env,
        ..Options::default()
    })
    .await;
    let login = app.sso_login(user).await.expect("login");
    let files = tempfile::tempdir().unwrap();
    write_identity(files.path(), &login);
    World {
        app,
        fake,
        files,
        _login: login,
    }
}

impl World {
    fn ssh(&self, target: &str) -> tokio::process::Command {
        let dir = self.files.path();
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            dir.join("known_hosts").display()
        ))
        .arg("-i")
        .arg(dir.join("id"))
        .arg("-o")
        .arg(format!(
            "CertificateFile={}",
            dir.join("id-cert.pub").display()
        ))
        .args(["-p", &self.app.ssh.port().to_string()])
        .arg(format!("{target}@127.0.0.1"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
        cmd
    }

    async fn session_end(&self) -> serde_json::Value {
        assert!(
            eventually(Duration::from_secs(10), || async {
                !self.app.events("session.end").await.is_empty()
            })
            .await,
            "no session.end"
        );
        self.app.event_details("session.end").await.remove(0)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_in_the_container_with_its_exit_status_and_is_audited() {
    let w = world("bob").await;
    let script = "echo hi-$((40+2)); exit 4";
    let out = w.ssh("orders-dev").arg(script).output().await.unwrap();
    assert!(
        text(&out.stdout).contains("hi-42"),
        "stdout {:?} stderr {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(4), "stderr {:?}", text(&out.stderr));

    // The broker found the service's running task and ran the command there.
    let exec = w.fake.calls("ExecuteCommand");
    assert_eq!(exec.len(), 1);
    assert_eq!(exec[0]["cluster"], "dev");
    assert_eq!(
        exec[0]["task"],
        "arn:aws:ecs:us-east-1:123456789012:task/dev/abc123"
    );
    assert_eq!(exec[0]["container"], "app");
    assert_eq!(exec[0]["command"], script);

    let decisions = w.app.event_details("policy.decision").await;
    let decision = decisions
        .iter()
        .find(|d| d["action"] == "ecs_exec")
        .expect("an ecs_exec decision");
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["policies"][0], "engineers-dev-shell");

    let start = &w.app.events("session.start").await[0];
    assert_eq!(start.target.as_deref(), Some("orders-dev"));
    assert_eq!(start.actor.as_deref(), Some("bob@example.test"));
    let details: serde_json::Value = serde_json::from_str(&start.details).unwrap();
    assert_eq!(details["kind"], "ecs");
    assert_eq!(details["details"]["cluster"], "dev");
    assert_eq!(details["details"]["container"], "app");
    assert_eq!(details["details"]["command"], script);
    let exec = w.app.event_details("ssh.exec").await;
    assert_eq!(exec[0]["command"], script);
    assert_eq!(
        exec[0]["ecs"]["task_arn"],
        "arn:aws:ecs:us-east-1:123456789012:task/dev/abc123"
    );

    let end = w.session_end().await;
    assert_eq!(end["exit_status"], 4);
    assert_eq!(
        end["details"]["ecs"]["ssm_target"],
        "ecs:dev_abc123_abc123-1234567890"
    );
    // The recording holds the command and its output, and its digest is in the trail.
    let path = w
        .app
        .config
        .recordings_dir()
        .join(details["recording"].as_str().expect("a recording"));
    let cast = std::fs::read_to_string(path).unwrap();
    assert!(cast.contains("hi-42"), "{cast}");
    use sha2::Digest;
    assert_eq!(
        end["recording_sha256"],
        hex::encode(sha2::Sha256::digest(cast.as_bytes()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_shell_runs_on_a_terminal() {
    let w = world("bob").await;
    let mut child = w
        .ssh("orders-dev")
        .arg("-tt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"test -t 0 && echo on-tty-$((1+1)); echo pty-$((6*7)); exit 5\n")
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the shell ends")
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("pty-42"),
        "{stdout:?} {:?}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(stdout.contains("on-tty-2"), "{stdout:?}");
    let end = w.session_end().await;
    assert_eq!(end["exit_status"], 5);
    assert_eq!(end["details"]["channel"], "shell");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_containers_are_refused_without_mfa_and_nothing_is_started() {
    let w = world("bob").await;
    let out = w.ssh("orders-prod").arg("id").output().await.unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("denied"), "{stderr}");
    assert!(stderr.contains("second factor"), "{stderr}");
    assert!(w.fake.calls("ExecuteCommand").is_empty());
    let decisions = w.app.event_details("policy.decision").await;
    assert!(
        decisions
            .iter()
            .any(|d| d["action"] == "ecs_exec" && d["decision"] == "deny"),
        "{decisions:?}"
    );
    assert!(w.app.events("session.start").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_running_tasks_is_a_clear_error_and_an_ended_session() {
    let w = world("bob").await;
    let out = w.ssh("scaled-to-zero").arg("id").output().await.unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nothing-running"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("no running task"),
        "{stderr}"
    );
    let end = w.session_end().await;
    assert_eq!(end["end_reason"], "error", "{end}");
    assert!(
        end["message"].as_str().unwrap().contains("no running task"),
        "{end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_transfer_subsystems_are_refused_for_containers() {
    let w = world("bob").await;
    let out = w
        .ssh("orders-dev")
        .args(["-s", "sftp"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("not available in ECS containers"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.fake.calls("ExecuteCommand").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_exec_runs_commands_in_containers_after_pam_login() {
    let w = world("carol").await;
    let home = tempfile::tempdir().unwrap();
    crate::support::cli_login(&w.app, home.path(), "carol").await;
    let pam = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(crate::support::pam_bin());
        cmd.args(args)
            .env("PAM_HOME", home.path())
            .env_remove("PAM_REASON")
            .stdin(Stdio::null());
        cmd
    };
    // `pam exec TARGET -- CMD`: output and exit status come back as-is.
    let out = pam(&["exec", "orders-dev", "--", "echo in-$((6*7)); exit 3"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim_end(), "in-42");
    // Production needs a stated reason: the refusal says so, and with
    // one the command runs and the reason is in the audit trail.
    let out = pam(&["exec", "orders-prod", "--", "true"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("reason"),
        "{}",
        text(&out.stderr)
    );
    let out = pam(&[
        "exec",
        "orders-prod",
        "--reason",
        "INC-77 inspect queue",
        "--",
        "echo ok",
    ])
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim_end(), "ok");
    let starts = w.app.events("session.start").await;
    let prod = starts
        .iter()
        .find(|e| e.target.as_deref() == Some("orders-prod"))
        .expect("a prod session started");
    let details: serde_json::Value = serde_json::from_str(&prod.details).unwrap();
    assert_eq!(details["reason"], "INC-77 inspect queue", "{details}");
    assert_eq!(details["kind"], "ecs", "{details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_runs_in_a_container_before_its_session_is_on_record() {
    let w = world("bob").await;
    // While nothing can be appended to the trail, the policy decision and
    // session.start cannot be durable.
    let block = w.app.block_trail().await;
    let run = w
        .ssh("orders-dev")
        .arg("echo ran-$((6*7))")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Choosing the task (control-plane reads) overlaps with the records...
    assert!(
        eventually(Duration::from_secs(10), || async {
            !w.fake.calls("DescribeTasks").is_empty()
        })
        .await,
        "the broker never got as far as choosing a task"
    );
    // ...the command itself waits for them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        w.fake.calls("ExecuteCommand").is_empty(),
        "ExecuteCommand reached ECS before session.start was durable"
    );
    assert!(w.app.events("session.start").await.is_empty());
    block.release().await;
    let out = run.wait_with_output().await.unwrap();
    assert!(
        text(&out.stdout).contains("ran-42"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(w.fake.calls("ExecuteCommand").len(), 1);
    assert_eq!(w.app.events("session.start").await.len(), 1);
}
