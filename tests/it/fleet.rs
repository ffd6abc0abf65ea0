//! Several brokers on one database (issue 10): log in through one, open an
//! SSH session through the other, terminate it through the first, and the
//! shared audit trail still verifies.

use std::process::Stdio;
use std::time::Duration;

use crate::ssh::{targets, write_identity};
use crate::support::peers::Sshd;
use crate::support::{Options, TestApp, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_share_sessions_terminations_and_one_audit_chain() {
    let sshd = Sshd::start().await;
    let first = TestApp::spawn_with(Options {
        idp: true,
        toml: targets(&sshd),
        ..Options::default()
    })
    .await;
    // The second broker: same database, same key material, its own data dir.
    let second = TestApp::start(
        tempfile::tempdir().unwrap(),
        first.database.clone(),
        Options {
            toml: targets(&sshd),
            keys_dir: Some(first.config.keys_dir()),
            ..Options::default()
        },
    )
    .await;
    let ca = first
        .client
        .get(first.url("/api/v1/ca/ssh_target.pub"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sshd.trust_ca(&ca);

    // Log in through the first broker (alice administers the broker).
    let login = first.sso_login("alice").await.unwrap();
    let files = tempfile::tempdir().unwrap();
    write_identity(files.path(), &login);
    // The second broker's SSH listener: its own host key line.
    std::fs::write(
        files.path().join("known_hosts"),
        format!(
            "[127.0.0.1]:{} {}\n",
            second.ssh.port(),
            login.response.known_hosts.split_once(' ').unwrap().1
        ),
    )
    .unwrap();

    // An SSH session through the second broker.
    let mut child = tokio::process::Command::new("ssh")
        .args([
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
            files.path().join("known_hosts").display()
        ))
        .arg("-i")
        .arg(files.path().join("id"))
        .arg("-o")
        .arg(format!(
            "CertificateFile={}",
            files.path().join("id-cert.pub").display()
        ))
        .args([
            "-p",
            &second.ssh.port().to_string(),
            "web-dev@127.0.0.1",
            "echo started; sleep 60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let list = || {
        let client = first.client.clone();
        let url = first.url("/api/v1/sessions?status=live");
        let token = login.response.token.clone();
        async move {
            let sessions: Vec<serde_json::Value> = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            sessions
        }
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            list().await.len() == 1
        })
        .await,
        "the first broker sees the second's session"
    );
    let session = list().await.remove(0);
    assert_eq!(
        session["node"],
        format!("test-broker-{}", second.http.port())
    );
    let id = session["id"].as_str().unwrap().to_owned();

    // Terminate it through the first broker.
    let terminated = first
        .client
        .post(first.url(&format!("/api/v1/sessions/{id}/terminate")))
        .bearer_auth(&login.response.token)
        .json(&serde_json::json!({"reason": "fleet test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(terminated.status(), 202);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the session ends")
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains("terminated by alice@example.test: fleet test"),
        "{stderr}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            first
                .events("session.end")
                .await
                .iter()
                .any(|e| e.session_id.as_deref() == Some(id.as_str()))
        })
        .await
    );

    // Both brokers appended to one chain; it verifies.
    let (_, _) = (second.stop().await, ());
    let config = first.config_path.clone();
    let (_dir, _db) = first.stop().await;
    let verify = crate::support::pam_command()
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(text.contains("audit trail OK"), "{text}");
}
