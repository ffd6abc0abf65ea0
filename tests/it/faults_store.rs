//! Faults: the store. PostgreSQL restarted (its backends terminated, then
//! nothing listening for a while, through the fault proxy in front of
//! it), connections reset mid-transaction, a slow store (the proxy delays
//! every packet); SQLite locked by another process (`sqlite3` holding
//! `BEGIN EXCLUSIVE`). Users get a refusal or a working session, never a
//! hang; no record is lost; readiness tells the truth; the broker heals by
//! itself. Real OpenSSH client and sshd.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::faults_disk::world_with;
use crate::ssh::World;
use crate::support::peers::Sshd;
use crate::support::proxy::{FaultProxy, Mode};
use crate::support::{TestApp, TestDatabase, eventually};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What one short session gave the user.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// Refused with a message that says so (`pam: refused: ...`).
    Refused(String),
    /// Anything else: a hang, a cryptic error, wrong output.
    Broken(String),
}

pub(crate) async fn session(w: &World, target: &str) -> (Outcome, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        w.ssh(target).arg("echo ok").output(),
    )
    .await;
    let took = started.elapsed();
    let outcome = match out {
        Err(_) => Outcome::Broken("no answer within 30 s".into()),
        Ok(Err(e)) => Outcome::Broken(e.to_string()),
        Ok(Ok(out)) => {
            let stderr = text(&out.stderr);
            if out.status.success() && text(&out.stdout) == "ok\n" {
                Outcome::Ok
            } else if out.status.code() == Some(255)
                && (stderr.contains("refused") || stderr.contains("cannot reach its store"))
            {
                Outcome::Refused(stderr.trim().to_owned())
            } else {
                Outcome::Broken(format!("exit {:?}: {stderr}", out.status.code()))
            }
        }
    };
    (outcome, took)
}

async fn readyz(app: &TestApp) -> u16 {
    match tokio::time::timeout(
        Duration::from_secs(10),
        app.client.get(app.url("/readyz")).send(),
    )
    .await
    {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    }
}

/// Every session that started has ended, on record, and the chain verifies.
pub(crate) async fn nothing_lost(app: &TestApp) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.events("session.start").await.len() == app.events("session.end").await.len()
        })
        .await,
        "starts {} ends {}",
        app.events("session.start").await.len(),
        app.events("session.end").await.len()
    );
    let verify = app.pam().args(["audit", "verify"]).output().unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}

/// A broker whose PostgreSQL store is reached through a fault proxy.
async fn proxied_pg_world() -> Option<(World, FaultProxy, u16)> {
    proxied_pg_world_with(Sshd::start().await, "").await
}

