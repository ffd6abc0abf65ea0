//! Idle and max-duration limits: when a live session is warned and when it
//! ends. Time is tokio's monotonic clock (tests pause and advance it; a
//! wall-clock step never ends or extends a session).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::EndReason;

/// `session.idle_timeout`, `session.max_duration`, `session.warn_before`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub idle: Duration,
    pub max: Duration,
    pub warn_before: Duration,
}

/// The clock of one session: when it started, when the user last gave
/// input, and which warnings were given.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    /// Microseconds after `started` of the last input.
    last_input: AtomicU64,
    warned_idle: AtomicBool,
    warned_max: AtomicBool,
}

/// What the limits say about a session now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub end: Option<EndReason>,
    pub warnings: Vec<String>,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            last_input: AtomicU64::new(0),
            warned_idle: AtomicBool::new(false),
            warned_max: AtomicBool::new(false),
        }
    }

    /// The user gave input (keep-alives and output do not count). Called
    /// for every chunk of input, so two relaxed stores and a clock read.
    pub fn touch(&self) {
        let since = Instant::now().saturating_duration_since(self.started);
        self.last_input.store(
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.warned_idle.store(false, Ordering::Relaxed);
    }
}

impl Limits {
    /// Decides at `now`: end the session (idle first), or warn once per
    /// limit when it is within `warn_before` (the idle warning again after
    /// new input).
    pub fn check(&self, activity: &Activity, now: Instant) -> Verdict {
        let age = now.saturating_duration_since(activity.started);
        let last_input = Duration::from_micros(activity.last_input.load(Ordering::Relaxed));
        let since_input = age.saturating_sub(last_input);
        if since_input >= self.idle {
            return Verdict {
                end: Some(EndReason::Idle(self.idle)),
                warnings: Vec::new(),
            };
        }
        if age >= self.max {
            return Verdict {
                end: Some(EndReason::MaxDuration(self.max)),
                warnings: Vec::new(),
            };
        }
        let mut warnings = Vec::new();
        if since_input + self.warn_before >= self.idle
            && !activity.warned_idle.swap(true, Ordering::Relaxed)
        {
            let left = (self.idle - since_input).as_secs();
            warnings.push(format!(
                "pam: this session ends in {left}s without input (idle timeout)"
            ));
        }
        if age + self.warn_before >= self.max && !activity.warned_max.swap(true, Ordering::Relaxed)
        {
            let left = (self.max - age).as_secs();
            warnings.push(format!(
                "pam: this session reaches its maximum duration in {left}s"
            ));
        }
        Verdict {
            end: None,
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limits() -> Limits {
        Limits {
            idle: 15 * MINUTE,
            max: 8 * 60 * MINUTE,
            warn_before: MINUTE,
        }
    }

    fn check(limits: &Limits, activity: &Activity) -> Verdict {
        limits.check(activity, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_is_warned_once_then_ended_at_the_idle_timeout() {
        let limits = limits();
        let activity = Activity::new();
        advance(14 * MINUTE - Duration::from_secs(1)).await;
        assert_eq!(check(&limits, &activity), Verdict::default());
        advance(Duration::from_secs(1)).await;
        let verdict = check(&limits, &activity);
        assert_eq!(verdict.end, None);
        assert_eq!(
            verdict.warnings,
            ["pam: this session ends in 60s without input (idle timeout)"]
        );
        advance(MINUTE - Duration::from_millis(1)).await;
        assert_eq!(check(&limits, &activity), Verdict::default(), "warned once");
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            check(&limits, &activity).end,
            Some(EndReason::Idle(15 * MINUTE))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn input_restarts_the_idle_clock_and_rearms_its_warning() {
        let limits = limits();
        let activity = Activity::new();
        advance(14 * MINUTE + Duration::from_secs(30)).await;
        assert_eq!(check(&limits, &activity).warnings.len(), 1);
        activity.touch();
        advance(14 * MINUTE).await;
        let verdict = check(&limits, &activity);
        assert_eq!(verdict.end, None, "idle counts from the last input");
        assert_eq!(verdict.warnings.len(), 1, "warned again after new input");
        advance(MINUTE - Duration::from_millis(1)).await;
        assert_eq!(check(&limits, &activity).end, None);
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            check(&limits, &activity).end,
            Some(EndReason::Idle(15 * MINUTE))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_session_still_ends_at_its_maximum_duration() {
        let limits = limits();
        let activity = Activity::new();
        let mut warnings = Vec::new();
        let start = Instant::now();
        let ended = loop {
            advance(Duration::from_secs(10)).await;
            activity.touch();
            let verdict = check(&limits, &activity);
            warnings.extend(verdict.warnings);
            if let Some(end) = verdict.end {
                break (end, Instant::now() - start);
            }
            assert!(Instant::now() - start < 9 * 60 * MINUTE, "never ended");
        };
        assert_eq!(
            ended,
            (EndReason::MaxDuration(8 * 60 * MINUTE), 8 * 60 * MINUTE)
        );
        assert_eq!(
            warnings,
            ["pam: this session reaches its maximum duration in 60s"],
            "one warning, a minute before"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_wins_when_both_limits_are_reached_and_a_short_idle_timeout_warns_at_once() {
        let limits = Limits {
            idle: Duration::from_secs(3),
            max: Duration::from_secs(3),
            warn_before: Duration::from_secs(5),
        };
        let activity = Activity::new();
        let verdict = check(&limits, &activity);
        assert_eq!(verdict.end, None);
        assert_eq!(
            verdict.warnings,
            [
                "pam: this session ends in 3s without input (idle timeout)",
                "pam: this session reaches its maximum duration in 3s"
            ]
        );
        advance(Duration::from_secs(3)).await;
        assert_eq!(
            check(&limits, &activity).end,
            Some(EndReason::Idle(Duration::from_secs(3)))
        );
    }
}
