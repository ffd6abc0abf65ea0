//! Short-lived AWS credentials for a user and an `aws` target: the policy
//! gate (`aws_assume`), the limits STS would enforce (the emulator does not,
//! so the broker does), AssumeRole with the user as SourceIdentity, and the
//! audit record, never with the secret key or session token.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::json;

use super::Aws;
use super::sts::{self, AssumeRequest, Assumed};
use crate::audit::Audit;
use crate::config::{AwsConfig, TargetKind};
use crate::domain::audit::{AuditEvent, EventKind, Outcome, format_us, now_us};
use crate::domain::policy::{Action, Denied, RequestContext, Resource};
use crate::domain::principal::Principal;
use crate::metrics::Metrics;
use crate::policy::Gate;

/// STS bounds for DurationSeconds, and the role-chaining cap.
pub const MIN_DURATION: u64 = 900;
pub const MAX_DURATION: u64 = 43_200;
pub const CHAINING_CAP: u64 = 3600;

#[derive(Clone)]
pub struct AwsAccess {
    aws: Aws,
    gate: Gate,
    audit: Audit,
    metrics: Arc<Metrics>,
    targets: crate::discovery::Targets,
    config: AwsConfig,
    issuer: String,
}

/// Credentials handed to a user, with what was decided about them.
#[derive(Debug, Clone)]
pub struct Issued {
    pub credentials: Assumed,
    pub role: String,
    pub role_arn: String,
    pub duration_secs: u64,
    pub session_name: String,
    pub source_identity: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Denied(Denied),
    /// STS refused or could not be reached (its error code, if it answered).
    #[error(transparent)]
    Sts(#[from] super::sts::StsError),
    /// The console sign-in endpoint refused.
    #[error(transparent)]
    Federation(#[from] super::federation::FederationError),
    #[error("{0}")]
    Unavailable(#[from] crate::domain::audit::AuditError),
}

/// What the request was.
pub struct Request<'a> {
    pub principal: &'a Principal,
    pub source_ip: Option<std::net::IpAddr>,
    pub role: &'a str,
    pub duration_secs: Option<u64>,
    pub reason: Option<String>,
}

impl AwsAccess {
    pub fn new(
        aws: Aws,
        gate: Gate,
        audit: Audit,
        metrics: Arc<Metrics>,
        targets: crate::discovery::Targets,
        config: AwsConfig,
        issuer: String,
    ) -> Self {
        Self {
            aws,
            gate,
            audit,
            metrics,
            targets,
            config,
            issuer,
        }
    }

    /// Credentials for `request.role` (`POST /api/v1/aws/credentials`).
    /// The broker's AWS access (for `pam targets check`).
    pub fn aws(&self) -> &Aws {
        &self.aws
    }

    pub async fn credentials(&self, request: &Request<'_>) -> Result<Issued, AccessError> {
        let result = self.issue(request).await;
        self.record(EventKind::AwsCredentialsIssued, request, &result)
            .await?;
        result
    }

    /// A console sign-in URL for `request.role` (`POST /api/v1/aws/console`).
    pub async fn console(
        &self,
        request: &Request<'_>,
    ) -> Result<(SecretString, Issued), AccessError> {
        let issued = self.issue(request).await;
        let result = match issued {
            Ok(issued) => super::federation::console_url(
                &self.config.federation_url,
                &self.config.console_url,
                &self.issuer,
                &issued.credentials,
                issued.duration_secs,
            )
            .await
            .map(|url| (url, issued))
            .map_err(AccessError::Federation),
            Err(e) => Err(e),
        };
        let as_issued = result
            .as_ref()
            .map(|(_, issued)| issued.clone())
            .map_err(Clone::clone);
        self.record(EventKind::AwsConsoleIssued, request, &as_issued)
            .await?;
        result
    }

    async fn issue(&self, request: &Request<'_>) -> Result<Issued, AccessError> {
        if !crate::config::valid_target_name(request.role) {
            return Err(AccessError::BadRequest(format!(
                "invalid role name {:?} (see `pam ls aws`)",
                request.role.chars().take(64).collect::<String>()
            )));
        }
        let target = self
            .targets
            .get(request.role)
            .filter(|t| matches!(t.kind, TargetKind::Aws(_)))
            .ok_or_else(|| {
                AccessError::NotFound(format!("no AWS role {:?} (see `pam ls aws`)", request.role))
            })?;
        let TargetKind::Aws(aws_target) = &target.kind else {
            return Err(AccessError::NotFound(format!(
                "no AWS role {:?}",
                request.role
            )));
        };
        if let Some(d) = request.duration_secs
            && !(MIN_DURATION..=MAX_DURATION).contains(&d)
        {
            return Err(AccessError::BadRequest(format!(
                "duration {d}s is outside what STS allows (900s to 12h)"
            )));
        }
        // The longest the credentials may live: the target's maximum, the
        // caller's broker session, and the role-chaining cap.
        let remaining = ((request.principal.expires_at_us - now_us()) / 1_000_000).max(0) as u64;
        let mut limit = aws_target.max_duration.0.as_secs().min(MAX_DURATION);
        if self.config.role_chaining {
            limit = limit.min(CHAINING_CAP);
        }
        limit = limit.min(remaining);
        if limit < MIN_DURATION {
            return Err(AccessError::BadRequest(
                "your broker session ends in less than 15 minutes, the shortest STS allows; run `pam login`".into(),
            ));
        }
        let duration = request.duration_secs.unwrap_or(limit).min(limit);
        let context = RequestContext {
            source_ip: request.source_ip,
            reason: request.reason.clone(),
            duration_secs: Some(duration),
            ..RequestContext::default()
        };
        let who = &request.principal.identity;
        self.gate
            .check(
                who,
                Some(&request.principal.session_id),
                Action::AwsAssume,
                &Resource::Target(target.to_ref()),
                &context,
            )
            .await
            .map_err(AccessError::Denied)?;
        let session_name = session_name(&who.email);
        let source_identity = source_identity(&who.email);
        let assume = AssumeRequest {
            role_arn: aws_target.role_arn.clone(),
            session_name: session_name.clone(),
            source_identity: source_identity.clone(),
            tags: vec![
                ("pam-user".into(), tag_value(&who.email)),
                ("pam-groups".into(), tag_value(&who.groups.join(":"))),
                (
                    "pam-session".into(),
                    tag_value(&request.principal.session_id),
                ),
            ],
            duration_secs: duration as i32,
            external_id: aws_target.external_id.clone(),
            session_policy: aws_target.session_policy.clone(),
        };
        let credentials = sts::assume_role(&self.aws, &assume)
            .await
            .map_err(AccessError::Sts)?;
        Metrics::inc(&self.metrics.credentials_issued);
        Ok(Issued {
            credentials,
            role: target.name.clone(),
            role_arn: aws_target.role_arn.clone(),
            duration_secs: duration,
            session_name,
            source_identity,
        })
    }

    /// Records the outcome; when issued credentials cannot be recorded and
    /// the trail is fail-closed, they are not handed out.
    async fn record(
        &self,
        kind: EventKind,
        request: &Request<'_>,
        result: &Result<Issued, AccessError>,
    ) -> Result<(), AccessError> {
        let base = AuditEvent::new(kind, Outcome::Success)
            .actor(request.principal.email())
            .source_ip(request.source_ip)
            .target(request.role.chars().take(64).collect::<String>())
            .session(&request.principal.session_id);
        match result {
            Ok(issued) => {
                let event = base.details(json!({
                    "role": issued.role,
                    "role_arn": issued.role_arn,
                    "duration": issued.duration_secs,
                    "source_identity": issued.source_identity,
                    "session_name": issued.session_name,
                    "access_key_id": issued.credentials.access_key_id,
                    "expiration": format_us(issued.credentials.expiration * 1_000_000),
                    "assumed_role_arn": issued.credentials.assumed_role_arn,
                    "reason": request.reason,
                }));
                self.audit
                    .gate(event)
                    .await
                    .map_err(AccessError::Unavailable)
            }
            Err(AccessError::Denied(_)) => Ok(()), // the gate recorded it
            Err(e) => {
                let (outcome, code) = match e {
                    AccessError::Sts(e) => (Outcome::Failure, e.code.clone()),
                    AccessError::Federation(_) => (Outcome::Failure, None),
                    _ => (Outcome::Denied, None),
                };
                let mut event = base.details(json!({
                    "error": e.to_string(),
                    "error_code": code,
                    "requested_duration": request.duration_secs,
                }));
                event.outcome = outcome;
                self.audit.note(event).await;
                Ok(())
            }
        }
    }
}

/// RoleSessionName: STS's charset `[\w+=,.@-]`, 2 to 64 characters.
pub fn session_name(email: &str) -> String {
    let mut name: String = email
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while name.len() < 2 {
        name.push('-');
    }
    name
}

/// SourceIdentity: same charset, 2 to 64 characters.
pub fn source_identity(email: &str) -> String {
    session_name(email)
}

/// Session tag values: letters, digits, spaces and `_.:/=+-@`, up to 256.
fn tag_value(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts() {
        assert_eq!(session_name("alice@example.test"), "alice@example.test");
        assert_eq!(session_name("a b/c;d"), "a-b-c-d");
        assert_eq!(session_name("x"), "x-");
        assert_eq!(session_name(&"y".repeat(100)).len(), 64);
        assert_eq!(tag_value("pam-admins:engineers"), "pam-admins:engineers");
        assert_eq!(tag_value("a,b"), "a_b");
    }
}
