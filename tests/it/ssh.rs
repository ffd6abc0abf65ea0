//! The SSH room with the real OpenSSH client and a real sshd target:
//! commands, PTY sessions, bulk data, scp/sftp, forwarding, host keys,
//! refused certificates, limits, termination, revocation and policy change.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_gives_the_same_output_and_exit_status_as_a_direct_connection() {
    let w = world("bob").await;
    let script = "echo out; echo err >&2; printf 'x=%s' \"$(whoami)\"; exit 3";
    let via = w.ssh("web-dev").arg(script).output().await.unwrap();
    let direct = w.ssh_direct().arg(script).output().await.unwrap();
    assert_eq!(text(&direct.stdout), "out\nx=pamtest");
    assert_eq!(
        text(&via.stdout),
        text(&direct.stdout),
        "stderr: {}",
        text(&via.stderr)
    );
    assert_eq!(text(&via.stderr), text(&direct.stderr));
    assert_eq!(via.status.code(), Some(3));
    assert_eq!(direct.status.code(), Some(3));
    // LOGIN@TARGET selects the login too.
    let as_login = w
        .ssh(&format!("{SSH_LOGIN}@web-dev"))
        .arg("whoami")
        .output()
        .await
        .unwrap();
    assert_eq!(text(&as_login.stdout), "pamtest\n");

    // The target's sshd names the human (certificate key id), not just "pamtest".
    assert!(
        eventually(Duration::from_secs(5), || async {
            w.sshd.log().contains("ID bob@example.test")
        })
        .await,
        "{}",
        w.sshd.log()
    );

    // Audited: decision, session start/end with the exit status, the command.
    let exec = w.app.event_details("ssh.exec").await;
    assert_eq!(exec[0]["command"], script);
    assert!(
        eventually(Duration::from_secs(5), || async {
            !w.app.events("session.end").await.is_empty()
        })
        .await
    );
    let ends = w.app.events("session.end").await;
    let end: serde_json::Value = serde_json::from_str(&ends[0].details).unwrap();
    assert_eq!(end["exit_status"], 3);
    assert!(end["recording_sha256"].as_str().unwrap().len() == 64);
    let decisions = w.app.event_details("policy.decision").await;
    assert!(
        decisions
            .iter()
            .any(|d| d["decision"] == "allow" && d["policies"][0] == "engineers-dev-shell")
    );
    // The recording holds the output and the command.
    let cast =
        std::fs::read_to_string(w.recording(&w.app.events("session.start").await[0])).unwrap();
    assert!(cast.contains("\"i\", \"echo out;"), "{cast}");
    assert!(
        cast.contains("out\\n") || cast.contains("out\\r\\n"),
        "{cast}"
    );
    let sha = hex::encode(Sha256::digest(cast.as_bytes()));
    assert_eq!(end["recording_sha256"], sha.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_through_cat_arrives_intact_both_ways() {
    let w = world("bob").await;
    let file = w.files.path().join("payload");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..100u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7 + (j >> 9)) as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let expected = hex::encode(Sha256::digest(std::fs::read(&file).unwrap()));
    // Upload: 100 MiB into `sha256sum` on the target.
    let upload = w
        .ssh("web-dev")
        .arg("sha256sum")
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .await
        .unwrap();
    assert!(upload.status.success(), "{}", text(&upload.stderr));
    assert!(
        text(&upload.stdout).starts_with(&expected),
        "{}",
        text(&upload.stdout)
    );
    // Download: 100 MiB out of `cat` on the target.
    let remote = format!("/tmp/pam-bulk-{}", std::process::id());
    let put = w
        .ssh("web-dev")
        .arg(format!("cat > {remote}"))
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .await
        .unwrap();
    assert!(put.status.success());
    let download = w
        .ssh("web-dev")
        .arg(format!("cat {remote}; rm -f {remote}"))
        .output()
        .await
        .unwrap();
    assert!(download.status.success(), "{}", text(&download.stderr));
    assert_eq!(download.stdout.len(), 100 << 20);
    assert_eq!(hex::encode(Sha256::digest(&download.stdout)), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_pty_session_is_relayed_and_recorded() {
    let w = world("bob").await;
    let tmux = w.files.path().join("tmux.sock");
    let ssh_line = {
        let cmd = w.ssh("web-dev");
        let std = cmd.as_std();
        let mut line = vec![std.get_program().to_string_lossy().into_owned()];
        line.extend(std.get_args().map(|a| a.to_string_lossy().into_owned()));
        line.insert(1, "-tt".into());
        line.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let tmux_cmd = |args: &[&str]| {
        std::process::Command::new("tmux")
            .arg("-S")
            .arg(&tmux)
            .args(args)
            .output()
            .unwrap()
    };
    let started = tmux_cmd(&[
        "new-session",
        "-d",
        "-s",
        "pam",
        "-x",
        "100",
        "-y",
        "30",
        &ssh_line,
    ]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    let pane = || text(&tmux_cmd(&["capture-pane", "-p", "-t", "pam"]).stdout);
    assert!(
        eventually(Duration::from_secs(30), || async { pane().contains('$') }).await,
        "prompt: {}",
        pane()
    );
    tmux_cmd(&[
        "send-keys",
        "-t",
        "pam",
        "echo typed-$((6*7)); stty size",
        "Enter",
    ]);
    assert!(
        eventually(Duration::from_secs(30), || async {
            let pane = pane();
            pane.contains("typed-42") && pane.contains("30 100")
        })
        .await,
        "the command runs and the target sees the PTY size: {}",
        pane()
    );
    tmux_cmd(&["resize-window", "-t", "pam", "-x", "120", "-y", "40"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tmux_cmd(&["send-keys", "-t", "pam", "stty size", "Enter"]);
    assert!(
        eventually(Duration::from_secs(30), || async {
            pane().contains("40 120")
        })
        .await,
        "{}",
        pane()
    );
    tmux_cmd(&["send-keys", "-t", "pam", "exit", "Enter"]);
    assert!(
        eventually(Duration::from_secs(30), || async {
            !w.app.events("session.end").await.is_empty()
        })
        .await
    );
    let _ = tmux_cmd(&["kill-server"]);

    let start = &w.app.events("session.start").await[0];
    let path = w.recording(start);
    let cast = std::fs::read_to_string(&path).unwrap();
    let header: serde_json::Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 100);
    assert_eq!(header["height"], 30);
    assert!(cast.contains("typed-42"));
    assert!(cast.contains("\"r\", \"120x40\""), "resizes are recorded");
    assert!(
        !cast.contains("\"i\""),
        "keystrokes are not recorded by default"
    );
    // asciinema itself plays it (no tty: it dumps the output and exits 0).
    let played = tokio::process::Command::new("asciinema")
        .args(["play", "-s", "50"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(played.status.success(), "{}", text(&played.stderr));
    assert!(text(&played.stdout).contains("typed-42"));
    // And so does `pam audit play`.
    let session_id = start.session_id.clone().unwrap();
    let replay = w
        .app
        .pam()
        .args(["audit", "play", &session_id, "--speed", "100"])
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert!(text(&replay.stdout).contains("typed-42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_and_sftp_transfers_work_and_are_audited() {
    let w = world("bob").await;
    let local = w.files.path().join("upload.txt");
    std::fs::write(&local, "hello through pam\n").unwrap();
    let remote = format!("/tmp/pam-scp-{}.txt", std::process::id());
    let scp = |from: String, to: String| {
        let mut cmd = tokio::process::Command::new("scp");
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
            w.files.path().join("known_hosts").display()
        ))
        .arg("-i")
        .arg(w.files.path().join("id"))
        .arg("-o")
        .arg(format!(
            "CertificateFile={}",
            w.files.path().join("id-cert.pub").display()
        ))
        .args(["-P", &w.app.ssh.port().to_string(), &from, &to]);
        cmd
    };
    let up = scp(
        local.display().to_string(),
        format!("web-dev@127.0.0.1:{remote}"),
    )
    .output()
    .await
    .unwrap();
    assert!(up.status.success(), "{}", text(&up.stderr));
    let back = w.files.path().join("download.txt");
    let down = scp(
        format!("web-dev@127.0.0.1:{remote}"),
        back.display().to_string(),
    )
    .output()
    .await
    .unwrap();
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "hello through pam\n"
    );

    // sftp in batch mode: put, get, rename, remove.
    let batch = w.files.path().join("batch");
    std::fs::write(
        &batch,
        format!("put {} {remote}.2\nget {remote}.2 {}\nrename {remote}.2 {remote}.3\nrm {remote}.3\nrm {remote}\n", local.display(), w.files.path().join("got").display()),
    )
    .unwrap();
    let sftp = tokio::process::Command::new("sftp")
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
            w.files.path().join("known_hosts").display()
        ))
        .arg("-i")
        .arg(w.files.path().join("id"))
        .arg("-o")
        .arg(format!(
            "CertificateFile={}",
            w.files.path().join("id-cert.pub").display()
        ))
        .args(["-P", &w.app.ssh.port().to_string(), "-b"])
        .arg(&batch)
        .arg("web-dev@127.0.0.1")
        .output()
        .await
        .unwrap();
    assert!(sftp.status.success(), "{}", text(&sftp.stderr));

    let transfers = w.app.event_details("ssh.file_transfer").await;
    let has = |op: &str, direction: Option<&str>, path: &str| {
        transfers.iter().any(|t| {
            t["operation"] == op
                && direction.is_none_or(|d| t["direction"] == d)
                && t["path"].as_str() == Some(path)
        })
    };
    assert!(has("open", Some("upload"), &remote), "{transfers:#?}");
    assert!(has("open", Some("download"), &remote), "{transfers:#?}");
    assert!(
        has("open", Some("upload"), &format!("{remote}.2")),
        "{transfers:#?}"
    );
    assert!(
        has("rename", None, &format!("{remote}.2")),
        "{transfers:#?}"
    );
    assert!(
        has("remove", None, &format!("{remote}.3")),
        "{transfers:#?}"
    );
}

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
