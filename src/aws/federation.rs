//! AWS console sign-in through the federation endpoint: temporary
//! credentials are exchanged for a sign-in token (`getSigninToken`), which
//! goes into a one-time console login URL.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::sts::Assumed;

#[derive(Debug, Clone, thiserror::Error)]
#[error("the AWS federation endpoint refused: {0}")]
pub struct FederationError(pub String);

/// Builds the console login URL for `credentials` (a secret: valid for 15
/// minutes to anyone who has it).
pub async fn console_url(
    federation: &Url,
    console: &Url,
    issuer: &str,
    credentials: &Assumed,
    session_duration: u64,
) -> Result<SecretString, FederationError> {
    let session = serde_json::json!({
        "sessionId": credentials.access_key_id,
        "sessionKey": credentials.secret_access_key.expose_secret(),
        "sessionToken": credentials.session_token.expose_secret(),
    })
    .to_string();
    let mut token_url = federation.clone();
    token_url
        .query_pairs_mut()
        .append_pair("Action", "getSigninToken")
        .append_pair(
            "SessionDuration",
            &session_duration.clamp(900, 43_200).to_string(),
        )
        .append_pair("Session", &session);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| FederationError(e.to_string()))?;
    let response = http
        .get(token_url)
        .send()
        .await
        .map_err(|_| FederationError("the federation endpoint is unreachable".into()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(FederationError(format!("HTTP {status}")));
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|_| FederationError("malformed answer".into()))?;
    let token = body["SigninToken"]
        .as_str()
        .ok_or_else(|| FederationError("no SigninToken in the answer".into()))?;
    let mut login = federation.clone();
    login
        .query_pairs_mut()
        .append_pair("Action", "login")
        .append_pair("Issuer", issuer)
        .append_pair("Destination", console.as_str())
        .append_pair("SigninToken", token);
    Ok(SecretString::from(login.to_string()))
}
