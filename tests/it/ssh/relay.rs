//! Commands, bulk data, PTY sessions and scp/sftp through the broker, as with a direct connection.

use super::*;

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
