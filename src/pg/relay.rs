//! The relay of a live session: bytes go through as they arrive, in both
//! directions, never re-encoded; each read is written on in one write and
//! one flush. A [`Tracker`] watches both directions and yields finished
//! statements, which become `db.query` events.
//!
//! Audit appends stay off the critical path and durable: events are handed
//! to the audit writer without waiting (it commits them in batches with
//! other sessions' events), and the relay waits for their commit only
//! before passing on a `ReadyForQuery` when more than `audit_window`
//! statements of this session are still uncommitted (0: before every
//! `ReadyForQuery`), and for all of them before `session.end`. A failed
//! append ends the session when the trail is fail-closed.
//!
//! The query log (every statement whole) is handed to its writer every
//! half second or 64 KiB, and flushed by it every second, like terminal
//! recordings: a crash loses at most the last second or two of the log,
//! whose statements are in the (durable) `db.query` events anyway.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Severity};
use super::query::{Completed, TrackError, Tracker};
use super::{Stream, cancel};
use crate::audit::recording::{Closed, Recorder};
use crate::audit::{Audit, Pending};
use crate::domain::audit::{AuditError, AuditEvent, EventKind, Outcome};
use crate::sessions::{EndReason, Live, Notice};
use crate::sync::lock;

/// Read size per direction.
const CHUNK: usize = 64 * 1024;
/// Query log bytes handed to its writer at once (also every tick).
const LOG_BATCH: usize = 64 * 1024;
/// How long an ending session may take to reach a message boundary.
const END_GRACE: Duration = Duration::from_secs(2);

/// Who the statements of a session are audited as.
pub struct Context {
    pub audit: Audit,
    pub actor: String,
    pub target: String,
    pub session_id: String,
    pub source_ip: IpAddr,
    pub window: usize,
    pub db_params: bool,
    /// Cancels the running statement when the broker ends the session.
    pub cancel: cancel::Upstream,
}

