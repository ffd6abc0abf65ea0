//! How the broker's AWS calls retry and time out (issue 16): the SDK's
//! standard retry mode (exponential backoff with full jitter, a token bucket
//! that stops retry storms) with a bounded number of attempts, a timeout per
//! attempt and one for the whole operation, so a user waiting on AWS gets an
//! answer in well under half a minute whatever AWS does: throttling, 5xx,
//! a black hole.
//!
//! Only calls that are safe to replay are retried on every transient error.
//! `ExecuteCommand` and `StartSession` create a session at AWS each time
//! they get through, so a request that timed out may have done so: those
//! are retried on throttling only (a throttled request did nothing).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority, RetryReason,
};
use aws_smithy_types::retry::ErrorKind;

/// Attempts per call, the first included.
pub const MAX_ATTEMPTS: u32 = 3;
/// How long one attempt may take (connect, send, the whole answer).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a call may take, retries and backoff included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP and TLS connect (the SDK's own default).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

/// Standard mode: backoff from 0.5 s doubling up to 5 s, with full jitter
/// (each wait is random between zero and that bound).
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(500))
        .with_max_backoff(Duration::from_secs(5))
}

/// The bounds of every call but bulk uploads ([`bulk_timeouts`]).
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Export uploads (S3 objects up to the batch size) on slow links; nobody
/// waits on them interactively.
pub fn bulk_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(Duration::from_secs(60))
        .operation_timeout(Duration::from_secs(180))
        .build()
}

/// For calls that must not be replayed: keeps a retry the SDK decided on
/// only when the service throttled the request; forbids any other
/// (a timeout, a reset connection, a 5xx may come after the call did its
/// work).
#[derive(Debug, Default, Clone, Copy)]
pub struct ThrottlingOnly;

impl ClassifyRetry for ThrottlingOnly {
    fn classify_retry(&self, _ctx: &InterceptorContext) -> RetryAction {
        RetryAction::NoActionIndicated
    }

    fn classify_retry_v2(&self, _ctx: &InterceptorContext, previous: &RetryAction) -> RetryAction {
        match previous {
            RetryAction::RetryIndicated(RetryReason::RetryableError {
                kind: ErrorKind::ThrottlingError,
                ..
            }) => RetryAction::NoActionIndicated,
            RetryAction::RetryIndicated(_) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "pam: retry non-idempotent calls on throttling only"
    }

    fn priority(&self) -> RetryClassifierPriority {
        // After every SDK classifier: it judges their verdict.
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::interceptors::context::Input;

    fn verdict(previous: RetryAction) -> RetryAction {
        let ctx = InterceptorContext::new(Input::doesnt_matter());
        ThrottlingOnly.classify_retry_v2(&ctx, &previous)
    }

    #[test]
    fn only_throttling_is_retried_for_calls_that_must_not_be_replayed() {
        assert_eq!(
            verdict(RetryAction::throttling_error()),
            RetryAction::NoActionIndicated
        );
        assert_eq!(
            verdict(RetryAction::retryable_error_with_explicit_delay(
                ErrorKind::ThrottlingError,
                Duration::from_secs(1)
            )),
            RetryAction::NoActionIndicated
        );
        assert_eq!(
            verdict(RetryAction::transient_error()),
            RetryAction::RetryForbidden
        );
        assert_eq!(
            verdict(RetryAction::server_error()),
            RetryAction::RetryForbidden
        );
        assert_eq!(
            verdict(RetryAction::NoActionIndicated),
            RetryAction::NoActionIndicated
        );
        let bounds = timeouts();
        assert!(bounds.operation_timeout() < Some(Duration::from_secs(30)));
        assert_eq!(retry_config().max_attempts(), MAX_ATTEMPTS);
    }
}
