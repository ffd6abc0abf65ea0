//! SSM Session Manager control calls: `StartSession` (port forwarding
//! documents), `ResumeSession` after a lost data channel, and
//! `TerminateSession`.

use std::fmt;

use secrecy::SecretString;

use crate::aws::Aws;
use crate::aws::error::{ApiError, from_sdk};

/// A session the service opened: where its data channel is and the
/// one-time token for it.
pub struct Started {
    pub session_id: String,
    pub stream_url: String,
    pub token: SecretString,
}

const SERVICE: &str = "ssm";

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("session_id", &self.session_id)
            .field("stream_url", &self.stream_url)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Starts a session on `target` with an SSM document such as
/// `AWS-StartPortForwardingSessionToRemoteHost`; each parameter is a single
/// string value.
pub async fn start_session(
    aws: &Aws,
    target: &str,
    document: &str,
    parameters: &[(&str, &str)],
) -> Result<Started, ApiError> {
    let client = aws.ssm_no_replay();
    let mut request = client
        .start_session()
        .target(target)
        .document_name(document);
    for (name, value) in parameters {
        request = request.parameters(*name, vec![(*value).to_owned()]);
    }
    let output = request
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "StartSession", e))?;
    let field = |value: Option<&str>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::missing(SERVICE, "StartSession", name))
    };
    Ok(Started {
        session_id: field(output.session_id(), "session id")?,
        stream_url: field(output.stream_url(), "stream URL")?,
        token: SecretString::from(field(output.token_value(), "token")?),
    })
}

/// A new token for an existing session. `None`: the session is gone (an
/// empty token means it timed out).
pub async fn resume_session(aws: &Aws, session_id: &str) -> Result<Option<SecretString>, ApiError> {
    let client = aws.ssm();
    let output = client
        .resume_session()
        .session_id(session_id)
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "ResumeSession", e))?;
    Ok(output
        .token_value()
        .filter(|token| !token.is_empty())
        .map(|token| SecretString::from(token.to_owned())))
}

/// Ends a session for good (the agent closes its side).
pub async fn terminate_session(aws: &Aws, session_id: &str) -> Result<(), ApiError> {
    let client = aws.ssm();
    client
        .terminate_session()
        .session_id(session_id)
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "TerminateSession", e))?;
    Ok(())
}

/// Managed instances SSM knows among `instance_ids`, with their ping status
/// (`DescribeInstanceInformation`, filtered by id, fifty at a time).
pub async fn managed_instances(
    aws: &Aws,
    instance_ids: &[String],
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let client = aws.ssm();
    let mut out = std::collections::BTreeMap::new();
    for chunk in instance_ids.chunks(50) {
        let mut next_token = None;
        loop {
            let filter = aws_sdk_ssm::types::InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .set_values(Some(chunk.to_vec()))
                .build()
                .map_err(|e| {
                    ApiError::new(SERVICE, "DescribeInstanceInformation", None, e.to_string())
                })?;
            let page = client
                .describe_instance_information()
                .filters(filter)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| from_sdk(SERVICE, "DescribeInstanceInformation", e))?;
            for info in page.instance_information_list() {
                if let Some(id) = info.instance_id() {
                    let ping = info
                        .ping_status()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default();
                    out.insert(id.to_owned(), ping);
                }
            }
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
    }
    Ok(out)
}
