//! Refused logins and lockout (PCI DSS 8.3.4): every refusal is a
//! `login.failure` event and counts against its source address and, where
//! known, the account (a break-glass account per source); past
//! `login.max_failures` within `login.failure_window` the key is locked for
//! `login.lockout`, recorded as `login.lockout`.

use std::net::IpAddr;

use serde_json::json;

use super::breakglass_login::{BREAKGLASS_REFUSED, account_source};
use super::{Client, Identity, LoginError, unavailable};
use crate::domain::audit::{AuditEvent, EventKind, Outcome, format_us, now_us};
use crate::domain::principal::{LoginMethod, UserIdentity};
use crate::metrics::Metrics;
use crate::store;

impl Identity {
    /// Records a failed login (audit + lockout counters) and returns the
    /// error to give the caller.
    pub(super) async fn refuse(
        &self,
        identity: Option<&UserIdentity>,
        client: &Client,
        method: LoginMethod,
        reason: &str,
        details: serde_json::Value,
    ) -> LoginError {
        let scope = identity.map(|i| ("user", i.email.clone()));
        match self
            .record_failure(identity, client, method, reason, details, scope)
            .await
        {
            Some(until) => LoginError::Locked(format_us(until)),
            None => LoginError::Refused(format!("login refused: {reason}")),
        }
    }

    /// [`Self::refuse`] for a break-glass login: the reason goes to the
    /// audit trail only, and the account's failures count per source.
    pub(super) async fn refuse_breakglass(
        &self,
        who: &UserIdentity,
        client: &Client,
        reason: &str,
    ) -> LoginError {
        let (scope, key) = account_source(&who.email, client);
        let locked = self
            .record_failure(
                Some(who),
                client,
                LoginMethod::Breakglass,
                reason,
                json!({}),
                Some((scope, key)),
            )
            .await;
        match locked {
            Some(until) => LoginError::Locked(format_us(until)),
            None => LoginError::Refused(BREAKGLASS_REFUSED.into()),
        }
    }

    /// Audits a failed login and counts it against the source address and
    /// `account` (a lockout scope and key); returns the end of a lockout
    /// this failure started.
    pub(super) async fn record_failure(
        &self,
        identity: Option<&UserIdentity>,
        client: &Client,
        method: LoginMethod,
        reason: &str,
        details: serde_json::Value,
        account: Option<(&str, String)>,
    ) -> Option<i64> {
        Metrics::inc(&self.inner.metrics.logins_failure);
        let mut event = AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
            .source_ip(client.ip)
            .details(json!({
                "reason": reason,
                "method": method.as_str(),
                "user_agent": client.user_agent,
                "idp_subject": identity.map(|i| i.subject.clone()),
                "amr": identity.map(|i| i.amr.clone()),
                "details": details,
            }));
        if let Some(identity) = identity {
            event = event.actor(&identity.email);
        }
        self.inner.audit.note(event).await;
        let now = now_us();
        let actor = identity.map(|i| i.email.as_str());
        let mut locked = None;
        if let Some(ip) = client.ip {
            locked = locked.or(self
                .count_failure("ip", &ip.to_string(), None, Some(ip), now)
                .await);
        }
        if let Some((scope, key)) = account {
            locked = locked.or(self.count_failure(scope, &key, actor, client.ip, now).await);
        }
        locked
    }

    /// Audits a login the IdP could not take part in (down, timing out,
    /// answering garbage or a server error) and returns the error to show.
    /// The user did nothing wrong, so it counts against no lockout: an
    /// outage must not lock an office out once the IdP is back.
    pub(super) async fn idp_outage(
        &self,
        client: &Client,
        method: LoginMethod,
        error: &super::oidc::OidcError,
    ) -> LoginError {
        Metrics::inc(&self.inner.metrics.logins_failure);
        let event = AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
            .source_ip(client.ip)
            .details(json!({
                "reason": error.reason(),
                "method": method.as_str(),
                "user_agent": client.user_agent,
                "details": {"error": error.to_string()},
            }));
        self.inner.audit.note(event).await;
        LoginError::unavailable(super::IdpOutage(error.clone()))
    }

    /// Audits a refusal for a locked account without counting it again.
    pub(super) async fn refuse_quietly(
        &self,
        identity: &UserIdentity,
        client: &Client,
        method: LoginMethod,
        reason: &str,
    ) {
        Metrics::inc(&self.inner.metrics.logins_failure);
        self.inner
            .audit
            .note(
                AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
                    .actor(&identity.email)
                    .source_ip(client.ip)
                    .details(json!({"reason": reason, "method": method.as_str(), "user_agent": client.user_agent})),
            )
            .await;
    }

    /// Counts a failure; locks the key when the threshold is reached.
    pub(super) async fn count_failure(
        &self,
        scope: &str,
        key: &str,
        actor: Option<&str>,
        ip: Option<IpAddr>,
        now: i64,
    ) -> Option<i64> {
        let db = &self.inner.db;
        let login = &self.inner.login;
        if store::identity::record_failure(db, scope, key, now)
            .await
            .is_err()
        {
            return None;
        }
        let since = now - login.failure_window.0.as_micros() as i64;
        let count = store::identity::count_failures(db, scope, key, since)
            .await
            .unwrap_or(0);
        if count < i64::from(login.max_failures) {
            return None;
        }
        let until = now + login.lockout.0.as_micros() as i64;
        if store::identity::set_lockout(db, scope, key, until)
            .await
            .is_err()
        {
            return None;
        }
        let _ = store::identity::clear_failures(db, scope, key).await;
        self.inner
            .audit
            .note(
                AuditEvent::new(EventKind::LoginLockout, Outcome::Denied)
                    .actor(actor.unwrap_or("-"))
                    .source_ip(ip)
                    .details(json!({
                        "scope": scope,
                        "key": key,
                        "failures": count,
                        "window": login.failure_window.to_string(),
                        "locked_until": format_us(until),
                    })),
            )
            .await;
        Some(until)
    }

    pub(super) async fn check_ip_lock(&self, client: &Client) -> Result<(), LoginError> {
        if let Some(ip) = client.ip {
            self.check_lock("ip", &ip.to_string()).await?;
        }
        Ok(())
    }

    pub(super) async fn check_user_lock(&self, email: &str) -> Result<(), LoginError> {
        self.check_lock("user", email).await
    }

    pub(super) async fn check_lock(&self, scope: &str, key: &str) -> Result<(), LoginError> {
        let until = store::identity::lockout_until(&self.inner.db, scope, key)
            .await
            .map_err(unavailable)?;
        match until {
            Some(until) if until > now_us() => Err(LoginError::Locked(format_us(until))),
            _ => Ok(()),
        }
    }
}
