//! Port forwards (`ssh -L`) through the broker with the real OpenSSH client
//! and a real sshd: a forward is a session like a shell (policy, records
//! before the target hears of it, limits, revocation, byte counts), and
//! every channel opened on a connection checks the broker session again.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ssh::{World, world, world_with};
use crate::support::{eventually, free_port};

/// A TCP echo server next to the sshd (the forward's destination): counts
/// the connections it accepted and the ones that were closed.
struct Echo {
    port: u16,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if socket.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Echo {
            port,
            accepted,
            closed,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// `ssh -N -L LOCAL:127.0.0.1:ECHO web-dev` through the broker, plus `extra`
/// options; returns the child and the local port.
fn tunnel(w: &World, echo: &Echo, extra: &[&str]) -> (tokio::process::Child, u16) {
    let local = free_port();
    let child = w
        .ssh("web-dev")
        .args(["-N", "-o", "ExitOnForwardFailure=yes"])
        .args(extra)
        .arg("-L")
        .arg(format!("127.0.0.1:{local}:127.0.0.1:{}", echo.port))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, local)
}

/// Connects through the tunnel once it listens.
async fn connect(local: u16) -> TcpStream {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", local)).await {
            return stream;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `bytes` and reads them back.
async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("no echo through the tunnel")
        .unwrap();
    assert_eq!(back, bytes);
}

/// Waits until the tunnel's local end is closed (EOF or reset); panics
/// after 10 s (the broker ends it within 2 s). Returns how long it took.
async fn closed(stream: &mut TcpStream) -> Duration {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the tunnel stayed open");
    assert!(matches!(read, Ok(0) | Err(_)), "unexpected data: {read:?}");
    started.elapsed()
}

async fn logout(w: &World) {
    let out = w
        .app
        .client
        .post(w.app.url("/api/v1/auth/logout"))
        .bearer_auth(&w.login.response.token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
}

/// `session.end` details of the forward sessions (channel `direct-tcpip`).
async fn forward_ends(w: &World) -> Vec<serde_json::Value> {
    w.app
        .event_details("session.end")
        .await
        .into_iter()
        .filter(|d| d["details"]["channel"] == "direct-tcpip")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_closes_when_its_user_logs_out() {
    let w = world("bob").await;
    let echo = Echo::start().await;
    let (_child, local) = tunnel(&w, &echo, &[]);
    let mut stream = connect(local).await;
    round_trip(&mut stream, b"before logout\n").await;

    logout(&w).await;
    let took = closed(&mut stream).await;
    eprintln!("the tunnel closed {took:?} after logout");
    // The target's end of the forward is closed too.
    assert!(
        eventually(Duration::from_secs(10), || async { echo.closed() == 1 }).await,
        "the target's connection stayed open"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            forward_ends(&w).await.len() == 1
        })
        .await
    );
    let end = &forward_ends(&w).await[0];
    assert_eq!(end["end_reason"], "revoked", "{end:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_channel_after_logout_is_refused() {
    let w = world("bob").await;
    let echo = Echo::start().await;
    let control = w.files.path().join("control");
    let control_path = format!("ControlPath={}", control.display());
    let (_child, local) = tunnel(&w, &echo, &["-o", "ControlMaster=yes", "-o", &control_path]);
    // The connection works, and carries a forward and a session channel.
    let mut stream = connect(local).await;
    round_trip(&mut stream, b"ping\n").await;
    drop(stream);
    let shell = w
        .ssh("web-dev")
        .args(["-o", "ControlMaster=no", "-o", &control_path, "echo one"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&shell.stdout),
        "one\n",
        "{}",
        String::from_utf8_lossy(&shell.stderr)
    );
    assert_eq!(echo.accepted(), 1);

    // After logout, the same connection opens nothing new.
    logout(&w).await;
    let mut stream = connect(local).await;
    let _ = stream.write_all(b"after logout\n").await;
    closed(&mut stream).await;
    let shell = w
        .ssh("web-dev")
        .args(["-o", "ControlMaster=no", "-o", &control_path, "echo two"])
        .output()
        .await
        .unwrap();
    assert_eq!(shell.status.code(), Some(255));
    assert_eq!(String::from_utf8_lossy(&shell.stdout), "");
    // The user is told why, not only "administratively prohibited".
    let stderr = String::from_utf8_lossy(&shell.stderr);
    assert!(
        stderr.contains("pam: refused: the broker session was revoked"),
        "{stderr}"
    );
    assert_eq!(echo.accepted(), 1, "the target was reached after logout");

    // Both refusals are on record.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let rejected = w.app.event_details("token.rejected").await;
            ["direct-tcpip", "session"].iter().all(|channel| {
                rejected.iter().any(|d| {
                    d["method"] == "ssh"
                        && d["channel"] == *channel
                        && d["reason"].as_str().is_some_and(|r| r.contains("revoked"))
                })
            })
        })
        .await,
        "{:#?}",
        w.app.event_details("token.rejected").await
    );
    assert_eq!(
        w.app.events("session.start").await.len(),
        2,
        "only the sessions before logout started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_forward_is_a_recorded_session_with_limits() {
    let w = world_with(
        "bob",
        "",
        &[
            ("PAM_SESSION__IDLE_TIMEOUT", "3s"),
            ("PAM_SESSION__WARN_BEFORE", "1s"),
        ],
    )
    .await;
    let echo = Echo::start().await;
    let (_child, local) = tunnel(&w, &echo, &[]);

    // While the trail takes nothing, the target hears nothing of the forward.
    let block = w.app.block_trail().await;
    let mut stream = connect(local).await;
    stream.write_all(b"hello").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        echo.accepted(),
        0,
        "the target was reached before the session was on record"
    );
    block.release().await;
    let mut back = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"hello");
    round_trip(&mut stream, b" world").await;

    // Then idle: the broker ends it like any session.
    closed(&mut stream).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            forward_ends(&w).await.len() == 1
        })
        .await
    );
    let end = &forward_ends(&w).await[0];
    assert_eq!(end["end_reason"], "idle_timeout", "{end:#?}");
    assert_eq!(end["bytes_in"], 11, "{end:#?}");
    assert_eq!(end["bytes_out"], 11, "{end:#?}");
    assert_eq!(end["kind"], "ssh");

    let starts = w.app.events("session.start").await;
    assert_eq!(starts.len(), 1);
    let start: serde_json::Value = serde_json::from_str(&starts[0].details).unwrap();
    assert_eq!(start["details"]["channel"], "direct-tcpip", "{start:#?}");
    assert_eq!(start["details"]["forward"], "tcp");
    assert_eq!(start["details"]["host"], "127.0.0.1");
    assert_eq!(start["details"]["port"], echo.port);
    // Its policy decision (ssh_forward, tcp) names the same broker session.
    let decisions = w.app.events("policy.decision").await;
    let decision = decisions
        .iter()
        .find(|e| {
            let d: serde_json::Value = serde_json::from_str(&e.details).unwrap();
            d["action"] == "ssh_forward" && d["forward"] == "tcp" && d["decision"] == "allow"
        })
        .expect("an ssh_forward decision");
    assert!(decision.seq < starts[0].seq);
}
