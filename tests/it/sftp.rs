//! SFTP through the broker: every file operation of the real `sftp` client
//! is audited with its byte totals, and a hand-built client that pads or
//! garbles its packets is either audited or refused, never unaudited.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ssh::{World, world};
use crate::support::eventually;

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// SSH_FXP_OPEN for reading, padded with one extended attribute of `pad` bytes.
fn padded_open(id: u32, path: &str, pad: usize) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(string(path.as_bytes()));
    body.extend(1u32.to_be_bytes()); // SSH_FXF_READ
    body.extend(0x8000_0000u32.to_be_bytes()); // SSH_FILEXFER_ATTR_EXTENDED
    body.extend(1u32.to_be_bytes());
    body.extend(string(b"padding@example.com"));
    body.extend(string(&vec![b'x'; pad]));
    packet(3, &body)
}

/// A raw SFTP client: OpenSSH carries the bytes, the test writes them.
struct RawSftp {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
}

impl RawSftp {
    /// `ssh -s TARGET sftp` (`subsystem`), or `ssh TARGET COMMAND`.
    async fn start(w: &World, subsystem: bool) -> RawSftp {
        let mut cmd = w.ssh("web-dev");
        if subsystem {
            cmd.args(["-s", "sftp"]);
        } else {
            cmd.arg("/usr/lib/openssh/sftp-server");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut raw = RawSftp {
            child,
            stdin,
            stdout,
        };
        raw.send(&packet(1, &3u32.to_be_bytes())).await.unwrap();
        let (kind, body) = raw.recv().await.expect("SSH_FXP_VERSION");
        assert_eq!((kind, &body[..4]), (2, &3u32.to_be_bytes()[..]));
        raw
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stdin.write_all(bytes).await?;
        self.stdin.flush().await
    }

    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(20), self.stdout.read_exact(&mut head))
            .await
            .ok()?
            .ok()?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let mut body = vec![0u8; len - 1];
        self.stdout.read_exact(&mut body).await.ok()?;
        Some((head[4], body))
    }
}

