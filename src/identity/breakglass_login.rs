//! Break-glass logins: local emergency accounts (password + TOTP, each
//! TOTP step once) for when the IdP is down, loudly audited as
//! `breakglass.used`. A refusal never tells which part was wrong, and
//! failures lock an account out only at the source they came from.

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::{Client, Identity, Login, LoginError, WebLogin, breakglass, cert, unavailable};
use crate::domain::audit::{AuditEvent, EventKind, Outcome, now_us};
use crate::domain::principal::{LoginMethod, UserIdentity};
use crate::store;

impl Identity {
    /// Creates (or resets) a break-glass account; returns its secrets once.
    pub async fn add_breakglass(
        &self,
        username: &str,
        groups: Vec<String>,
        by: &str,
    ) -> anyhow::Result<breakglass::Enrolment> {
        super::add_breakglass(
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
            .map_err(LoginError::unavailable)?;
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
            .map_err(LoginError::unavailable)?;
        self.open_web_session(identity, client, return_to).await
    }

    /// Password, TOTP (each step once) and lockouts of a break-glass
    /// login; every refusal is a `login.failure` naming what was wrong,
    /// and the caller is told only [`BREAKGLASS_REFUSED`]: the answer never
    /// says whether the account exists or which factor failed. Failures
    /// lock an account only for the source they came from, so nobody can
    /// lock the responder out from elsewhere.
    pub(super) async fn check_breakglass(
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
}

/// What a refused break-glass login is told, whatever was wrong.
pub(super) const BREAKGLASS_REFUSED: &str = "login refused: wrong username, password or TOTP code";

/// The lockout scope and key of an account at one source address.
pub(super) fn account_source(email: &str, client: &Client) -> (&'static str, String) {
    let source = client.ip.map(|ip| ip.to_string()).unwrap_or_default();
    ("user_source", format!("{email} {source}"))
}

pub(super) fn breakglass_identity(username: &str, groups: Vec<String>) -> UserIdentity {
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

pub(super) fn valid_username(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An argon2id hash of a random password, checked against when an account
/// does not exist so that the answer takes as long either way.
pub(super) const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Q0Qz4vW5n1b7Hc3iQ1n3Zk7Jq1Y2bHb6cE1l9o0C6pM";
