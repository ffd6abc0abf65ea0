//! Live brokered sessions (SSH channels and forwards, ECS exec, PostgreSQL):
//! the one lifecycle every room goes through.
//!
//! A room asks the policy gate for a [`Permit`] and hands it to
//! [`Sessions::open`], which returns a [`Live`] session only once the
//! decision, the `sessions` row and `session.start` are durable (fail
//! closed), with its recording created. The room may prepare meanwhile (the
//! SSH transport to the target, a database credential), but reaches the
//! target with a channel, command, query or credential only after `open`
//! returned. The live session owns its recorder and counters; the broker
//! ends it on idle and max-duration limits (with a warning first),
//! termination by id from any broker of the fleet, revocation of the broker
//! session, and a policy change that now denies the same request. The room
//! `select!`s on [`Live::ended`] and [`Live::notice`], tells the user, and
//! calls [`Live::finish`] (the recording hashed into `session.end`);
//! [`Live::abort`] is every failure path after `open`.

mod limits;
mod live;
#[cfg(test)]
mod tests;
mod upkeep;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use live::{Counters, Finish, Live, Notice};

use self::limits::{Activity, Limits};
use crate::audit::Audit;
use crate::audit::recording::{self, Recorder};
use crate::domain::audit::{AuditError, AuditEvent, EventKind, Outcome, now_us};
use crate::domain::session::{SessionKind, SessionRecord};
use crate::metrics::Metrics;
use crate::policy::Gate;
use crate::policy::permit::{Grant, Permit};
use crate::store::{self, Db};
use crate::sync::lock;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The user closed it.
    Closed,
    /// The target closed it.
    UpstreamClosed,
    Idle(Duration),
    MaxDuration(Duration),
    Terminated {
        by: String,
        reason: String,
    },
    Revoked,
    PolicyDenied(String),
    Shutdown,
    /// The recording stopped taking output (a write error such as a full
    /// disk): the session does not go on unrecorded.
    RecordingFailed(String),
    /// The recording reached `session.max_recording` (bytes).
    RecordingLimit(u64),
    Error(String),
}

impl EndReason {
    /// The line the user is told.
    pub fn message(&self) -> String {
        match self {
            EndReason::Closed => "session closed".into(),
            EndReason::UpstreamClosed => "the target closed the session".into(),
            EndReason::Idle(d) => format!(
                "session ended after {} without input (session.idle_timeout)",
                crate::config::HumanDuration(*d)
            ),
            EndReason::MaxDuration(d) => format!(
                "session ended: it reached its maximum duration of {}",
                crate::config::HumanDuration(*d)
            ),
            EndReason::Terminated { by, reason } => {
                format!("session terminated by {by}: {reason}")
            }
            EndReason::Revoked => "session ended: your broker session was revoked".into(),
            EndReason::PolicyDenied(m) => format!("session ended: policy changed ({m})"),
            EndReason::Shutdown => "session ended: the broker is shutting down".into(),
            EndReason::RecordingFailed(e) => format!(
                "session ended: it can no longer be recorded ({e}); pam does not run sessions unrecorded"
            ),
            EndReason::RecordingLimit(max) => format!(
                "session ended: its recording reached session.max_recording ({})",
                crate::config::ByteSize(*max)
            ),
            EndReason::Error(e) => format!("session ended: {e}"),
        }
    }

    /// The short form stored in the sessions table and audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::UpstreamClosed => "upstream_closed",
            EndReason::Idle(_) => "idle_timeout",
            EndReason::MaxDuration(_) => "max_duration",
            EndReason::Terminated { .. } => "terminated",
            EndReason::Revoked => "revoked",
            EndReason::PolicyDenied(_) => "policy_denied",
            EndReason::Shutdown => "shutdown",
            EndReason::RecordingFailed(_) => "recording_failed",
            EndReason::RecordingLimit(_) => "recording_limit",
            EndReason::Error(_) => "error",
        }
    }

    /// Ended by the user or the target, not by the broker.
    pub fn is_normal(&self) -> bool {
        matches!(self, EndReason::Closed | EndReason::UpstreamClosed)
    }
}

/// What a room knows about a session besides its [`Permit`] (who, which
/// action on which target, from where, with which reason).
pub struct NewSession {
    pub kind: SessionKind,
    /// The login on the target (SSH login, database user), if any.
    pub login: Option<String>,
    /// The client software (SSH version string, `application_name`).
    pub client: Option<String>,
    /// Kind-specific fields of `session.start` (channel, command, database…).
    pub details: serde_json::Value,
}

