//! Faults: the broker's data_dir (recordings, and on SQLite the store) runs
//! out of space with live recorded sessions; and the per-session recording
//! cap. Real OpenSSH client and sshd; a real tmpfs filled to the brim.

use std::time::{Duration, Instant};

use crate::ssh::{World, targets, write_identity};
use crate::support::faults::Tmpfs;
use crate::support::peers::Sshd;
use crate::support::{Options, TestApp, TestDatabase, eventually};

/// A broker whose data_dir, and SQLite store, live on `tmpfs`, with an
/// sshd target and a logged-in user.
pub(crate) async fn world_on(tmpfs: Option<&Tmpfs>, extra: &str) -> World {
    world_with(Sshd::start().await, tmpfs, extra).await
}

/// Like [`world_on`] with an sshd the caller started (to put a fault proxy
/// in front of it, named in `extra`).
pub(crate) async fn world_with(sshd: Sshd, tmpfs: Option<&Tmpfs>, extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(tmpfs.map(|t| t.path()).unwrap_or(dir.path())).await;
    world_from(sshd, dir, database, tmpfs, extra).await
}

/// Like [`world_with`] on a database the caller made (one behind a fault
/// proxy).
pub(crate) async fn world_from(
    sshd: Sshd,
    dir: tempfile::TempDir,
    database: TestDatabase,
    tmpfs: Option<&Tmpfs>,
    extra: &str,
) -> World {
    let app = TestApp::start(
        dir,
        database,
        Options {
            idp: true,
            toml: format!("{}\n{extra}", targets(&sshd)),
            data_dir: tmpfs.map(|t| t.path().join("data")),
            ..Options::default()
        },
    )
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
    let login = app.sso_login("bob").await.expect("login");
    let files = tempfile::tempdir().unwrap();
    write_identity(files.path(), &login);
    World {
        app,
        sshd,
        login,
        files,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn readyz(app: &TestApp) -> (u16, String) {
    match app.client.get(app.url("/readyz")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn session_ends(app: &TestApp) -> Vec<serde_json::Value> {
    app.event_details("session.end").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_ends_recorded_sessions_refuses_new_ones_and_heals_by_itself() {
    let mut tmpfs = Tmpfs::mount("24m");
    let w = world_on(Some(&tmpfs), "").await;
    assert!(w.app.running.http.port() > 0);
    assert_eq!(readyz(&w.app).await.0, 200);
    // Most of the space is taken by something else; then a recorded
    // download fills the rest.
    let _ = tmpfs.fill();
    let filler = tmpfs.path().join("filler-1");
    let keep = 12 << 20;
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len - keep)
        .unwrap();

    // 60 MB of base64 (a recording several times the space left).
    let started = Instant::now();
    let download = tokio::time::timeout(
        Duration::from_secs(60),
        w.ssh("web-dev")
            .arg("head -c 45000000 /dev/urandom | base64 -w 76")
            .output(),
    )
    .await
    .expect("the download does not hang on a full disk")
    .unwrap();
    let took = started.elapsed();
    let stderr = text(&download.stderr);
    assert!(
        !download.status.success(),
        "a session that cannot be recorded must not run to the end: got {} bytes, exit {:?}, stderr {stderr}",
        download.stdout.len(),
        download.status.code()
    );
    assert!(
        download.stdout.len() < 60_000_000,
        "{}",
        download.stdout.len()
    );
    assert!(
        stderr.contains("can no longer be recorded") && stderr.contains("No space left"),
        "the user is told why: {stderr}"
    );
    eprintln!(
        "disk full: download ended after {took:?} with {} of 60 MB relayed: {}",
        download.stdout.len(),
        stderr.trim()
    );

    // Full: whatever the session left, the rest is taken too.
    let _ = tmpfs.fill();
    assert!(tmpfs.free() < 64 * 1024, "{}", tmpfs.free());

    // Readiness tells the truth.
    let (status, body) = readyz(&w.app).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("data_dir"), "{body}");

    // A new session is refused at once, saying why.
    let started = Instant::now();
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        w.ssh("web-dev").arg("echo should-not-run").output(),
    )
    .await
    .expect("a refusal, not a hang")
    .unwrap();
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(255), "{stderr}");
    assert!(!text(&refused.stdout).contains("should-not-run"));
    assert!(
        stderr.contains("full") || stderr.contains("space"),
        "the refusal says why: {stderr}"
    );
    eprintln!(
        "disk full: new session refused after {:?}: {}",
        started.elapsed(),
        stderr.trim()
    );

    // Space returns: without a restart, sessions work again within 5 s.
    tmpfs.free_up();
    let freed = Instant::now();
    let mut healed = None;
    while freed.elapsed() < Duration::from_secs(8) {
        let ok = tokio::time::timeout(
            Duration::from_secs(8),
            w.ssh("web-dev").arg("echo back").output(),
        )
        .await;
        if let Ok(Ok(out)) = ok
            && out.status.success()
            && text(&out.stdout) == "back\n"
        {
            healed = Some(freed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed = healed.expect("sessions work again within 5 s of space returning");
    assert!(healed < Duration::from_secs(8), "{healed:?}");
    eprintln!("disk full: first session after space returned: {healed:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            readyz(&w.app).await.0 == 200
        })
        .await
    );

    // The store did not wedge: a quick session is on record promptly, and
    // so is the end of the session the full disk cut off (audited once
    // space returned), with why.
    assert!(
        eventually(Duration::from_secs(5), || async {
            session_ends(&w.app).await.len() >= 2
        })
        .await,
        "{:?}",
        session_ends(&w.app).await
    );
    let ends = session_ends(&w.app).await;
    let cut = ends
        .iter()
        .find(|e| e["end_reason"] == "recording_failed")
        .unwrap_or_else(|| panic!("{ends:?}"));
    assert!(cut["recording_error"].is_string() || cut["message"].is_string());
    let starts = w.app.events("session.start").await;
    assert_eq!(starts.len(), ends.len(), "every start has its end");
    let verify = w.app.pam().args(["audit", "verify"]).output().unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_max_recording_ends_on_record() {
    let w = world_on(None, "[session]\nmax_recording = \"256KiB\"\n").await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        w.ssh("web-dev")
            .arg("head -c 3000000 /dev/zero | base64 -w 76")
            .output(),
    )
    .await
    .expect("no hang")
    .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.len() < 4_000_000, "{}", out.stdout.len());
    assert!(stderr.contains("session.max_recording"), "{stderr}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            !session_ends(&w.app).await.is_empty()
        })
        .await
    );
    let end = &session_ends(&w.app).await[0];
    assert_eq!(end["end_reason"], "recording_limit", "{end}");
    let start = &w.app.event_details("session.start").await[0];
    let cast = std::fs::read(
        w.app
            .config
            .recordings_dir()
            .join(start["recording"].as_str().unwrap()),
    )
    .unwrap();
    assert!(cast.len() <= 256 * 1024, "{}", cast.len());
    use sha2::Digest;
    assert_eq!(
        end["recording_sha256"],
        hex::encode(sha2::Sha256::digest(&cast)).as_str()
    );
    // What the user got was recorded: nothing past the cap was relayed
    // (the recording escapes newlines, so it is larger than the output).
    assert!(
        (out.stdout.len() as u64) < cast.len() as u64,
        "relayed {} bytes, recorded {}",
        out.stdout.len(),
        cast.len()
    );
}
