//! JSON wire types of the HTTP API, shared by the web room and the CLI:
//! the only serde-for-the-wire types. Field names are the API contract.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// What a successful login returns to the CLI.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// Broker token (JWT): `Authorization: Bearer`, and the PostgreSQL password.
    pub token: String,
    pub expires_at: String,
    pub session_id: String,
    pub user: String,
    pub groups: Vec<String>,
    pub mfa: bool,
    pub amr: Vec<String>,
    pub method: String,
    /// OpenSSH user certificate for the key the CLI sent.
    pub certificate: String,
    pub certificate_expires_at: String,
    /// known_hosts line for the broker's SSH listener.
    pub known_hosts: String,
    /// `host:port` of the SSH listener.
    pub ssh_addr: String,
    /// `host:port` of the PostgreSQL listener.
    pub postgres_addr: String,
}

impl fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("token", &"<redacted>")
            .field("user", &self.user)
            .field("session_id", &self.session_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The CLI redeems the one-time code from the browser redirect.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExchangeRequest {
    pub code: Sensitive,
    /// Its own PKCE verifier: proves it started this login.
    pub code_verifier: Sensitive,
    pub public_key: String,
    /// sshsig over the code and the public key: proves it holds the key.
    pub proof: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStartResponse {
    pub request_id: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds between polls.
    pub interval: u64,
    pub expires_in: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DevicePollRequest {
    pub request_id: String,
    pub public_key: String,
    pub proof: String,
}

/// A device poll that has no answer yet (HTTP 400, RFC 8628 error codes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollPending {
    /// `authorization_pending` or `slow_down`.
    pub error: String,
    pub interval: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BreakglassLoginRequest {
    pub username: String,
    pub password: Sensitive,
    pub totp: Sensitive,
    pub public_key: String,
    pub proof: String,
}

/// Who the bearer of a token is (`GET /api/v1/auth/whoami`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    pub user: String,
    pub groups: Vec<String>,
    pub mfa: bool,
    pub amr: Vec<String>,
    pub method: String,
    pub session_id: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CertRequest {
    pub public_key: String,
    pub proof: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CertResponse {
    pub certificate: String,
    pub certificate_expires_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RevokeRequest {
    pub reason: Option<String>,
}

/// Every error body: a message for humans, a code for scripts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A secret on the wire (codes, passwords): serialized as a plain string,
/// never printed by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_secret(self) -> SecretString {
        SecretString::from(self.0)
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A target the caller may use (`GET /api/v1/targets`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub kind: String,
    pub tags: std::collections::BTreeMap<String, String>,
    /// What the caller must add to use it (e.g. `reason`).
    pub requires: Vec<String>,
}

/// `POST /api/v1/targets/check` (admin): which targets to check (all when empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetsCheckRequest {
    #[serde(default)]
    pub targets: Vec<String>,
}

/// The checks of one target (`pam targets check --json`, one per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub kind: String,
    pub ok: bool,
    pub checks: Vec<CheckLine>,
}

/// One check: what, whether it passed, what was found, what to change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckLine {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// `GET /api/v1/targets/{name}/explain`: what an aws target's role may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleExplain {
    pub target: String,
    pub role_arn: String,
    pub policies: Vec<ExplainedPolicy>,
    /// service -> (actions, resources), denials under "SERVICE (denied)".
    pub services: std::collections::BTreeMap<String, ExplainedService>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainedPolicy {
    pub name: String,
    /// `attached` (managed, with its ARN) or `inline`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainedService {
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

/// `POST /api/v1/aws/credentials` and `/api/v1/aws/console`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwsRequest {
    /// The `aws` target's name.
    pub role: String,
    pub duration_secs: Option<u64>,
    pub reason: Option<String>,
}

/// AWS credentials in the `credential_process` format (Version 1), plus
/// what the broker decided.
#[derive(Clone, Serialize, Deserialize)]
pub struct AwsCredentials {
    #[serde(rename = "Version")]
    pub version: u8,
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: Sensitive,
    #[serde(rename = "SessionToken")]
    pub session_token: Sensitive,
    /// RFC 3339, UTC.
    #[serde(rename = "Expiration")]
    pub expiration: String,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct AwsConsole {
    /// One-time console sign-in URL (valid 15 minutes).
    pub url: Sensitive,
    pub expires_at: String,
}
