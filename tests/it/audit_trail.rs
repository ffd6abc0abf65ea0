//! The tamper-evident trail, end to end through the `pam` binary: edits,
//! deletions, insertions, reorderings and rewrites made directly in the
//! database are caught by `pam audit verify`; acknowledged events survive
//! SIGKILL; concurrent writers keep one verifiable chain.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use pam::store::{Db, Pool};

use crate::support::{Options, TestApp, TestDatabase};

/// A stopped broker whose trail holds `n` synthetic events after its own
/// `server.start`/`server.stop`, with a signed checkpoint every 5 events.
struct Trail {
    app_dir: tempfile::TempDir,
    database: TestDatabase,
    config_path: std::path::PathBuf,
}

impl Trail {
    async fn new(n: u64) -> Trail {
        let app = TestApp::spawn_with(Options {
            toml: "[audit]\ncheckpoint_every = 5\n".into(),
            ..Options::default()
        })
        .await;
        let config_path = app.config_path.clone();
        let (app_dir, database) = app.stop().await;
        let trail = Trail {
            app_dir,
            database,
            config_path,
        };
        let out = trail
            .pam(&[
                "audit",
                "stress",
                "--count",
                &n.to_string(),
                "--concurrency",
                "4",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        trail
    }

    fn pam(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = crate::support::pam_command();
        cmd.args(args).arg("--config").arg(&self.config_path);
        let _ = &self.app_dir;
        cmd
    }

    async fn db(&self) -> Db {
        Db::connect(&self.database.url, Duration::from_secs(10))
            .await
            .unwrap()
    }

    /// Runs `pam audit verify`; returns (success, stdout + stderr).
    fn verify(&self) -> (bool, String) {
        let out = self.pam(&["audit", "verify"]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    async fn id_at(&self, seq: i64) -> String {
        let db = self.db().await;
        let id: String = query_scalar(
            &db,
            &format!("SELECT id FROM audit_events WHERE seq = {seq}"),
        )
        .await;
        db.close().await;
        id
    }

    async fn exec(&self, statements: &[&str]) {
        let db = self.db().await;
        for statement in statements {
            exec(&db, statement).await;
        }
        db.close().await;
    }
}

async fn exec(db: &Db, statement: &str) {
    let q = sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()));
    match db.pool() {
        Pool::Sqlite(pool) => {
            q.execute(pool).await.unwrap();
        }
        Pool::Postgres(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

async fn query_scalar<T>(db: &Db, statement: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + Send
        + Unpin,
{
    match db.pool() {
        Pool::Sqlite(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(statement.to_owned()))
            .fetch_one(pool)
            .await
            .unwrap(),
        Pool::Postgres(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(statement.to_owned()))
            .fetch_one(pool)
            .await
            .unwrap(),
    }
}

/// Moves rows with `seq >= from` by `delta` without tripping the primary
/// key on the way (through negative numbers).
fn shift(from: i64, delta: i64) -> Vec<String> {
    vec![
        format!("UPDATE audit_events SET seq = -seq WHERE seq >= {from}"),
        format!("UPDATE audit_events SET seq = -seq + ({delta}) WHERE seq < 0"),
    ]
}

#[tokio::test]
async fn an_untouched_trail_verifies() {
    let trail = Trail::new(40).await;
    let (ok, text) = trail.verify();
    assert!(ok, "{text}");
    assert!(text.contains("audit trail OK: 42 events"), "{text}");
    assert!(text.contains("signed checkpoints verified"), "{text}");
}

#[tokio::test]
async fn an_edited_event_is_named() {
    let trail = Trail::new(40).await;
    let id = trail.id_at(17).await;
    trail
        .exec(&["UPDATE audit_events SET details = '{\"n\":999}' WHERE seq = 17"])
        .await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("event {id} at seq 17 was changed")),
        "{text}"
    );
}

#[tokio::test]
async fn an_edited_actor_or_time_is_named() {
    let trail = Trail::new(20).await;
    let id = trail.id_at(9).await;
    trail
        .exec(&["UPDATE audit_events SET actor = 'someone-else@pam', ts = ts + 1 WHERE seq = 9"])
        .await;
    let (ok, text) = trail.verify();
    assert!(!ok);
    assert!(text.contains(&id), "{text}");
    assert!(text.contains("changed"), "{text}");
}

#[tokio::test]
async fn a_deleted_event_is_named() {
    let trail = Trail::new(40).await;
    let next = trail.id_at(21).await;
    trail
        .exec(&["DELETE FROM audit_events WHERE seq = 20"])
        .await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(
        text.contains("events at seq 20..=20 were deleted"),
        "{text}"
    );
    assert!(text.contains(&next), "{text}");
}

#[tokio::test]
async fn a_deletion_hidden_by_renumbering_is_caught() {
    let trail = Trail::new(40).await;
    let mut statements = vec!["DELETE FROM audit_events WHERE seq = 20".to_owned()];
    statements.extend(shift(21, -1));
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    trail.exec(&refs).await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(
        text.contains("at seq 20 is missing (deleted and renumbered)"),
        "{text}"
    );
}

#[tokio::test]
async fn an_inserted_event_is_named() {
    let trail = Trail::new(40).await;
    let mut statements = shift(15, 1);
    let forged = "00000000-0000-7000-8000-00000000f0f0";
    statements.push(format!(
        "INSERT INTO audit_events (seq, id, ts, kind, actor, source_ip, target, session_id, outcome, details, prev_hash, hash) \
         SELECT 15, '{forged}', ts, 'login.success', 'mallory@pam', NULL, NULL, NULL, 'success', '{{}}', hash, hash \
         FROM audit_events WHERE seq = 14"
    ));
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    trail.exec(&refs).await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("event {forged} at seq 15 was inserted")),
        "{text}"
    );
}

#[tokio::test]
async fn reordered_events_are_named() {
    let trail = Trail::new(40).await;
    let moved = trail.id_at(31).await;
    trail
        .exec(&[
            "UPDATE audit_events SET seq = -1 WHERE seq = 30",
            "UPDATE audit_events SET seq = 30 WHERE seq = 31",
            "UPDATE audit_events SET seq = 31 WHERE seq = -1",
        ])
        .await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "event {moved} at seq 30 is out of order (reordered)"
        )),
        "{text}"
    );
}