/// [`proxied_pg_world`] with more configuration (`extra`).
pub(crate) async fn proxied_pg_world_with(
    sshd: Sshd,
    extra: &str,
) -> Option<(World, FaultProxy, u16)> {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(dir.path()).await;
    if !database.is_postgres() {
        return None;
    }
    let mut url = url::Url::parse(&database.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = FaultProxy::start(upstream.parse().unwrap()).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let mut proxied = database.clone();
    proxied.url = url.to_string();
    let pg_port = url::Url::parse(&database.url)
        .unwrap()
        .port()
        .unwrap_or(5432);
    let w = crate::faults_disk::world_from(sshd, dir, proxied, None, extra).await;
    Some((w, proxy, pg_port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_is_refused_while_down_and_heals_by_itself() {
    let Some((w, proxy, _)) = proxied_pg_world().await else {
        return; // PostgreSQL only
    };
    assert_eq!(session(&w, "web-dev").await.0, Outcome::Ok);
    // A live session across the outage.
    let live = w
        .ssh("web-dev")
        .arg("for i in $(seq 1 40); do echo tick $i; sleep 0.25; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            w.app.events("session.start").await.len() >= 2
        })
        .await
    );

    // The restart: every connection reset mid-whatever, then nothing
    // listens for 3 s.
    proxy.set(Mode::Refuse);
    proxy.reset_all();
    let down = Instant::now();
    let mut during = Vec::new();
    while down.elapsed() < Duration::from_secs(3) {
        during.push(session(&w, "web-dev").await);
    }
    let ready_down = readyz(&w.app).await;
    proxy.set(Mode::Pass);
    let up = Instant::now();
    let mut healed = None;
    while up.elapsed() < Duration::from_secs(10) {
        let (outcome, _) = session(&w, "web-dev").await;
        if outcome == Outcome::Ok {
            healed = Some(up.elapsed());
            break;
        }
        assert!(
            matches!(outcome, Outcome::Refused(_)),
            "after the restart: {outcome:?}"
        );
    }
    let live = live.wait_with_output().await.unwrap();
    eprintln!(
        "pg restart: during the outage {:?}; readyz {ready_down}; healed after {healed:?}; live session exit {:?}",
        during
            .iter()
            .map(|(o, t)| format!("{o:?} in {t:?}"))
            .collect::<Vec<_>>(),
        live.status.code()
    );
    for (outcome, took) in &during {
        assert!(
            !matches!(outcome, Outcome::Broken(_)),
            "during the outage, a refusal or a session, never {outcome:?}"
        );
        assert!(*took < Duration::from_secs(15), "{outcome:?} took {took:?}");
    }
    assert_eq!(ready_down, 503, "readiness while the store is down");
    let healed = healed.expect("sessions work again by themselves");
    assert!(healed < Duration::from_secs(8), "{healed:?}");
    assert_eq!(readyz(&w.app).await, 200);
    nothing_lost(&w.app).await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_postgres_slows_sessions_but_loses_nothing() {
    let Some((w, proxy, _)) = proxied_pg_world().await else {
        return; // PostgreSQL only
    };
    assert_eq!(session(&w, "web-dev").await.0, Outcome::Ok);
    // 50 ms each way on every packet (fsync latency of a throttled disk).
    proxy.set(Mode::Delay(Duration::from_millis(50)));
    for _ in 0..3 {
        let (outcome, took) = session(&w, "web-dev").await;
        assert_eq!(outcome, Outcome::Ok, "took {took:?}");
        eprintln!("slow pg: session took {took:?}");
    }
    assert_eq!(readyz(&w.app).await, 200);
    proxy.set(Mode::Pass);
    nothing_lost(&w.app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_is_waited_for_or_refused_then_heals() {
    let w = world_with(Sshd::start().await, None, "").await;
    if w.app.database.is_postgres() {
        return; // SQLite only
    }
    assert_eq!(session(&w, "web-dev").await.0, Outcome::Ok);
    let path = w
        .app
        .database
        .url
        .trim_start_matches("sqlite://")
        .to_owned();
    // Another process holds the write lock, then lets go (sqlite3 CLI).
    let hold = |seconds: u32| {
        // `.timeout`: wait for the broker's own writes to let go first.
        let script = format!(
            ".timeout 10000\nBEGIN EXCLUSIVE;\nSELECT 1;\n.shell sleep {seconds}\nCOMMIT;\n"
        );
        let mut child = std::process::Command::new("sqlite3")
            .arg(&path)
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
        child
    };
    // Short: the broker waits (busy timeout) and the session goes through.
    let mut short = hold(2);
    std::thread::sleep(Duration::from_millis(300));
    let (outcome, took) = session(&w, "web-dev").await;
    assert_eq!(outcome, Outcome::Ok, "{took:?}");
    short.wait().unwrap();
    eprintln!("sqlite locked 2 s: session waited, took {took:?}");
    // Long (past the busy timeout): refused with a message, not a hang.
    let mut long = hold(14);
    std::thread::sleep(Duration::from_millis(300));
    let (outcome, took) = session(&w, "web-dev").await;
    eprintln!("sqlite locked 14 s: {outcome:?} after {took:?}");
    assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
    long.wait().unwrap();
    // Released: works again at once, nothing lost.
    let (outcome, took) = session(&w, "web-dev").await;
    assert_eq!(outcome, Outcome::Ok, "{took:?}");
    nothing_lost(&w.app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_churning_through_a_store_restart_see_only_refusals_and_nothing_leaks() {
    use crate::support::faults::{broker_fds, rss_kib};
    let Some((w, proxy, pg_port)) = proxied_pg_world().await else {
        return; // PostgreSQL only (SQLite has no server to restart)
    };
    let w = std::sync::Arc::new(w);
    // Warm up under the same load: the store's connection pool and lazily
    // started tasks reach their working size (the baseline is that size).
    for _ in 0..3 {
        let round: Vec<_> = (0..8)
            .map(|_| {
                let w = w.clone();
                tokio::spawn(async move { session(&w, "web-dev").await.0 })
            })
            .collect();
        for client in round {
            assert_eq!(client.await.unwrap(), Outcome::Ok);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The store's pooled connections come and go with load (at most the
    // pool's size): counted apart, everything else must come back.
    let via = [proxy.addr.port(), pg_port];
    let database = w.app.database.clone();
    let open_fds = move || broker_fds(&database, &via);
    let (fds, rss) = (open_fds(), rss_kib());

    let start = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while start.elapsed() < Duration::from_secs(20) {
                    let at = start.elapsed();
                    let (outcome, took) = session(&w, "web-dev").await;
                    seen.push((at, at + took, outcome));
                }
                seen
            })
        })
        .collect();
    // The store restarts 6 s in and is back 3 s later.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.set(Mode::Refuse);
    proxy.reset_all();
    let outage = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Mode::Pass);
    let back = start.elapsed();
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    let ok = all.iter().filter(|s| s.2 == Outcome::Ok).count();
    let refused: Vec<_> = all
        .iter()
        .filter(|s| matches!(s.2, Outcome::Refused(_)))
        .collect();
    let broken: Vec<_> = all
        .iter()
        .filter(|s| matches!(s.2, Outcome::Broken(_)))
        .collect();
    let ok_after = all
        .iter()
        .filter(|s| s.2 == Outcome::Ok && s.0 > back)
        .count();
    eprintln!(
        "load through a store restart: {} sessions, {ok} ok ({ok_after} after it), {} refused, {} broken; outage {outage:?}..{back:?}",
        all.len(),
        refused.len(),
        broken.len()
    );
    // A login whose authentication was under way when the store went away
    // is refused by SSH's own "Permission denied": once authentication has
    // begun the protocol has no way to say why (logins that begin while the
    // store is down are told by the banner). Still a refusal, not a hang.
    let (overlapping, broken): (Vec<_>, Vec<_>) = broken.into_iter().partition(|s| {
        s.0 <= outage
            && s.1 >= outage
            && matches!(&s.2, Outcome::Broken(m) if m.contains("Permission denied"))
    });
    assert!(broken.is_empty(), "{broken:?}");
    eprintln!(
        "load: {} logins under way when the store went down were refused without the banner",
        overlapping.len()
    );
    // Refusals only while the store was down (or a session that overlapped it
    // and the 5 s the broker may take to heal).
    for (began, ended, outcome) in &refused {
        assert!(
            *ended >= outage && *began <= back + Duration::from_secs(5),
            "refused outside the outage: {began:?}..{ended:?} {outcome:?}"
        );
    }
    assert!(ok_after >= 8, "sessions work again after the restart");
    nothing_lost(&w.app).await;

    // Counts back to baseline: fds exactly, memory within 32 MiB.
    eventually(Duration::from_secs(15), || async { open_fds() <= fds }).await;
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    eprintln!("load: fds {fds} -> {fds_after}, rss {rss} KiB -> {rss_after} KiB");
    assert!(fds_after <= fds, "fds {fds} -> {fds_after}");
    assert!(rss_after <= rss + 32 * 1024, "rss {rss} -> {rss_after} KiB");
}
