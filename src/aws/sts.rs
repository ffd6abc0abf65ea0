//! STS AssumeRole on behalf of a user: the broker's own identity assumes the
//! target role with the user's email as SourceIdentity (CloudTrail names the
//! human in every call the credentials make) and session tags.

use aws_sdk_sts::error::ProvideErrorMetadata;
use aws_sdk_sts::types::Tag;
use secrecy::SecretString;

use super::Aws;

/// What the broker asks STS for.
#[derive(Debug, Clone)]
pub struct AssumeRequest {
    pub role_arn: String,
    pub session_name: String,
    pub source_identity: String,
    pub tags: Vec<(String, String)>,
    pub duration_secs: i32,
    pub external_id: Option<String>,
    pub session_policy: Option<String>,
}

/// Temporary credentials. The secret parts never print.
#[derive(Clone)]
pub struct Assumed {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: SecretString,
    /// Unix seconds.
    pub expiration: i64,
    pub assumed_role_arn: Option<String>,
}

impl std::fmt::Debug for Assumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assumed")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish_non_exhaustive()
    }
}

/// An STS failure: its error code (for the audit trail) and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("STS AssumeRole failed: {message}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct StsError {
    pub code: Option<String>,
    pub message: String,
}

pub async fn assume_role(aws: &Aws, request: &AssumeRequest) -> Result<Assumed, StsError> {
    let mut call = aws
        .sts()
        .assume_role()
        .role_arn(&request.role_arn)
        .role_session_name(&request.session_name)
        .source_identity(&request.source_identity)
        .duration_seconds(request.duration_secs);
    for (key, value) in &request.tags {
        let tag = Tag::builder()
            .key(key)
            .value(value)
            .build()
            .map_err(|e| StsError {
                code: None,
                message: format!("invalid session tag {key}: {e}"),
            })?;
        call = call.tags(tag);
    }
    if let Some(id) = &request.external_id {
        call = call.external_id(id);
    }
    if let Some(policy) = &request.session_policy {
        call = call.policy(policy);
    }
    let output = call.send().await.map_err(|e| {
        let code = e.code().map(str::to_owned);
        let message = match e.message() {
            Some(m) => m.to_owned(),
            None => match &e {
                aws_sdk_sts::error::SdkError::DispatchFailure(failure) if failure.is_timeout() => {
                    timed_out()
                }
                aws_sdk_sts::error::SdkError::DispatchFailure(_) => "STS is unreachable".to_owned(),
                aws_sdk_sts::error::SdkError::TimeoutError(_) => timed_out(),
                other => other.to_string(),
            },
        };
        StsError { code, message }
    })?;
    let credentials = output.credentials().ok_or_else(|| StsError {
        code: None,
        message: "STS returned no credentials".into(),
    })?;
    Ok(Assumed {
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: SecretString::from(credentials.secret_access_key().to_owned()),
        session_token: SecretString::from(credentials.session_token().to_owned()),
        expiration: credentials.expiration().secs(),
        assumed_role_arn: output.assumed_role_user().map(|u| u.arn().to_owned()),
    })
}

/// What a user is told when STS did not answer in time (retries included).
fn timed_out() -> String {
    format!(
        "STS did not answer within {}s (each attempt {}s, retried); try again in a moment",
        super::retry::OPERATION_TIMEOUT.as_secs(),
        super::retry::ATTEMPT_TIMEOUT.as_secs()
    )
}

/// `GetCallerIdentity`: the ARN of the broker's own principal.
pub async fn caller_arn(aws: &Aws) -> Result<String, crate::aws::error::ApiError> {
    let output = aws
        .sts()
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| crate::aws::error::from_sdk("sts", "GetCallerIdentity", e))?;
    output
        .arn()
        .map(str::to_owned)
        .ok_or_else(|| crate::aws::error::ApiError::missing("sts", "GetCallerIdentity", "Arn"))
}
