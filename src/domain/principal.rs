//! Who is acting: a human authenticated by the IdP (or a break-glass
//! account), as the broker knows them for the life of a broker session.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a broker session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginMethod {
    /// Browser SSO (authorization code + PKCE).
    Sso,
    /// Device authorization grant.
    Device,
    /// Local emergency account (password + TOTP).
    Breakglass,
}

impl LoginMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginMethod::Sso => "sso",
            LoginMethod::Device => "device",
            LoginMethod::Breakglass => "breakglass",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sso" => Some(LoginMethod::Sso),
            "device" => Some(LoginMethod::Device),
            "breakglass" => Some(LoginMethod::Breakglass),
            _ => None,
        }
    }
}

/// A person as the IdP (or the break-glass store) vouched for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIdentity {
    /// Email: the name everything is audited under.
    pub email: String,
    /// The IdP's `sub` (or the break-glass account name).
    pub subject: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// Authentication methods (`amr`) the IdP reported.
    pub amr: Vec<String>,
    /// Whether a second factor was used.
    pub mfa: bool,
    pub method: LoginMethod,
}

/// An authenticated caller holding a live broker session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub identity: UserIdentity,
    /// The broker session (`jti` of the broker token).
    pub session_id: String,
    /// Microseconds since the epoch when the broker session ends.
    pub expires_at_us: i64,
}

impl Principal {
    pub fn email(&self) -> &str {
        &self.identity.email
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.identity.email)
    }
}

/// What a user certificate may allow beyond a shell, decided by policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertGrants {
    /// Principals written into the certificate.
    pub principals: Vec<String>,
    pub agent_forwarding: bool,
    pub port_forwarding: bool,
    pub x11_forwarding: bool,
}
