//! Identity: SSO logins through the company IdP (browser and device),
//! break-glass logins, broker sessions and their tokens, short-lived SSH
//! user certificates, login history and lockout.
//!
//! Every login attempt, good or bad, becomes a `login.success` or
//! `login.failure` event. A broker session is a server-side record named by
//! the token's `jti`; revoking it takes effect at the next check anywhere.
//!
//! This file holds the service's types and wiring; the flows live beside
//! it: `browser_login.rs`, `device_login.rs`, `breakglass_login.rs`,
//! `lockout.rs` (refusals and lockouts) and `issue.rs` (broker sessions,
//! tokens and certificates).

pub mod breakglass;
mod breakglass_login;
mod browser_login;
pub mod cert;
mod device_login;
mod issue;
mod lockout;
pub mod oidc;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{PrivateKey, PublicKey};
use secrecy::SecretString;
use serde_json::json;

use crate::audit::Audit;
use crate::config::{Config, LoginConfig};
use crate::domain::audit::{AuditEvent, EventKind, Outcome, now_us};
use crate::domain::principal::{CertGrants, LoginMethod, UserIdentity};
use crate::keys::{self, KeyMaterial};
use crate::metrics::Metrics;
use crate::store::{self, Db};

use self::oidc::{Oidc, OidcError};
use self::token::TokenKeys;

/// Decides what a user's certificate may carry (principals, forwarding).
pub type GrantsFn = Arc<dyn Fn(&UserIdentity) -> CertGrants + Send + Sync>;

/// The identity service. Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    audit: Audit,
    metrics: Arc<Metrics>,
    tokens: TokenKeys,
    user_ca: PrivateKey,
    breakglass_key: [u8; 32],
    oidc: Option<Oidc>,
    token_ttl: Duration,
    web_ttl: Duration,
    login: LoginConfig,
    require_mfa: bool,
    known_hosts: String,
    ssh_addr: String,
    postgres_addr: String,
    grants: std::sync::RwLock<GrantsFn>,
    revocations: tokio::sync::broadcast::Sender<String>,
}

/// Where users reach the broker's SSH and PostgreSQL listeners.
pub struct PublicAddrs {
    pub ssh: String,
    pub postgres: String,
}

/// Who is calling, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// Why a login did not succeed. `Refused` and `Locked` were audited.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Refused(String),
    #[error("too many failed logins; locked until {0}")]
    Locked(String),
    /// The message is the cause's own (a store, IdP or signing error, or
    /// a sentence saying what is not configured).
    #[error(transparent)]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
}

/// An identity provider that is down, unreachable or answering garbage.
#[derive(Debug, thiserror::Error)]
#[error("{0}; try again in a moment")]
struct IdpOutage(#[source] OidcError);

impl LoginError {
    /// The login cannot be done now because of `cause`.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        LoginError::Unavailable(cause.into())
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials; run `pam login`")]
    Missing,
    #[error("the session has expired; run `pam login`")]
    Expired,
    #[error("the session was revoked; run `pam login`")]
    Revoked,
    #[error("invalid token")]
    Invalid,
    #[error("the session store is unavailable")]
    Unavailable,
}

/// The outcome of the IdP redirect to `/auth/callback`.
pub enum Callback {
    /// Send the browser to the CLI's loopback listener.
    RedirectToCli(String),
    /// A web view login: set the cookie, then go to `return_to`.
    Web(WebLogin),
}

/// A browser's web view session: a broker token of the web audience.
pub struct WebLogin {
    pub token: SecretString,
    pub expires_at_us: i64,
    /// A path under `/ui/` (checked when the login started).
    pub return_to: String,
}

/// A finished CLI login: the broker session, its token and the user's
/// certificate (the web layer puts it on the wire as `api::LoginResponse`).
pub struct Login {
    pub token: SecretString,
    pub expires_at_us: i64,
    pub session_id: String,
    pub identity: UserIdentity,
    /// OpenSSH user certificate for the key the CLI proved it holds.
    pub certificate: String,
    pub certificate_expires_at: String,
    /// known_hosts line for the broker's SSH listener.
    pub known_hosts: String,
    pub ssh_addr: String,
    pub postgres_addr: String,
}

/// A device grant in flight: what the user is told to open and enter.
pub struct DeviceStart {
    pub request_id: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds between polls.
    pub interval: u64,
    pub expires_in: u64,
}

/// One device-grant poll.
pub enum DeviceOutcome {
    Pending { interval: u64 },
    SlowDown { interval: u64 },
    Done(Box<Login>),
}

impl Identity {
    /// Builds the service. `env` provides the OIDC client secret.
    pub fn new(
        config: &Config,
        env: &std::collections::HashMap<String, String>,
        db: Db,
        audit: Audit,
        metrics: Arc<Metrics>,
        keys: &KeyMaterial,
        addrs: PublicAddrs,
    ) -> anyhow::Result<Self> {
        let oidc = match &config.oidc.issuer {
            Some(issuer) => {
                let secret = config
                    .oidc
                    .client_secret(env)
                    .map_err(|e| anyhow::anyhow!(e))?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "oidc.issuer is set but the client secret is missing (set {} or oidc.client_secret_file)",
                            config.oidc.client_secret_env.as_deref().unwrap_or("oidc.client_secret_env")
                        )
                    })?;
                let redirect = config
                    .server
                    .public_url
                    .join("auth/callback")
                    .map_err(|e| anyhow::anyhow!("server.public_url: {e}"))?;
                Some(Oidc::new(
                    &config.oidc,
                    issuer,
                    secret,
                    redirect.to_string(),
                )?)
            }
            None => None,
        };
        let known_hosts = known_hosts_line(&addrs.ssh, keys.ssh_host.public_key());
        let (revocations, _) = tokio::sync::broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                audit,
                metrics,
                tokens: TokenKeys::new(&keys.token_signing, config.server.public_url.as_str()),
                user_ca: keys.ssh_user_ca.clone(),
                breakglass_key: breakglass_key(keys),
                oidc,
                token_ttl: config.session.token_ttl.0,
                web_ttl: config.session.web_ttl.0.min(config.session.token_ttl.0),
                login: config.login.clone(),
                require_mfa: config.oidc.require_mfa,
                known_hosts,
                ssh_addr: addrs.ssh,
                postgres_addr: addrs.postgres,
                grants: std::sync::RwLock::new(Arc::new(default_grants)),
                revocations,
            }),
        })
    }

    /// Lets policy decide certificate principals and forwarding.
    pub fn set_grants(&self, grants: GrantsFn) {
        *crate::sync::write(&self.inner.grants) = grants;
    }

    pub fn sso_enabled(&self) -> bool {
        self.inner.oidc.is_some()
    }

    /// Broker session ids as they are revoked (for ending live sessions).
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.revocations.subscribe()
    }

    pub(super) fn oidc(&self) -> Result<&Oidc, LoginError> {
        self.inner.oidc.as_ref().ok_or_else(|| {
            LoginError::unavailable(
                "SSO is not configured on this broker (oidc.issuer); use `pam login --break-glass USER`",
            )
        })
    }

    /// Applies the broker's own rules to an IdP answer: MFA, lockout.
    pub(super) async fn admit(
        &self,
        identity: Result<UserIdentity, OidcError>,
        client: &Client,
        method: LoginMethod,
    ) -> Result<UserIdentity, LoginError> {
        let identity = match identity {
            Ok(identity) => identity,
            Err(e @ OidcError::Unreachable(_)) => {
                return Err(self.idp_outage(client, method, &e).await);
            }
            Err(e) => {
                return Err(self
                    .refuse(None, client, method, &e.reason(), json!({}))
                    .await);
            }
        };
        if let Err(e) = self.check_user_lock(&identity.email).await {
            self.refuse_quietly(&identity, client, method, "account locked")
                .await;
            return Err(e);
        }
        if self.inner.require_mfa && !identity.mfa {
            return Err(self
                .refuse(
                    Some(&identity),
                    client,
                    method,
                    "mfa required",
                    json!({"amr": identity.amr, "hint": "sign in with a second factor"}),
                )
                .await);
        }
        Ok(identity)
    }

    /// Deletes finished logins (run periodically).
    pub async fn purge(&self) {
        let before = now_us() - 3600 * 1_000_000;
        if let Err(e) = store::identity::purge_logins(&self.inner.db, before).await {
            tracing::warn!(error = %e, "purging finished logins failed");
        }
    }
}

