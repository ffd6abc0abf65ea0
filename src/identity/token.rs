//! Broker tokens: short-lived JWTs (EdDSA) that name a server-side broker
//! session by `jti`, so that a revocation takes effect at once everywhere.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::Ed25519Key;

/// The audience of the broker tokens the CLI holds (API bearer tokens).
pub const AUDIENCE: &str = "pam";
/// The audience of web view logins (the browser cookie): a stolen cookie is
/// no API token and an API token opens no web session.
pub const WEB_AUDIENCE: &str = "pam-web";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub groups: Vec<String>,
    pub mfa: bool,
    #[serde(default)]
    pub amr: Vec<String>,
    pub method: String,
}

/// Signs and checks broker tokens with the broker's token key.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    issuer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    /// Named by its kind only: the token itself never reaches the message.
    #[error("the token is not valid: {:?}", .0.kind())]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

impl TokenKeys {
    pub fn new(key: &Ed25519Key, issuer: &str) -> Self {
        Self {
            encoding: EncodingKey::from_ed_der(&key.pkcs8_der()),
            decoding: DecodingKey::from_ed_der(&key.public_bytes()),
            kid: key.key_id(),
            issuer: issuer.trim_end_matches('/').to_owned(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(TokenError::Invalid)
    }

    /// Checks signature (EdDSA only), issuer, audience and lifetime.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_for(token, AUDIENCE)
    }

    /// [`Self::verify`] for tokens of another audience ([`WEB_AUDIENCE`]).
    pub fn verify_for(&self, token: &str, audience: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        let dir = tempfile::tempdir().unwrap();
        let material = crate::keys::KeyMaterial::load_or_generate(dir.path())
            .unwrap()
            .0;
        TokenKeys::new(&material.token_signing, "https://pam.example.test/")
    }

    fn claims(exp_offset: i64) -> Claims {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Claims {
            iss: "https://pam.example.test".into(),
            sub: "alice@example.test".into(),
            aud: AUDIENCE.into(),
            exp: now + exp_offset,
            iat: now,
            nbf: now,
            jti: "j1".into(),
            groups: vec!["developers".into()],
            mfa: true,
            amr: vec!["pwd".into(), "otp".into()],
            method: "sso".into(),
        }
    }

    #[test]
    fn round_trip() {
        let keys = keys();
        let claims = claims(60);
        let token = keys.sign(&claims).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), claims);
    }

    #[test]
    fn expired_foreign_and_tampered_tokens_are_refused() {
        let keys = keys();
        assert_eq!(
            keys.verify(&keys.sign(&claims(-120)).unwrap()),
            Err(TokenError::Expired)
        );
        let other = self::keys();
        assert!(keys.verify(&other.sign(&claims(60)).unwrap()).is_err());
        let token = keys.sign(&claims(60)).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&Claims {
                sub: "mallory@example.test".into(),
                ..claims(60)
            })
            .unwrap(),
        );
        assert!(keys.verify(&parts.join(".")).is_err());
        // alg none
        let header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none","typ":"JWT"}"#,
        );
        assert!(keys.verify(&format!("{header}.{}.", parts[1])).is_err());
    }
}
