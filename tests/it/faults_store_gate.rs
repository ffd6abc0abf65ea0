//! Faults: the store goes away after a session has started but before its
//! command reaches the target (PostgreSQL restarted through the fault
//! proxy; SQLite locked by another process). The command's `ssh.exec` is
//! gated: refused with a message, never run on the target. Events that
//! describe what already happened (a host key mismatch, a session's end)
//! are kept and written once the store is back; the chain verifies. Real
//! OpenSSH client and sshd; the target is slowed by a proxy so that the
//! outage falls between the session's start and its command.

use std::process::Stdio;
use std::time::Duration;

use crate::faults_store::{nothing_lost, proxied_pg_world_with};
use crate::ssh::World;
use crate::support::eventually;
use crate::support::peers::{SSH_LOGIN, Sshd};
use crate::support::proxy::{FaultProxy, Mode};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How the store goes away and comes back.
enum Store {
    Postgres(FaultProxy),
    Sqlite {
        path: String,
        holder: Option<std::process::Child>,
    },
}

impl Store {
    fn down(&mut self) {
        match self {
            Store::Postgres(proxy) => {
                proxy.set(Mode::Refuse);
                proxy.reset_all();
            }
            Store::Sqlite { path, holder } => {
                // Past the broker's 10 s busy timeout, twice over: its
                // writes fail while the test runs against the outage.
                let script =
                    ".timeout 10000\nBEGIN EXCLUSIVE;\nSELECT 1;\n.shell sleep 35\nCOMMIT;\n";
                let mut child = std::process::Command::new("sqlite3")
                    .arg(&*path)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("sqlite3 CLI");
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(script.as_bytes())
                    .unwrap();
                *holder = Some(child);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    async fn up(&mut self) {
        match self {
            Store::Postgres(proxy) => {
                proxy.set(Mode::Pass);
                // The proxy listens again a moment later.
                let addr = proxy.addr;
                assert!(
                    eventually(Duration::from_secs(10), || async move {
                        tokio::net::TcpStream::connect(addr).await.is_ok()
                    })
                    .await
                );
            }
            Store::Sqlite { holder, .. } => {
                if let Some(mut child) = holder.take() {
                    tokio::task::spawn_blocking(move || child.wait())
                        .await
                        .unwrap()
                        .unwrap();
                }
            }
        }
    }
}

/// A broker with a target `slow-dev` behind a proxy that delays every
/// packet (its SSH handshake takes seconds), and its store's fault.
async fn world() -> (World, Store, FaultProxy) {
    let sshd = Sshd::start().await;
    let upstream = format!("127.0.0.1:{}", sshd.port).parse().unwrap();
    let slow = FaultProxy::start(upstream).await;
    let extra = format!(
        r#"
[[target]]
name = "slow-dev"
kind = "ssh"
address = "{address}"
host_key = "{key}"
login = "{SSH_LOGIN}"
connect_timeout = "60s"
tags = {{ env = "dev" }}
"#,
        address = slow.addr,
        key = sshd.host_key
    );
    let (w, store) = if std::env::var_os("PAM_TEST_DATABASE_URL").is_some() {
        let (w, proxy, _) = proxied_pg_world_with(sshd, &extra)
            .await
            .expect("a PostgreSQL store");
        (w, Store::Postgres(proxy))
    } else {
        let w = crate::faults_disk::world_with(sshd, None, &extra).await;
        let path = w
            .app
            .database
            .url
            .trim_start_matches("sqlite://")
            .to_owned();
        (w, Store::Sqlite { path, holder: None })
    };
    (w, store, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_record_the_store_cannot_take_is_refused_and_never_runs() {
    let (w, mut store, slow) = world().await;
    let starts = || async { w.app.events("session.start").await.len() };
    // What the impostor attempt below leaves: PostgreSQL down refuses its
    // login (`login.failure`); SQLite locked still lets the broker read, so
    // it gets as far as the target's wrong host key (`ssh.host_key_mismatch`).
    let noted = || async {
        w.app.events("login.failure").await.len()
            + w.app.events("ssh.host_key_mismatch").await.len()
    };
    let ok = w.ssh("web-dev").arg("echo ok").output().await.unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let before = starts().await;
    let noted_before = noted().await;

    // A session that will end during the outage.
    let mut live = w
        .ssh("web-dev")
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            starts().await > before
        })
        .await
    );

    // A command on the slow target: its session starts (on record), then
    // the store goes away while the broker is still connecting.
    slow.set(Mode::Delay(Duration::from_millis(500)));
    let marker = std::env::temp_dir().join(format!("pam-gate-{}", uuid::Uuid::new_v4()));
    let exec = w
        .ssh("slow-dev")
        .arg(format!("touch {}", marker.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            starts().await > before + 1
        })
        .await
    );
    store.down();

    // The live session ends during the outage.
    drop(live.stdin.take());
    let live = tokio::time::timeout(Duration::from_secs(60), live.wait_with_output())
        .await
        .expect("the live session ends")
        .unwrap();
    // An attempt refused during the outage (an event that already happened).
    let impostor = tokio::time::timeout(
        Duration::from_secs(60),
        w.ssh("impostor").arg("true").output(),
    )
    .await
    .expect("an answer, not a hang")
    .unwrap();
    assert_eq!(impostor.status.code(), Some(255));

    let exec = tokio::time::timeout(Duration::from_secs(60), exec.wait_with_output())
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let stderr = text(&exec.stderr);
    eprintln!(
        "exec during the outage: exit {:?}: {stderr}; live session exit {:?}",
        exec.status.code(),
        live.status.code()
    );
    assert!(
        !marker.exists(),
        "the command ran on the target although its ssh.exec was not on record"
    );
    assert_eq!(exec.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("pam: refused:"), "{stderr}");
    assert!(stderr.contains("audit trail"), "{stderr}");

    // The store comes back: what happened meanwhile is written, nothing lost.
    store.up().await;
    slow.set(Mode::Pass);
    assert!(
        eventually(Duration::from_secs(20), || async {
            noted().await > noted_before
        })
        .await,
        "the refusal noted during the outage is written once the store is back"
    );
    let execs = w.app.event_details("ssh.exec").await;
    assert!(
        execs
            .iter()
            .all(|e| e["command"] != format!("touch {}", marker.display())),
        "{execs:?}"
    );
    nothing_lost(&w.app).await;
    assert!(!marker.exists());
}