/// What the relay did, for `session.end`.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub statements: u64,
    pub failed: u64,
    pub audit_failures: u64,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Track(#[from] TrackError),
    #[error("{0}")]
    Audit(#[from] AuditError),
    #[error("the query log cannot be written")]
    Recording(#[from] Closed),
}

enum ClientEnd {
    Eof,
    Terminated,
    Stopped,
}

enum UpstreamEnd {
    Eof,
    Stopped,
}

/// Activity since the last tick, applied to the live session.
#[derive(Default)]
struct Counters {
    input: AtomicU64,
    output: AtomicU64,
    active: AtomicBool,
}

/// Relays until either side closes or the broker ends the session; the
/// end reason is set on `live` (finishing it is the caller's job).
pub async fn run(client: Stream, upstream: Stream, live: &mut Live, context: Context) -> Summary {
    let log = live.recorder().cloned();
    let tracker = Mutex::new(Tracker::new(context.db_params).with_log());
    let counters = Counters::default();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let token = live.cancel_token();
    let stop_client = CancellationToken::new();
    let (inject, injected) = mpsc::channel::<Inject>(8);
    let mut queue = AuditQueue::new(context.audit.fail_closed());
    let mut client_closed = false;
    let outcome: Result<(), RelayError> = {
        let to_upstream = client_to_upstream(
            &mut client_read,
            &mut upstream_write,
            &tracker,
            &counters,
            log.as_ref(),
            stop_client.clone(),
        );
        let to_client = upstream_to_client(
            &mut upstream_read,
            &mut client_write,
            &tracker,
            &counters,
            injected,
            &context,
            &mut queue,
        );
        tokio::pin!(to_upstream, to_client);
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut to_upstream_done = false;
        loop {
            let wait_until = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                ended = &mut to_upstream, if !to_upstream_done => {
                    to_upstream_done = true;
                    match ended {
                        Ok(ClientEnd::Eof | ClientEnd::Terminated) => {
                            // The server closes after Terminate (or EOF):
                            // let the rest of its output through.
                            client_closed = true;
                            deadline.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(5));
                        }
                        Ok(ClientEnd::Stopped) => {}
                        Err(e) => {
                            live.end(EndReason::Error(e.to_string()));
                            let _ = inject.try_send(Inject::Stop);
                            deadline.get_or_insert(tokio::time::Instant::now() + END_GRACE);
                        }
                    }
                }
                ended = &mut to_client => {
                    break match ended {
                        Ok(UpstreamEnd::Eof) => {
                            if !client_closed {
                                live.end(EndReason::UpstreamClosed);
                            }
                            Ok(())
                        }
                        Ok(UpstreamEnd::Stopped) => Ok(()),
                        Err(e) => Err(e),
                    };
                }
                notice = live.notice() => {
                    let Notice::Warning(text) = notice;
                    let _ = inject.try_send(Inject::Notice(protocol::notice_response(Severity::Warning, "01000", &text)));
                }
                _ = token.cancelled(), if deadline.is_none() => {
                    stop_client.cancel();
                    let _ = inject.try_send(Inject::Stop);
                    deadline = Some(tokio::time::Instant::now() + END_GRACE);
                }
                _ = tokio::time::sleep_until(wait_until), if deadline.is_some() => {
                    break Ok(());
                }
                _ = ticker.tick() => {
                    apply(&counters, live);
                    let text = lock(&tracker).take_log();
                    if !text.is_empty()
                        && let Some(log) = &log
                        && log.output(bytes::Bytes::from(text)).await.is_err()
                    {
                        // Nothing goes on unrecorded.
                        live.end(EndReason::Error(RelayError::Recording(Closed).to_string()));
                    }
                }
            }
        }
    };
    apply(&counters, live);
    stop_client.cancel();
    let at_boundary = lock(&tracker).server_at_boundary();
    let running = lock(&tracker).unanswered();
    let text = lock(&tracker).take_log();
    if !text.is_empty()
        && let Some(log) = &log
    {
        let _ = log.output(bytes::Bytes::from(text)).await;
    }
    if let Err(e) = &outcome {
        let reason = match e {
            RelayError::Audit(e) => EndReason::Error(format!("{e}")),
            RelayError::Recording(_) => EndReason::Error(e.to_string()),
            RelayError::Track(e) => EndReason::Error(format!("client {e}")),
            RelayError::Io(e) => EndReason::Error(format!("connection error: {e}")),
        };
        live.end(reason);
    }
    // The broker ended the session: tell the client why, in a FATAL
    // error at a message boundary, and stop what runs upstream.
    let reason = live.end_reason();
    if let Some(reason) = &reason
        && !matches!(reason, EndReason::Closed | EndReason::UpstreamClosed)
    {
        if !running.is_empty() {
            let _ = cancel::send(&context.cancel).await;
        }
        if at_boundary {
            let code = match reason {
                EndReason::Idle(_) => "57P05",
                _ => "57P01",
            };
            let fatal = protocol::error_response(
                Severity::Fatal,
                code,
                &format!("terminating connection: {}", reason.message()),
                None,
                None,
            );
            let _ = tokio::time::timeout(END_GRACE, async {
                client_write.write_all(&fatal).await?;
                client_write.flush().await
            })
            .await;
        }
    }
    let _ = tokio::time::timeout(END_GRACE, async {
        let _ = upstream_write.write_all(&protocol::terminate()).await;
        let _ = upstream_write.flush().await;
        let _ = upstream_write.shutdown().await;
        let _ = client_write.shutdown().await;
    })
    .await;
    for completed in running {
        let _ = queue.submit(&context, completed).await;
    }
    // Durable before session.end.
    let _ = queue.drain().await;
    queue.summary
}

fn apply(counters: &Counters, live: &Live) {
    let input = counters.input.swap(0, Ordering::Relaxed);
    let output = counters.output.swap(0, Ordering::Relaxed);
    if input > 0 {
        live.add_in(input as usize);
    }
    if output > 0 {
        live.add_out(output as usize);
    }
    if counters.active.swap(false, Ordering::Relaxed) {
        live.touch();
    }
}

