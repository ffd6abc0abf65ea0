//! Full-text search over sessions (service): what each session showed and
//! ran (terminal output from its recording, its `ssh.command` and
//! `ssh.exec` commands, a PostgreSQL session's query log) is indexed once
//! the session has ended, and searched as literal words
//! (`domain::search`).
//!
//! Indexing runs on its own task ([`Search::run`]), never on a session's
//! path: it picks the ended sessions this broker held that have no index
//! yet (so sessions of a crashed broker, closed at its restart, are indexed
//! then), reads their recording and events, and stores the chunks and the
//! mark in one transaction. A failure to index is logged and retried; it
//! never touches the audit trail. Who may search, and the record of each
//! search, are the caller's (the web room's gate).

pub mod text;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::domain::audit::{EventFilter, now_us};
use crate::domain::search::{self, Hit, Query, source};
use crate::store::{self, Db};
use text::Chunker;

/// Characters of terminal output (or query log) indexed per session; the
/// rest is not searchable (commands always are).
pub const MAX_OUTPUT_CHARS: usize = 256 * 1024;
/// Commands indexed per session.
const MAX_COMMANDS: usize = 10_000;
/// How often the indexer looks for ended sessions.
const POLL: Duration = Duration::from_secs(1);
/// Characters of context in a hit's snippet.
const SNIPPET_CHARS: usize = 120;

/// Cheap to clone.
#[derive(Clone)]
pub struct Search {
    db: Db,
    node: String,
    recordings_dir: PathBuf,
}

impl Search {
    pub fn new(db: Db, node: String, recordings_dir: PathBuf) -> Search {
        Search {
            db,
            node,
            recordings_dir,
        }
    }

    /// The chunks matching `query`, newest first, each with its snippet.
    pub async fn find(&self, query: &Query) -> Result<Vec<Hit>, store::Error> {
        let found = store::search::find(&self.db, query).await?;
        let first = query.words.split(' ').next().unwrap_or_default();
        Ok(found
            .into_iter()
            .map(|f| {
                let mut hit = f.hit;
                hit.snippet = search::snippet(&f.body, first, SNIPPET_CHARS);
                hit
            })
            .collect())
    }

    /// Indexes ended sessions until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.index_pending(&shutdown).await {
                tracing::warn!(error = %e, "indexing ended sessions for search failed; retrying");
            }
        }
    }

    /// Indexes every ended session waiting; returns how many.
    pub async fn index_pending(&self, shutdown: &CancellationToken) -> anyhow::Result<usize> {
        let mut done = 0;
        loop {
            let pending = store::search::pending(&self.db, &self.node, 16).await?;
            if pending.is_empty() || shutdown.is_cancelled() {
                return Ok(done);
            }
            for session in pending {
                self.index(&session).await?;
                done += 1;
            }
        }
    }

    async fn index(&self, session: &store::search::Pending) -> Result<(), store::Error> {
        let mut chunks = self.commands(session).await?;
        match self.recording_chunks(session).await {
            Ok(more) => chunks.extend(more),
            Err(e) => tracing::warn!(
                session = %session.id, error = %e,
                "the recording could not be read for search; its commands are indexed"
            ),
        }
        let now = now_us();
        match store::search::store(&self.db, &session.id, &chunks, now).await {
            Err(e) if e.is_refusal() => {
                tracing::error!(session = %session.id, error = %e, "the store refused the search index of a session; it stays unsearchable");
                store::search::store(&self.db, &session.id, &[], now).await
            }
            other => other,
        }
    }

    /// `ssh.command` and `ssh.exec` events of the session.
    async fn commands(
        &self,
        session: &store::search::Pending,
    ) -> Result<Vec<store::search::NewChunk>, store::Error> {
        let mut chunks = Vec::new();
        let mut after = None;
        while chunks.len() < MAX_COMMANDS {
            let filter = EventFilter {
                kinds: vec!["ssh.command".into(), "ssh.exec".into()],
                session_id: Some(session.id.clone()),
                after_seq: after,
                ascending: true,
                limit: 1000,
                ..Default::default()
            };
            let events = store::audit::list(&self.db, &filter).await?;
            let Some(last) = events.last() else { break };
            after = Some(last.seq);
            for e in &events {
                let details: serde_json::Value =
                    serde_json::from_str(&e.details).unwrap_or_default();
                let Some(command) = details["command"].as_str() else {
                    continue;
                };
                let offset = details["offset"]
                    .as_f64()
                    .unwrap_or((e.time_us - session.started_at) as f64 / 1e6)
                    .max(0.0);
                chunks.push(new_chunk(source::COMMAND, offset, command.to_owned()));
            }
        }
        Ok(chunks)
    }

    /// Chunks of the session's recording (terminal output, or the query log).
    async fn recording_chunks(
        &self,
        session: &store::search::Pending,
    ) -> std::io::Result<Vec<store::search::NewChunk>> {
        let Some(relative) = session.recording.as_deref().map(Path::new) else {
            return Ok(Vec::new());
        };
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Ok(Vec::new());
        }
        let kind = if session.kind == "postgres" {
            source::SQL
        } else {
            source::OUTPUT
        };
        let file = match tokio::fs::File::open(self.recordings_dir.join(relative)).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut lines = tokio::io::BufReader::new(file).lines();
        let mut chunker = Chunker::new(MAX_OUTPUT_CHARS);
        while let Some(line) = lines.next_line().await? {
            // The header is an object; events are `[time, code, data]`,
            // bytes that were not UTF-8 escaped (read back, then replaced).
            let Some((time, code, data)) = crate::audit::asciicast::read_event(&line) else {
                continue;
            };
            if code == "o" {
                chunker.feed(time, &String::from_utf8_lossy(&data));
            }
            if chunker.dropped > 0 {
                break;
            }
        }
        Ok(chunker
            .finish()
            .into_iter()
            .map(|c| new_chunk(kind, c.offset, c.text))
            .collect())
    }
}

fn new_chunk(source: &'static str, offset: f64, body: String) -> store::search::NewChunk {
    store::search::NewChunk {
        source,
        offset_ms: (offset * 1000.0).round() as i64,
        words: search::words(&body),
        body,
    }
}
