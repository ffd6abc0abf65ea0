//! The broker as an OpenID Connect relying party (confidential client):
//! discovery, authorization URLs with PKCE, the code and device grants, and
//! full ID token validation.
//!
//! The `openidconnect` crate discovers the provider, fetches its JWKS and
//! verifies ID tokens; the token requests themselves are plain form posts, so
//! a device-grant poll is one request driven by the CLI's own polling.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType,
    CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, ClaimsVerificationError, ClientId, DeviceAuthorizationUrl,
    IssuerUrl, Nonce, ProviderMetadata, SignatureVerificationError,
};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use crate::config::OidcConfig;
use crate::domain::principal::{LoginMethod, UserIdentity};

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExtraMetadata {
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// Discovered metadata, and when its JWKS was last refreshed.
type Cached = Arc<(Metadata, Option<Instant>)>;

/// Why an IdP login did not produce an identity. The `reason` is safe to
/// audit and to show (it never contains a token).
#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    /// Down, timing out, or answering something that is not OAuth (garbage,
    /// a server error page): not the user's doing.
    #[error("the identity provider is unavailable: {0}")]
    Unreachable(String),
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the ID token was rejected: {0}")]
    InvalidToken(String),
    #[error("{0}")]
    Policy(String),
}

impl OidcError {
    /// A short machine-friendly reason for the audit trail.
    pub fn reason(&self) -> String {
        match self {
            OidcError::Unreachable(_) => "idp_unreachable".into(),
            OidcError::Refused(r) => format!("idp_refused: {r}"),
            OidcError::InvalidToken(r) => format!("invalid_id_token: {r}"),
            OidcError::Policy(r) => r.clone(),
        }
    }
}

