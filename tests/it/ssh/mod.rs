//! The SSH room with the real OpenSSH client and a real sshd target:
//! commands, PTY sessions, bulk data, scp/sftp, forwarding, host keys,
//! refused certificates, limits, termination, revocation and policy change.

mod lifecycle;
mod refusals;
mod relay;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::peers::{SSH_LOGIN, Sshd};
use crate::support::{Login, Options, TestApp, eventually};

/// A broker with an SSH target (a real sshd), a logged-in user, and the
/// files OpenSSH needs.
pub(crate) struct World {
    pub(crate) app: TestApp,
    pub(crate) sshd: Sshd,
    pub(crate) login: Login,
    pub(crate) files: tempfile::TempDir,
}

pub(crate) fn targets(sshd: &Sshd) -> String {
    format!(
        r#"
[[target]]
name = "web-dev"
kind = "ssh"
address = "127.0.0.1:{port}"
host_key = "{key}"
login = "{SSH_LOGIN}"
tags = {{ env = "dev" }}

[[target]]
name = "web-prod"
kind = "ssh"
address = "127.0.0.1:{port}"
host_key = "{key}"
login = "{SSH_LOGIN}"
tags = {{ env = "prod" }}

[[target]]
name = "impostor"
kind = "ssh"
address = "127.0.0.1:{port}"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJpueAFIo1aoPRJMKM6y3ugcWby1d5dPpCO+wc3jCHIN"
login = "{SSH_LOGIN}"
tags = {{ env = "dev" }}
"#,
        port = sshd.port,
        key = sshd.host_key
    )
}

pub(crate) async fn world_with(user: &str, extra: &str, env: &[(&str, &str)]) -> World {
    let sshd = Sshd::start().await;
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: format!("{}\n{extra}", targets(&sshd)),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
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
    let login = app.sso_login(user).await.expect("login");
    let files = tempfile::tempdir().unwrap();
    write_identity(files.path(), &login);
    World {
        app,
        sshd,
        login,
        files,
    }
}

pub(crate) async fn world(user: &str) -> World {
    world_with(user, "", &[]).await
}

pub(crate) fn write_identity(dir: &std::path::Path, login: &Login) {
    use std::os::unix::fs::PermissionsExt;
    let key = login
        .key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .unwrap();
    std::fs::write(dir.join("id"), key.as_bytes()).unwrap();
    std::fs::set_permissions(dir.join("id"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("id-cert.pub"), &login.response.certificate).unwrap();
    std::fs::write(
        dir.join("known_hosts"),
        format!("{}\n", login.response.known_hosts),
    )
    .unwrap();
}

impl World {
    /// `ssh` to the broker as `user` (the target selector), batch mode, one identity.
    pub(crate) fn ssh(&self, user: &str) -> tokio::process::Command {
        self.ssh_with(user, &self.files.path().join("id"))
    }

    pub(crate) fn ssh_with(&self, user: &str, key: &std::path::Path) -> tokio::process::Command {
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
            self.files.path().join("known_hosts").display()
        ))
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("CertificateFile={}-cert.pub", key.display()))
        .args(["-p", &self.app.ssh.port().to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
        cmd
    }

    /// `ssh` straight to the sshd, with the test's own CA.
    fn ssh_direct(&self) -> tokio::process::Command {
        let key = self.sshd.direct_identity();
        let kh = self.files.path().join("direct_known_hosts");
        std::fs::write(&kh, format!("{}\n", self.sshd.known_hosts_line())).unwrap();
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
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .arg("-i")
        .arg(&key)
        .args(["-p", &self.sshd.port.to_string()])
        .arg(format!("{SSH_LOGIN}@127.0.0.1"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
        cmd
    }

    pub(crate) fn recording(&self, session: &pam::domain::audit::EventRecord) -> PathBuf {
        let details: serde_json::Value = serde_json::from_str(&session.details).unwrap();
        self.app
            .config
            .recordings_dir()
            .join(details["recording"].as_str().expect("a recording path"))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
