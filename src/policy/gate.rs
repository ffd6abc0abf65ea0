//! The one policy gate every access point calls: SSH, ECS exec, PostgreSQL,
//! AWS credentials, the web view and admin actions. It decides, and records
//! every decision as `policy.decision` naming the policies that determined
//! it. If the decision cannot be recorded and the trail is fail-closed, the
//! answer is a denial.

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::permit::{Grant, Permit};
use super::{Engine, PolicyError};
use crate::audit::Audit;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::domain::policy::{Action, Allowed, Denied, RequestContext, Resource};
use crate::domain::principal::{Principal, UserIdentity};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Gate {
    engine: Arc<Engine>,
    audit: Audit,
    metrics: Arc<Metrics>,
}

impl Gate {
    pub fn new(engine: Arc<Engine>, audit: Audit, metrics: Arc<Metrics>) -> Self {
        Self {
            engine,
            audit,
            metrics,
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Decides a request and records the decision.
    pub async fn check(
        &self,
        who: &UserIdentity,
        session_id: Option<&str>,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Result<Allowed, Denied> {
        self.check_inner(who, session_id, action, resource, context, false)
            .await
    }

    /// Re-decides a running session after a policy change.
    pub async fn recheck(
        &self,
        who: &UserIdentity,
        session_id: Option<&str>,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Result<Allowed, Denied> {
        self.check_inner(who, session_id, action, resource, context, true)
            .await
    }

    /// Decides without recording: for listings (`pam ls`), not for access.
    pub fn peek(
        &self,
        who: &UserIdentity,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Result<Allowed, Denied> {
        self.engine.decide(who, action, resource, context)
    }

    /// Decides a request that opens a session (SSH, ECS exec, PostgreSQL).
    /// Allowed: a [`Permit`] for exactly this request, its `policy.decision`
    /// queued but not yet durable. `Sessions::open` waits for that record
    /// before it opens anything, so the caller may prepare meanwhile (connect
    /// the transport to an SSH target, read a credential) but must not reach
    /// the target with a channel, command, query or credential. Denied: the
    /// denial, once its record is durable (or could not be written).
    pub async fn permit(
        &self,
        principal: &Principal,
        action: Action,
        resource: Resource,
        context: RequestContext,
    ) -> Result<Permit, Denied> {
        let (decision, event) = self.decide(
            &principal.identity,
            Some(&principal.session_id),
            action,
            &resource,
            &context,
            false,
        );
        match decision {
            Ok(allowed) => {
                let pending = self.audit.enqueue(event).await;
                let grant = Grant {
                    principal: principal.clone(),
                    action,
                    resource,
                    context,
                    policies: allowed.policies,
                };
                Ok(Permit::new(grant, pending))
            }
            Err(denied) => {
                // Already a refusal: an unrecordable one is still refused.
                let _ = self.audit.gate(event).await;
                Err(denied)
            }
        }
    }

    async fn check_inner(
        &self,
        who: &UserIdentity,
        session_id: Option<&str>,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
        recheck: bool,
    ) -> Result<Allowed, Denied> {
        let (decision, event) = self.decide(who, session_id, action, resource, context, recheck);
        if let Err(e) = self.audit.gate(event).await {
            return Err(Denied {
                policies: Vec::new(),
                message: format!("refused: {e}"),
                hint: None,
            });
        }
        decision
    }

    /// The decision and its `policy.decision` event.
    fn decide(
        &self,
        who: &UserIdentity,
        session_id: Option<&str>,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
        recheck: bool,
    ) -> (Result<Allowed, Denied>, AuditEvent) {
        let decision = self.engine.decide(who, action, resource, context);
        let policy_hash = self.engine.active().hash.clone();
        let (outcome, details) = match &decision {
            Ok(permit) => (
                Outcome::Success,
                json!({
                    "action": action.as_str(),
                    "decision": "allow",
                    "policies": permit.policies,
                    "reason": context.reason,
                    "login": context.login,
                    "duration": context.duration_secs,
                    "forward": context.forward,
                    "mfa": who.mfa,
                    "groups": who.groups,
                    "recheck": recheck,
                    "policy_set": policy_hash,
                }),
            ),
            Err(denied) => (
                Outcome::Denied,
                json!({
                    "action": action.as_str(),
                    "decision": "deny",
                    "policies": denied.policies,
                    "message": denied.message,
                    "hint": denied.hint,
                    "reason": context.reason,
                    "login": context.login,
                    "duration": context.duration_secs,
                    "forward": context.forward,
                    "mfa": who.mfa,
                    "groups": who.groups,
                    "recheck": recheck,
                    "policy_set": policy_hash,
                }),
            ),
        };
        match &decision {
            Ok(_) => Metrics::inc(&self.metrics.policy_permits),
            Err(_) => Metrics::inc(&self.metrics.policy_denials),
        }
        let mut event = AuditEvent::new(EventKind::PolicyDecision, outcome)
            .actor(&who.email)
            .source_ip(context.source_ip)
            .target(resource.name())
            .details(details);
        if let Some(session_id) = session_id {
            event = event.session(session_id);
        }
        (decision, event)
    }

    /// Reloads the policies; audits the change (or the refused change).
    pub async fn reload(&self, trigger: &str) -> Result<String, PolicyError> {
        let previous = self.engine.active().hash.clone();
        match self.engine.reload() {
            Ok(loaded) => {
                tracing::info!(hash = %loaded.hash, trigger, "policies reloaded");
                self.audit
                    .note(
                        AuditEvent::new(EventKind::AdminChange, Outcome::Success)
                            .actor(format!("pam ({trigger})"))
                            .target("policies")
                            .details(json!({
                                "change": "policy.reload",
                                "hash": loaded.hash,
                                "previous_hash": previous,
                                "files": loaded.files,
                                "policies": loaded.policy_ids(),
                            })),
                    )
                    .await;
                Ok(loaded.hash.clone())
            }
            Err(e) => {
                tracing::error!(error = %e, trigger, "policy reload refused; the previous policies stay active");
                let attempted = self.engine.disk_hash();
                self.audit
                    .note(
                        AuditEvent::new(EventKind::AdminChange, Outcome::Failure)
                            .actor(format!("pam ({trigger})"))
                            .target("policies")
                            .details(json!({
                                "change": "policy.reload",
                                "hash": attempted,
                                "active_hash": previous,
                                "error": e.to_string(),
                            })),
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// Reloads on SIGHUP and when the files change (polled every `every`).
    /// The SIGHUP handler is installed before this returns, so a signal sent
    /// once the broker is up never falls back to the default (terminate).
    pub fn watch(
        self,
        every: std::time::Duration,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; policies reload on file changes only");
                None
            }
        };
        // Compared with what is active, not with the disk at first poll: an
        // edit made before this task first runs is still noticed.
        let mut seen = Some(self.engine.active().hash.clone());
        async move {
            // The first poll is one period away: `seen` already is the start.
            let every = every.max(std::time::Duration::from_millis(100));
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let trigger = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = async {
                        match hangup.as_mut() {
                            Some(signal) => { signal.recv().await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => "SIGHUP",
                    _ = ticker.tick() => {
                        if self.engine.disk_hash() == seen {
                            continue;
                        }
                        "file change"
                    }
                };
                // A SIGHUP with unchanged files still reloads (and is audited).
                let _ = self.reload(trigger).await;
                seen = self.engine.disk_hash();
            }
        }
    }
}
