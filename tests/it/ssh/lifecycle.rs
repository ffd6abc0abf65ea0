//! Idle timeout, termination, revocation and policy change ending live sessions; `pam ssh` and plain ssh with `pam config ssh`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_warned_then_ended() {
    let w = world_with(
        "bob",
        "",
        &[
            ("PAM_SESSION__IDLE_TIMEOUT", "3s"),
            ("PAM_SESSION__WARN_BEFORE", "2s"),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    // Keep-alives every second do not count as input.
    let out = w
        .ssh("web-dev")
        .args(["-o", "ServerAliveInterval=1", "sleep 30"])
        .output()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ends in"), "a warning first: {stderr}");
    assert!(
        stderr.contains("without input (session.idle_timeout)"),
        "{stderr}"
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        eventually(Duration::from_secs(5), || async {
            !w.app.events("session.end").await.is_empty()
        })
        .await
    );
    let end = &w.app.event_details("session.end").await[0];
    assert_eq!(end["end_reason"], "idle_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_end_on_termination_revocation_and_policy_change() {
    let policies = tempfile::tempdir().unwrap();
    for entry in
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
            .unwrap()
    {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), policies.path().join(entry.file_name())).unwrap();
    }
    let dir = policies.path().display().to_string();
    let w = world_with(
        "alice",
        "",
        &[
            ("PAM_POLICY__DIR", dir.as_str()),
            ("PAM_POLICY__WATCH_INTERVAL", "200ms"),
        ],
    )
    .await;
    let live = |w: &World| {
        let client = w.app.client.clone();
        let url = w.app.url("/api/v1/sessions?status=live");
        let token = w.login.response.token.clone();
        async move {
            let list: Vec<serde_json::Value> = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list
        }
    };

    // 1. Terminated by an administrator through the API.
    let mut child = w
        .ssh("web-dev")
        .arg("sleep 60")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            live(&w).await.len() == 1
        })
        .await
    );
    let id = live(&w).await[0]["id"].as_str().unwrap().to_owned();
    let terminated = w
        .app
        .client
        .post(w.app.url(&format!("/api/v1/sessions/{id}/terminate")))
        .bearer_auth(&w.login.response.token)
        .json(&serde_json::json!({"reason": "INC-7 containment"}))
        .send()
        .await
        .unwrap();
    assert_eq!(terminated.status(), 202);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains("terminated by alice@example.test: INC-7 containment"),
        "{stderr}"
    );

    // 2. Policy changes to deny: engineers lose dev shells.
    let mut child = w
        .ssh("web-dev")
        .arg("sleep 60")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            live(&w).await.len() == 1
        })
        .await
    );
    std::fs::write(
        policies.path().join("engineers.cedar"),
        "@id(\"engineers-nothing\")\npermit(principal in Group::\"engineers\", action == Action::\"view_audit\", resource is Audit);\n",
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("policy changed"), "{stderr}");

    // 3. The broker session is revoked (logout).
    let sre = w.app.sso_login("carol").await.unwrap();
    let carol_files = tempfile::tempdir().unwrap();
    write_identity(carol_files.path(), &sre);
    let mut child = w
        .ssh_with("web-dev", &carol_files.path().join("id"))
        .arg("sleep 60")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            live(&w).await.len() == 1
        })
        .await
    );
    w.app
        .client
        .post(w.app.url("/api/v1/auth/logout"))
        .bearer_auth(&sre.response.token)
        .send()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("revoked"), "{stderr}");

    assert!(
        eventually(Duration::from_secs(5), || async {
            w.app.events("session.end").await.len() == 3
        })
        .await
    );
    let reasons: Vec<String> = w
        .app
        .event_details("session.end")
        .await
        .iter()
        .map(|d| d["end_reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["terminated", "policy_denied", "revoked"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_ssh_and_plain_ssh_with_pam_config_ssh() {
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
    // `pam ssh TARGET -- CMD`
    let out = pam(&["ssh", "web-dev", "--", "whoami"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pamtest\n");
    // Prod needs a reason (carol is an SRE with MFA); with one it works and is audited.
    let out = pam(&["ssh", "web-prod", "--", "true"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("it would be allowed with a reason"),
        "{}",
        text(&out.stderr)
    );
    let out = pam(&[
        "ssh",
        "web-prod",
        "--reason",
        "CHG-1234 rotate logs",
        "--",
        "true",
    ])
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let start = w.app.event_details("session.start").await;
    assert!(
        start.iter().any(|s| s["reason"] == "CHG-1234 rotate logs"),
        "{start:#?}"
    );

    // `pam config ssh` → plain `ssh TARGET.pam` and `ssh LOGIN@TARGET.pam`.
    let config = pam(&["config", "ssh"]).output().await.unwrap();
    assert!(config.status.success());
    let config_file = home.path().join("ssh_config");
    std::fs::write(&config_file, &config.stdout).unwrap();
    for user_at in ["web-dev.pam", "pamtest@web-dev.pam"] {
        let out = tokio::process::Command::new("ssh")
            .arg("-F")
            .arg(&config_file)
            .args(["-o", "BatchMode=yes", user_at, "id -un"])
            .env("PAM_HOME", home.path())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{user_at}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "pamtest\n");
    }
}