async fn client_to_upstream<R, W>(
    read: &mut R,
    write: &mut W,
    tracker: &Mutex<Tracker>,
    counters: &Counters,
    log: Option<&Recorder>,
    stop: CancellationToken,
) -> Result<ClientEnd, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(ClientEnd::Stopped),
            n = read.read(&mut buf) => n?,
        };
        if n == 0 {
            return Ok(ClientEnd::Eof);
        }
        counters.input.fetch_add(n as u64, Ordering::Relaxed);
        counters.active.store(true, Ordering::Relaxed);
        let (terminated, text) = {
            let mut tracker = lock(tracker);
            tracker.client(&buf[..n])?;
            // The query log is handed over in pieces of LOG_BATCH (and on
            // every tick): one hand-off per statement cost more than the
            // statement's audit event.
            let text = (tracker.log_len() >= LOG_BATCH).then(|| tracker.take_log());
            (tracker.terminated(), text)
        };
        // Handed to the query log before it reaches the database.
        if let (Some(text), Some(log)) = (text, log) {
            log.output(bytes::Bytes::from(text)).await?;
        }
        write.write_all(&buf[..n]).await?;
        write.flush().await?;
        if terminated {
            return Ok(ClientEnd::Terminated);
        }
    }
}

enum Inject {
    Notice(Vec<u8>),
    /// Stop at the next message boundary.
    Stop,
}

async fn upstream_to_client<R, W>(
    read: &mut R,
    write: &mut W,
    tracker: &Mutex<Tracker>,
    counters: &Counters,
    mut injected: mpsc::Receiver<Inject>,
    context: &Context,
    queue: &mut AuditQueue,
) -> Result<UpstreamEnd, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut done: Vec<Completed> = Vec::new();
    let mut notices: Vec<Vec<u8>> = Vec::new();
    let mut stop = false;
    let mut open = true;
    loop {
        if stop || !notices.is_empty() {
            let at_boundary = lock(tracker).server_at_boundary();
            if at_boundary {
                for notice in notices.drain(..) {
                    write.write_all(&notice).await?;
                }
                write.flush().await?;
                if stop {
                    return Ok(UpstreamEnd::Stopped);
                }
            }
        }
        tokio::select! {
            biased;
            message = injected.recv(), if open => match message {
                Some(Inject::Notice(notice)) => notices.push(notice),
                Some(Inject::Stop) => stop = true,
                None => open = false,
            },
            n = read.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(UpstreamEnd::Eof);
                }
                counters.output.fetch_add(n as u64, Ordering::Relaxed);
                let seen = {
                    let mut tracker = lock(tracker);
                    tracker.server(&buf[..n], &mut done)?
                };
                for completed in done.drain(..) {
                    queue.submit(context, completed).await?;
                }
                if seen.ready {
                    queue.settle(context.window).await?;
                }
                write.write_all(&buf[..n]).await?;
                write.flush().await?;
            }
        }
    }
}

/// This session's `db.query` events whose commit is not yet confirmed.
struct AuditQueue {
    pending: VecDeque<Pending>,
    fail_closed: bool,
    summary: Summary,
}

impl AuditQueue {
    fn new(fail_closed: bool) -> Self {
        Self {
            pending: VecDeque::new(),
            fail_closed,
            summary: Summary::default(),
        }
    }

    /// Hands a statement to the audit writer without waiting for its commit.
    async fn submit(&mut self, context: &Context, completed: Completed) -> Result<(), AuditError> {
        self.summary.statements += 1;
        let outcome = if completed.failed() {
            self.summary.failed += 1;
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let event = AuditEvent::new(EventKind::DbQuery, outcome)
            .actor(&context.actor)
            .source_ip(Some(context.source_ip))
            .target(&context.target)
            .session(&context.session_id)
            .details(completed.details());
        match context.audit.submit(event).await {
            Ok(pending) => {
                self.pending.push_back(pending);
                Ok(())
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, e: AuditError) -> Result<(), AuditError> {
        self.summary.audit_failures += 1;
        if self.fail_closed {
            Err(e)
        } else {
            tracing::error!(error = %e, "db.query audit record lost (audit.fail_closed = false)");
            Ok(())
        }
    }

    /// Takes the confirmed ones off the front.
    fn reap(&mut self) -> Result<(), AuditError> {
        while let Some(front) = self.pending.front_mut() {
            match front.poll_done() {
                None => break,
                Some(result) => {
                    self.pending.pop_front();
                    if let Err(e) = result {
                        self.failed(e)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until at most `window` events are unconfirmed.
    async fn settle(&mut self, window: usize) -> Result<(), AuditError> {
        self.reap()?;
        while self.pending.len() > window {
            if let Some(pending) = self.pending.pop_front()
                && let Err(e) = pending.wait().await
            {
                self.failed(e)?;
            }
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), AuditError> {
        self.settle(0).await
    }
}
