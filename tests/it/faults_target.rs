//! Faults: the SSH target refuses connections, never answers (a TCP black
//! hole, not a clean close), is slow in the handshake, or stops answering
//! mid-session. Users get a clear error within `connect_timeout`; idle and
//! max-duration limits still end hung sessions; the broker's file
//! descriptors, tasks and upstream connections return to their baseline.
//! Real OpenSSH client and sshd, behind the fault proxy.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::faults_disk::world_with;
use crate::ssh::World;
use crate::support::eventually;
use crate::support::faults::broker_fds;
use crate::support::peers::{SSH_LOGIN, Sshd};
use crate::support::proxy::{FaultProxy, Mode};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A target named `name` at `address` with the sshd's host key.
fn target(name: &str, address: &str, sshd: &Sshd) -> String {
    format!(
        r#"
[[target]]
name = "{name}"
kind = "ssh"
address = "{address}"
host_key = "{key}"
login = "{SSH_LOGIN}"
connect_timeout = "2s"
tags = {{ env = "dev" }}
"#,
        key = sshd.host_key
    )
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The broker's fds (its store's pooled ones left out) and tasks.
fn counts(w: &World) -> (usize, usize) {
    (broker_fds(&w.app.database, &[]), alive_tasks())
}

/// Waits until the broker's fds and tasks are back to `fds` / `tasks`;
/// returns what they were at the end.
async fn back_to(w: &World, fds: usize, tasks: usize) -> (usize, usize) {
    eventually(Duration::from_secs(15), || async move {
        let (f, t) = counts(w);
        f <= fds && t <= tasks
    })
    .await;
    counts(w)
}

