//! Issuing and checking what a login yields: broker sessions (a row named
//! by the token's `jti`, revocable), broker tokens (CLI and web audiences)
//! and SSH user certificates. Nothing leaves the broker before its records
//! are durable.

use std::time::Duration;

use russh::keys::ssh_key::{HashAlg, PublicKey};
use secrecy::SecretString;
use serde_json::json;

use super::token::{self, Claims, TokenError};
use super::{
    AuthError, Client, Identity, Login, LoginError, WebLogin, cert, safe_return_path, unavailable,
};
use crate::domain::audit::{AuditEvent, EventKind, Outcome, format_us, now_us};
use crate::domain::principal::{Principal, UserIdentity};
use crate::metrics::Metrics;
use crate::store;

impl Identity {
    /// Checks a broker token and its server-side session.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.inner.tokens.verify(token).map_err(|e| match e {
            TokenError::Expired => AuthError::Expired,
            TokenError::Invalid(_) => AuthError::Invalid,
        })?;
        self.session(&claims.jti).await
    }

    /// Checks a web view token (the browser cookie) and its session.
    pub async fn authenticate_web(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self
            .inner
            .tokens
            .verify_for(token, token::WEB_AUDIENCE)
            .map_err(|e| match e {
                TokenError::Expired => AuthError::Expired,
                TokenError::Invalid(_) => AuthError::Invalid,
            })?;
        self.session(&claims.jti).await
    }

    /// Looks a broker session up by id: alive, revoked or expired.
    pub async fn session(&self, session_id: &str) -> Result<Principal, AuthError> {
        let row = store::identity::get_session(&self.inner.db, session_id)
            .await
            .map_err(|_| AuthError::Unavailable)?
            .ok_or(AuthError::Invalid)?;
        if row.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if row.expires_at <= now_us() {
            return Err(AuthError::Expired);
        }
        Ok(Principal {
            identity: row.identity,
            session_id: row.jti,
            expires_at_us: row.expires_at,
        })
    }

    /// Ends the caller's own broker session.
    pub async fn logout(&self, principal: &Principal, client: &Client) -> Result<(), LoginError> {
        self.revoke(&principal.session_id, principal.email(), "logout", client)
            .await?;
        self.inner
            .audit
            .note(
                AuditEvent::new(EventKind::Logout, Outcome::Success)
                    .actor(principal.email())
                    .source_ip(client.ip)
                    .session(&principal.session_id),
            )
            .await;
        Ok(())
    }

    /// Revokes a broker session (logout or an administrator); live sessions
    /// opened with it are ended by their rooms.
    pub async fn revoke(
        &self,
        session_id: &str,
        by: &str,
        reason: &str,
        client: &Client,
    ) -> Result<bool, LoginError> {
        let revoked =
            store::identity::revoke_session(&self.inner.db, session_id, by, reason, now_us())
                .await
                .map_err(unavailable)?;
        if revoked {
            self.inner
                .audit
                .note(
                    AuditEvent::new(EventKind::TokenRevoked, Outcome::Success)
                        .actor(by)
                        .source_ip(client.ip)
                        .session(session_id)
                        .details(json!({"reason": reason})),
                )
                .await;
            let _ = self.inner.revocations.send(session_id.to_owned());
        }
        Ok(revoked)
    }

    /// A new certificate for a key the caller proves it holds.
    pub async fn certify(
        &self,
        principal: &Principal,
        public_key: &str,
        proof: &str,
        client: &Client,
    ) -> Result<(String, String), LoginError> {
        let key = match cert::verify_proof(public_key, &principal.session_id, proof) {
            Ok(key) => key,
            Err(reason) => {
                self.inner
                    .audit
                    .note(
                        AuditEvent::new(EventKind::SshCertIssued, Outcome::Denied)
                            .actor(principal.email())
                            .source_ip(client.ip)
                            .session(&principal.session_id)
                            .details(
                                json!({"reason": format!("proof of possession failed: {reason}")}),
                            ),
                    )
                    .await;
                return Err(LoginError::Refused(format!(
                    "proof of possession failed: {reason}"
                )));
            }
        };
        self.sign_certificate(principal, &key, client).await
    }

    /// The server-side session row and a broker token of `audience`
    /// naming it: `(jti, token, expires_at_us)`.
    pub(super) async fn issue_token(
        &self,
        identity: &UserIdentity,
        audience: &str,
        ttl: Duration,
        client: &Client,
    ) -> Result<(String, String, i64), LoginError> {
        let now = now_us();
        let expires_at = now + ttl.as_micros() as i64;
        let jti = uuid::Uuid::now_v7().to_string();
        store::identity::insert_session(
            &self.inner.db,
            &jti,
            identity,
            client.ip.map(|ip| ip.to_string()).as_deref(),
            client.user_agent.as_deref(),
            now,
            expires_at,
        )
        .await
        .map_err(unavailable)?;
        let claims = Claims {
            iss: self.inner.tokens.issuer().to_owned(),
            sub: identity.email.clone(),
            aud: audience.into(),
            exp: expires_at / 1_000_000,
            iat: now / 1_000_000,
            nbf: now / 1_000_000,
            jti: jti.clone(),
            groups: identity.groups.clone(),
            mfa: identity.mfa,
            amr: identity.amr.clone(),
            method: identity.method.as_str().into(),
        };
        let token = self
            .inner
            .tokens
            .sign(&claims)
            .map_err(LoginError::unavailable)?;
        Ok((jti, token, expires_at))
    }

    /// Creates the broker session, its token and certificate for an identity
    /// the IdP (or the break-glass store) has vouched for, and records the
    /// login. Nothing is handed out before the records are durable.
    pub async fn open_session(
        &self,
        identity: UserIdentity,
        key: &PublicKey,
        client: &Client,
        extra: serde_json::Value,
    ) -> Result<Login, LoginError> {
        let (jti, token, expires_at) = self
            .issue_token(&identity, token::AUDIENCE, self.inner.token_ttl, client)
            .await?;
        let principal = Principal {
            identity: identity.clone(),
            session_id: jti.clone(),
            expires_at_us: expires_at,
        };
        let (certificate, certificate_expires_at, cert_event) =
            self.sign_certificate_unrecorded(&principal, key, client)?;
        let login = AuditEvent::new(EventKind::LoginSuccess, Outcome::Success)
            .actor(&identity.email)
            .source_ip(client.ip)
            .session(&jti)
            .details(json!({
                "method": identity.method.as_str(),
                "idp_subject": identity.subject,
                "groups": identity.groups,
                "amr": identity.amr,
                "mfa": identity.mfa,
                "user_agent": client.user_agent,
                "extra": extra,
            }));
        let issued = AuditEvent::new(EventKind::TokenIssued, Outcome::Success)
            .actor(&identity.email)
            .source_ip(client.ip)
            .session(&jti)
            .details(
                json!({"expires_at": format_us(expires_at), "method": identity.method.as_str()}),
            );
        // One batch: the login, the token and the certificate are recorded
        // together, and before any of them leaves the broker.
        if let Err(e) = self
            .inner
            .audit
            .gate_all(vec![login, issued, cert_event])
            .await
        {
            let _ = store::identity::revoke_session(
                &self.inner.db,
                &jti,
                "pam",
                "audit unavailable",
                now_us(),
            )
            .await;
            return Err(LoginError::unavailable(e));
        }
        let _ = store::identity::clear_failures(&self.inner.db, "user", &identity.email).await;
        Metrics::inc(&self.inner.metrics.logins_success);
        Ok(Login {
            token: SecretString::from(token),
            expires_at_us: expires_at,
            session_id: jti,
            identity,
            certificate,
            certificate_expires_at,
            known_hosts: self.inner.known_hosts.clone(),
            ssh_addr: self.inner.ssh_addr.clone(),
            postgres_addr: self.inner.postgres_addr.clone(),
        })
    }

    /// Opens a web view session for an admitted identity: the session row,
    /// a web-audience token, `login.success` and `token.issued` (durable
    /// before the cookie is set).
    pub(super) async fn open_web_session(
        &self,
        identity: UserIdentity,
        client: &Client,
        return_to: &str,
    ) -> Result<WebLogin, LoginError> {
        let (jti, token, expires_at) = self
            .issue_token(&identity, token::WEB_AUDIENCE, self.inner.web_ttl, client)
            .await?;
        let login = AuditEvent::new(EventKind::LoginSuccess, Outcome::Success)
            .actor(&identity.email)
            .source_ip(client.ip)
            .session(&jti)
            .details(json!({
                "method": identity.method.as_str(),
                "client": "web",
                "idp_subject": identity.subject,
                "groups": identity.groups,
                "amr": identity.amr,
                "mfa": identity.mfa,
                "user_agent": client.user_agent,
            }));
        let issued = AuditEvent::new(EventKind::TokenIssued, Outcome::Success)
            .actor(&identity.email)
            .source_ip(client.ip)
            .session(&jti)
            .details(json!({
                "expires_at": format_us(expires_at),
                "method": identity.method.as_str(),
                "audience": token::WEB_AUDIENCE,
            }));
        if let Err(e) = self.inner.audit.gate_all(vec![login, issued]).await {
            let _ = store::identity::revoke_session(
                &self.inner.db,
                &jti,
                "pam",
                "audit unavailable",
                now_us(),
            )
            .await;
            return Err(LoginError::unavailable(e));
        }
        let _ = store::identity::clear_failures(&self.inner.db, "user", &identity.email).await;
        Metrics::inc(&self.inner.metrics.logins_success);
        Ok(WebLogin {
            token: SecretString::from(token),
            expires_at_us: expires_at,
            return_to: Some(return_to)
                .filter(|p| safe_return_path(p))
                .map(String::from)
                .unwrap_or_else(|| "/ui/".into()),
        })
    }

    pub(super) async fn sign_certificate(
        &self,
        principal: &Principal,
        key: &PublicKey,
        client: &Client,
    ) -> Result<(String, String), LoginError> {
        let (certificate, expires, event) =
            self.sign_certificate_unrecorded(principal, key, client)?;
        self.inner
            .audit
            .gate(event)
            .await
            .map_err(LoginError::unavailable)?;
        Ok((certificate, expires))
    }

    /// Signs a certificate and returns the `ssh_cert.issued` event that must
    /// be recorded before the certificate is handed out.
    pub(super) fn sign_certificate_unrecorded(
        &self,
        principal: &Principal,
        key: &PublicKey,
        client: &Client,
    ) -> Result<(String, String, AuditEvent), LoginError> {
        let grants = crate::sync::read(&self.inner.grants).clone();
        let grants = grants(&principal.identity);
        let valid_before = (principal.expires_at_us / 1_000_000).max(0) as u64;
        let issued = cert::sign_user_certificate(
            &self.inner.user_ca,
            key,
            &principal.identity,
            &principal.session_id,
            &grants,
            valid_before,
        )
        .map_err(|source| {
            LoginError::unavailable(CertificateFailed {
                step: "signing the certificate",
                source: source.into(),
            })
        })?;
        let event = AuditEvent::new(EventKind::SshCertIssued, Outcome::Success)
            .actor(principal.email())
            .source_ip(client.ip)
            .session(&principal.session_id)
            .details(json!({
                "serial": issued.serial.to_string(),
                "key_id": principal.email(),
                "principals": grants.principals,
                "valid_before": format_us(issued.valid_before as i64 * 1_000_000),
                "public_key_fingerprint": key.fingerprint(HashAlg::Sha256).to_string(),
                "agent_forwarding": grants.agent_forwarding,
                "port_forwarding": grants.port_forwarding,
                "x11_forwarding": grants.x11_forwarding,
            }));
        Metrics::inc(&self.inner.metrics.credentials_issued);
        let text = issued.certificate.to_openssh().map_err(|source| {
            LoginError::unavailable(CertificateFailed {
                step: "encoding the certificate",
                source: source.into(),
            })
        })?;
        Ok((
            text,
            format_us(issued.valid_before as i64 * 1_000_000),
            event,
        ))
    }
}

/// A user certificate that could not be signed or encoded.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
struct CertificateFailed {
    step: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}
