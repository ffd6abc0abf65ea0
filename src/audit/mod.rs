//! The audit trail service: every part of the broker records through an
//! [`Audit`] handle; one writer task per process batches the records into
//! the hash chain.
//!
//! A caller is told "recorded" only after the batch holding its event has
//! committed (fsynced), so an acknowledged event survives a crash. When the
//! store cannot be written, callers get an error; with `audit.fail_closed`
//! the action that needed the record is refused ([`Audit::gate`]).

pub mod asciicast;
pub mod chain;
pub mod late;
pub mod recording;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::AuditConfig;
use crate::domain::audit::{AuditError, AuditEvent, EventFilter, EventRecord, now_us};
use crate::keys::Ed25519Key;
use crate::metrics::Metrics;
use crate::store::{self, Db};

/// A cheap, cloneable handle on the audit trail.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Message>,
    db: Db,
    fail_closed: bool,
    checkpoint_interval: Duration,
}

/// The writer task; run it with [`Writer::run`].
pub struct Writer {
    rx: mpsc::Receiver<Message>,
    db: Db,
    key: Ed25519Key,
    node: String,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    batch_max: usize,
    metrics: Arc<Metrics>,
    /// [`Audit::note`] events the store could not take yet.
    late: late::Late,
}

enum Message {
    Record(AuditEvent, oneshot::Sender<Result<i64, AuditError>>),
    /// An event that already happened, for the writer to keep and append
    /// once the store is back ([`late`]).
    Late(AuditEvent),
    Close(oneshot::Sender<()>),
}

/// Creates the handle and its writer. `node` names this process in the
/// trail's head (which writer appended last).
pub fn start(
    db: Db,
    key: Ed25519Key,
    config: &AuditConfig,
    node: String,
    metrics: Arc<Metrics>,
) -> (Audit, Writer) {
    let (tx, rx) = mpsc::channel(config.queue);
    let audit = Audit {
        tx,
        db: db.clone(),
        fail_closed: config.fail_closed,
        checkpoint_interval: config.checkpoint_interval.0,
    };
    let writer = Writer {
        rx,
        db,
        key,
        node,
        checkpoint_every: config.checkpoint_every,
        checkpoint_interval: config.checkpoint_interval.0,
        batch_max: config.batch_max,
        metrics,
        late: late::Late::default(),
    };
    (audit, writer)
}

