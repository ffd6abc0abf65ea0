//! Browser logins through the company IdP: the CLI's (`pam login`, which
//! gets a one-time code through its loopback listener and redeems it with
//! its PKCE verifier) and the web view's (a cookie session). The OAuth
//! state is bound to the browser that started the login (the hash of its
//! pre-login cookie), so a callback carrying another browser's state is
//! refused (login CSRF).

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::oidc::{self, Oidc};
use super::{
    Callback, Client, Identity, Login, LoginError, WebLogin, cert, safe_return_path, unavailable,
};
use crate::domain::audit::now_us;
use crate::domain::principal::{LoginMethod, UserIdentity};
use crate::store;

impl Identity {
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
        self.begin_authorization(
            oidc,
            "browser",
            format!("http://127.0.0.1:{cli_port}/callback"),
            Some(cli_challenge.to_owned()),
            login_hint,
            browser,
            client,
        )
        .await
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
        self.begin_authorization(
            oidc,
            "web",
            return_to.to_owned(),
            None,
            login_hint,
            browser,
            client,
        )
        .await
    }

    /// What both kinds of browser login share: the source's lockout, a
    /// fresh state, nonce and PKCE pair, the IdP's authorization URL (an
    /// IdP outage is audited, not blamed on the user), and the pending
    /// request bound to this browser. `redirect` is where the login ends:
    /// the CLI's loopback listener or a web view path.
    #[allow(clippy::too_many_arguments)]
    async fn begin_authorization(
        &self,
        oidc: &Oidc,
        kind: &str,
        redirect: String,
        cli_challenge: Option<String>,
        login_hint: Option<&str>,
        browser: &str,
        client: &Client,
    ) -> Result<String, LoginError> {
        self.check_ip_lock(client).await?;
        let state = oidc::random_token(24);
        let nonce = oidc::random_token(24);
        let pkce = oidc::pkce();
        let now = now_us();
        let url = match oidc
            .authorize_url(&state, &nonce, &pkce.challenge, login_hint)
            .await
        {
            Ok(url) => url,
            Err(e) => return Err(self.idp_outage(client, LoginMethod::Sso, &e).await),
        };
        store::identity::insert_login_request(
            &self.inner.db,
            &store::identity::LoginRequest {
                id: state,
                kind: kind.into(),
                nonce: Some(nonce),
                pkce_verifier: Some(pkce.verifier),
                cli_redirect: Some(redirect),
                cli_challenge,
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
        self.finish_cli_login(oidc, &request, code, idp_error, client)
            .await
    }

    /// The CLI leg of [`Self::callback`]: the identity goes into a one-time
    /// code for the CLI's loopback listener; errors go there too.
    async fn finish_cli_login(
        &self,
        oidc: &Oidc,
        request: &store::identity::LoginRequest,
        code: Option<&str>,
        idp_error: Option<&str>,
        client: &Client,
    ) -> Result<Callback, LoginError> {
        let now = now_us();
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
        let identity_json = serde_json::to_string(&identity).map_err(LoginError::unavailable)?;
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
    pub(super) async fn finish_web_login(
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
        let identity: UserIdentity =
            serde_json::from_str(&stored.identity_json).map_err(LoginError::unavailable)?;
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
}

/// How long a login may stay in flight, and a one-time code may wait.
const LOGIN_REQUEST_TTL: Duration = Duration::from_secs(600);

const LOGIN_CODE_TTL: Duration = Duration::from_secs(120);

pub(super) fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The pre-login cookie as stored: its SHA-256, hex.
pub(super) fn browser_binding(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

/// Whether the callback's browser holds the cookie its login started with
/// (constant time).
pub(super) fn same_browser(binding: Option<&str>, cookie: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    match (binding, cookie) {
        (Some(binding), Some(cookie)) => browser_binding(cookie)
            .as_bytes()
            .ct_eq(binding.as_bytes())
            .into(),
        _ => false,
    }
}
