//! RDS IAM database authentication tokens, generated locally with SigV4
//! query-string presigning (service `rds-db`, valid 15 minutes): the same
//! string `aws-sdk-rds`'s `AuthTokenGenerator` produces, without its crate.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use secrecy::SecretString;

use super::Aws;

/// How long a token is valid (the maximum RDS accepts).
pub const TOKEN_TTL: Duration = Duration::from_secs(900);

/// Why no token could be made. Never carries credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no AWS credentials for RDS IAM authentication: no credential provider configured")]
    NoProvider,
    #[error("no AWS credentials for RDS IAM authentication: {0}")]
    Credentials(#[source] CredentialsError),
    #[error("signing the RDS IAM token failed: {0}")]
    Signing(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Aws {
    /// A token for `user` on `host:port` (the endpoint the broker connects
    /// to), signed now with the broker's own credentials.
    pub async fn rds_auth_token(
        &self,
        host: &str,
        port: u16,
        user: &str,
    ) -> Result<SecretString, Error> {
        let provider = self.sdk().credentials_provider().ok_or(Error::NoProvider)?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(Error::Credentials)?;
        auth_token(
            host,
            port,
            user,
            &self.region(),
            &credentials,
            SystemTime::now(),
        )
    }
}

/// The token for `user` on `host:port` in `region`, signed at `time`.
pub fn auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<SecretString, Error> {
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_TTL);
    settings.signature_location = SignatureLocation::QueryParams;
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| Error::Signing(e.into()))?
        .into();
    let mut url = url::Url::parse(&format!("https://{host}:{port}/?Action=connect"))
        .map_err(|e| Error::Signing(e.into()))?;
    url.query_pairs_mut().append_pair("DBUser", user);
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| Error::Signing(e.into()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| Error::Signing(e.into()))?
        .into_parts();
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in instructions.params() {
            query.append_pair(name, value);
        }
    }
    // `url` normalizes the port away when it is 443; RDS signs host:port.
    let rest = &url.as_str()["https://".len()..];
    let token = match url.port() {
        Some(_) => rest.to_owned(),
        None => rest.replacen('/', &format!(":{port}/"), 1),
    };
    Ok(SecretString::from(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// aws-sdk-rds's own `signing_works` vector (docs/aws-protocols.md section 3).
    #[test]
    fn the_token_matches_the_aws_sdk_test_vector() {
        let credentials = Credentials::new("akid", "secret", None, None, "test");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_724_709_600);
        let token = auth_token(
            "prod-instance.us-east-1.rds.amazonaws.com",
            3306,
            "peccy",
            "us-east-1",
            &credentials,
            time,
        )
        .unwrap();
        assert_eq!(
            token.expose_secret(),
            "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89"
        );
    }

    #[test]
    fn temporary_credentials_add_the_session_token_and_443_is_kept() {
        let credentials = Credentials::new(
            "ASIAEXAMPLE",
            "secret",
            Some("SESSION/+=".into()),
            None,
            "test",
        );
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_724_709_600);
        let token =
            auth_token("db.example", 443, "alice", "eu-west-1", &credentials, time).unwrap();
        let token = token.expose_secret();
        assert!(
            token.starts_with("db.example:443/?Action=connect&DBUser=alice&"),
            "{token}"
        );
        assert!(
            token.contains("X-Amz-Security-Token=SESSION%2F%2B%3D"),
            "{token}"
        );
        assert!(token.contains("X-Amz-Expires=900"));
    }
}