async fn transfers(w: &World) -> Vec<serde_json::Value> {
    w.app.event_details("ssh.file_transfer").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sftp_open_padded_with_attributes_is_audited_or_refused_never_unaudited() {
    let w = world("bob").await;
    for subsystem in [true, false] {
        let path = format!("/etc/hostname#{subsystem}");
        let mut raw = RawSftp::start(&w, subsystem).await;
        // Past the 64 KiB the broker used to skip, within sftp-server's
        // 256 KiB: the server opens it, and the trail has it first.
        raw.send(&padded_open(7, "/etc/hostname", 200 * 1024))
            .await
            .unwrap();
        let (kind, body) = raw.recv().await.expect("an answer to the OPEN");
        assert_eq!(kind, 102, "SSH_FXP_HANDLE: the server opened the file");
        assert_eq!(&body[..4], &7u32.to_be_bytes());
        let seen = transfers(&w).await;
        assert!(
            seen.iter().any(|t| t["operation"] == "open"
                && t["path"] == "/etc/hostname"
                && t["direction"] == "download"),
            "{seen:#?}"
        );
        // Past sftp-server's own limit: refused, the channel closed, audited.
        let _ = raw.send(&padded_open(8, &path, 300 * 1024)).await;
        assert!(
            raw.recv().await.is_none(),
            "nothing answers a refused packet"
        );
        let status = tokio::time::timeout(Duration::from_secs(20), raw.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(!status.success());
        let seen = transfers(&w).await;
        assert!(
            !seen.iter().any(|t| t["path"] == path.as_str()),
            "the refused OPEN never reached the target: {seen:#?}"
        );
    }
    let refused: Vec<_> = transfers(&w)
        .await
        .into_iter()
        .filter(|t| t["operation"] == "refused")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("more than the 262144 sftp-server accepts")
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.app
                .event_details("session.end")
                .await
                .iter()
                .filter(|e| e["end_reason"] == "error")
                .count()
                == 2
        })
        .await,
        "{:#?}",
        w.app.event_details("session.end").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_of_the_real_sftp_client_is_audited_with_its_bytes() {
    let w = world("bob").await;
    let local = w.files.path().join("upload.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &content).unwrap();
    let back = w.files.path().join("download.bin");
    let dir = format!("/tmp/pam-sftp-{}", uuid::Uuid::new_v4().simple());
    let batch = w.files.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "mkdir {dir}\n\
             put {local} {dir}/a\n\
             get {dir}/a {back}\n\
             chmod 600 {dir}/a\n\
             rename {dir}/a {dir}/b\n\
             ln -s {dir}/b {dir}/soft\n\
             ln {dir}/b {dir}/hard\n\
             ls {dir}\n\
             rm {dir}/soft\n\
             rm {dir}/hard\n\
             rm {dir}/b\n\
             mkdir {dir}/sub\n\
             rmdir {dir}/sub\n\
             rmdir {dir}\n",
            local = local.display(),
            back = back.display(),
        ),
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
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        sftp.status.success(),
        "{}",
        String::from_utf8_lossy(&sftp.stderr)
    );
    assert_eq!(std::fs::read(&back).unwrap(), content);

    let a = format!("{dir}/a");
    let b = format!("{dir}/b");
    assert!(
        eventually(Duration::from_secs(10), || async {
            transfers(&w)
                .await
                .iter()
                .any(|t| t["operation"] == "rmdir" && t["path"] == dir.as_str())
        })
        .await
    );
    let seen = transfers(&w).await;
    let has = |check: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        assert!(seen.iter().any(check), "{what} not audited: {seen:#?}");
    };
    has(
        &|t| t["operation"] == "mkdir" && t["path"] == dir.as_str(),
        "mkdir",
    );
    has(
        &|t| t["operation"] == "open" && t["path"] == a.as_str() && t["direction"] == "upload",
        "open for upload",
    );
    has(
        &|t| {
            t["operation"] == "close"
                && t["path"] == a.as_str()
                && t["direction"] == "upload"
                && t["bytes_written"] == 300_000
                && t["closed"] == true
        },
        "the upload's byte total",
    );
    has(
        &|t| t["operation"] == "open" && t["path"] == a.as_str() && t["direction"] == "download",
        "open for download",
    );
    has(
        &|t| {
            t["operation"] == "close"
                && t["path"] == a.as_str()
                && t["direction"] == "download"
                && t["bytes_read"] == 300_000
        },
        "the download's byte total",
    );
    has(
        &|t| {
            t["operation"] == "setstat"
                && t["path"] == a.as_str()
                && t["changes"][0] == "permissions"
        },
        "chmod",
    );
    has(
        &|t| t["operation"] == "rename" && t["path"] == a.as_str() && t["to"] == b.as_str(),
        "rename",
    );
    has(
        &|t| t["operation"] == "symlink" && t["path"] == format!("{dir}/soft").as_str(),
        "symlink",
    );
    has(
        &|t| t["operation"] == "hardlink" && t["path"] == format!("{dir}/hard").as_str(),
        "hard link",
    );
    has(
        &|t| {
            t["operation"] == "list"
                && t["path"].as_str().map(|p| p.trim_end_matches('/')) == Some(dir.as_str())
        },
        "ls",
    );
    for removed in ["soft", "hard", "b"] {
        has(
            &|t| t["operation"] == "remove" && t["path"] == format!("{dir}/{removed}").as_str(),
            "rm",
        );
    }
    has(
        &|t| t["operation"] == "rmdir" && t["path"] == format!("{dir}/sub").as_str(),
        "rmdir",
    );
    // Every event names the user, the target and the session.
    let events = w.app.events("ssh.file_transfer").await;
    assert!(
        events
            .iter()
            .all(|e| e.actor.as_deref() == Some("bob@example.test")
                && e.target.as_deref() == Some("web-dev")
                && e.session_id.is_some())
    );
}
