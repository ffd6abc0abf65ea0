//! AWS Secrets Manager: reads the database credentials the broker injects.
//! A secret is either RDS's JSON shape (`{"username", "password", ...}`) or
//! a plain string (the password). Values live in `SecretString` only.

use secrecy::SecretString;

use super::Aws;

/// Why a secret could not be read. Never carries the value: a failed
/// `GetSecretValue` has no secret in its request or its answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("secret {0:?} not found")]
    NotFound(String),
    #[error("reading secret {id:?} failed: {}", chain_text(.source.as_ref()))]
    Unavailable {
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("secret {0:?} has no string value with a password")]
    NoPassword(String),
}

/// A database login from a secret.
pub struct DbCredential {
    /// `username` from a JSON secret, if any.
    pub username: Option<String>,
    pub password: SecretString,
}

impl std::fmt::Debug for DbCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Aws {
    /// `GetSecretValue` for `secret_id`, parsed as a database credential.
    pub async fn db_credential(&self, secret_id: &str) -> Result<DbCredential, Error> {
        let client = self.secrets_manager();
        let output = client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_resource_not_found_exception()) {
                    Error::NotFound(secret_id.to_owned())
                } else {
                    Error::Unavailable {
                        id: secret_id.to_owned(),
                        source: Box::new(e),
                    }
                }
            })?;
        let text = output
            .secret_string()
            .ok_or_else(|| Error::NoPassword(secret_id.to_owned()))?;
        parse_db_credential(text).ok_or_else(|| Error::NoPassword(secret_id.to_owned()))
    }
}

/// A secret's string: RDS-style JSON with `password` (and maybe
/// `username`), or the password itself.
pub fn parse_db_credential(text: &str) -> Option<DbCredential> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(trimmed).ok()?;
        let password = value.get("password")?.as_str()?;
        let username = value
            .get("username")
            .and_then(|u| u.as_str())
            .map(str::to_owned);
        return Some(DbCredential {
            username,
            password: SecretString::from(password.to_owned()),
        });
    }
    if text.is_empty() {
        return None;
    }
    Some(DbCredential {
        username: None,
        password: SecretString::from(text.to_owned()),
    })
}

/// The error and its sources, `: `-separated, without request details (no
/// ids or values of the request).
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn json_and_plain_secrets() {
        let json =
            parse_db_credential(r#"{"username":"app","password":"p\"w","engine":"postgres"}"#)
                .unwrap();
        assert_eq!(json.username.as_deref(), Some("app"));
        assert_eq!(json.password.expose_secret(), "p\"w");
        let plain = parse_db_credential("hunter2").unwrap();
        assert_eq!(plain.username, None);
        assert_eq!(plain.password.expose_secret(), "hunter2");
        assert!(parse_db_credential(r#"{"username":"app"}"#).is_none());
        assert!(!format!("{json:?}").contains("p\\\"w"));
    }
}
