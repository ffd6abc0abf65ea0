//! Identity tables: broker sessions, logins in flight, one-time codes,
//! failures and lockouts, break-glass accounts.

use sqlx::Row;

use super::{Db, Result, relaxed_tx, with_db};
use crate::domain::principal::{LoginMethod, UserIdentity};

/// A broker session as stored.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub jti: String,
    pub identity: UserIdentity,
    pub source_ip: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// A login in flight. Its `Debug` hides the PKCE verifier and device code.
#[derive(Clone, Default)]
pub struct LoginRequest {
    pub id: String,
    pub kind: String,
    pub nonce: Option<String>,
    pub pkce_verifier: Option<String>,
    pub cli_redirect: Option<String>,
    pub cli_challenge: Option<String>,
    pub device_code: Option<String>,
    pub interval_secs: Option<i64>,
    pub next_poll_at: Option<i64>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// SHA-256 (hex) of the pre-login cookie of the browser that started
    /// a browser or web login; its callback must come from that browser.
    pub browser_binding: Option<String>,
}

/// A one-time code waiting for the CLI.
#[derive(Debug, Clone)]
pub struct LoginCode {
    pub cli_challenge: String,
    pub identity_json: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Clone)]
pub struct BreakglassAccount {
    pub username: String,
    pub password_hash: String,
    pub totp_secret_enc: Vec<u8>,
    pub groups: Vec<String>,
    pub disabled_at: Option<i64>,
    pub last_totp_step: i64,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("id", &"<redacted>")
            .field("kind", &self.kind)
            .field("cli_redirect", &self.cli_redirect)
            .field("source_ip", &self.source_ip)
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BreakglassAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakglassAccount")
            .field("username", &self.username)
            .field("groups", &self.groups)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

pub async fn insert_session(
    db: &Db,
    jti: &str,
    identity: &UserIdentity,
    source_ip: Option<&str>,
    user_agent: Option<&str>,
    created_at: i64,
    expires_at: i64,
) -> Result<()> {
    let groups = serde_json::to_string(&identity.groups).unwrap_or_else(|_| "[]".into());
    let amr = serde_json::to_string(&identity.amr).unwrap_or_else(|_| "[]".into());
    relaxed_tx!(db, tx => {
        sqlx::query(
            "INSERT INTO broker_sessions (jti, user_email, subject, groups_json, amr_json, mfa, method, source_ip, user_agent, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(jti)
        .bind(&identity.email)
        .bind(&identity.subject)
        .bind(&groups)
        .bind(&amr)
        .bind(identity.mfa)
        .bind(identity.method.as_str())
        .bind(source_ip)
        .bind(user_agent)
        .bind(created_at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    })
}

pub async fn get_session(db: &Db, jti: &str) -> Result<Option<SessionRow>> {
    with_db!(db, pool => {
        let row = sqlx::query(
            "SELECT jti, user_email, subject, groups_json, amr_json, mfa, method, source_ip, created_at, expires_at, revoked_at \
             FROM broker_sessions WHERE jti = $1",
        )
        .bind(jti)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let groups: String = row.try_get("groups_json")?;
        let amr: String = row.try_get("amr_json")?;
        let method: String = row.try_get("method")?;
        let mfa: bool = row.try_get("mfa")?;
        let subject: Option<String> = row.try_get("subject")?;
        Ok(Some(SessionRow {
            jti: row.try_get("jti")?,
            identity: UserIdentity {
                email: row.try_get("user_email")?,
                subject: subject.unwrap_or_default(),
                name: None,
                groups: serde_json::from_str(&groups).unwrap_or_default(),
                amr: serde_json::from_str(&amr).unwrap_or_default(),
                mfa,
                method: LoginMethod::parse(&method).unwrap_or(LoginMethod::Sso),
            },
            source_ip: row.try_get("source_ip")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
        }))
    })
}

/// Marks a session revoked; false when it was unknown or already revoked.
pub async fn revoke_session(db: &Db, jti: &str, by: &str, reason: &str, now: i64) -> Result<bool> {
    with_db!(db, pool => {
        let done = sqlx::query(
            "UPDATE broker_sessions SET revoked_at = $1, revoked_by = $2, revoke_reason = $3 \
             WHERE jti = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(jti)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Live (unrevoked, unexpired) sessions, newest first.
pub async fn live_sessions(
    db: &Db,
    user: Option<&str>,
    now: i64,
    limit: i64,
) -> Result<Vec<SessionRow>> {
    let jtis: Vec<String> = with_db!(db, pool => {
        sqlx::query_scalar(
            "SELECT jti FROM broker_sessions WHERE revoked_at IS NULL AND expires_at > $1 \
             AND ($2 IS NULL OR user_email = $2) ORDER BY created_at DESC LIMIT $3",
        )
        .bind(now)
        .bind(user)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    let mut out = Vec::with_capacity(jtis.len());
    for jti in jtis {
        if let Some(row) = get_session(db, &jti).await? {
            out.push(row);
        }
    }
    Ok(out)
}

pub async fn insert_login_request(db: &Db, r: &LoginRequest) -> Result<()> {
    with_db!(db, pool => {
        sqlx::query(
            "INSERT INTO login_requests (id, kind, nonce, pkce_verifier, cli_redirect, cli_challenge, device_code, interval_secs, next_poll_at, source_ip, user_agent, created_at, expires_at, browser_binding) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&r.id)
        .bind(&r.kind)
        .bind(&r.nonce)
        .bind(&r.pkce_verifier)
        .bind(&r.cli_redirect)
        .bind(&r.cli_challenge)
        .bind(&r.device_code)
        .bind(r.interval_secs)
        .bind(r.next_poll_at)
        .bind(&r.source_ip)
        .bind(&r.user_agent)
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(&r.browser_binding)
        .execute(pool)
        .await?;
        Ok(())
    })
}

pub async fn get_login_request(db: &Db, id: &str) -> Result<Option<LoginRequest>> {
    with_db!(db, pool => {
        let row = sqlx::query(
            "SELECT id, kind, nonce, pkce_verifier, cli_redirect, cli_challenge, device_code, interval_secs, next_poll_at, source_ip, user_agent, created_at, expires_at, used_at, browser_binding \
             FROM login_requests WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(LoginRequest {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            nonce: row.try_get("nonce")?,
            pkce_verifier: row.try_get("pkce_verifier")?,
            cli_redirect: row.try_get("cli_redirect")?,
            cli_challenge: row.try_get("cli_challenge")?,
            device_code: row.try_get("device_code")?,
            interval_secs: row.try_get("interval_secs")?,
            next_poll_at: row.try_get("next_poll_at")?,
            source_ip: row.try_get("source_ip")?,
            user_agent: row.try_get("user_agent")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
            browser_binding: row.try_get("browser_binding")?,
        }))
    })
}

/// Marks a login request used, once: false if it was already used or has
/// expired (a replayed `state`).
pub async fn use_login_request(db: &Db, id: &str, now: i64) -> Result<bool> {
    with_db!(db, pool => {
        let done = sqlx::query(
            "UPDATE login_requests SET used_at = $1, pkce_verifier = NULL, device_code = NULL \
             WHERE id = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(id)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

pub async fn set_next_poll(db: &Db, id: &str, next_poll_at: i64, interval_secs: i64) -> Result<()> {
    with_db!(db, pool => {
        sqlx::query("UPDATE login_requests SET next_poll_at = $1, interval_secs = $2 WHERE id = $3")
            .bind(next_poll_at)
            .bind(interval_secs)
            .bind(id)
            .execute(pool)
            .await?;
        Ok(())
    })
}

pub async fn insert_login_code(
    db: &Db,
    code_hash: &str,
    code: &LoginCode,
    created_at: i64,
    expires_at: i64,
) -> Result<()> {
    with_db!(db, pool => {
        sqlx::query(
            "INSERT INTO login_codes (code_hash, cli_challenge, identity_json, source_ip, user_agent, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(code_hash)
        .bind(&code.cli_challenge)
        .bind(&code.identity_json)
        .bind(&code.source_ip)
        .bind(&code.user_agent)
        .bind(created_at)
        .bind(expires_at)
        .execute(pool)
        .await?;
        Ok(())
    })
}

/// Looks a one-time code up. `Err`-free outcomes: unknown, used, expired, fresh.
pub async fn get_login_code(
    db: &Db,
    code_hash: &str,
) -> Result<Option<(LoginCode, i64, Option<i64>)>> {
    with_db!(db, pool => {
        let row = sqlx::query(
            "SELECT cli_challenge, identity_json, source_ip, user_agent, expires_at, used_at FROM login_codes WHERE code_hash = $1",
        )
        .bind(code_hash)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((
            LoginCode {
                cli_challenge: row.try_get("cli_challenge")?,
                identity_json: row.try_get("identity_json")?,
                source_ip: row.try_get("source_ip")?,
                user_agent: row.try_get("user_agent")?,
            },
            row.try_get("expires_at")?,
            row.try_get("used_at")?,
        )))
    })
}

/// Spends a one-time code; false if it was spent already.
pub async fn use_login_code(db: &Db, code_hash: &str, now: i64) -> Result<bool> {
    with_db!(db, pool => {
        let done = sqlx::query(
            "UPDATE login_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(code_hash)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Deletes logins and codes that ended more than `before` ago.
pub async fn purge_logins(db: &Db, before: i64) -> Result<u64> {
    with_db!(db, pool => {
        let a = sqlx::query("DELETE FROM login_requests WHERE expires_at < $1").bind(before).execute(pool).await?;
        let b = sqlx::query("DELETE FROM login_codes WHERE expires_at < $1").bind(before).execute(pool).await?;
        Ok(a.rows_affected() + b.rows_affected())
    })
}

pub async fn record_failure(db: &Db, scope: &str, key: &str, ts: i64) -> Result<()> {
    with_db!(db, pool => {
        sqlx::query("INSERT INTO login_failures (scope, key, ts) VALUES ($1, $2, $3)")
            .bind(scope)
            .bind(key)
            .bind(ts)
            .execute(pool)
            .await?;
        Ok(())
    })
}

pub async fn count_failures(db: &Db, scope: &str, key: &str, since: i64) -> Result<i64> {
    with_db!(db, pool => {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM login_failures WHERE scope = $1 AND key = $2 AND ts >= $3")
            .bind(scope)
            .bind(key)
            .bind(since)
            .fetch_one(pool)
            .await?)
    })
}

pub async fn clear_failures(db: &Db, scope: &str, key: &str) -> Result<()> {
    with_db!(db, pool => {
        sqlx::query("DELETE FROM login_failures WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .execute(pool)
            .await?;
        Ok(())
    })
}

pub async fn set_lockout(db: &Db, scope: &str, key: &str, until: i64) -> Result<()> {
    with_db!(db, pool => {
        sqlx::query(
            "INSERT INTO lockouts (scope, key, until) VALUES ($1, $2, $3) \
             ON CONFLICT (scope, key) DO UPDATE SET until = excluded.until",
        )
        .bind(scope)
        .bind(key)
        .bind(until)
        .execute(pool)
        .await?;
        Ok(())
    })
}

pub async fn lockout_until(db: &Db, scope: &str, key: &str) -> Result<Option<i64>> {
    with_db!(db, pool => {
        Ok(sqlx::query_scalar("SELECT until FROM lockouts WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .fetch_optional(pool)
            .await?)
    })
}

pub async fn clear_lockout(db: &Db, scope: &str, key: &str) -> Result<bool> {
    with_db!(db, pool => {
        let done = sqlx::query("DELETE FROM lockouts WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .execute(pool)
            .await?;
        Ok(done.rows_affected() > 0)
    })
}

pub async fn upsert_breakglass(db: &Db, account: &BreakglassAccount, now: i64) -> Result<()> {
    let groups = serde_json::to_string(&account.groups).unwrap_or_else(|_| "[]".into());
    with_db!(db, pool => {
        sqlx::query(
            "INSERT INTO breakglass_accounts (username, password_hash, totp_secret_enc, groups_json, created_at, disabled_at, last_totp_step) \
             VALUES ($1, $2, $3, $4, $5, NULL, 0) \
             ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, \
             totp_secret_enc = excluded.totp_secret_enc, groups_json = excluded.groups_json, \
             created_at = excluded.created_at, disabled_at = NULL, last_totp_step = 0",
        )
        .bind(&account.username)
        .bind(&account.password_hash)
        .bind(&account.totp_secret_enc)
        .bind(&groups)
        .bind(now)
        .execute(pool)
        .await?;
        Ok(())
    })
}

pub async fn get_breakglass(db: &Db, username: &str) -> Result<Option<BreakglassAccount>> {
    with_db!(db, pool => {
        let row = sqlx::query(
            "SELECT username, password_hash, totp_secret_enc, groups_json, disabled_at, last_totp_step FROM breakglass_accounts WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let groups: String = row.try_get("groups_json")?;
        Ok(Some(BreakglassAccount {
            username: row.try_get("username")?,
            password_hash: row.try_get("password_hash")?,
            totp_secret_enc: row.try_get("totp_secret_enc")?,
            groups: serde_json::from_str(&groups).unwrap_or_default(),
            disabled_at: row.try_get("disabled_at")?,
            last_totp_step: row.try_get("last_totp_step")?,
        }))
    })
}

/// Accepts a TOTP step once: false if this or a later step was used.
pub async fn use_totp_step(db: &Db, username: &str, step: i64) -> Result<bool> {
    with_db!(db, pool => {
        let done = sqlx::query(
            "UPDATE breakglass_accounts SET last_totp_step = $1 WHERE username = $2 AND last_totp_step < $1",
        )
        .bind(step)
        .bind(username)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

pub async fn breakglass_exists(db: &Db) -> Result<bool> {
    with_db!(db, pool => {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM breakglass_accounts")
            .fetch_one(pool)
            .await?;
        Ok(n > 0)
    })
}
