//! CloudWatch Logs for the SIEM export: `PutLogEvents` into a stream,
//! creating the stream when it is missing.
//!
//! Since 2023 CloudWatch ignores sequence tokens; older behaviour (and
//! compatible endpoints) still answer `InvalidSequenceTokenException` with
//! the expected token, which the caller retries with.

use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::operation::create_log_stream::CreateLogStreamError;
use aws_sdk_cloudwatchlogs::operation::put_log_events::PutLogEventsError;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;

use crate::aws::Aws;
use crate::aws::error::{ApiError, from_sdk};

const SERVICE: &str = "logs";

/// One log event: milliseconds since the epoch and the message.
#[derive(Debug, Clone)]
pub struct LogEvent {
    pub timestamp_ms: i64,
    pub message: String,
}

/// What `PutLogEvents` answered.
#[derive(Debug)]
pub enum Put {
    /// Accepted. `rejected` describes events CloudWatch refused (too old,
    /// too new, expired), by index, when there were any.
    Accepted {
        next_token: Option<String>,
        rejected: Option<String>,
    },
    /// The stream does not exist (create it, then send again).
    NoStream,
    /// The sequence token was wrong: send again with this one.
    SequenceToken(Option<String>),
    /// Anything else (throttling, unreachable, denied): retry later.
    Failed(ApiError),
}

/// Sends `events` (chronological, within the API's limits) to the stream.
pub async fn put_log_events(
    aws: &Aws,
    group: &str,
    stream: &str,
    events: &[LogEvent],
    token: Option<&str>,
) -> Put {
    let mut inputs = Vec::with_capacity(events.len());
    for event in events {
        match InputLogEvent::builder()
            .timestamp(event.timestamp_ms)
            .message(event.message.clone())
            .build()
        {
            Ok(input) => inputs.push(input),
            Err(e) => {
                return Put::Failed(ApiError::new(
                    SERVICE,
                    "PutLogEvents",
                    None,
                    format!("building the request: {e}"),
                ));
            }
        }
    }
    let result = aws
        .logs()
        .put_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .set_log_events(Some(inputs))
        .set_sequence_token(token.map(str::to_owned))
        .send()
        .await;
    match result {
        Ok(output) => Put::Accepted {
            next_token: output.next_sequence_token().map(str::to_owned),
            rejected: output
                .rejected_log_events_info()
                .map(|r| {
                    let mut parts = Vec::new();
                    if let Some(i) = r.too_old_log_event_end_index() {
                        parts.push(format!("too old up to index {i}"));
                    }
                    if let Some(i) = r.expired_log_event_end_index() {
                        parts.push(format!(
                            "expired (older than the group's retention) up to index {i}"
                        ));
                    }
                    if let Some(i) = r.too_new_log_event_start_index() {
                        parts.push(format!("too new from index {i}"));
                    }
                    parts.join(", ")
                })
                .filter(|text| !text.is_empty()),
        },
        Err(error) => match error.as_service_error() {
            Some(PutLogEventsError::ResourceNotFoundException(_)) => Put::NoStream,
            Some(PutLogEventsError::InvalidSequenceTokenException(e)) => {
                Put::SequenceToken(e.expected_sequence_token().map(str::to_owned))
            }
            // The batch was already accepted: it counts as delivered.
            Some(PutLogEventsError::DataAlreadyAcceptedException(e)) => Put::Accepted {
                next_token: e.expected_sequence_token().map(str::to_owned),
                rejected: None,
            },
            Some(other) if other.code() == Some("InvalidSequenceTokenException") => {
                Put::SequenceToken(None)
            }
            _ => Put::Failed(from_sdk(SERVICE, "PutLogEvents", error)),
        },
    }
}

/// Creates the log stream; one that exists already is fine. A missing log
/// group is an error (the group carries retention and encryption settings
/// the broker does not choose).
pub async fn create_log_stream(aws: &Aws, group: &str, stream: &str) -> Result<(), ApiError> {
    match aws
        .logs()
        .create_log_stream()
        .log_group_name(group)
        .log_stream_name(stream)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(error) => match error.as_service_error() {
            Some(CreateLogStreamError::ResourceAlreadyExistsException(_)) => Ok(()),
            _ => Err(from_sdk(SERVICE, "CreateLogStream", error)),
        },
    }
}
