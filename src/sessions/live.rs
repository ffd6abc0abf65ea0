//! A live session as its room holds it: the handle on its registry entry,
//! its recorder and counters, the notices for the user, and the one way to
//! end it ([`Live::finish`], or [`Live::abort`] on a failure path), which
//! closes and hashes the recording and records `session.end`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{EndReason, Entry, PendingEnd, Sessions};
use crate::audit::recording::{self, Recorder};
use crate::domain::audit::{AuditEvent, EventKind, Outcome, format_us, now_us};
use crate::domain::principal::Principal;
use crate::domain::session::SessionKind;
use crate::metrics::SessionGauge;

/// A live session, held by the room's connection task.
pub struct Live {
    entry: Arc<Entry>,
    sessions: Sessions,
    notices: mpsc::Receiver<Notice>,
    recorder: Option<Recorder>,
    writer: Option<recording::Writer>,
    _gauge: SessionGauge,
    finished: bool,
}

/// How a session ended, as the room saw it.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    pub exit_status: Option<i64>,
    /// Kind-specific fields of `session.end`.
    pub details: serde_json::Value,
}

/// A notice for the user of a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A warning line (limits about to end the session).
    Warning(String),
}

/// Byte counters and input activity of a live session, for relay tasks.
#[derive(Clone)]
pub struct Counters {
    entry: Arc<Entry>,
}

impl Live {
    pub(super) fn new(
        entry: Arc<Entry>,
        sessions: Sessions,
        notices: mpsc::Receiver<Notice>,
        recorder: Option<(Recorder, recording::Writer)>,
    ) -> Self {
        let gauge = sessions.inner.metrics.session(entry.kind.as_str());
        let (recorder, writer) = match recorder {
            Some((recorder, writer)) => (Some(recorder), Some(writer)),
            None => (None, None),
        };
        Self {
            entry,
            sessions,
            notices,
            recorder,
            writer,
            _gauge: gauge,
            finished: false,
        }
    }

    pub(super) fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    pub fn id(&self) -> &str {
        &self.entry.id
    }

    pub fn kind(&self) -> SessionKind {
        self.entry.kind
    }

    pub fn principal(&self) -> &Principal {
        &self.entry.grant.principal
    }

    pub fn started_us(&self) -> i64 {
        self.entry.started_us
    }

    /// The session's recorder (clone it into relay tasks); `None` when
    /// nothing is recorded.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    /// The user typed something (keep-alives do not count).
    pub fn touch(&self) {
        self.entry.activity.touch();
    }

    /// A handle on this session's counters for relay tasks.
    pub fn counters(&self) -> Counters {
        Counters {
            entry: self.entry.clone(),
        }
    }

    /// Bytes from the user to the target.
    pub fn add_in(&self, n: usize) {
        self.entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes from the target to the user.
    pub fn add_out(&self, n: usize) {
        self.entry.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Resolves when the session is ended (by the broker: limits,
    /// termination, revocation, policy, shutdown; or by [`Live::end`]); the
    /// reason is in [`Live::end_reason`].
    pub async fn ended(&self) {
        self.entry.cancel.cancelled().await
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.entry.cancel.clone()
    }

    pub fn end_reason(&self) -> Option<EndReason> {
        self.entry.end_reason()
    }

    /// Ends the session from the room's side (the user or target closed);
    /// a reason already set stays.
    pub fn end(&self, reason: EndReason) {
        self.entry.end(reason);
    }

    /// The next notice for the user (pending forever when there is none).
    pub async fn notice(&mut self) -> Notice {
        match self.notices.recv().await {
            Some(notice) => notice,
            None => std::future::pending().await,
        }
    }

    /// Ends the session on a failure path (`reason`, unless the broker
    /// ended it first) and records it like [`Live::finish`].
    pub async fn abort(self, reason: EndReason) {
        self.end(reason);
        self.finish(Finish::default()).await;
    }

    /// Deregisters the session, closes its recording (written, synced,
    /// hashed) and records the end: the sessions row and `session.end` with
    /// bytes, exit status and the recording's SHA-256. An end the store
    /// cannot take now is written once it can.
    pub async fn finish(mut self, finish: Finish) {
        self.finished = true;
        self.sessions.deregister(&self.entry.id);
        self.recorder = None;
        let writer = self.writer.take();
        complete(self.sessions.clone(), self.entry.clone(), writer, finish).await;
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The room's task ended without finishing (a panic): the session
        // still ends, on the record.
        tracing::error!(session = %self.entry.id, "live session dropped without finish");
        self.sessions.deregister(&self.entry.id);
        self.entry.end(EndReason::Error(
            "the broker's session task ended unexpectedly".into(),
        ));
        self.recorder = None;
        let writer = self.writer.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(complete(
                self.sessions.clone(),
                self.entry.clone(),
                writer,
                Finish::default(),
            ));
        }
    }
}

/// Closes the recording and records the end of `entry`.
async fn complete(
    sessions: Sessions,
    entry: Arc<Entry>,
    writer: Option<recording::Writer>,
    finish: Finish,
) {
    let written = match writer {
        Some(writer) => Some(writer.finish().await),
        None => None,
    };
    let (sha256, recorded_bytes, recording_error) = match written {
        Some(Ok(finished)) => (Some(finished.sha256), Some(finished.bytes), None),
        Some(Err(e)) => {
            tracing::error!(error = %e, session = %entry.id, "finishing the recording failed");
            (None, None, Some(e.to_string()))
        }
        None => (None, None, None),
    };
    let reason = entry.end_reason().unwrap_or(EndReason::Closed);
    let now = now_us();
    let bytes_in = entry.bytes_in.load(Ordering::Relaxed) as i64;
    let bytes_out = entry.bytes_out.load(Ordering::Relaxed) as i64;
    let row = crate::store::sessions::SessionEnd {
        ended_at: now,
        end_reason: reason.code().to_owned(),
        bytes_in,
        bytes_out,
        recording_sha256: sha256.clone(),
        exit_status: finish.exit_status,
    };
    let outcome = match reason {
        EndReason::Closed | EndReason::UpstreamClosed => Outcome::Success,
        EndReason::Error(_) | EndReason::RecordingFailed(_) => Outcome::Failure,
        _ => Outcome::Denied,
    };
    let event = AuditEvent::new(EventKind::SessionEnd, outcome)
        .actor(entry.grant.principal.email())
        .source_ip(entry.source_ip())
        .target(entry.target())
        .session(&entry.id)
        .details(json!({
            "kind": entry.kind.as_str(),
            "end_reason": reason.code(),
            "message": reason.message(),
            "duration_ms": (now - entry.started_us) / 1000,
            "started": format_us(entry.started_us),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "exit_status": finish.exit_status,
            "recording": entry.recording,
            "recording_sha256": sha256,
            "recording_bytes": recorded_bytes,
            "recording_error": recording_error,
            "login": entry.login,
            "details": finish.details,
        }));
    sessions
        .record_end(PendingEnd {
            id: entry.id.clone(),
            row: Some(row),
            event: Some(event),
        })
        .await;
}

impl Counters {
    /// `n` bytes of user input (counts as activity).
    pub fn input(&self, n: usize) {
        self.entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.entry.activity.touch();
    }

    /// `n` bytes of output (not activity).
    pub fn output(&self, n: usize) {
        self.entry.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}
