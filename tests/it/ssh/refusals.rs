//! Forwarding, the store being down, host keys, refused certificates and policy denials: refused before anything reaches the target, and audited.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_refused_unless_policy_grants_it() {
    // dave (analysts) has no SSH access; bob (engineers) may forward TCP in dev only.
    let w = world("bob").await;
    // Agent forwarding: refused (policy grants it to nobody), and audited.
    // OpenSSH asks for it only when an agent runs.
    let socket = w.files.path().join("agent.sock");
    let agent = std::process::Command::new("ssh-agent")
        .arg("-a")
        .arg(&socket)
        .arg("-s")
        .output()
        .unwrap();
    let agent_pid = text(&agent.stdout)
        .split(';')
        .find_map(|part| {
            part.trim()
                .strip_prefix("SSH_AGENT_PID=")
                .map(str::to_owned)
        })
        .unwrap();
    let forwarded = w
        .ssh("web-dev")
        .args(["-A", "echo agent=${SSH_AUTH_SOCK:-none}"])
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .await
        .unwrap();
    let _ = std::process::Command::new("kill").arg(&agent_pid).status();
    assert!(forwarded.status.success(), "{}", text(&forwarded.stderr));
    assert_eq!(
        text(&forwarded.stdout),
        "agent=none\n",
        "no agent socket on the target"
    );
    // TCP forwarding to prod is refused: stdio forwarding (-W) opens direct-tcpip.
    let refused = w
        .ssh("web-prod")
        .args(["-W", &format!("127.0.0.1:{}", w.sshd.port)])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let decisions = w.app.event_details("policy.decision").await;
    assert!(
        decisions.iter().any(|d| d["action"] == "ssh_forward"
            && d["forward"] == "agent"
            && d["decision"] == "deny"),
        "{decisions:#?}"
    );
    assert!(
        decisions.iter().any(|d| d["action"] == "ssh_forward"
            && d["forward"] == "tcp"
            && d["decision"] == "deny"),
        "{decisions:#?}"
    );
    // In dev, engineers may forward TCP: the sshd banner comes back through -W.
    let allowed = w
        .ssh("web-dev")
        .args(["-W", &format!("127.0.0.1:{}", w.sshd.port)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = allowed.stdout.unwrap();
    let mut banner = [0u8; 8];
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_exact(&mut out, &mut banner),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reaches_an_ssh_target_before_the_session_is_on_record() {
    let w = world("bob").await;
    let marker = std::env::temp_dir().join(format!("pam-order-{}", uuid::Uuid::new_v4().simple()));
    // While nothing can be appended to the trail, the policy decision and
    // session.start cannot be durable.
    let block = w.app.block_trail().await;
    let run = w
        .ssh("web-dev")
        .arg(format!("touch {}; echo ran", marker.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The broker's transport and authentication to the target overlap with
    // the records (setup latency)...
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.sshd.log().contains("ID bob@example.test")
        })
        .await,
        "the broker never connected to the target: {}",
        w.sshd.log()
    );
    // ...but no channel, and so no command, reaches it before they are durable.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !marker.exists(),
        "the command ran before session.start was durable"
    );
    assert!(w.app.events("session.start").await.is_empty());
    block.release().await;
    let out = run.wait_with_output().await.unwrap();
    assert_eq!(text(&out.stdout), "ran\n", "{}", text(&out.stderr));
    assert!(marker.exists());
    let _ = std::fs::remove_file(&marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_client_is_told_when_the_store_is_down() {
    let w = world("bob").await;
    let up = w.ssh("web-dev").arg("echo up").output().await.unwrap();
    assert_eq!(text(&up.stdout), "up\n", "{}", text(&up.stderr));
    assert!(!text(&up.stderr).contains("cannot reach its store"));
    // PostgreSQL is the store a broker can lose (SQLite is a local file):
    // nobody may connect to the database any more, open connections are cut.
    if !w.app.database.is_postgres() {
        return;
    }
    use sqlx::Connection;
    // A database cannot refuse connections to itself: the server's own
    // database does it.
    let mut url = url::Url::parse(&w.app.database.url).unwrap();
    let name = url.path().trim_start_matches('/').to_owned();
    assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    url.set_path("/postgres");
    let mut admin = sqlx::PgConnection::connect(url.as_str()).await.unwrap();
    let allow = |yes: bool| {
        sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {yes}"))
    };
    sqlx::query(allow(false)).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    let down = w.ssh("web-dev").arg("echo up").output().await.unwrap();
    let stderr = text(&down.stderr);
    assert_eq!(down.status.code(), Some(255), "{stderr}");
    assert!(down.stdout.is_empty());
    assert!(
        stderr.contains("the broker cannot reach its store"),
        "{stderr}"
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");
    sqlx::query(allow(true)).execute(&mut admin).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_key_mismatch_is_refused_and_audited() {
    let w = world("bob").await;
    let out = w.ssh("impostor").arg("true").output().await.unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("does not match the pinned key"),
        "{}",
        text(&out.stderr)
    );
    let mismatch = w.app.event_details("ssh.host_key_mismatch").await;
    assert_eq!(mismatch.len(), 1);
    assert!(
        mismatch[0]["offered"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );
    // The attempt is a session that ended in error before any data flowed.
    assert!(
        eventually(Duration::from_secs(5), || async {
            !w.app.events("session.end").await.is_empty()
        })
        .await
    );
    let end = &w.app.event_details("session.end").await[0];
    assert_eq!(end["end_reason"], "error");
    assert!(
        end["message"]
            .as_str()
            .unwrap()
            .contains("does not match the pinned key")
    );
    assert_eq!(end["bytes_in"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_and_policy_denials_are_audited() {
    let w = world("bob").await;
    // Policy: engineers may not reach prod.
    let denied = w.ssh("web-prod").arg("true").output().await.unwrap();
    assert_ne!(denied.status.code(), Some(0));
    assert!(
        text(&denied.stderr).contains("access to web-prod denied"),
        "{}",
        text(&denied.stderr)
    );
    assert!(
        w.app
            .event_details("policy.decision")
            .await
            .iter()
            .any(|d| d["decision"] == "deny")
    );

    // A certificate from a foreign CA.
    let foreign = w.files.path().join("foreign");
    let keygen = |args: &[&str]| {
        assert!(
            std::process::Command::new("ssh-keygen")
                .args(args)
                .status()
                .unwrap()
                .success()
        )
    };
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &w.files.path().join("foreign_ca").display().to_string(),
    ]);
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &foreign.display().to_string(),
    ]);
    keygen(&[
        "-q",
        "-s",
        &w.files.path().join("foreign_ca").display().to_string(),
        "-I",
        "bob@example.test",
        "-n",
        "bob@example.test",
        "-V",
        "-5m:+1h",
        &format!("{}.pub", foreign.display()),
    ]);
    let out = w
        .ssh_with("web-dev", &foreign)
        .arg("true")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255));

    // An expired certificate signed by the broker's own user CA.
    let expired = w.files.path().join("expired");
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &expired.display().to_string(),
    ]);
    let ca = w.app.config.keys_dir().join("ssh_user_ca");
    keygen(&[
        "-q",
        "-s",
        &ca.display().to_string(),
        "-I",
        "bob@example.test",
        "-n",
        "bob@example.test",
        "-O",
        &format!("extension:pam-session@pam={}", w.login.response.session_id),
        "-V",
        "20200101:20200102",
        &format!("{}.pub", expired.display()),
    ]);
    let out = w
        .ssh_with("web-dev", &expired)
        .arg("true")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255));

    // A revoked broker session.
    let logout = w
        .app
        .client
        .post(w.app.url("/api/v1/auth/logout"))
        .bearer_auth(&w.login.response.token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let out = w.ssh("web-dev").arg("true").output().await.unwrap();
    assert_eq!(out.status.code(), Some(255));

    assert!(
        eventually(Duration::from_secs(5), || async {
            let reasons: Vec<String> = w
                .app
                .event_details("login.failure")
                .await
                .iter()
                .filter(|d| d["method"] == "ssh")
                .map(|d| d["reason"].as_str().unwrap_or_default().to_owned())
                .collect();
            reasons
                .iter()
                .any(|r| r.contains("not signed by the broker's user CA"))
                && reasons.iter().any(|r| r.contains("expired"))
                && reasons.iter().any(|r| r.contains("revoked"))
        })
        .await,
        "{:#?}",
        w.app.event_details("login.failure").await
    );
}