async fn run(w: &World, target: &str, command: &str) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(30), w.ssh(target).arg(command).output())
        .await
        .expect("an answer, not a hang")
        .unwrap();
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_never_answers_or_is_slow_is_a_clear_error_within_connect_timeout() {
    let sshd = Sshd::start().await;
    let upstream = format!("127.0.0.1:{}", sshd.port).parse().unwrap();
    let hole = FaultProxy::start(upstream).await;
    hole.set(Mode::BlackHole);
    let slow = FaultProxy::start(upstream).await;
    slow.set(Mode::Delay(Duration::from_millis(2500)));
    let closed = crate::support::free_port();
    let extra = [
        target("refusing", &format!("127.0.0.1:{closed}"), &sshd),
        target("hole", &hole.addr.to_string(), &sshd),
        target("slow", &slow.addr.to_string(), &sshd),
    ]
    .concat();
    let w = world_with(sshd, None, &extra).await;
    // Warm up (pools, lazily started tasks), then take the baseline.
    let (ok, _) = run(&w, "web-dev", "true").await;
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let _ = run(&w, "refusing", "true").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds, tasks) = counts(&w);

    for (name, expect) in [
        ("refusing", "refused"),
        ("hole", "timed out"),
        ("slow", "timed out"),
    ] {
        let (out, took) = run(&w, name, "echo should-not-run").await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{name}: {stderr}");
        assert!(!text(&out.stdout).contains("should-not-run"));
        assert!(
            stderr.contains(name) && stderr.contains(expect),
            "{name}: a clear error naming the target: {stderr}"
        );
        // connect_timeout is 2 s: the transport and then the handshake each
        // get it; generous margin for a loaded machine.
        assert!(took < Duration::from_secs(8), "{name}: {took:?}");
        eprintln!("target {name}: refused after {took:?}: {}", stderr.trim());
    }
    // Nothing leaks: the half-made upstream connections are closed.
    let (fds_after, tasks_after) = back_to(&w, fds, tasks).await;
    assert!(
        fds_after <= fds && tasks_after <= tasks,
        "fds {fds} -> {fds_after}, tasks {tasks} -> {tasks_after}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            hole.live() == 0 && slow.live() == 0
        })
        .await,
        "upstream connections left open: hole {}, slow {}",
        hole.live(),
        slow.live()
    );
    // The failures are on record.
    let errors = || async {
        let ends = w.app.event_details("session.end").await;
        ends.iter().filter(|e| e["end_reason"] == "error").count()
    };
    assert!(
        eventually(Duration::from_secs(10), || async { errors().await == 4 }).await,
        "{:?}",
        w.app.event_details("session.end").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_black_holed_mid_session_is_ended_by_the_limits_and_leaks_nothing() {
    let sshd = Sshd::start().await;
    let upstream = format!("127.0.0.1:{}", sshd.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let extra = format!(
        "{}\n[session]\nidle_timeout = \"3s\"\nmax_duration = \"8s\"\nwarn_before = \"1s\"\n",
        target("flaky", &proxy.addr.to_string(), &sshd)
    );
    let w = world_with(sshd, None, &extra).await;
    let (ok, _) = run(&w, "flaky", "true").await;
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(eventually(Duration::from_secs(5), || async { proxy.live() == 0 }).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds, tasks) = counts(&w);

    // An idle session and a busy one (input every 300 ms into `cat`).
    let mut idle = w
        .ssh("flaky")
        .arg("echo started; sleep 100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut busy = w
        .ssh("flaky")
        .arg("echo started; cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for child in [&mut idle, &mut busy] {
        let mut lines = tokio::io::BufReader::new(child.stdout.as_mut().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the session starts")
            .unwrap();
        assert_eq!(first.as_deref(), Some("started"));
    }
    // The target stops answering (its packets vanish; no FIN, no RST).
    proxy.set(Mode::BlackHole);
    let hole = Instant::now();
    let mut stdin = busy.stdin.take().unwrap();
    let typing = tokio::spawn(async move {
        for i in 0..100 {
            if stdin
                .write_all(format!("line {i}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let idle_out = tokio::time::timeout(Duration::from_secs(20), idle.wait_with_output())
        .await
        .expect("the idle limit ends a hung session")
        .unwrap();
    let idle_took = hole.elapsed();
    let busy_out = tokio::time::timeout(Duration::from_secs(20), busy.wait_with_output())
        .await
        .expect("the max-duration limit ends a hung session")
        .unwrap();
    let busy_took = hole.elapsed();
    typing.abort();
    let idle_err = text(&idle_out.stderr);
    let busy_err = text(&busy_out.stderr);
    assert!(idle_err.contains("session.idle_timeout"), "{idle_err}");
    assert!(busy_err.contains("maximum duration"), "{busy_err}");
    assert!(!idle_out.status.success() && !busy_out.status.success());
    eprintln!(
        "target black hole mid-session: idle session ended after {idle_took:?}, busy one after {busy_took:?}"
    );
    let recorded = || async {
        let ends = w.app.event_details("session.end").await;
        ends.iter().any(|e| e["end_reason"] == "idle_timeout")
            && ends.iter().any(|e| e["end_reason"] == "max_duration")
    };
    assert!(
        eventually(Duration::from_secs(10), recorded).await,
        "{:?}",
        w.app.event_details("session.end").await
    );

    // Nothing leaks: the broker closes its connections to the hung target
    // (the proxy sees them go) and its fds and tasks return to baseline.
    assert!(
        eventually(Duration::from_secs(15), || async { proxy.live() == 0 }).await,
        "the broker still holds {} connections to the hung target",
        proxy.live()
    );
    let (fds_after, tasks_after) = back_to(&w, fds, tasks).await;
    assert!(
        fds_after <= fds && tasks_after <= tasks,
        "fds {fds} -> {fds_after}, tasks {tasks} -> {tasks_after}"
    );
    // And the target works again once it answers.
    proxy.set(Mode::Pass);
    let (ok, _) = run(&w, "flaky", "echo back").await;
    assert_eq!(text(&ok.stdout), "back\n", "{}", text(&ok.stderr));
}
