//! One-line errors for AWS API calls: the service, the operation and what
//! AWS said (its error code and message), or why it could not be reached.
//! Request parameters, tokens and keys are never part of them.

use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// A failed AWS API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service} {operation}: {message}")]
pub struct ApiError {
    pub service: &'static str,
    pub operation: &'static str,
    /// The AWS error code (`AccessDeniedException`, `InvalidParameterException`, …)
    /// when AWS answered; `None` when it could not be reached.
    pub code: Option<String>,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(
        service: &'static str,
        operation: &'static str,
        code: Option<String>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            service,
            operation,
            code,
            message: one_line(&message.into()),
        }
    }

    /// A response that lacked a field the call needs.
    pub(crate) fn missing(service: &'static str, operation: &'static str, field: &str) -> ApiError {
        ApiError::new(
            service,
            operation,
            None,
            format!("the response has no {field}"),
        )
    }

    /// The caller lacks permission (IAM or a resource condition).
    pub fn is_access_denied(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|code| code.contains("AccessDenied") || code == "UnauthorizedOperation")
    }
}

/// Maps any SDK error (the `SdkError` type is shared by every service
/// crate) to an [`ApiError`].
pub(crate) fn from_sdk<E, R>(
    service: &'static str,
    operation: &'static str,
    error: SdkError<E, R>,
) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &error {
        SdkError::ServiceError(context) => {
            let inner = context.err();
            let code = inner.code().map(str::to_owned);
            let message = match (inner.code(), inner.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                (None, Some(message)) => message.to_owned(),
                (None, None) => "the service returned an error".to_owned(),
            };
            ApiError::new(service, operation, code, message)
        }
        SdkError::TimeoutError(_) => ApiError::new(service, operation, None, "timed out"),
        SdkError::DispatchFailure(_) => ApiError::new(
            service,
            operation,
            None,
            format!("cannot reach the service: {}", DisplayErrorContext(&error)),
        ),
        _ => ApiError::new(
            service,
            operation,
            None,
            DisplayErrorContext(&error).to_string(),
        ),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        let error = ApiError::new("ecs", "ExecuteCommand", None, "a\nb\t c ");
        assert_eq!(error.to_string(), "ecs ExecuteCommand: a b c");
        assert!(!error.is_access_denied());
        let denied = ApiError::new(
            "ssm",
            "StartSession",
            Some("AccessDeniedException".into()),
            "AccessDeniedException: no",
        );
        assert!(denied.is_access_denied());
    }
}