/// Creates (or resets) a break-glass account without a running broker
/// (`pam admin breakglass add`). `key` encrypts the TOTP secret: see
/// [`breakglass_key`].
pub async fn add_breakglass(
    db: &Db,
    audit: &Audit,
    key: &[u8; 32],
    username: &str,
    groups: Vec<String>,
    by: &str,
) -> anyhow::Result<breakglass::Enrolment> {
    if !breakglass_login::valid_username(username) {
        anyhow::bail!("break-glass usernames are 1-32 lowercase letters, digits, '-' or '_'");
    }
    let enrolment = breakglass::enrol(username, key)?;
    audit
        .gate(
            AuditEvent::new(EventKind::AdminChange, Outcome::Success)
                .actor(by)
                .target(format!("breakglass:{username}"))
                .details(
                    json!({"change": "breakglass.add", "username": username, "groups": groups}),
                ),
        )
        .await?;
    store::identity::upsert_breakglass(
        db,
        &store::identity::BreakglassAccount {
            username: username.to_owned(),
            password_hash: enrolment.password_hash.clone(),
            totp_secret_enc: enrolment.totp_secret_enc.clone(),
            groups,
            disabled_at: None,
            last_totp_step: 0,
        },
        now_us(),
    )
    .await?;
    Ok(enrolment)
}

/// The key break-glass TOTP secrets are sealed with.
pub fn breakglass_key(keys: &KeyMaterial) -> [u8; 32] {
    keys.token_signing.derive(b"pam breakglass totp v1")
}

/// The principal a certificate names by default: the email's local part.
fn default_grants(identity: &UserIdentity) -> CertGrants {
    CertGrants {
        principals: vec![identity.email.clone()],
        ..CertGrants::default()
    }
}

/// `[host]:port key` (or `host key` on port 22), OpenSSH known_hosts syntax.
pub fn known_hosts_line(addr: &str, key: &PublicKey) -> String {
    let key = key.to_openssh().unwrap_or_default();
    let key = key.split(' ').take(2).collect::<Vec<_>>().join(" ");
    match addr.rsplit_once(':') {
        Some((host, "22")) => format!("{host} {key}"),
        Some((host, port)) => format!("[{host}]:{port} {key}"),
        None => format!("{addr} {key}"),
    }
}

fn unavailable(e: store::Error) -> LoginError {
    tracing::error!(error = %e, "identity store error");
    LoginError::unavailable("the broker's store is unavailable")
}

/// Makes the key pair a CLI login uses (also used by tests).
pub fn new_client_key() -> PrivateKey {
    keys::generate()
}

/// A web view return path: absolute, under `/ui/`, no scheme or host tricks.
pub fn safe_return_path(path: &str) -> bool {
    path.starts_with("/ui/")
        && path.len() <= 512
        && !path.contains("//")
        && !path.contains('\\')
        && !path.contains("..")
        && path.bytes().all(|b| b.is_ascii_graphic())
}
