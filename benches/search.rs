//! Full-text search over 100,000 indexed sessions (issue 14 item 4): the
//! time of `Search::find` (the query, the join with the sessions, the
//! snippets), p50/p95/p99 per kind of search. The goal is p95 < 500 ms.
//!
//!     bench/search.sh                              # SQLite and PostgreSQL
//!     cargo bench --bench search                   # SQLite only
//!     PAM_BENCH_DATABASE_URL=postgres://... cargo bench --bench search
//!     PAM_BENCH_SESSIONS=10000 cargo bench --bench search
//!
//! The index is generated straight into a fresh store (12 chunks per
//! session: 8 of terminal output, 3 commands, 1 more line; words drawn
//! from a skewed vocabulary of 5,000, plus a word only that session has),
//! then searches run one at a time: a word of one session, a word in
//! about 0.5% of chunks, one in about 30% of them, a two-word phrase, a word
//! nowhere, and input full of FTS syntax.

use std::time::{Duration, Instant};

use pam::domain::search::{Query, words};
use pam::search::Search;
use pam::store::{Db, Pool};

const CHUNKS_PER_SESSION: u64 = 12;
const VOCABULARY: u64 = 5000;
const ROUNDS: usize = 40;

/// The same body on either pool (the crate's `with_db!` is internal).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.pool() {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn mix(i: u64) -> u64 {
    // splitmix64: deterministic, well spread.
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A word of the vocabulary, the low ranks far more frequent.
fn word(seed: u64) -> String {
    let r = mix(seed) % 1_000_000;
    // Squaring skews towards rank 0: rank k has frequency ~ 1/sqrt(k).
    let rank = (r * r / 1_000_000) * VOCABULARY / 1_000_000;
    format!("w{rank}")
}

fn chunk_text(session: u64, chunk: u64) -> String {
    let mut text = String::new();
    for i in 0..24 {
        if i > 0 {
            text.push(if i % 8 == 0 { '\n' } else { ' ' });
        }
        text.push_str(&word(session * 1000 + chunk * 32 + i));
    }
    if chunk == 5 {
        text.push_str(&format!(" unique-{session:06}"));
    }
    text
}

async fn run() -> anyhow::Result<()> {
    let sessions: u64 = std::env::var("PAM_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let url = std::env::var("PAM_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("pam.db").display()));
    let db = Db::connect(&url, Duration::from_secs(10)).await?;
    db.migrate().await?;
    let started = Instant::now();
    seed(&db, sessions).await?;
    eprintln!(
        "{}: {sessions} sessions, {} chunks indexed in {:.1?}",
        db.backend(),
        sessions * CHUNKS_PER_SESSION,
        started.elapsed()
    );
    let search = Search::new(db.clone(), "bench".into(), dir.path().to_owned());
    let searches = [
        ("one session's word", format!("unique-{:06}", sessions / 2)),
        ("word in ~0.5% of chunks", "w900".to_owned()),
        ("word in ~30% of chunks", "w0".to_owned()),
        ("two-word phrase", "w0 w1".to_owned()),
        ("word nowhere", "nowhere-to-be-found".to_owned()),
        ("FTS syntax", "\"w3\" OR NEAR(w4* -w5) col:w6".to_owned()),
    ];
    let mut all = Vec::new();
    println!("backend  search                      hits   p50 ms   p95 ms   p99 ms");
    for (name, text) in &searches {
        let query = Query::parse(text, Some(50))?;
        let mut times = Vec::with_capacity(ROUNDS);
        let mut hits = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            hits = search.find(&query).await?.len();
            times.push(t.elapsed());
        }
        all.extend(times.iter().copied());
        let (p50, p95, p99) = percentiles(&mut times);
        println!(
            "{:<8} {name:<26} {hits:>5} {p50:>8.1} {p95:>8.1} {p99:>8.1}",
            db.backend()
        );
    }
    let (p50, p95, p99) = percentiles(&mut all);
    println!(
        "{:<8} {:<26} {:>5} {p50:>8.1} {p95:>8.1} {p99:>8.1}",
        db.backend(),
        "all searches",
        ""
    );
    if let Pool::Postgres(pool) = db.pool() {
        // Leave nothing behind in a shared server.
        sqlx::query("DELETE FROM search_chunks")
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE node = 'bench'")
            .execute(pool)
            .await?;
    }
    db.close().await;
    Ok(())
}

fn percentiles(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort();
    let at = |p: f64| {
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.95), at(0.99))
}

/// Sessions and their chunks, 500 sessions per transaction.
async fn seed(db: &Db, sessions: u64) -> anyhow::Result<()> {
    let postgres = db.backend() == "postgres";
    let insert_chunk = if postgres {
        "INSERT INTO search_chunks (session_id, source, offset_ms, body, words) \
         VALUES ($1, $2, $3, $4, to_tsvector('simple', $5))"
    } else {
        "INSERT INTO search_chunks (session_id, source, offset_ms, body, words) \
         VALUES ($1, $2, $3, $4, $5)"
    };
    let base_us: i64 = 1_750_000_000_000_000;
    for batch in (0..sessions).collect::<Vec<_>>().chunks(500) {
        on_pool!(db, pool => {
            let mut tx = pool.begin().await?;
            for &s in batch {
                let id = format!("00000000-0000-4000-8000-{s:012}");
                let started = base_us + (s as i64) * 60_000_000;
                sqlx::query(
                    "INSERT INTO sessions (id, kind, user_email, target, node, started_at, ended_at, status, indexed_at) \
                     VALUES ($1, 'ssh', $2, $3, 'bench', $4, $5, 'ended', $5)",
                )
                .bind(&id)
                .bind(format!("user{}@example.test", s % 2000))
                .bind(format!("host-{}", s % 300))
                .bind(started)
                .bind(started + 600_000_000)
                .execute(&mut *tx)
                .await?;
                for c in 0..CHUNKS_PER_SESSION {
                    let body = chunk_text(s, c);
                    let source = match c {
                        0..=7 => "output",
                        8..=10 => "command",
                        _ => "output",
                    };
                    sqlx::query(insert_chunk)
                        .bind(&id)
                        .bind(source)
                        .bind((c * 2500) as i64)
                        .bind(&body)
                        .bind(words(&body))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
    }
    Ok(())
}