/// An attacker who knows the algorithm (but not the audit key) edits an
/// event and recomputes every later hash and the head: the signed
/// checkpoints still pin the old chain.
#[tokio::test]
async fn a_recomputed_chain_is_caught_by_signed_checkpoints() {
    let trail = Trail::new(40).await;
    let db = trail.db().await;
    let records = pam::store::audit::range(&db, 1, 1000).await.unwrap();
    let mut prev = records[10].prev_hash.clone();
    for record in &records[10..] {
        let mut forged = record.clone();
        if forged.seq == 11 {
            forged.details = "{\"forged\":true}".into();
        }
        forged.prev_hash = prev.clone();
        forged.hash = pam::audit::chain::hash(&forged).to_vec();
        prev = forged.hash.clone();
        let set = format!(
            "UPDATE audit_events SET details = '{}', prev_hash = {}, hash = {} WHERE seq = {}",
            forged.details,
            bytes_literal(&db, &forged.prev_hash),
            bytes_literal(&db, &forged.hash),
            forged.seq
        );
        exec(&db, &set).await;
    }
    exec(
        &db,
        &format!("UPDATE audit_head SET hash = {}", bytes_literal(&db, &prev)),
    )
    .await;
    db.close().await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(
        text.contains("signed checkpoint at seq 15 does not match the chain"),
        "{text}"
    );
    assert!(
        !text.contains("was changed"),
        "the forgery itself is consistent: {text}"
    );
}

#[tokio::test]
async fn a_truncated_tail_is_caught() {
    let trail = Trail::new(40).await;
    trail
        .exec(&["DELETE FROM audit_events WHERE seq > 35"])
        .await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(text.contains("events after seq 35 were deleted"), "{text}");
}

#[tokio::test]
async fn a_truncated_tail_with_a_forged_head_is_caught_by_checkpoints() {
    let trail = Trail::new(40).await;
    trail
        .exec(&[
            "DELETE FROM audit_events WHERE seq > 33",
            "UPDATE audit_head SET seq = 33, hash = (SELECT hash FROM audit_events WHERE seq = 33)",
        ])
        .await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(
        text.contains("a signed checkpoint covers seq 35 but the chain ends at seq 33"),
        "{text}"
    );
}

#[tokio::test]
async fn a_forged_checkpoint_is_caught() {
    let trail = Trail::new(20).await;
    trail
        .exec(&["UPDATE audit_checkpoints SET ts = ts + 1 WHERE seq = 10"])
        .await;
    let (ok, text) = trail.verify();
    assert!(!ok, "{text}");
    assert!(
        text.contains("checkpoint at seq 10 has an invalid signature"),
        "{text}"
    );
}

/// Kills the appender with SIGKILL under load: every event it acknowledged
/// is in the trail afterwards, and the trail verifies.
#[tokio::test]
async fn acknowledged_events_survive_sigkill() {
    let trail = Trail::new(1).await;
    let mut child = trail
        .pam(&[
            "audit",
            "stress",
            "--count",
            "0",
            "--concurrency",
            "32",
            "--print-acks",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("acked ") {
                let id = rest.split(' ').nth(1).unwrap().to_owned();
                acked.push(id);
                if acked.len() == 3000 {
                    let _ = tx.send(());
                }
            }
        }
        acked
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("3000 acknowledgements within a minute");
    // SIGKILL, mid-flight: batches are being written right now.
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = reader.join().unwrap();
    assert!(acked.len() >= 3000);

    let db = trail.db().await;
    let mut missing = Vec::new();
    for chunk in acked.chunks(500) {
        let list = chunk
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",");
        let found: i64 = query_scalar(
            &db,
            &format!("SELECT COUNT(*) FROM audit_events WHERE id IN ({list})"),
        )
        .await;
        if found != chunk.len() as i64 {
            missing.push(chunk.len() as i64 - found);
        }
    }
    db.close().await;
    assert!(missing.is_empty(), "acknowledged events lost: {missing:?}");
    let (ok, text) = trail.verify();
    assert!(ok, "{text}");
}

/// Two processes append at once; the head lock keeps one chain.
#[tokio::test]
async fn concurrent_writers_keep_one_chain() {
    let trail = Trail::new(1).await;
    let spawn = || {
        trail
            .pam(&["audit", "stress", "--count", "3000", "--concurrency", "16"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ok, text) = trail.verify();
    assert!(ok, "{text}");
    assert!(text.contains("audit trail OK: 6003 events"), "{text}");
}

fn bytes_literal(db: &Db, bytes: &[u8]) -> String {
    match db.pool() {
        Pool::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
        Pool::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(bytes)),
    }
}
