//! Live brokered sessions (SSH, ECS exec, PostgreSQL), one implementation
//! of their lifecycle for every room: the `sessions` row, `session.start` /
//! `session.end`, idle and max-duration limits with a warning a minute
//! before, termination by id (from any broker of the fleet), and ending
//! sessions whose broker session is revoked or whose policy now denies.
//!
//! A room opens a [`Live`] after the policy gate allowed the access, feeds
//! it byte counts and input activity, and `select!`s on
//! [`Live::ended`] and [`Live::notice`]; it tells the user why, closes, and
//! calls [`Live::finish`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::domain::audit::{AuditError, AuditEvent, EventKind, Outcome, format_us, now_us};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::principal::Principal;
use crate::metrics::{Metrics, SessionGauge};
use crate::policy::Gate;
use crate::store::{self, Db};

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
            EndReason::Error(_) => "error",
        }
    }
}

/// What a room knows when it opens a session.
pub struct NewSession {
    /// `ssh`, `ecs` or `postgres`.
    pub kind: &'static str,
    pub principal: Principal,
    pub target: String,
    pub login: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub client: Option<String>,
    /// The access the policy gate allowed (re-checked when policy changes).
    pub action: Action,
    pub resource: Resource,
    pub context: RequestContext,
    /// Path of the recording under the recordings directory, if any.
    pub recording: Option<String>,
    pub details: serde_json::Value,
}

/// How a session ended, as the room saw it.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    pub exit_status: Option<i64>,
    pub recording_sha256: Option<String>,
    pub details: serde_json::Value,
}

/// A notice for the user of a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A warning line (limits about to end the session).
    Warning(String),
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
    idle_timeout: Duration,
    max_duration: Duration,
    warn_before: Duration,
    live: Mutex<HashMap<String, Arc<Entry>>>,
}

struct Entry {
    id: String,
    new: NewSession,
    started_us: i64,
    last_input_us: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    cancel: CancellationToken,
    reason: Mutex<Option<EndReason>>,
    notices: mpsc::Sender<Notice>,
    warned_idle: std::sync::atomic::AtomicBool,
    warned_max: std::sync::atomic::AtomicBool,
}

/// A live session, held by the room's connection task.
pub struct Live {
    entry: Arc<Entry>,
    sessions: Sessions,
    notices: mpsc::Receiver<Notice>,
    _gauge: SessionGauge,
    finished: bool,
}

