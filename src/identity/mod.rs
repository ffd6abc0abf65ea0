//! Identity: SSO logins through the company IdP (browser and device),
//! break-glass logins, broker sessions and their tokens, short-lived SSH
//! user certificates, login history and lockout.
//!
//! Every login attempt, good or bad, becomes a `login.success` or
//! `login.failure` event. A broker session is a server-side record named by
//! the token's `jti`; revoking it takes effect at the next check anywhere.

pub mod breakglass;
pub mod cert;
pub mod oidc;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{HashAlg, PrivateKey, PublicKey};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::Audit;
use crate::config::{Config, LoginConfig};
use crate::domain::audit::{AuditEvent, EventKind, Outcome, format_us, now_us};
use crate::domain::principal::{CertGrants, LoginMethod, Principal, UserIdentity};
use crate::keys::{self, KeyMaterial};
use crate::metrics::Metrics;
use crate::store::{self, Db};

use self::oidc::{DevicePoll, Oidc, OidcError};
use self::token::{Claims, TokenError, TokenKeys};

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
    #[error("{0}")]
    Unavailable(String),
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

/// How long a login may stay in flight, and a one-time code may wait.
const LOGIN_REQUEST_TTL: Duration = Duration::from_secs(600);
const LOGIN_CODE_TTL: Duration = Duration::from_secs(120);
const DEFAULT_DEVICE_INTERVAL: u64 = 5;

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

    // ---- browser login ---------------------------------------------------

    /// Starts a CLI browser login: returns the IdP URL to send the browser to.
    pub async fn start_browser_login(
        &self,
        cli_port: u16,
        cli_challenge: &str,
        login_hint: Option<&str>,
        browser: &str,
        client: &Client,
    ) -> Result<String, LoginError> {
        let oidc = self.oidc()?;
        if cli_port == 0 {
            return Err(LoginError::BadRequest(
                "cli_port must be a port number".into(),
            ));
        }
        if !valid_challenge(cli_challenge) {
            return Err(LoginError::BadRequest(
                "cli_challenge must be a base64url S256 PKCE challenge".into(),
            ));
        }
        self.check_ip_lock(client).await?;
        let state = oidc::random_token(24);
        let nonce = oidc::random_token(24);
        let pkce = oidc::pkce();
        let now = now_us();
        let url = oidc
            .authorize_url(&state, &nonce, &pkce.challenge, login_hint)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        store::identity::insert_login_request(
            &self.inner.db,
            &store::identity::LoginRequest {
                id: state,
                kind: "browser".into(),
                nonce: Some(nonce),
                pkce_verifier: Some(pkce.verifier),
                cli_redirect: Some(format!("http://127.0.0.1:{cli_port}/callback")),
                cli_challenge: Some(cli_challenge.to_owned()),
                browser_binding: Some(browser_binding(browser)),
                source_ip: client.ip.map(|ip| ip.to_string()),
                user_agent: client.user_agent.clone(),
                created_at: now,
                expires_at: now + LOGIN_REQUEST_TTL.as_micros() as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(unavailable)?;
        Ok(url)
    }

    /// Starts a web view login: returns the IdP URL to send the browser to.
    /// `return_to` must be a path under `/ui/` (no open redirects).
    pub async fn start_web_login(
        &self,
        return_to: &str,
        login_hint: Option<&str>,
        browser: &str,
        client: &Client,
    ) -> Result<String, LoginError> {
        let oidc = self.oidc()?;
        if !safe_return_path(return_to) {
            return Err(LoginError::BadRequest(
                "next must be a path under /ui/".into(),
            ));
        }
        self.check_ip_lock(client).await?;
        let state = oidc::random_token(24);
        let nonce = oidc::random_token(24);
        let pkce = oidc::pkce();
        let now = now_us();
        let url = oidc
            .authorize_url(&state, &nonce, &pkce.challenge, login_hint)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        store::identity::insert_login_request(
            &self.inner.db,
            &store::identity::LoginRequest {
                id: state,
                kind: "web".into(),
                nonce: Some(nonce),
                pkce_verifier: Some(pkce.verifier),
                cli_redirect: Some(return_to.to_owned()),
                browser_binding: Some(browser_binding(browser)),
                source_ip: client.ip.map(|ip| ip.to_string()),
                user_agent: client.user_agent.clone(),
                created_at: now,
                expires_at: now + LOGIN_REQUEST_TTL.as_micros() as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(unavailable)?;
        Ok(url)
    }

    /// Handles the IdP's redirect: validates everything, then hands the CLI
    /// a one-time code through the browser (or, for a web view login, opens
    /// a web session). `browser` is the pre-login cookie the browser
    /// carries: the state must be one this browser started (login CSRF).
    pub async fn callback(
        &self,
        state: Option<&str>,
        code: Option<&str>,
        idp_error: Option<&str>,
        browser: Option<&str>,
        client: &Client,
    ) -> Result<Callback, LoginError> {
        let oidc = self.oidc()?;
        let Some(state) = state.filter(|s| !s.is_empty()) else {
            return Err(self
                .refuse(None, client, LoginMethod::Sso, "missing state", json!({}))
                .await);
        };
        let request = store::identity::get_login_request(&self.inner.db, state)
            .await
            .map_err(unavailable)?;
        let Some(request) = request.filter(|r| r.kind == "browser" || r.kind == "web") else {
            return Err(self
                .refuse(None, client, LoginMethod::Sso, "unknown state", json!({}))
                .await);
        };
        if !same_browser(request.browser_binding.as_deref(), browser) {
            // Not spent: the browser that started it may still finish it.
            return Err(self
                .refuse(
                    None,
                    client,
                    LoginMethod::Sso,
                    "login state from another browser",
                    json!({"client": request.kind, "pre_login_cookie": browser.is_some()}),
                )
                .await);
        }
        let now = now_us();
        if !store::identity::use_login_request(&self.inner.db, state, now)
            .await
            .map_err(unavailable)?
        {
            let reason = if request.used_at.is_some() {
                "replayed state"
            } else {
                "login expired"
            };
            return Err(self
                .refuse(None, client, LoginMethod::Sso, reason, json!({}))
                .await);
        }
        if request.kind == "web" {
            return self
                .finish_web_login(oidc, &request, code, idp_error, client)
                .await
                .map(Callback::Web);
        }
        let cli_redirect = request.cli_redirect.clone().unwrap_or_default();
        let fail_to_cli = |message: &str| {
            let mut url = url::Url::parse(&cli_redirect).ok();
            if let Some(url) = url.as_mut() {
                url.query_pairs_mut()
                    .append_pair("error", "access_denied")
                    .append_pair("error_description", message);
            }
            url.map(|u| u.to_string())
        };
        if let Some(error) = idp_error {
            let message = format!("the identity provider returned {error}");
            self.refuse(
                None,
                client,
                LoginMethod::Sso,
                &format!("idp_error: {error}"),
                json!({}),
            )
            .await;
            return Ok(Callback::RedirectToCli(
                fail_to_cli(&message).unwrap_or_default(),
            ));
        }
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            let refused = self
                .refuse(None, client, LoginMethod::Sso, "missing code", json!({}))
                .await;
            return Ok(Callback::RedirectToCli(
                fail_to_cli(&refused.to_string()).unwrap_or_default(),
            ));
        };
        let identity = oidc
            .exchange_code(
                code,
                request.pkce_verifier.as_deref().unwrap_or_default(),
                request.nonce.as_deref().unwrap_or_default(),
            )
            .await;
        let identity = match self.admit(identity, client, LoginMethod::Sso).await {
            Ok(identity) => identity,
            Err(e) => {
                return Ok(Callback::RedirectToCli(
                    fail_to_cli(&e.to_string()).unwrap_or_default(),
                ));
            }
        };
        let one_time = oidc::random_token(32);
        let code_hash = hex::encode(Sha256::digest(one_time.as_bytes()));
        let identity_json =
            serde_json::to_string(&identity).map_err(|e| LoginError::Unavailable(e.to_string()))?;
        store::identity::insert_login_code(
            &self.inner.db,
            &code_hash,
            &store::identity::LoginCode {
                cli_challenge: request.cli_challenge.clone().unwrap_or_default(),
                identity_json,
                source_ip: client.ip.map(|ip| ip.to_string()),
                user_agent: client.user_agent.clone(),
            },
            now,
            now + LOGIN_CODE_TTL.as_micros() as i64,
        )
        .await
        .map_err(unavailable)?;
        let mut url = url::Url::parse(&cli_redirect)
            .map_err(|_| LoginError::BadRequest("bad CLI redirect".into()))?;
        url.query_pairs_mut().append_pair("code", &one_time);
        Ok(Callback::RedirectToCli(url.to_string()))
    }

    /// The web leg of [`Self::callback`]: errors are shown in the browser.
    async fn finish_web_login(
        &self,
        oidc: &Oidc,
        request: &store::identity::LoginRequest,
        code: Option<&str>,
        idp_error: Option<&str>,
        client: &Client,
    ) -> Result<WebLogin, LoginError> {
        if let Some(error) = idp_error {
            let refused = self
                .refuse(
                    None,
                    client,
                    LoginMethod::Sso,
                    &format!("idp_error: {error}"),
                    json!({"client": "web"}),
                )
                .await;
            return Err(refused);
        }
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Err(self
                .refuse(
                    None,
                    client,
                    LoginMethod::Sso,
                    "missing code",
                    json!({"client": "web"}),
                )
                .await);
        };
        let identity = oidc
            .exchange_code(
                code,
                request.pkce_verifier.as_deref().unwrap_or_default(),
                request.nonce.as_deref().unwrap_or_default(),
            )
            .await;
        let identity = self.admit(identity, client, LoginMethod::Sso).await?;
        let return_to = request.cli_redirect.clone().unwrap_or_default();
        self.open_web_session(identity, client, &return_to).await
    }

    /// Opens a web view session for an admitted identity: the session row,
    /// a web-audience token, `login.success` and `token.issued` (durable
    /// before the cookie is set).
    async fn open_web_session(
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
            return Err(LoginError::Unavailable(e.to_string()));
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

    /// The CLI redeems its one-time code with its PKCE verifier and a proof
    /// that it holds the key it wants certified.
    pub async fn exchange(
        &self,
        code: &SecretString,
        code_verifier: &SecretString,
        public_key: &str,
        proof: &str,
        client: &Client,
    ) -> Result<Login, LoginError> {
        let code_hash = hex::encode(Sha256::digest(code.expose_secret().as_bytes()));
        let found = store::identity::get_login_code(&self.inner.db, &code_hash)
            .await
            .map_err(unavailable)?;
        let Some((stored, expires_at, used_at)) = found else {
            return Err(self
                .refuse(
                    None,
                    client,
                    LoginMethod::Sso,
                    "unknown login code",
                    json!({}),
                )
                .await);
        };
        let identity: UserIdentity = serde_json::from_str(&stored.identity_json)
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let now = now_us();
        // Spend the code before checking anything else: a wrong verifier
        // burns it, so it cannot be guessed at.
        if !store::identity::use_login_code(&self.inner.db, &code_hash, now)
            .await
            .map_err(unavailable)?
        {
            let reason = if used_at.is_some() {
                "reused login code"
            } else if expires_at <= now {
                "expired login code"
            } else {
                "login code not accepted"
            };
            return Err(self
                .refuse(Some(&identity), client, identity.method, reason, json!({}))
                .await);
        }
        if oidc::pkce_challenge(code_verifier.expose_secret()) != stored.cli_challenge {
            return Err(self
                .refuse(
                    Some(&identity),
                    client,
                    identity.method,
                    "wrong PKCE verifier",
                    json!({}),
                )
                .await);
        }
        let key = match cert::verify_proof(public_key, code.expose_secret(), proof) {
            Ok(key) => key,
            Err(reason) => {
                return Err(self
                    .refuse(
                        Some(&identity),
                        client,
                        identity.method,
                        &format!("proof of possession failed: {reason}"),
                        json!({}),
                    )
                    .await);
            }
        };
        self.open_session(identity, &key, client, json!({})).await
    }

    // ---- device login ----------------------------------------------------

    pub async fn device_start(&self, client: &Client) -> Result<DeviceStart, LoginError> {
        let oidc = self.oidc()?;
        self.check_ip_lock(client).await?;
        let grant = oidc
            .device_authorize()
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let interval = grant.interval.unwrap_or(DEFAULT_DEVICE_INTERVAL).max(1);
        let request_id = oidc::random_token(24);
        let now = now_us();
        let ttl = Duration::from_secs(grant.expires_in.clamp(60, 1800));
        store::identity::insert_login_request(
            &self.inner.db,
            &store::identity::LoginRequest {
                id: request_id.clone(),
                kind: "device".into(),
                device_code: Some(grant.device_code.clone()),
                interval_secs: Some(interval as i64),
                next_poll_at: Some(now),
                source_ip: client.ip.map(|ip| ip.to_string()),
                user_agent: client.user_agent.clone(),
                created_at: now,
                expires_at: now + ttl.as_micros() as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(unavailable)?;
        Ok(DeviceStart {
            request_id,
            user_code: grant.user_code,
            verification_uri: grant.verification_uri,
            verification_uri_complete: grant.verification_uri_complete,
            interval,
            expires_in: ttl.as_secs(),
        })
    }

    pub async fn device_poll(
        &self,
        request_id: &str,
        public_key: &str,
        proof: &str,
        client: &Client,
    ) -> Result<DeviceOutcome, LoginError> {
        let oidc = self.oidc()?;
        let request = store::identity::get_login_request(&self.inner.db, request_id)
            .await
            .map_err(unavailable)?
            .filter(|r| r.kind == "device");
        let Some(request) = request else {
            return Err(LoginError::BadRequest("unknown device login".into()));
        };
        let now = now_us();
        if request.used_at.is_some() || request.expires_at <= now {
            return Err(LoginError::Refused(
                "the device login has expired or was used; start again".into(),
            ));
        }
        let key = cert::verify_proof(public_key, request_id, proof).map_err(|reason| {
            LoginError::BadRequest(format!("proof of possession failed: {reason}"))
        })?;
        let interval = request
            .interval_secs
            .unwrap_or(DEFAULT_DEVICE_INTERVAL as i64)
            .max(1);
        if request
            .next_poll_at
            .is_some_and(|next| now < next - 200_000)
        {
            // Polled faster than the interval: RFC 8628 says slow down.
            let interval = interval + 5;
            store::identity::set_next_poll(
                &self.inner.db,
                request_id,
                now + interval * 1_000_000,
                interval,
            )
            .await
            .map_err(unavailable)?;
            return Ok(DeviceOutcome::SlowDown {
                interval: interval as u64,
            });
        }
        let device_code = request.device_code.clone().unwrap_or_default();
        match oidc.device_poll(&device_code).await {
            Ok(DevicePoll::Pending) => {
                store::identity::set_next_poll(
                    &self.inner.db,
                    request_id,
                    now + interval * 1_000_000,
                    interval,
                )
                .await
                .map_err(unavailable)?;
                Ok(DeviceOutcome::Pending {
                    interval: interval as u64,
                })
            }
            Ok(DevicePoll::SlowDown) => {
                let interval = interval + 5;
                store::identity::set_next_poll(
                    &self.inner.db,
                    request_id,
                    now + interval * 1_000_000,
                    interval,
                )
                .await
                .map_err(unavailable)?;
                Ok(DeviceOutcome::SlowDown {
                    interval: interval as u64,
                })
            }
            Ok(DevicePoll::Done(identity)) => {
                if !store::identity::use_login_request(&self.inner.db, request_id, now)
                    .await
                    .map_err(unavailable)?
                {
                    return Err(self
                        .refuse(
                            Some(&identity),
                            client,
                            LoginMethod::Device,
                            "replayed device login",
                            json!({}),
                        )
                        .await);
                }
                let identity = self
                    .admit(Ok(identity), client, LoginMethod::Device)
                    .await?;
                let response = self.open_session(identity, &key, client, json!({})).await?;
                Ok(DeviceOutcome::Done(Box::new(response)))
            }
            Err(OidcError::Unreachable(e)) => Err(LoginError::Unavailable(format!(
                "the identity provider is unreachable: {e}"
            ))),
            Err(e) => {
                let _ = store::identity::use_login_request(&self.inner.db, request_id, now).await;
                Err(self
                    .admit(Err(e), client, LoginMethod::Device)
                    .await
                    .err()
                    .unwrap_or_else(|| LoginError::Refused("device login refused".into())))
            }
        }
    }

    // ---- break-glass -----------------------------------------------------

    /// Creates (or resets) a break-glass account; returns its secrets once.
    pub async fn add_breakglass(
        &self,
        username: &str,
        groups: Vec<String>,
        by: &str,
    ) -> anyhow::Result<breakglass::Enrolment> {
        add_breakglass(
            &self.inner.db,
            &self.inner.audit,
            &self.inner.breakglass_key,
            username,
            groups,
            by,
        )
        .await
    }

    pub async fn breakglass_exists(&self) -> anyhow::Result<bool> {
        Ok(store::identity::breakglass_exists(&self.inner.db).await?)
    }

    pub async fn breakglass_login(
        &self,
        username: &str,
        password: &SecretString,
        totp: &SecretString,
        public_key: &str,
        proof: &str,
        client: &Client,
    ) -> Result<Login, LoginError> {
        let (who, account) = self
            .check_breakglass(username, password, totp, client)
            .await?;
        let key = cert::verify_proof(public_key, &format!("breakglass:{username}"), proof).map_err(
            |reason| LoginError::BadRequest(format!("proof of possession failed: {reason}")),
        );
        let key = match key {
            Ok(key) => key,
            Err(e) => {
                return Err(self.refuse_breakglass(&who, client, &e.to_string()).await);
            }
        };
        let identity = breakglass_identity(username, account.groups.clone());
        self.inner
            .audit
            .gate(
                AuditEvent::new(EventKind::BreakglassUsed, Outcome::Success)
                    .actor(&identity.email)
                    .source_ip(client.ip)
                    .details(json!({
                        "username": username,
                        "groups": identity.groups,
                        "user_agent": client.user_agent,
                    })),
            )
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        self.open_session(identity, &key, client, json!({"breakglass": true}))
            .await
    }

    /// A break-glass login to the web view (for when the IdP is down, and
    /// `--dev`): the same checks and `breakglass.used` record as the CLI's.
    pub async fn breakglass_web_login(
        &self,
        username: &str,
        password: &SecretString,
        totp: &SecretString,
        return_to: &str,
        client: &Client,
    ) -> Result<WebLogin, LoginError> {
        let (_, account) = self
            .check_breakglass(username, password, totp, client)
            .await?;
        let identity = breakglass_identity(username, account.groups.clone());
        self.inner
            .audit
            .gate(
                AuditEvent::new(EventKind::BreakglassUsed, Outcome::Success)
                    .actor(&identity.email)
                    .source_ip(client.ip)
                    .details(json!({
                        "username": username,
                        "groups": identity.groups,
                        "client": "web",
                        "user_agent": client.user_agent,
                    })),
            )
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        self.open_web_session(identity, client, return_to).await
    }

    /// Password, TOTP (each step once) and lockouts of a break-glass
    /// login; every refusal is a `login.failure` naming what was wrong,
    /// and the caller is told only [`BREAKGLASS_REFUSED`]: the answer never
    /// says whether the account exists or which factor failed. Failures
    /// lock an account only for the source they came from, so nobody can
    /// lock the responder out from elsewhere.
    async fn check_breakglass(
        &self,
        username: &str,
        password: &SecretString,
        totp: &SecretString,
        client: &Client,
    ) -> Result<(UserIdentity, store::identity::BreakglassAccount), LoginError> {
        self.check_ip_lock(client).await?;
        let who = breakglass_identity(username, Vec::new());
        let (scope, key) = account_source(&who.email, client);
        self.check_lock(scope, &key).await?;
        let account = store::identity::get_breakglass(&self.inner.db, username)
            .await
            .map_err(unavailable)?;
        let Some(account) = account.filter(|a| a.disabled_at.is_none()) else {
            // Same cost as a real check: no user enumeration by timing.
            let _ = breakglass::password_matches(password, DUMMY_HASH);
            return Err(self
                .refuse_breakglass(&who, client, "unknown break-glass account")
                .await);
        };
        if !breakglass::password_matches(password, &account.password_hash) {
            return Err(self.refuse_breakglass(&who, client, "wrong password").await);
        }
        let now_secs = (now_us() / 1_000_000).max(0) as u64;
        let Some(step) = breakglass::check_totp(
            &account.totp_secret_enc,
            &self.inner.breakglass_key,
            username,
            totp.expose_secret(),
            now_secs,
        ) else {
            return Err(self
                .refuse_breakglass(&who, client, "wrong TOTP code")
                .await);
        };
        if !store::identity::use_totp_step(&self.inner.db, username, step as i64)
            .await
            .map_err(unavailable)?
        {
            return Err(self
                .refuse_breakglass(&who, client, "TOTP code already used")
                .await);
        }
        let _ = store::identity::clear_failures(&self.inner.db, scope, &key).await;
        Ok((who, account))
    }

    // ---- sessions and tokens ---------------------------------------------

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

    // ---- internals -------------------------------------------------------

    fn oidc(&self) -> Result<&Oidc, LoginError> {
        self.inner.oidc.as_ref().ok_or_else(|| {
            LoginError::Unavailable(
                "SSO is not configured on this broker (oidc.issuer); use `pam login --break-glass USER`".into(),
            )
        })
    }

    /// Applies the broker's own rules to an IdP answer: MFA, lockout.
    async fn admit(
        &self,
        identity: Result<UserIdentity, OidcError>,
        client: &Client,
        method: LoginMethod,
    ) -> Result<UserIdentity, LoginError> {
        let identity = match identity {
            Ok(identity) => identity,
            Err(OidcError::Unreachable(e)) => {
                self.refuse(None, client, method, "idp_unreachable", json!({"error": e}))
                    .await;
                return Err(LoginError::Unavailable(
                    "the identity provider is unreachable".into(),
                ));
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

    /// The server-side session row and a broker token of `audience`
    /// naming it: `(jti, token, expires_at_us)`.
    async fn issue_token(
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
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
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
            return Err(LoginError::Unavailable(e.to_string()));
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

    async fn sign_certificate(
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
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        Ok((certificate, expires))
    }

    /// Signs a certificate and returns the `ssh_cert.issued` event that must
    /// be recorded before the certificate is handed out.
    fn sign_certificate_unrecorded(
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
        .map_err(|e| LoginError::Unavailable(format!("signing the certificate: {e}")))?;
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
        let text = issued
            .certificate
            .to_openssh()
            .map_err(|e| LoginError::Unavailable(format!("encoding the certificate: {e}")))?;
        Ok((
            text,
            format_us(issued.valid_before as i64 * 1_000_000),
            event,
        ))
    }

    /// Records a failed login (audit + lockout counters) and returns the
    /// error to give the caller.
    async fn refuse(
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
    async fn refuse_breakglass(
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
    async fn record_failure(
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

    /// Audits a refusal for a locked account without counting it again.
    async fn refuse_quietly(
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
    async fn count_failure(
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

    async fn check_ip_lock(&self, client: &Client) -> Result<(), LoginError> {
        if let Some(ip) = client.ip {
            self.check_lock("ip", &ip.to_string()).await?;
        }
        Ok(())
    }

    async fn check_user_lock(&self, email: &str) -> Result<(), LoginError> {
        self.check_lock("user", email).await
    }

    async fn check_lock(&self, scope: &str, key: &str) -> Result<(), LoginError> {
        let until = store::identity::lockout_until(&self.inner.db, scope, key)
            .await
            .map_err(unavailable)?;
        match until {
            Some(until) if until > now_us() => Err(LoginError::Locked(format_us(until))),
            _ => Ok(()),
        }
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
    if !valid_username(username) {
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

fn breakglass_identity(username: &str, groups: Vec<String>) -> UserIdentity {
    UserIdentity {
        email: format!("{username}@breakglass"),
        subject: username.to_owned(),
        name: Some(format!("break-glass {username}")),
        groups,
        amr: vec!["pwd".into(), "otp".into()],
        mfa: true,
        method: LoginMethod::Breakglass,
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

fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_username(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn unavailable(e: store::Error) -> LoginError {
    tracing::error!(error = %e, "identity store error");
    LoginError::Unavailable("the broker's store is unavailable".into())
}

/// The pre-login cookie as stored: its SHA-256, hex.
fn browser_binding(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

/// Whether the callback's browser holds the cookie its login started with
/// (constant time).
fn same_browser(binding: Option<&str>, cookie: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    match (binding, cookie) {
        (Some(binding), Some(cookie)) => browser_binding(cookie)
            .as_bytes()
            .ct_eq(binding.as_bytes())
            .into(),
        _ => false,
    }
}

/// What a refused break-glass login is told, whatever was wrong.
pub const BREAKGLASS_REFUSED: &str = "login refused: wrong username, password or TOTP code";

/// The lockout scope and key of an account at one source address.
fn account_source(email: &str, client: &Client) -> (&'static str, String) {
    let source = client.ip.map(|ip| ip.to_string()).unwrap_or_default();
    ("user_source", format!("{email} {source}"))
}

/// An argon2id hash of a random password, checked against when an account
/// does not exist so that the answer takes as long either way.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Q0Qz4vW5n1b7Hc3iQ1n3Zk7Jq1Y2bHb6cE1l9o0C6pM";

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