/// What a session records besides its audit events.
#[derive(Debug, Clone)]
pub enum Recording {
    /// Nothing: SFTP (its operations are audited one by one) and TCP forwards.
    Off,
    /// The terminal in asciicast v2, for shells and commands (off with
    /// `session.record = false`).
    Terminal {
        title: String,
        cols: u32,
        rows: u32,
        term: Option<String>,
    },
    /// The PostgreSQL query log (asciicast v2, every statement whole).
    QueryLog { title: String },
}

/// Why [`Sessions::open`] refused. The message is safe to show the user.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("refused: {0}")]
    Unrecorded(#[from] AuditError),
    #[error("refused: the session cannot be recorded")]
    Recording(#[source] std::io::Error),
    #[error("refused: the broker is shutting down; try again in a moment")]
    ShuttingDown,
    /// The data_dir has no room for a recording (fail closed).
    #[error("refused: {0}; the session cannot be recorded")]
    StorageFull(String),
    #[error("refused: your broker session has ended (revoked or expired); run `pam login`")]
    BrokerSessionEnded,
}

/// The live-session registry of this broker. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    audit: Audit,
    gate: Gate,
    metrics: Arc<Metrics>,
    node: String,
    limits: Limits,
    /// `session.record`: terminal recordings on.
    record_terminals: bool,
    recordings: PathBuf,
    /// `session.max_recording` in bytes.
    max_recording: u64,
    /// `server.shutdown_grace`: what live sessions get on shutdown.
    grace: Duration,
    /// Set when shutdown starts: no new session opens.
    draining: CancellationToken,
    /// Set once every session ended on shutdown and its end is recorded.
    drained: CancellationToken,
    live: Mutex<HashMap<String, Arc<Entry>>>,
    /// Session ends the store could not take yet; retried every second.
    unrecorded: Mutex<Vec<PendingEnd>>,
}

/// A live session as the registry holds it.
struct Entry {
    id: String,
    kind: SessionKind,
    grant: Grant,
    login: Option<String>,
    /// Path of the recording under the recordings directory.
    recording: Option<String>,
    started_us: i64,
    activity: Activity,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    cancel: CancellationToken,
    reason: Mutex<Option<EndReason>>,
    notices: mpsc::Sender<Notice>,
}

/// A session end whose row update or `session.end` is still to be written.
struct PendingEnd {
    id: String,
    row: Option<store::sessions::SessionEnd>,
    event: Option<AuditEvent>,
}

