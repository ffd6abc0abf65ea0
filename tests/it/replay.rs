//! What a new user trying the web view hit first: a session from `ssh -tt`
//! with a pipe for stdin (as Ansible runs it) asks for a 0x0 terminal and
//! must still replay, later window changes included; the browser's
//! favicon request is answered.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::eventually;

fn cast_lines(cast: &str) -> Vec<serde_json::Value> {
    cast.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The test's `ssh` command line with `-tt` (a PTY even without a tty).
pub(crate) fn ssh_tt_line(w: &crate::ssh::World) -> Vec<String> {
    let cmd = w.ssh("web-dev");
    let std = cmd.as_std();
    let mut line = vec![std.get_program().to_string_lossy().into_owned()];
    line.push("-tt".into());
    line.extend(std.get_args().map(|a| a.to_string_lossy().into_owned()));
    line
}

pub(crate) fn ssh_tt(w: &crate::ssh::World) -> tokio::process::Command {
    let line = ssh_tt_line(w);
    let mut cmd = tokio::process::Command::new(&line[0]);
    cmd.args(&line[1..]).kill_on_drop(true);
    cmd
}

async fn first_cast(w: &crate::ssh::World) -> (String, String) {
    assert!(
        eventually(Duration::from_secs(30), || async {
            !w.app.events("session.end").await.is_empty()
        })
        .await
    );
    let start = &w.app.events("session.start").await[0];
    let cast = std::fs::read_to_string(w.recording(start)).unwrap();
    (start.session_id.clone().unwrap(), cast)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_tt_from_a_pipe_records_a_terminal_a_player_can_show() {
    let w = crate::ssh::world("bob").await;
    let mut child = ssh_tt(&w)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"echo size-is-$(stty size | tr ' ' x)-end; exit\n")
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("ssh exits")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // What OpenSSH asked for, seen by the target: no size at all.
    assert!(stdout.contains("size-is-0x0-end"), "{stdout}");
    drop(stdin);

    let (_, cast) = first_cast(&w).await;
    let lines = cast_lines(&cast);
    assert_eq!(lines[0]["width"], 80, "{}", lines[0]);
    assert_eq!(lines[0]["height"], 24, "{}", lines[0]);
    assert!(cast.contains("size-is-0x0-end"), "{cast}");
    assert!(
        !cast.contains("\"r\", \"0x"),
        "no zero-size resize is recorded: {cast}"
    );
    // The session row still says what the client asked for.
    let start = w.app.event_details("session.start").await;
    assert_eq!(start[0]["details"]["pty"], "0x0", "{}", start[0]);
    // asciinema itself plays it.
    let path = w.recording(&w.app.events("session.start").await[0]);
    let played = tokio::process::Command::new("asciinema")
        .args(["play", "-s", "50"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(played.status.success());
    assert!(String::from_utf8_lossy(&played.stdout).contains("size-is-0x0-end"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_size_terminal_then_resized_records_the_new_size() {
    let w = crate::ssh::world("bob").await;
    let tmux = w.files.path().join("tmux.sock");
    let ssh_line = ssh_tt_line(&w)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let tmux_cmd = |args: &[&str]| {
        std::process::Command::new("tmux")
            .arg("-S")
            .arg(&tmux)
            .args(args)
            .output()
            .unwrap()
    };
    // The client's own terminal has no size when ssh starts.
    let script = format!("stty rows 0 cols 0; exec {ssh_line}");
    let started = tmux_cmd(&[
        "new-session",
        "-d",
        "-s",
        "pam",
        "-x",
        "100",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let pane = || {
        String::from_utf8_lossy(&tmux_cmd(&["capture-pane", "-p", "-t", "pam"]).stdout).into_owned()
    };
    assert!(
        eventually(Duration::from_secs(30), || async { pane().contains('$') }).await,
        "prompt: {}",
        pane()
    );
    tmux_cmd(&["send-keys", "-t", "pam", "stty size", "Enter"]);
    assert!(
        eventually(Duration::from_secs(30), || async { pane().contains("0 0") }).await,
        "the target saw a 0x0 terminal: {}",
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
    let (_, cast) = first_cast(&w).await;
    let _ = tmux_cmd(&["kill-server"]);
    let lines = cast_lines(&cast);
    assert_eq!(lines[0]["width"], 80, "{}", lines[0]);
    assert_eq!(lines[0]["height"], 24, "{}", lines[0]);
    assert!(cast.contains("\"r\", \"120x40\""), "{cast}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_favicon_is_served() {
    let app = crate::support::TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "image/x-icon"
    );
    let body = response.bytes().await.unwrap();
    // An ICO directory with one image, a PNG.
    assert_eq!(&body[..4], &[0, 0, 1, 0]);
    assert_eq!(&body[22..26], b"\x89PNG");
}