/// The ID token's `email_verified`: `true`/`false`, also as the strings
/// some IdPs send (Amazon Cognito); `None` when absent or anything else.
fn email_verified(payload: &serde_json::Value) -> Option<bool> {
    match payload.get("email_verified")? {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) if s == "true" => Some(true),
        serde_json::Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// A PKCE verifier and its S256 challenge.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

/// The start of a device authorization grant. `Debug` hides the device code.
#[derive(Clone, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// One poll of a device grant.
pub enum DevicePoll {
    Pending,
    SlowDown,
    Done(UserIdentity),
}

pub struct Oidc {
    issuer: IssuerUrl,
    client_id: String,
    client_secret: SecretString,
    redirect_uri: String,
    config: OidcConfig,
    http: reqwest::Client,
    /// The discovered metadata, and when the JWKS was last refreshed for an
    /// unknown key id.
    metadata: RwLock<Option<Cached>>,
    /// When the JWKS was last asked for because of an unknown key id
    /// (held while asking, so concurrent unknown ids make one request).
    jwks_asked: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Least time between two JWKS refreshes triggered by unknown key ids, so a
/// stream of forged tokens cannot make the broker hammer the IdP.
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(10);

impl Oidc {
    pub fn new(
        config: &OidcConfig,
        issuer: &url::Url,
        client_secret: SecretString,
        redirect_uri: String,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // Following redirects would open the client to SSRF.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            issuer: IssuerUrl::new(issuer.as_str().trim_end_matches('/').to_owned())?,
            client_id: config.client_id.clone(),
            client_secret,
            redirect_uri,
            config: config.clone(),
            http,
            metadata: RwLock::new(None),
            jwks_asked: Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    async fn metadata(&self) -> Result<Cached, OidcError> {
        if let Some(m) = self.metadata.read().await.as_ref() {
            return Ok(m.clone());
        }
        self.discover().await
    }

    async fn discover(&self) -> Result<Cached, OidcError> {
        let metadata = Metadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        let fresh = Arc::new((metadata, None));
        *self.metadata.write().await = Some(fresh.clone());
        Ok(fresh)
    }

    /// Fetches the JWKS again (a new `kid` appeared: a key rotation) at
    /// most once every [`JWKS_REFRESH_MIN`], failed attempts included, so
    /// forged key ids cannot make the broker hammer the IdP. `seen` is the
    /// metadata the caller verified with: when another login refreshed it
    /// meanwhile, the caller just tries again. True when there is newer
    /// metadata to try.
    async fn refresh_jwks(&self, seen: &Cached) -> Result<bool, OidcError> {
        let mut asked = self.jwks_asked.lock().await;
        let current = self.metadata().await?;
        if !Arc::ptr_eq(&current, seen) {
            return Ok(true);
        }
        if asked.is_some_and(|at| at.elapsed() < JWKS_REFRESH_MIN) {
            return Ok(false);
        }
        *asked = Some(Instant::now());
        let jwks = CoreJsonWebKeySet::fetch_async(current.0.jwks_uri(), &self.http)
            .await
            .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        let metadata = current.0.clone().set_jwks(jwks);
        *self.metadata.write().await = Some(Arc::new((metadata, Some(Instant::now()))));
        Ok(true)
    }

    /// The IdP authorization URL for a browser login.
    pub async fn authorize_url(
        &self,
        state: &str,
        nonce: &str,
        pkce_challenge: &str,
        login_hint: Option<&str>,
    ) -> Result<String, OidcError> {
        let metadata = self.metadata().await?;
        let mut url = metadata.0.authorization_endpoint().url().clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("scope", &self.config.scopes.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", pkce_challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(hint) = login_hint {
                query.append_pair("login_hint", hint);
            }
        }
        Ok(url.to_string())
    }

    /// Exchanges an authorization code and validates the ID token against `nonce`.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<UserIdentity, OidcError> {
        let metadata = self.metadata().await?;
        let token_url = metadata
            .0
            .token_endpoint()
            .ok_or_else(|| OidcError::Refused("the IdP has no token endpoint".into()))?
            .url()
            .clone();
        let response = self
            .token_request(
                token_url,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &self.redirect_uri),
                    ("code_verifier", pkce_verifier),
                ],
            )
            .await?;
        if let Some(error) = response.error {
            return Err(OidcError::Refused(describe(
                &error,
                response.error_description,
            )));
        }
        let raw = response
            .id_token
            .ok_or_else(|| OidcError::Refused("no id_token in the token response".into()))?;
        let expected = Nonce::new(nonce.to_owned());
        self.validate(&raw, Some(&expected), LoginMethod::Sso).await
    }

    /// Starts a device authorization grant at the IdP.
    pub async fn device_authorize(&self) -> Result<DeviceAuthorization, OidcError> {
        let metadata = self.metadata().await?;
        let url = metadata
            .0
            .additional_metadata()
            .device_authorization_endpoint
            .as_ref()
            .ok_or_else(|| {
                OidcError::Refused("the IdP does not offer the device authorization grant".into())
            })?
            .url()
            .clone();
        let scope = self.config.scopes.join(" ");
        let response = self
            .http
            .post(url)
            .header("authorization", self.basic_auth())
            .form(&[
                ("client_id", self.client_id.as_str()),
                ("scope", scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        if !status.is_success() {
            let error: TokenResponse = serde_json::from_slice(&body).unwrap_or(TokenResponse {
                id_token: None,
                error: Some(format!("HTTP {status}")),
                error_description: None,
            });
            return Err(OidcError::Refused(describe(
                error.error.as_deref().unwrap_or("error"),
                error.error_description,
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            OidcError::Refused(format!("malformed device authorization response: {e}"))
        })
    }

    /// Polls the token endpoint once for a device grant.
    pub async fn device_poll(&self, device_code: &str) -> Result<DevicePoll, OidcError> {
        let metadata = self.metadata().await?;
        let token_url = metadata
            .0
            .token_endpoint()
            .ok_or_else(|| OidcError::Refused("the IdP has no token endpoint".into()))?
            .url()
            .clone();
        let response = self
            .token_request(
                token_url,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code),
                ],
            )
            .await?;
        match response.error.as_deref() {
            Some("authorization_pending") => return Ok(DevicePoll::Pending),
            Some("slow_down") => return Ok(DevicePoll::SlowDown),
            Some(other) => {
                return Err(OidcError::Refused(describe(
                    other,
                    response.error_description,
                )));
            }
            None => {}
        }
        let raw = response
            .id_token
            .ok_or_else(|| OidcError::Refused("no id_token in the token response".into()))?;
        // The device grant has no nonce; everything else is checked.
        let identity = self.validate(&raw, None, LoginMethod::Device).await?;
        Ok(DevicePoll::Done(identity))
    }

    async fn token_request(
        &self,
        url: url::Url,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, OidcError> {
        let response = self
            .http
            .post(url)
            .header("authorization", self.basic_auth())
            .header("accept", "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        // A server error, or anything that is not an OAuth answer, is an
        // IdP that is failing, not a refusal of this user.
        match serde_json::from_slice::<TokenResponse>(&body) {
            Ok(parsed) if !status.is_server_error() => Ok(parsed),
            _ => Err(OidcError::Unreachable(format!(
                "its token endpoint answered HTTP {status} without an OAuth response"
            ))),
        }
    }

    /// `client_secret_basic` (RFC 6749 2.3.1: form-encoded, then base64).
    fn basic_auth(&self) -> String {
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!(
            "{}:{}",
            encode(&self.client_id),
            encode(self.client_secret.expose_secret())
        );
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// Validates an ID token: signature from the JWKS (refreshed once on an
    /// unknown `kid`), asymmetric algorithms only, `iss`, `aud`, `exp`/`iat`
    /// with the configured leeway, and `nonce` when one was sent.
    pub async fn validate(
        &self,
        raw: &str,
        nonce: Option<&Nonce>,
        method: LoginMethod,
    ) -> Result<UserIdentity, OidcError> {
        let token = CoreIdToken::from_str(raw)
            .map_err(|e| OidcError::InvalidToken(format!("malformed: {e}")))?;
        let metadata = self.metadata().await?;
        match self.verify_claims(&token, &metadata.0, nonce, method, raw) {
            Err(OidcError::InvalidToken(reason)) if reason == "unknown signing key" => {
                if self.refresh_jwks(&metadata).await? {
                    let metadata = self.metadata().await?;
                    self.verify_claims(&token, &metadata.0, nonce, method, raw)
                } else {
                    Err(OidcError::InvalidToken(reason))
                }
            }
            other => other,
        }
    }

    fn verify_claims(
        &self,
        token: &CoreIdToken,
        metadata: &Metadata,
        nonce: Option<&Nonce>,
        method: LoginMethod,
        raw: &str,
    ) -> Result<UserIdentity, OidcError> {
        let leeway = chrono::Duration::from_std(self.config.leeway.0)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.client_id.clone()),
            self.issuer.clone(),
            metadata.jwks().clone(),
        )
        .set_allowed_algs([
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
            CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            CoreJwsSigningAlgorithm::RsaSsaPssSha384,
            CoreJwsSigningAlgorithm::RsaSsaPssSha512,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::EcdsaP384Sha384,
            CoreJwsSigningAlgorithm::EdDsa,
        ])
        // `exp` is compared with a clock held back by the leeway.
        .set_time_fn(move || chrono::Utc::now() - leeway)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > chrono::Utc::now() + leeway {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        });
        let no_nonce = |claim: Option<&Nonce>| match claim {
            None => Ok(()),
            Some(_) => Ok(()),
        };
        let claims = match nonce {
            Some(expected) => token.claims(&verifier, expected),
            None => token.claims(&verifier, no_nonce),
        }
        .map_err(|e| OidcError::InvalidToken(claims_reason(&e)))?;

        // The signature is verified: read the claims the typed struct does not carry.
        let payload = raw
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .unwrap_or_default();
        let email = claims
            .email()
            .map(|e| e.as_str().to_owned())
            .ok_or_else(|| OidcError::Policy("the ID token carries no email claim".into()))?;
        match email_verified(&payload) {
            Some(true) => {}
            Some(false) => {
                return Err(OidcError::Policy(
                    "the IdP says the email is not verified".into(),
                ));
            }
            None if self.config.require_email_verified => {
                return Err(OidcError::Policy(
                    "the ID token does not say the email is verified (email_verified; set oidc.require_email_verified = false for an IdP that never sends it)".into(),
                ));
            }
            None => {}
        }
        let groups = match payload.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let amr: Vec<String> = claims
            .auth_method_refs()
            .map(|list| list.iter().map(|a| a.as_str().to_owned()).collect())
            .unwrap_or_default();
        let acr = claims.auth_context_ref().map(|a| a.as_str().to_owned());
        let mfa = amr
            .iter()
            .any(|m| self.config.mfa_methods.iter().any(|x| x == m))
            || acr.as_deref().is_some_and(|a| {
                let a = a.to_ascii_lowercase();
                a.contains("mfa")
                    || a.contains("multifactor")
                    || a.contains("aal2")
                    || a.contains("aal3")
            });
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned());
        Ok(UserIdentity {
            email,
            subject: claims.subject().as_str().to_owned(),
            name,
            groups,
            amr,
            mfa,
            method,
        })
    }
}

/// A fresh PKCE pair (RFC 7636, S256).
pub fn pkce() -> Pkce {
    let verifier = random_token(32);
    Pkce {
        challenge: pkce_challenge(&verifier),
        verifier,
    }
}

pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn claims_reason(error: &ClaimsVerificationError) -> String {
    match error {
        ClaimsVerificationError::Expired(text) if text.contains("issued in the future") => {
            "issued in the future".into()
        }
        ClaimsVerificationError::Expired(_) => "expired".into(),
        ClaimsVerificationError::InvalidAudience(_) => "wrong audience".into(),
        ClaimsVerificationError::InvalidIssuer(_) => "wrong issuer".into(),
        ClaimsVerificationError::InvalidNonce(_) => "wrong nonce".into(),
        ClaimsVerificationError::InvalidSubject(_) => "invalid subject".into(),
        ClaimsVerificationError::SignatureVerification(sig) => match sig {
            SignatureVerificationError::NoMatchingKey => "unknown signing key".into(),
            SignatureVerificationError::DisallowedAlg(alg) => {
                format!("algorithm {alg} not allowed")
            }
            SignatureVerificationError::UnsupportedAlg(alg) => {
                format!("algorithm {alg} not supported")
            }
            SignatureVerificationError::NoSignature => "unsigned token (alg none)".into(),
            SignatureVerificationError::CryptoError(_) => "bad signature".into(),
            other => format!("signature: {other}"),
        },
        other => other.to_string(),
    }
}

fn describe(error: &str, description: Option<String>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!("{error} ({d})"),
        _ => error.to_owned(),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