impl Audit {
    /// Queues `event` for the writer and returns at once (waiting only
    /// while the writer's queue is full). The caller decides when to wait
    /// for durability with [`Pending::wait`]: hot paths keep appends off
    /// their critical path and wait at their own commit points.
    pub async fn submit(&self, mut event: AuditEvent) -> Result<Pending, AuditError> {
        event.make_safe();
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Message::Record(event, done))
            .await
            .map_err(|_| AuditError::ShuttingDown)?;
        Ok(Pending {
            wait: Some(wait),
            fail_closed: self.fail_closed,
        })
    }

    /// Appends `event` and waits until it is durable. Returns its place in the chain.
    pub async fn record(&self, mut event: AuditEvent) -> Result<i64, AuditError> {
        event.make_safe();
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Message::Record(event, done))
            .await
            .map_err(|_| AuditError::ShuttingDown)?;
        wait.await.map_err(|_| AuditError::ShuttingDown)?
    }

    /// Queues `event` and returns at once; [`Pending::confirm`] waits until it
    /// is durable. Events are appended in the order they are queued, so a
    /// later event that was confirmed implies this one is durable too.
    pub async fn enqueue(&self, mut event: AuditEvent) -> Pending {
        event.make_safe();
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(Message::Record(event, done)).await.is_ok();
        Pending {
            wait: sent.then_some(wait),
            fail_closed: self.fail_closed,
        }
    }

    /// Records several events together (usually one transaction) and waits
    /// until all are durable.
    pub async fn record_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        let mut waits = Vec::with_capacity(events.len());
        for mut event in events {
            event.make_safe();
            let (done, wait) = oneshot::channel();
            self.tx
                .send(Message::Record(event, done))
                .await
                .map_err(|_| AuditError::ShuttingDown)?;
            waits.push(wait);
        }
        for wait in waits {
            wait.await.map_err(|_| AuditError::ShuttingDown)??;
        }
        Ok(())
    }

    /// Like [`Audit::gate`] for several events recorded together.
    pub async fn gate_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        match self.record_all(events).await {
            Ok(()) => Ok(()),
            Err(e) if self.fail_closed => Err(e),
            Err(e) => {
                tracing::error!(error = %e, "audit records lost (audit.fail_closed = false)");
                Ok(())
            }
        }
    }

    /// Records an event that an action depends on. Fail-closed (the
    /// default): the error comes back and the caller refuses the action.
    /// Fail-open: the failure is logged and the action may proceed.
    pub async fn gate(&self, event: AuditEvent) -> Result<(), AuditError> {
        match self.record(event).await {
            Ok(_) => Ok(()),
            Err(e) if self.fail_closed => Err(e),
            Err(e) => {
                tracing::error!(error = %e, "audit record lost (audit.fail_closed = false)");
                Ok(())
            }
        }
    }

    /// Records an event describing something that already happened (a
    /// session's end, a failed login): nothing to refuse. When the store is
    /// unavailable the writer keeps the event (with its original time) and
    /// appends it once the store is back ([`late`]). Never for an event
    /// that an action about to happen depends on: that is [`Audit::gate`].
    pub async fn note(&self, mut event: AuditEvent) {
        event.make_safe();
        let kind = event.kind;
        match self.record(event.clone()).await {
            Ok(_) => {}
            Err(AuditError::Unavailable(e)) => {
                tracing::warn!(error = %e, %kind, "audit record not written yet: kept and retried until the store takes it");
                if self.tx.send(Message::Late(event)).await.is_err() {
                    tracing::error!(%kind, "audit record lost: the audit writer has stopped");
                }
            }
            Err(e @ AuditError::Refused(_)) => {
                tracing::error!(error = %e, %kind, "audit record refused by the store (on record as audit.write_failed)");
            }
            Err(e @ AuditError::ShuttingDown) => {
                tracing::error!(error = %e, %kind, "audit record lost");
            }
        }
    }

    /// True when the store answers.
    pub async fn ping(&self) -> bool {
        self.db.ping().await
    }

    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    /// Events matching `filter` (newest first unless ascending).
    pub async fn list(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, store::Error> {
        store::audit::list(&self.db, filter).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<EventRecord>, store::Error> {
        store::audit::get(&self.db, id).await
    }

    /// Walks the whole chain (see [`verify::verify`]), checking that this
    /// broker's checkpoints keep up and, given one, that a head saved
    /// earlier is still there.
    pub async fn verify(
        &self,
        public_key: &[u8],
        expect: Option<verify::Expected>,
        recordings_dir: Option<std::path::PathBuf>,
        progress: impl FnMut(i64),
    ) -> Result<verify::Report, store::Error> {
        let options = verify::Options {
            checkpoint_interval: Some(self.checkpoint_interval),
            expect,
            recordings_dir,
        };
        verify::verify(&self.db, public_key, &options, progress).await
    }

    /// `session_id`'s recording as its chained `session.end` describes it.
    pub async fn sealed_recording(
        &self,
        session_id: &str,
    ) -> Result<Option<verify::Sealed>, store::Error> {
        verify::sealed_recording(&self.db, session_id).await
    }

    /// The end of the chain as the head row holds it.
    pub async fn head_point(&self) -> Result<verify::Expected, store::Error> {
        let head = store::audit::head(&self.db).await?;
        Ok(verify::Expected {
            seq: head.seq,
            hash: head.hash,
        })
    }

    /// The end of the chain and the newest signed checkpoint, with whether
    /// its signature holds and it still matches the event it seals.
    pub async fn head(&self, public_key: &[u8]) -> Result<ChainHead, store::Error> {
        let head = store::audit::head(&self.db).await?;
        let last = store::audit::checkpoints(&self.db).await?.pop();
        let checkpoint = match last {
            None => None,
            Some(cp) => {
                let sealed = store::audit::range(&self.db, cp.seq, 1).await?;
                let matches = sealed
                    .first()
                    .is_some_and(|e| e.seq == cp.seq && e.hash == cp.hash);
                let valid = chain::checkpoint_valid(public_key, &cp) && matches;
                Some((cp, valid))
            }
        };
        Ok(ChainHead {
            seq: head.seq,
            checkpoint,
        })
    }

    /// Flushes everything queued, writes a final checkpoint and stops the
    /// writer. Later records fail with [`AuditError::ShuttingDown`].
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The end of the chain as [`Audit::head`] sees it.
#[derive(Debug, Clone)]
pub struct ChainHead {
    pub seq: i64,
    /// The newest checkpoint and whether it verifies.
    pub checkpoint: Option<(crate::domain::audit::Checkpoint, bool)>,
}

/// An event handed to the writer whose commit has not been awaited yet
/// ([`Audit::submit`], [`Audit::enqueue`]).
pub struct Pending {
    wait: Option<oneshot::Receiver<Result<i64, AuditError>>>,
    fail_closed: bool,
}

impl Pending {
    /// Waits until the event is durable (or could not be written).
    pub async fn wait(self) -> Result<i64, AuditError> {
        match self.wait {
            Some(wait) => wait.await.map_err(|_| AuditError::ShuttingDown)?,
            None => Err(AuditError::ShuttingDown),
        }
    }

    /// The outcome if the writer has already committed (or failed) the
    /// event's batch; `None` while it is in flight.
    pub fn poll_done(&mut self) -> Option<Result<i64, AuditError>> {
        match self.wait.as_mut() {
            None => Some(Err(AuditError::ShuttingDown)),
            Some(wait) => match wait.try_recv() {
                Ok(result) => Some(result),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(AuditError::ShuttingDown)),
            },
        }
    }

    /// Waits until the record is durable. Like [`Audit::gate`]: with a
    /// fail-open trail a lost record is logged, not returned.
    pub async fn confirm(self) -> Result<(), AuditError> {
        let fail_closed = self.fail_closed;
        match self.wait().await.map(|_| ()) {
            Err(e) if !fail_closed => {
                tracing::error!(error = %e, "audit record lost (audit.fail_closed = false)");
                Ok(())
            }
            other => other,
        }
    }
}

impl Writer {
    pub async fn run(mut self) {
        let mut last_checkpoint = Instant::now();
        let mut ticker =
            tokio::time::interval(self.checkpoint_interval.max(Duration::from_secs(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut batch: Vec<(AuditEvent, oneshot::Sender<Result<i64, AuditError>>)> =
            Vec::with_capacity(self.batch_max);
        let mut backoff = late::BACKOFF_MIN;
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let mut close = None;
            tokio::select! {
                message = self.rx.recv() => match message {
                    Some(Message::Record(event, done)) => batch.push((event, done)),
                    Some(Message::Late(event)) => self.keep(event, &mut retry_at),
                    Some(Message::Close(done)) => close = Some(done),
                    None => break,
                },
                _ = tokio::time::sleep_until(retry_at), if self.late.pending() => {
                    if self.retry_late(&mut failing).await {
                        backoff = late::BACKOFF_MIN;
                    } else {
                        backoff = (backoff * 2).min(late::BACKOFF_MAX);
                        retry_at = tokio::time::Instant::now() + backoff;
                    }
                    continue;
                }
                _ = ticker.tick() => {
                    if last_checkpoint.elapsed() >= self.checkpoint_interval {
                        self.checkpoint_head().await;
                        last_checkpoint = Instant::now();
                    }
                    continue;
                }
            }
            // Take whatever else is already queued, up to one batch. Callers
            // woken by the previous batch's acknowledgements are still making
            // their next events: let them run a moment (group commit), so one
            // fsync covers many events instead of a few.
            for round in 0..3 {
                while close.is_none() && batch.len() < self.batch_max {
                    match self.rx.try_recv() {
                        Ok(Message::Record(event, done)) => batch.push((event, done)),
                        Ok(Message::Late(event)) => self.keep(event, &mut retry_at),
                        Ok(Message::Close(done)) => close = Some(done),
                        Err(_) => break,
                    }
                }
                if close.is_some() || batch.len() >= self.batch_max || round == 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if !batch.is_empty() {
                self.flush(&mut batch, &mut failing).await;
                if !failing && self.late.pending() {
                    // The store is back: what was kept goes next.
                    retry_at = tokio::time::Instant::now();
                }
            }
            if let Some(done) = close {
                self.rx.close();
                while let Some(message) = self.rx.recv().await {
                    match message {
                        Message::Record(event, reply) => {
                            batch.push((event, reply));
                            if batch.len() >= self.batch_max {
                                self.flush(&mut batch, &mut failing).await;
                            }
                        }
                        Message::Late(event) => self.late.push(event),
                        Message::Close(other) => {
                            let _ = other.send(());
                        }
                    }
                }
                if !batch.is_empty() {
                    self.flush(&mut batch, &mut failing).await;
                }
                self.flush_late_on_close(&mut failing).await;
                self.checkpoint_head().await;
                let _ = done.send(());
                return;
            }
        }
    }

    /// Appends `batch` in one transaction. When the store refuses it (a
    /// value it cannot hold, not an outage), the cause is one of its events:
    /// the batch is retried member by member, so that an event the store refuses fails alone (its caller
    /// learns it, and the refusal itself is recorded as `audit.write_failed`)
    /// and never costs another caller's event.
    async fn flush(
        &self,
        batch: &mut Vec<(AuditEvent, oneshot::Sender<Result<i64, AuditError>>)>,
        failing: &mut bool,
    ) {
        let events: Vec<&AuditEvent> = batch.iter().map(|(e, _)| e).collect();
        match self.append(&events).await {
            Ok(head) => {
                self.writable(failing);
                let first = head.seq - batch.len() as i64 + 1;
                for (i, (event, reply)) in batch.drain(..).enumerate() {
                    acknowledge(&event, first + i as i64, reply);
                }
                Metrics::inc(&self.metrics.audit_batches);
            }
            Err(e) if e.is_refusal() => {
                if batch.len() > 1 {
                    tracing::warn!(error = %e, events = batch.len(), "audit batch refused; appending its events one by one");
                }
                let mut down: Option<AuditError> = None;
                for (event, reply) in batch.drain(..) {
                    if let Some(error) = &down {
                        Metrics::inc(&self.metrics.audit_errors);
                        let _ = reply.send(Err(error.clone()));
                        continue;
                    }
                    match self.append(&[&event]).await {
                        Ok(head) => {
                            self.writable(failing);
                            Metrics::inc(&self.metrics.audit_batches);
                            acknowledge(&event, head.seq, reply);
                        }
                        Err(e) if e.is_refusal() => self.refused(event, e, reply).await,
                        // The store is unavailable: not this event's fault.
                        Err(e) => {
                            tracing::error!(error = %e, "audit append failed");
                            *failing = true;
                            Metrics::inc(&self.metrics.audit_errors);
                            let error = AuditError::unavailable(e);
                            let _ = reply.send(Err(error.clone()));
                            down = Some(error);
                        }
                    }
                }
            }
            Err(e) => {
                Metrics::add(&self.metrics.audit_errors, batch.len() as u64);
                if !*failing {
                    tracing::error!(error = %e, events = batch.len(), "audit append failed");
                    *failing = true;
                }
                let error = AuditError::unavailable(e);
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Keeps an event the store could not take; the first retry comes soon.
    fn keep(&mut self, event: AuditEvent, retry_at: &mut tokio::time::Instant) {
        if !self.late.pending() {
            *retry_at = tokio::time::Instant::now() + late::BACKOFF_MIN;
        }
        self.late.push(event);
    }

    /// Appends the kept events, oldest first (each with its original time,
    /// its place in the chain taken now), then the count of those dropped.
    /// False while the store is still unavailable.
    async fn retry_late(&mut self, failing: &mut bool) -> bool {
        while !self.late.is_empty() {
            let events = self.late.front(self.batch_max);
            let n = events.len();
            match self.append(&events).await {
                Ok(head) => {
                    self.writable(failing);
                    let first = head.seq - n as i64 + 1;
                    for (i, event) in events.into_iter().enumerate() {
                        acknowledge(event, first + i as i64, oneshot::channel().0);
                    }
                    Metrics::inc(&self.metrics.audit_batches);
                    self.late.written(n);
                }
                // One of them is refused: the oldest alone, then the rest.
                Err(e) if e.is_refusal() => {
                    let Some(event) = events.first().map(|e| (*e).clone()) else {
                        return true;
                    };
                    match self.append(&[&event]).await {
                        Ok(head) => acknowledge(&event, head.seq, oneshot::channel().0),
                        Err(e) if e.is_refusal() => {
                            self.refused(event, e, oneshot::channel().0).await
                        }
                        Err(_) => return false,
                    }
                    self.late.written(1);
                }
                Err(e) => {
                    tracing::debug!(error = %e, kept = n, "kept audit events not written yet");
                    return false;
                }
            }
        }
        if let Some(event) = self.late.lost_event() {
            match self.append(&[&event]).await {
                Ok(head) => {
                    tracing::error!(details = %event.details, "audit events were lost while the store was unavailable; the loss is on record");
                    acknowledge(&event, head.seq, oneshot::channel().0);
                }
                Err(e) if !e.is_refusal() => return false,
                Err(e) => {
                    tracing::error!(error = %e, details = %event.details, "the record of lost audit events was refused")
                }
            }
            self.late.lost_recorded();
        }
        true
    }

    /// At shutdown: one short try to write what was kept; what cannot be
    /// written is logged (kinds and counts).
    async fn flush_late_on_close(&mut self, failing: &mut bool) {
        if !self.late.pending() {
            return;
        }
        let written = tokio::time::timeout(late::CLOSE_FLUSH, self.retry_late(failing)).await;
        if !matches!(written, Ok(true)) {
            tracing::error!(
                events = self.late.len(),
                kinds = ?self.late.summary(),
                "audit records lost at shutdown: the store could not take them"
            );
        }
    }

    /// Chains `events` onto the head in one transaction, signing the
    /// checkpoints that fall in it.
    async fn append(&self, events: &[&AuditEvent]) -> Result<store::audit::Head, store::Error> {
        let every = i64::try_from(self.checkpoint_every).unwrap_or(i64::MAX);
        let key = &self.key;
        let now = now_us();
        let head = store::audit::append(&self.db, &self.node, now, |head| {
            let mut prepared = store::audit::Prepared::default();
            let mut prev = head.hash;
            for (i, event) in events.iter().enumerate() {
                let seq = head.seq + 1 + i as i64;
                let record = chain::chain(event, seq, &prev);
                if seq % every == 0 {
                    prepared
                        .checkpoints
                        .push(chain::sign_checkpoint(key, seq, now, &record.hash));
                }
                prev.clone_from(&record.hash);
                prepared.events.push(record);
            }
            prepared
        })
        .await?;
        Metrics::add(&self.metrics.audit_appends, events.len() as u64);
        Ok(head)
    }

    fn writable(&self, failing: &mut bool) {
        if *failing {
            tracing::info!("audit trail writable again");
            *failing = false;
        }
    }

    /// The store refused `event` alone while it takes others. Its caller
    /// gets the error (a gated action is refused); the trail gets an
    /// `audit.write_failed` event naming it, every string ASCII-escaped,
    /// so that the refusal is evidence too.
    async fn refused(
        &self,
        event: AuditEvent,
        error: store::Error,
        reply: oneshot::Sender<Result<i64, AuditError>>,
    ) {
        Metrics::inc(&self.metrics.audit_errors);
        tracing::error!(error = %error, id = %event.id, kind = event.kind.as_str(), "audit event refused by the store");
        let ascii = |text: &str| {
            crate::domain::audit::safe_text(&text.escape_default().to_string(), 4096).into_owned()
        };
        let mut failure = AuditEvent::new(
            crate::domain::audit::EventKind::AuditWriteFailed,
            crate::domain::audit::Outcome::Failure,
        )
        .details(serde_json::json!({
            "event_id": event.id.to_string(),
            "kind": event.kind.as_str(),
            "outcome": event.outcome.as_str(),
            "error": ascii(&error.to_string()),
            "details": ascii(&chain::canonical_json(&event.details)),
        }));
        failure.actor = event.actor.as_deref().map(ascii);
        failure.source_ip = event.source_ip.as_deref().map(ascii);
        failure.target = event.target.as_deref().map(ascii);
        failure.session_id = event.session_id.as_deref().map(ascii);
        match self.append(&[&failure]).await {
            Ok(head) => acknowledge(&failure, head.seq, oneshot::channel().0),
            Err(e) => {
                tracing::error!(error = %e, id = %event.id, "audit.write_failed could not be recorded either")
            }
        }
        let _ = reply.send(Err(AuditError::Refused(std::sync::Arc::new(RefusedEvent(
            error,
        )))));
    }

    async fn checkpoint_head(&self) {
        let key = &self.key;
        let result = store::audit::checkpoint_head(&self.db, &self.node, |head| {
            chain::sign_checkpoint(key, head.seq, now_us(), &head.hash)
        })
        .await;
        match result {
            Ok(Some(_)) => Metrics::inc(&self.metrics.audit_checkpoints),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
        }
    }
}

/// The store refused an event (a value it cannot hold): what the writer
/// that sent it is told.
#[derive(Debug, thiserror::Error)]
#[error("the store refused this event: {0}")]
struct RefusedEvent(#[source] store::Error);

/// Tells the caller where its event landed, and mirrors the event to the
/// `audit` tracing target.
fn acknowledge(event: &AuditEvent, seq: i64, reply: oneshot::Sender<Result<i64, AuditError>>) {
    tracing::info!(
        target: "audit",
        seq,
        id = %event.id,
        kind = event.kind.as_str(),
        actor = event.actor.as_deref(),
        source_ip = event.source_ip.as_deref(),
        target = event.target.as_deref(),
        session_id = event.session_id.as_deref(),
        outcome = event.outcome.as_str(),
        details = %event.details,
    );
    let _ = reply.send(Ok(seq));
}
