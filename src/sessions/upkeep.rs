//! The registry's background work: limits, termination requests and
//! revocations from the fleet, re-checks on policy changes, session ends the
//! store could not take (written again until it can), and the drain on
//! shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{EndReason, Notice, PendingEnd, Sessions};
use crate::domain::audit::{AuditError, now_us};
use crate::store;
use crate::sync::lock;

impl Sessions {
    /// Background work: limits every second; termination requests and
    /// revocations from other brokers every second; re-checks on policy
    /// changes; session ends the store could not take, again. On shutdown it
    /// ends every session and waits (within the broker's grace period) until
    /// their ends are recorded.
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
                _ = shutdown.cancelled() => break,
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
                    self.enforce_limits();
                    self.poll_fleet().await;
                    self.retry_unrecorded().await;
                    if tick.is_multiple_of(5) {
                        self.save_counters().await;
                    }
                }
            }
        }
        self.drain().await;
        self.inner.drained.cancel();
    }

    /// Shutdown: no new session opens; live ones are told and get
    /// `server.shutdown_grace` to finish, then end as `shutdown`; their
    /// ends are recorded (retried until the broker's last moment).
    async fn drain(&self) {
        self.inner.draining.cancel();
        let grace = self.inner.grace;
        let warning = format!(
            "pam: the broker is shutting down; this session ends in {} (server.shutdown_grace)",
            crate::config::HumanDuration(grace)
        );
        for entry in self.entries() {
            let _ = entry.notices.try_send(Notice::Warning(warning.clone()));
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut settle = tokio::time::interval(Duration::from_millis(100));
        while self.live_count() > 0 && tokio::time::Instant::now() < deadline {
            settle.tick().await;
            self.enforce_limits();
            self.retry_unrecorded().await;
        }
        loop {
            for entry in self.entries() {
                entry.end(EndReason::Shutdown);
            }
            self.retry_unrecorded().await;
            if self.live_count() == 0 && lock(&self.inner.unrecorded).is_empty() {
                return;
            }
            settle.tick().await;
        }
    }

    fn enforce_limits(&self) {
        let now = tokio::time::Instant::now();
        for entry in self.entries() {
            entry.enforce(&self.inner.limits, now);
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
            .map(|e| e.grant.principal.session_id.clone())
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

    /// Policy changed: every live session's grant is decided again.
    async fn recheck_all(&self) {
        for entry in self.entries() {
            if entry.cancel.is_cancelled() {
                continue;
            }
            let grant = &entry.grant;
            let decision = self
                .inner
                .gate
                .recheck(
                    &grant.principal.identity,
                    Some(&grant.principal.session_id),
                    grant.action,
                    &grant.resource,
                    &grant.context,
                )
                .await;
            if let Err(denied) = decision {
                entry.end(EndReason::PolicyDenied(denied.to_string()));
            }
        }
    }

    /// Writes a session's end (row and `session.end`); what the store cannot
    /// take now is kept and written once it can.
    pub(super) async fn record_end(&self, mut end: PendingEnd) {
        if self.try_record_end(&mut end).await {
            return;
        }
        tracing::warn!(
            session = %end.id,
            "the session end could not be recorded yet; it is retried until the store takes it"
        );
        lock(&self.inner.unrecorded).push(end);
    }

    /// True once both parts are written (or can never be).
    async fn try_record_end(&self, end: &mut PendingEnd) -> bool {
        if let Some(row) = &end.row {
            match store::sessions::finish(&self.inner.db, &end.id, row).await {
                Ok(()) => end.row = None,
                Err(e) => {
                    tracing::debug!(error = %e, session = %end.id, "recording the session end in the store failed");
                }
            }
        }
        if let Some(event) = &end.event {
            match self.inner.audit.record(event.clone()).await {
                Ok(_) => end.event = None,
                Err(AuditError::ShuttingDown) => {
                    tracing::error!(session = %end.id, "session.end lost: the audit writer has stopped");
                    end.event = None;
                }
                Err(AuditError::Refused(e)) => {
                    tracing::error!(error = %e, session = %end.id, "session.end refused by the store (on record as audit.write_failed)");
                    end.event = None;
                }
                Err(AuditError::Unavailable(e)) => {
                    tracing::debug!(error = %e, session = %end.id, "session.end not recorded yet");
                }
            }
        }
        end.row.is_none() && end.event.is_none()
    }

    /// Session ends held back while the store was unavailable, oldest first;
    /// stops at the first that still fails.
    async fn retry_unrecorded(&self) {
        let mut held = std::mem::take(&mut *lock(&self.inner.unrecorded));
        if held.is_empty() {
            return;
        }
        let mut done = 0;
        for end in held.iter_mut() {
            if !self.try_record_end(end).await {
                break;
            }
            done += 1;
        }
        if done > 0 {
            tracing::info!(sessions = done, "held session ends recorded");
        }
        held.drain(..done);
        let mut unrecorded = lock(&self.inner.unrecorded);
        held.append(&mut unrecorded);
        *unrecorded = held;
    }
}