impl Sessions {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        audit: Audit,
        gate: Gate,
        metrics: Arc<Metrics>,
        node: String,
        session: &crate::config::SessionConfig,
        recordings: PathBuf,
        grace: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                audit,
                gate,
                metrics,
                node,
                limits: Limits {
                    idle: session.idle_timeout.0,
                    max: session.max_duration.0,
                    warn_before: session.warn_before.0,
                },
                record_terminals: session.record,
                recordings,
                max_recording: session.max_recording.0,
                grace,
                draining: CancellationToken::new(),
                drained: CancellationToken::new(),
                live: Mutex::new(HashMap::new()),
                unrecorded: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Resolves once shutdown has ended every session (after
    /// `server.shutdown_grace`) and their ends are recorded, or were kept
    /// for later.
    pub async fn drained(&self) {
        self.inner.drained.cancelled().await
    }

    /// Why recorded sessions cannot open now (the data_dir is full), for
    /// readiness and [`Sessions::open`].
    pub fn storage_problem(&self) -> Option<String> {
        recording::storage_problem(&self.inner.recordings)
    }

    /// Opens a session for what `permit` allowed. Returns only once the
    /// policy decision, the `sessions` row and `session.start` are durable
    /// (with a fail-closed trail; otherwise a lost record is logged) and the
    /// recording exists; refuses when the broker session has ended since
    /// the caller authenticated. Nothing may reach the target before.
    pub async fn open(
        &self,
        permit: Permit,
        new: NewSession,
        recording: Recording,
    ) -> Result<Live, OpenError> {
        let (grant, decision) = permit.into_parts();
        let id = uuid::Uuid::now_v7().to_string();
        let started_us = now_us();
        let header = self.header(&id, started_us, &grant, &recording);
        let relative = header
            .as_ref()
            .map(|_| recording::relative_path(&id, started_us));
        let (notices_tx, notices) = mpsc::channel(8);
        let entry = Arc::new(Entry {
            id: id.clone(),
            kind: new.kind,
            grant,
            login: new.login.clone(),
            recording: relative.as_ref().map(|p| p.display().to_string()),
            started_us,
            activity: Activity::new(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            reason: Mutex::new(None),
            notices: notices_tx,
        });

        if self.inner.draining.is_cancelled() {
            return Err(OpenError::ShuttingDown);
        }
        // No room for a recording: refused before anything is written.
        if header.is_some()
            && let Some(problem) = self.storage_problem()
        {
            tracing::warn!(session = %id, "{problem}: session refused");
            return Err(OpenError::StorageFull(problem));
        }
        // The broker session is checked again here, not taken from the
        // login: a channel opened after `pam logout` is refused. The
        // recording exists before `session.start` names it.
        let (alive, recorder) = tokio::join!(
            self.broker_session_alive(&entry.grant.principal.session_id),
            self.create_recorder(&entry, relative.as_deref(), header.as_ref()),
        );
        let recorder = match recorder {
            Ok(recorder) => recorder,
            Err(e) if recording::is_full(&e) => {
                tracing::warn!(error = %e, session = %id, "no room for the session recording");
                return Err(OpenError::StorageFull(format!(
                    "the broker's data_dir is full ({e})"
                )));
            }
            Err(e) => {
                tracing::error!(error = %e, session = %id, "creating the session recording failed");
                return Err(OpenError::Recording(e));
            }
        };
        if let Err(e) = alive {
            self.discard(recorder, relative.as_deref()).await;
            return Err(e);
        }
        let record = self.record_of(&entry, &new);
        if let Err(e) = store::sessions::insert(&self.inner.db, &record).await {
            self.discard(recorder, relative.as_deref()).await;
            return Err(AuditError::unavailable(e).into());
        }
        let start = self.start_event(&entry, new);
        // Queued behind the decision, so usually one commit covers both.
        let start = self.inner.audit.enqueue(start).await;
        let decided = decision.confirm().await;
        if let Err(e) = start.confirm().await {
            let _ = store::sessions::finish(
                &self.inner.db,
                &id,
                &store::sessions::SessionEnd {
                    ended_at: now_us(),
                    end_reason: "refused: audit trail unavailable".into(),
                    ..Default::default()
                },
            )
            .await;
            self.discard(recorder, relative.as_deref()).await;
            return Err(e.into());
        }
        let live = Live::new(entry, self.clone(), notices, recorder);
        if let Err(e) = decided {
            // The start is on record: so is its end.
            live.abort(EndReason::Error(format!(
                "the policy decision could not be recorded: {e}"
            )))
            .await;
            return Err(e.into());
        }
        lock(&self.inner.live).insert(id, live.entry().clone());
        Ok(live)
    }

    /// The session's recording, created before `session.start` names it
    /// (`None` when nothing is recorded).
    async fn create_recorder(
        &self,
        entry: &Arc<Entry>,
        relative: Option<&std::path::Path>,
        header: Option<&recording::Header>,
    ) -> std::io::Result<Option<(Recorder, recording::Writer)>> {
        let (Some(relative), Some(header)) = (relative, header) else {
            return Ok(None);
        };
        let ending = entry.clone();
        let options = recording::Options {
            max_bytes: Some(self.inner.max_recording),
            // Fail closed: a recording that stops ends its session.
            on_fault: Box::new(move |fault| {
                ending.end(match fault {
                    recording::Fault::Write(e) => EndReason::RecordingFailed(e),
                    recording::Fault::Limit(max) => EndReason::RecordingLimit(max),
                });
            }),
        };
        Recorder::create(&self.inner.recordings, relative, header, options)
            .await
            .map(Some)
    }

    /// The `sessions` row of a session being opened.
    fn record_of(&self, entry: &Entry, new: &NewSession) -> SessionRecord {
        SessionRecord {
            id: entry.id.clone(),
            kind: new.kind,
            user_email: entry.grant.principal.email().to_owned(),
            broker_session: Some(entry.grant.principal.session_id.clone()),
            target: entry.target().to_owned(),
            login: new.login.clone(),
            node: self.inner.node.clone(),
            source_ip: entry.source_ip().map(|ip| ip.to_canonical().to_string()),
            client: new.client.clone(),
            started_at: entry.started_us,
            ended_at: None,
            status: "live".into(),
            end_reason: None,
            bytes_in: 0,
            bytes_out: 0,
            recording: entry.recording.clone(),
            recording_sha256: None,
            exit_status: None,
            details: crate::audit::chain::canonical_json(&new.details),
            terminate_requested_at: None,
            terminate_by: None,
            terminate_reason: None,
        }
    }

    /// `session.start` of a session being opened.
    fn start_event(&self, entry: &Entry, new: NewSession) -> AuditEvent {
        AuditEvent::new(EventKind::SessionStart, Outcome::Success)
            .actor(entry.grant.principal.email())
            .source_ip(entry.source_ip())
            .target(entry.target())
            .session(&entry.id)
            .details(json!({
                "kind": new.kind.as_str(),
                "broker_session": entry.grant.principal.session_id,
                "login": new.login,
                "client": new.client,
                "reason": entry.grant.context.reason,
                "recording": entry.recording,
                "node": self.inner.node,
                "details": new.details,
            }))
    }

    /// The recording header for `recording`, if anything is recorded.
    fn header(
        &self,
        id: &str,
        started_us: i64,
        grant: &Grant,
        recording: &Recording,
    ) -> Option<recording::Header> {
        let clamp = |n: u32| n.min(u32::from(u16::MAX)) as u16;
        let (title, width, height, term) = match recording {
            Recording::Off => return None,
            Recording::Terminal { .. } if !self.inner.record_terminals => return None,
            Recording::Terminal {
                title,
                cols,
                rows,
                term,
            } => (title.clone(), clamp(*cols), clamp(*rows), term.clone()),
            Recording::QueryLog { title } => (title.clone(), 120, 40, None),
        };
        Some(recording::Header {
            width,
            height,
            timestamp: started_us / 1_000_000,
            title,
            term,
            session_id: id.to_owned(),
            user: grant.principal.email().to_owned(),
            target: grant.resource.name().to_owned(),
        })
    }

    /// Closes and removes the recording of a session that never opened.
    async fn discard(
        &self,
        recorder: Option<(Recorder, recording::Writer)>,
        relative: Option<&std::path::Path>,
    ) {
        if let Some((recorder, writer)) = recorder {
            drop(recorder);
            let _ = writer.finish().await;
        }
        if let Some(relative) = relative {
            let _ = tokio::fs::remove_file(self.inner.recordings.join(relative)).await;
        }
    }

    async fn broker_session_alive(&self, broker_session: &str) -> Result<(), OpenError> {
        match store::sessions::dead_broker_sessions(
            &self.inner.db,
            &[broker_session.to_owned()],
            now_us(),
        )
        .await
        {
            Ok(dead) if dead.is_empty() => Ok(()),
            Ok(_) => Err(OpenError::BrokerSessionEnded),
            Err(e) => Err(AuditError::unavailable(e).into()),
        }
    }

    /// Asks a session to end, wherever it runs. Audited; false when no live
    /// session has this id.
    pub async fn terminate(&self, id: &str, by: &str, reason: &str) -> Result<bool, store::Error> {
        let requested =
            store::sessions::request_termination(&self.inner.db, id, by, reason, now_us()).await?;
        if requested {
            self.inner
                .audit
                .note(
                    AuditEvent::new(EventKind::AdminChange, Outcome::Success)
                        .actor(by)
                        .session(id)
                        .details(json!({"change": "session.terminate", "reason": reason})),
                )
                .await;
            self.end_local(
                id,
                EndReason::Terminated {
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                },
            );
        }
        Ok(requested)
    }

    /// Ends every live session opened with this broker session.
    pub fn end_broker_session(&self, broker_session: &str) {
        for entry in self.entries() {
            if entry.grant.principal.session_id == broker_session {
                entry.end(EndReason::Revoked);
            }
        }
    }

    fn end_local(&self, id: &str, reason: EndReason) -> bool {
        let entry = lock(&self.inner.live).get(id).cloned();
        match entry {
            Some(entry) => {
                entry.end(reason);
                true
            }
            None => false,
        }
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        lock(&self.inner.live).values().cloned().collect()
    }

    fn deregister(&self, id: &str) {
        lock(&self.inner.live).remove(id);
    }

    pub async fn list(
        &self,
        filter: &crate::domain::session::SessionFilter,
    ) -> Result<Vec<SessionRecord>, store::Error> {
        store::sessions::list(&self.inner.db, filter).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<SessionRecord>, store::Error> {
        store::sessions::get(&self.inner.db, id).await
    }

    /// Number of live sessions in this broker.
    pub fn live_count(&self) -> usize {
        lock(&self.inner.live).len()
    }
}

impl Entry {
    fn target(&self) -> &str {
        self.grant.resource.name()
    }

    fn source_ip(&self) -> Option<std::net::IpAddr> {
        self.grant.context.source_ip
    }

    /// Applies the limits at `now`: ends the session, or sends its
    /// warnings to the user (a session already ended is left alone).
    fn enforce(&self, limits: &Limits, now: tokio::time::Instant) {
        if self.cancel.is_cancelled() {
            return;
        }
        let verdict = limits.check(&self.activity, now);
        if let Some(reason) = verdict.end {
            self.end(reason);
            return;
        }
        for warning in verdict.warnings {
            let _ = self.notices.try_send(Notice::Warning(warning));
        }
    }

    /// Ends the session with `reason`, unless it already has one.
    fn end(&self, reason: EndReason) {
        {
            let mut slot = lock(&self.reason);
            if slot.is_none() {
                *slot = Some(reason);
            }
        }
        self.cancel.cancel();
    }

    fn end_reason(&self) -> Option<EndReason> {
        lock(&self.reason).clone()
    }
}
