//! Faults: SIGTERM with live sessions (`pam serve` maps SIGTERM to the
//! broker's shutdown token, which `TestApp::sigterm` cancels). New
//! connections are refused at once; live sessions get
//! `server.shutdown_grace` (5 s in the tests) with a message, then end as
//! `shutdown`; nothing is lost. Real OpenSSH client and sshd.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::faults_disk::world_on;
use crate::support::eventually;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_gives_live_sessions_the_grace_period() {
    let w = world_on(None, "").await;
    // A live session printing a tick every 200 ms for 40 s.
    let mut live = w
        .ssh("web-dev")
        .arg("for i in $(seq 1 200); do echo tick $i; sleep 0.2; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = live.stdout.take().unwrap();
    let mut stderr = live.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    let err = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            !w.app.events("session.start").await.is_empty()
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(600)).await;

    let sigterm = Instant::now();
    w.app.sigterm();
    // New connections: refused at once, not queued.
    let ssh_port = w.app.ssh;
    let refused = eventually(Duration::from_secs(1), || async move {
        tokio::net::TcpStream::connect(ssh_port).await.is_err()
    })
    .await;
    assert!(
        refused,
        "a new SSH connection is refused within 1 s of SIGTERM"
    );
    let refused_after = sigterm.elapsed();
    let new = tokio::time::timeout(
        Duration::from_secs(10),
        w.ssh("web-dev").arg("echo nope").output(),
    )
    .await
    .expect("a refusal, not a hang")
    .unwrap();
    assert_eq!(new.status.code(), Some(255));
    assert!(!text(&new.stdout).contains("nope"));

    // The live session goes on through the grace period, is told, then ends.
    let status = tokio::time::timeout(Duration::from_secs(20), live.wait())
        .await
        .expect("the live session ends after the grace period")
        .unwrap();
    let ended_after = sigterm.elapsed();
    let out = text(&out.await.unwrap());
    let err = text(&err.await.unwrap());
    assert!(!status.success(), "{out}\n{err}");
    assert!(
        err.contains("shutting down") && err.contains("server.shutdown_grace"),
        "the user is told: {err}"
    );
    let ticks_before = out.lines().count();
    assert!(
        ended_after >= Duration::from_secs(4),
        "the session had its grace period: ended after {ended_after:?}, {ticks_before} ticks"
    );
    // Ticks every 200 ms for the whole grace period (at least 4 s of them).
    assert!(ticks_before >= 3 + 20, "{ticks_before} ticks: {out}");
    eprintln!(
        "sigterm: new connections refused after {refused_after:?}; live session ended after {ended_after:?}: {}",
        err.trim()
    );

    // Nothing lost: the end is on record as a shutdown, before server.stop,
    // and the chain verifies.
    let config_path = w.app.config_path.clone();
    let (dir, db) = w.app.stop().await;
    let verify = crate::support::pam_command()
        .env("PAM_CONFIG", &config_path)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    let ends = db.events("session.end").await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert!(
        ends[0].details.contains("\"end_reason\":\"shutdown\""),
        "{}",
        ends[0].details
    );
    let stop = db.events("server.stop").await;
    assert_eq!(stop.len(), 1);
    assert!(stop[0].seq > ends[0].seq);
    drop(dir);
}
