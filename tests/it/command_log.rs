//! `ssh.command`: the commands typed into a real bash through the real
//! OpenSSH client (in tmux, as a person at a terminal), with line editing,
//! history, a password typed with echo off, OSC 133 shell-integration
//! marks, and hostile lines (escape sequences, bidi overrides).

use std::path::PathBuf;
use std::time::Duration;

use crate::support::eventually;

/// A terminal (tmux) running `ssh -tt` to web-dev through the broker.
pub(crate) struct Terminal {
    socket: PathBuf,
}

impl Terminal {
    pub(crate) async fn open(w: &crate::ssh::World) -> Terminal {
        let socket = w.files.path().join("tmux.sock");
        let line = crate::replay::ssh_tt_line(w)
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let t = Terminal { socket };
        let started = t.tmux(&[
            "new-session",
            "-d",
            "-s",
            "pam",
            "-x",
            "120",
            "-y",
            "40",
            &line,
        ]);
        assert!(
            started.status.success(),
            "{}",
            String::from_utf8_lossy(&started.stderr)
        );
        assert!(
            eventually(Duration::from_secs(30), || async { t.pane().contains('$') }).await,
            "prompt: {}",
            t.pane()
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn pane(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "pam"]).stdout)
            .into_owned()
    }

    /// Literal text.
    pub(crate) fn text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "pam", "-l", text]);
    }

    /// Named keys (Enter, C-u, Left, Up, ...), one at a time so that the
    /// shell sees them as a person would type them.
    pub(crate) async fn keys(&self, keys: &[&str]) {
        for key in keys {
            tokio::time::sleep(Duration::from_millis(60)).await;
            self.tmux(&["send-keys", "-t", "pam", key]);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }

    /// Waits until the pane shows `marker`.
    pub(crate) async fn wait_for(&self, marker: &str) {
        assert!(
            eventually(Duration::from_secs(30), || async {
                self.pane().contains(marker)
            })
            .await,
            "waiting for {marker:?}: {}",
            self.pane()
        );
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

async fn commands(w: &crate::ssh::World) -> Vec<serde_json::Value> {
    assert!(
        eventually(Duration::from_secs(30), || async {
            !w.app.events("session.end").await.is_empty()
        })
        .await
    );
    w.app.event_details("ssh.command").await
}

fn texts(commands: &[serde_json::Value]) -> Vec<&str> {
    commands
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_commands_with_line_editing_are_logged_with_their_offsets() {
    let w = crate::ssh::world("bob").await;
    let t = Terminal::open(&w).await;
    t.text("echo first-$((40+2))");
    t.keys(&["Enter"]).await;
    t.wait_for("first-42").await;
    // ctrl-U drops what came before.
    t.text("rm -rf /tmp/not-this");
    t.keys(&["C-u"]).await;
    t.text("echo second");
    t.keys(&["Enter"]).await;
    // ctrl-W drops the last word; backspace a character.
    t.text("echo third wrong");
    t.keys(&["C-w"]).await;
    t.text("okk");
    t.keys(&["BSpace", "Enter"]).await;
    // Arrows move the cursor inside the line.
    t.text("echo fouth");
    t.keys(&["Left", "Left"]).await;
    t.text("r");
    t.keys(&["Right", "Enter"]).await;
    t.wait_for("fourth").await;
    // History: the line comes from the shell, not from the keys.
    t.keys(&["Up", "Enter"]).await;
    // A password typed with echo off is not a command.
    t.text("read -s pw; echo got-${#pw}");
    t.keys(&["Enter"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.text("hunter2");
    t.keys(&["Enter"]).await;
    t.wait_for("got-7").await;
    t.text("exit");
    t.keys(&["Enter"]).await;
    let logged = commands(&w).await;
    assert_eq!(
        texts(&logged),
        [
            "echo first-$((40+2))",
            "echo second",
            "echo third ok",
            "echo fourth",
            "echo fourth",
            "read -s pw; echo got-${#pw}",
            "exit"
        ],
        "{logged:?}"
    );
    assert_eq!(logged[4]["source"], "screen", "{}", logged[4]);
    assert_eq!(logged[0]["source"], "typed", "{}", logged[0]);
    let all = serde_json::to_string(&logged).unwrap();
    assert!(!all.contains("hunter2"), "{all}");
    assert!(!all.contains("rm -rf"), "{all}");
    // Offsets grow and point into the recording, where the command's
    // output follows.
    let offsets: Vec<f64> = logged
        .iter()
        .map(|c| c["offset"].as_f64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|p| p[0] <= p[1]), "{offsets:?}");
    let start = &w.app.events("session.start").await[0];
    let cast = std::fs::read_to_string(w.recording(start)).unwrap();
    let after: String = cast
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e[0].as_f64().unwrap() >= offsets[0])
        .map(|e| e[2].as_str().unwrap().to_owned())
        .collect();
    assert!(after.contains("first-42"), "{after}");
    // Keystrokes themselves are not recorded by default.
    assert!(!cast.contains("\"i\""));
    assert!(!cast.contains("hunter2"));
    // The events name the session, the user and the target.
    let events = w.app.events("ssh.command").await;
    assert_eq!(events[0].session_id, start.session_id);
    assert_eq!(events[0].actor.as_deref(), Some("bob@example.test"));
    assert_eq!(events[0].target.as_deref(), Some("web-dev"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osc_133_marks_name_the_commands_when_the_shell_emits_them() {
    let w = crate::ssh::world("bob").await;
    let t = Terminal::open(&w).await;
    t.text(r"PS0='\e]133;C\a'; PS1='\[\e]133;A\a\]marked\$ \[\e]133;B\a\]'");
    t.keys(&["Enter"]).await;
    t.wait_for("marked$").await;
    t.text("echo via-$((2*21))");
    t.keys(&["Enter"]).await;
    t.wait_for("via-42").await;
    t.keys(&["Up", "Enter"]).await;
    t.text("read -s pw; echo got-${#pw}");
    t.keys(&["Enter"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.text("hunter2");
    t.keys(&["Enter"]).await;
    t.wait_for("got-7").await;
    t.text("exit");
    t.keys(&["Enter"]).await;
    let logged = commands(&w).await;
    assert_eq!(
        texts(&logged),
        [
            r"PS0='\e]133;C\a'; PS1='\[\e]133;A\a\]marked\$ \[\e]133;B\a\]'",
            "echo via-$((2*21))",
            "echo via-$((2*21))",
            "read -s pw; echo got-${#pw}",
            "exit"
        ],
        "{logged:?}"
    );
    assert_eq!(logged[0]["source"], "typed");
    for c in &logged[1..] {
        assert_eq!(c["source"], "osc133", "{c}");
    }
    assert!(!serde_json::to_string(&logged).unwrap().contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_escape_sequences_and_bidi_overrides_are_cleaned() {
    let w = crate::ssh::world("bob").await;
    let t = Terminal::open(&w).await;
    // An escape sequence and a bidi override inside the command line.
    t.text("echo \u{202e}txt.exe # \x1b[31mred");
    t.keys(&["Enter"]).await;
    t.text("exit");
    t.keys(&["Enter"]).await;
    let logged = commands(&w).await;
    assert_eq!(logged.len(), 2, "{logged:?}");
    let first = logged[0]["command"].as_str().unwrap();
    assert!(first.starts_with("echo \\u{202e}txt.exe # "), "{first}");
    assert!(
        !first.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{first:?}"
    );
    // Lines longer than the cap are cut (ssh::commands unit tests: a real
    // terminal redraws lines longer than its rows, see README).
    assert_eq!(logged[1]["command"], "exit");
}