impl Sessions {
    pub fn new(
        db: Db,
        audit: Audit,
        gate: Gate,
        metrics: Arc<Metrics>,
        node: String,
        session: &crate::config::SessionConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                audit,
                gate,
                metrics,
                node,
                idle_timeout: session.idle_timeout.0,
                max_duration: session.max_duration.0,
                warn_before: session.warn_before.0,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    /// Records the session (row + `session.start`) and registers it. With a
    /// fail-closed trail, an unrecordable session is refused.
    pub async fn open(&self, new: NewSession) -> Result<Live, AuditError> {
        let id = uuid::Uuid::now_v7().to_string();
        self.open_with_id(id, new).await
    }

    /// Like [`Sessions::open`] with an id chosen by the room (it may name
    /// the recording before the session is opened).
    pub async fn open_with_id(&self, id: String, new: NewSession) -> Result<Live, AuditError> {
        let now = now_us();
        let record = crate::domain::session::SessionRecord {
            id: id.clone(),
            kind: new.kind.to_owned(),
            user_email: new.principal.identity.email.clone(),
            broker_session: Some(new.principal.session_id.clone()),
            target: new.target.clone(),
            login: new.login.clone(),
            node: self.inner.node.clone(),
            source_ip: new.source_ip.map(|ip| ip.to_canonical().to_string()),
            client: new.client.clone(),
            started_at: now,
            ended_at: None,
            status: "live".into(),
            end_reason: None,
            bytes_in: 0,
            bytes_out: 0,
            recording: new.recording.clone(),
            recording_sha256: None,
            exit_status: None,
            details: crate::audit::chain::canonical_json(&new.details),
            terminate_requested_at: None,
            terminate_by: None,
            terminate_reason: None,
        };
        store::sessions::insert(&self.inner.db, &record)
            .await
            .map_err(|e| AuditError::Unavailable(e.to_string()))?;
        let event = AuditEvent::new(EventKind::SessionStart, Outcome::Success)
            .actor(&new.principal.identity.email)
            .source_ip(new.source_ip)
            .target(&new.target)
            .session(&id)
            .details(json!({
                "kind": new.kind,
                "broker_session": new.principal.session_id,
                "login": new.login,
                "client": new.client,
                "reason": new.context.reason,
                "recording": new.recording,
                "node": self.inner.node,
                "details": new.details,
            }));
        if let Err(e) = self.inner.audit.gate(event).await {
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
            return Err(e);
        }
        let (tx, rx) = mpsc::channel(8);
        let entry = Arc::new(Entry {
            id: id.clone(),
            started_us: now,
            last_input_us: AtomicI64::new(now),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            reason: Mutex::new(None),
            notices: tx,
            warned_idle: false.into(),
            warned_max: false.into(),
            new,
        });
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(id, entry.clone());
        }
        let gauge = self.inner.metrics.session(entry.new.kind);
        Ok(Live {
            entry,
            sessions: self.clone(),
            notices: rx,
            _gauge: gauge,
            finished: false,
        })
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
            if entry.new.principal.session_id == broker_session {
                end(&entry, EndReason::Revoked);
            }
        }
    }

    fn end_local(&self, id: &str, reason: EndReason) -> bool {
        let entry = self.inner.live.lock().ok().and_then(|l| l.get(id).cloned());
        match entry {
            Some(entry) => {
                end(&entry, reason);
                true
            }
            None => false,
        }
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.inner
            .live
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    pub async fn list(
        &self,
        filter: &crate::domain::session::SessionFilter,
    ) -> Result<Vec<crate::domain::session::SessionRecord>, store::Error> {
        store::sessions::list(&self.inner.db, filter).await
    }

    pub async fn get(
        &self,
        id: &str,
    ) -> Result<Option<crate::domain::session::SessionRecord>, store::Error> {
        store::sessions::get(&self.inner.db, id).await
    }

    /// Number of live sessions in this broker.
    pub fn live_count(&self) -> usize {
        self.inner.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Background work: limits every second; termination requests and
    /// revocations from other brokers every second; re-checks on policy
    /// changes; ends everything on shutdown.
    pub async fn run(
        self,
        mut revocations: tokio::sync::broadcast::Receiver<String>,
        shutdown: CancellationToken,
    ) {
        let closed =
            store::sessions::close_orphans(&self.inner.db, &self.inner.node, now_us()).await;
        if let Ok(n) = closed
            && n > 0
        {
            tracing::warn!(
                sessions = n,
                "marked sessions of a previous run of this broker as ended"
            );
        }
        let mut policy = self.inner.gate.engine().generation();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    for entry in self.entries() {
                        end(&entry, EndReason::Shutdown);
                    }
                    return;
                }
                revoked = revocations.recv() => {
                    if let Ok(jti) = revoked {
                        self.end_broker_session(&jti);
                    }
                }
                changed = policy.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    self.recheck_all().await;
                }
                _ = ticker.tick() => {
                    tick += 1;
                    self.enforce_limits().await;
                    self.poll_fleet().await;
                    if tick.is_multiple_of(5) {
                        self.save_counters().await;
                    }
                }
            }
        }
    }

    async fn enforce_limits(&self) {
        let now = now_us();
        let idle = self.inner.idle_timeout.as_micros() as i64;
        let max = self.inner.max_duration.as_micros() as i64;
        let warn = self.inner.warn_before.as_micros() as i64;
        for entry in self.entries() {
            if entry.cancel.is_cancelled() {
                continue;
            }
            let since_input = now - entry.last_input_us.load(Ordering::Relaxed);
            let age = now - entry.started_us;
            if since_input >= idle {
                end(&entry, EndReason::Idle(self.inner.idle_timeout));
                continue;
            }
            if age >= max {
                end(&entry, EndReason::MaxDuration(self.inner.max_duration));
                continue;
            }
            if since_input >= idle - warn && !entry.warned_idle.swap(true, Ordering::Relaxed) {
                let left = (idle - since_input).max(0) / 1_000_000;
                let _ = entry.notices.try_send(Notice::Warning(format!(
                    "pam: this session ends in {left}s without input (idle timeout)"
                )));
            }
            if age >= max - warn && !entry.warned_max.swap(true, Ordering::Relaxed) {
                let left = (max - age).max(0) / 1_000_000;
                let _ = entry.notices.try_send(Notice::Warning(format!(
                    "pam: this session reaches its maximum duration in {left}s"
                )));
            }
        }
    }

    /// Termination requests and revocations that arrived at other brokers.
    async fn poll_fleet(&self) {
        let entries = self.entries();
        if entries.is_empty() {
            return;
        }
        match store::sessions::termination_requests(&self.inner.db, &self.inner.node).await {
            Ok(requests) => {
                for (id, by, reason) in requests {
                    self.end_local(&id, EndReason::Terminated { by, reason });
                }
            }
            Err(e) => tracing::warn!(error = %e, "polling termination requests failed"),
        }
        let mut jtis: Vec<String> = entries
            .iter()
            .map(|e| e.new.principal.session_id.clone())
            .collect();
        jtis.sort();
        jtis.dedup();
        match store::sessions::dead_broker_sessions(&self.inner.db, &jtis, now_us()).await {
            Ok(dead) => {
                for jti in dead {
                    self.end_broker_session(&jti);
                }
            }
            Err(e) => tracing::warn!(error = %e, "polling revocations failed"),
        }
    }

    async fn save_counters(&self) {
        for entry in self.entries() {
            let _ = store::sessions::update_bytes(
                &self.inner.db,
                &entry.id,
                entry.bytes_in.load(Ordering::Relaxed) as i64,
                entry.bytes_out.load(Ordering::Relaxed) as i64,
            )
            .await;
        }
    }

    /// Policy changed: every live session is decided again.
    async fn recheck_all(&self) {
        for entry in self.entries() {
            if entry.cancel.is_cancelled() {
                continue;
            }
            let new = &entry.new;
            let decision = self
                .inner
                .gate
                .recheck(
                    &new.principal.identity,
                    Some(&new.principal.session_id),
                    new.action,
                    &new.resource,
                    &new.context,
                )
                .await;
            if let Err(denied) = decision {
                end(&entry, EndReason::PolicyDenied(denied.to_string()));
            }
        }
    }
}

