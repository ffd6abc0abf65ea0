//! Events describing something that already happened ([`super::Audit::note`])
//! that the store could not take when they happened: kept by the writer,
//! oldest first, with their original time, and appended once the store is
//! back. Bounded: past [`LATE_MAX`] events what is dropped is counted, and
//! the count is itself recorded (`audit.write_failed` with `lost`) once the
//! queue has drained.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde_json::json;

use crate::domain::audit::{AuditEvent, EventKind, Outcome};

/// Most events kept for a later write.
pub const LATE_MAX: usize = 10_000;
/// First retry after a failure; doubled after each failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long shutdown waits for the store to take what was kept.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Events not written yet, and what had to be dropped.
#[derive(Default)]
pub struct Late {
    queue: VecDeque<AuditEvent>,
    lost: BTreeMap<&'static str, u64>,
    /// Original times of the oldest and newest dropped events.
    lost_span: Option<(i64, i64)>,
}

impl Late {
    /// Keeps `event` for later, or counts it as lost when the queue is full.
    pub fn push(&mut self, event: AuditEvent) {
        if self.queue.len() < LATE_MAX {
            self.queue.push_back(event);
            return;
        }
        if self.lost.is_empty() {
            tracing::error!(
                max = LATE_MAX,
                "audit retry queue full: further events are counted as lost, and the count recorded once the store is back"
            );
        }
        *self.lost.entry(event.kind.as_str()).or_default() += 1;
        let t = event.time_us;
        self.lost_span = Some(match self.lost_span {
            None => (t, t),
            Some((from, to)) => (from.min(t), to.max(t)),
        });
    }

    /// True while anything (an event or a loss count) is still to be written.
    pub fn pending(&self) -> bool {
        !self.queue.is_empty() || !self.lost.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The oldest `max` events, in order.
    pub fn front(&self, max: usize) -> Vec<&AuditEvent> {
        self.queue.iter().take(max).collect()
    }

    /// Forgets the oldest `n` events (written, or refused for good).
    pub fn written(&mut self, n: usize) {
        self.queue.drain(..n.min(self.queue.len()));
    }

    /// The event that records what was dropped, once everything kept has
    /// been written; [`Late::lost_recorded`] after it is durable.
    pub fn lost_event(&self) -> Option<AuditEvent> {
        if !self.queue.is_empty() || self.lost.is_empty() {
            return None;
        }
        let (from, to) = self.lost_span.unwrap_or_default();
        let total: u64 = self.lost.values().sum();
        Some(
            AuditEvent::new(EventKind::AuditWriteFailed, Outcome::Failure).details(json!({
                "lost": total,
                "kinds": self.lost,
                "from_us": from,
                "to_us": to,
                "error": format!(
                    "the store was unavailable and the audit retry queue ({LATE_MAX} events) was full"
                ),
            })),
        )
    }

    pub fn lost_recorded(&mut self) {
        self.lost.clear();
        self.lost_span = None;
    }

    /// Kinds still kept (for the log at shutdown).
    pub fn summary(&self) -> BTreeMap<&'static str, u64> {
        let mut kinds = self.lost.clone();
        for event in &self.queue {
            *kinds.entry(event.kind.as_str()).or_default() += 1;
        }
        kinds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_events_are_counted_then_recorded_once_drained() {
        let mut late = Late::default();
        for _ in 0..LATE_MAX + 3 {
            late.push(AuditEvent::new(EventKind::SessionEnd, Outcome::Success));
        }
        assert_eq!(late.len(), LATE_MAX);
        assert!(late.lost_event().is_none(), "kept events first");
        late.written(LATE_MAX);
        let event = late.lost_event().expect("the loss is recorded");
        assert_eq!(event.details["lost"], 3);
        assert_eq!(event.details["kinds"]["session.end"], 3);
        late.lost_recorded();
        assert!(!late.pending());
    }
}