fn end(entry: &Entry, reason: EndReason) {
    if let Ok(mut slot) = entry.reason.lock()
        && slot.is_none()
    {
        *slot = Some(reason);
    }
    entry.cancel.cancel();
}

impl Live {
    pub fn id(&self) -> &str {
        &self.entry.id
    }

    pub fn principal(&self) -> &Principal {
        &self.entry.new.principal
    }

    pub fn started_us(&self) -> i64 {
        self.entry.started_us
    }

    /// The user typed something (keep-alives do not count).
    pub fn touch(&self) {
        self.entry.last_input_us.store(now_us(), Ordering::Relaxed);
        self.entry.warned_idle.store(false, Ordering::Relaxed);
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

    /// Resolves when the broker ends the session (limits, termination,
    /// revocation, policy, shutdown); the reason is in [`Live::end_reason`].
    pub async fn ended(&self) {
        self.entry.cancel.cancelled().await
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.entry.cancel.clone()
    }

    pub fn end_reason(&self) -> Option<EndReason> {
        self.entry.reason.lock().ok().and_then(|r| r.clone())
    }

    /// Ends the session from the room's side (the user or target closed).
    pub fn end(&self, reason: EndReason) {
        end(&self.entry, reason);
    }

    /// The next notice for the user (pending forever when there is none).
    pub async fn notice(&mut self) -> Notice {
        match self.notices.recv().await {
            Some(notice) => notice,
            None => std::future::pending().await,
        }
    }

    /// Records the end (`session.end` with bytes, exit status, recording
    /// hash) and deregisters the session.
    pub async fn finish(mut self, finish: Finish) {
        self.finished = true;
        let reason = self.end_reason().unwrap_or(EndReason::Closed);
        let inner = &self.sessions.inner;
        if let Ok(mut live) = inner.live.lock() {
            live.remove(&self.entry.id);
        }
        let now = now_us();
        let bytes_in = self.entry.bytes_in.load(Ordering::Relaxed) as i64;
        let bytes_out = self.entry.bytes_out.load(Ordering::Relaxed) as i64;
        if let Err(e) = store::sessions::finish(
            &inner.db,
            &self.entry.id,
            &store::sessions::SessionEnd {
                ended_at: now,
                end_reason: reason.code().to_owned(),
                bytes_in,
                bytes_out,
                recording_sha256: finish.recording_sha256.clone(),
                exit_status: finish.exit_status,
            },
        )
        .await
        {
            tracing::error!(error = %e, session = %self.entry.id, "recording the session end in the store failed");
        }
        let new = &self.entry.new;
        let outcome = match reason {
            EndReason::Closed | EndReason::UpstreamClosed => Outcome::Success,
            EndReason::Error(_) => Outcome::Failure,
            _ => Outcome::Denied,
        };
        inner
            .audit
            .note(
                AuditEvent::new(EventKind::SessionEnd, outcome)
                    .actor(&new.principal.identity.email)
                    .source_ip(new.source_ip)
                    .target(&new.target)
                    .session(&self.entry.id)
                    .details(json!({
                        "kind": new.kind,
                        "end_reason": reason.code(),
                        "message": reason.message(),
                        "duration_ms": (now - self.entry.started_us) / 1000,
                        "started": format_us(self.entry.started_us),
                        "bytes_in": bytes_in,
                        "bytes_out": bytes_out,
                        "exit_status": finish.exit_status,
                        "recording": new.recording,
                        "recording_sha256": finish.recording_sha256,
                        "details": finish.details,
                    })),
            )
            .await;
    }
}

/// Byte counters and input activity of a live session, for relay tasks.
#[derive(Clone)]
pub struct Counters {
    entry: Arc<Entry>,
}

impl Counters {
    /// `n` bytes of user input (counts as activity).
    pub fn input(&self, n: usize) {
        self.entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.entry.last_input_us.store(now_us(), Ordering::Relaxed);
        self.entry.warned_idle.store(false, Ordering::Relaxed);
    }

    /// `n` bytes of output (not activity).
    pub fn output(&self, n: usize) {
        self.entry.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if !self.finished {
            // A room forgot to finish (a panic): keep the registry clean.
            if let Ok(mut live) = self.sessions.inner.live.lock() {
                live.remove(&self.entry.id);
            }
            tracing::error!(session = %self.entry.id, "live session dropped without finish");
        }
    }
}
