//! The registry's side of the limits on tokio's paused clock: what a live
//! session's room sees (its notices and its cancellation with a reason)
//! as time passes, with and without input.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, advance};
use tokio_util::sync::CancellationToken;

use super::limits::{Activity, Limits};
use super::{EndReason, Entry, Notice};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::principal::{LoginMethod, Principal, UserIdentity};
use crate::domain::session::SessionKind;
use crate::policy::permit::Grant;

const SECOND: Duration = Duration::from_secs(1);

fn limits() -> Limits {
    Limits {
        idle: 10 * SECOND,
        max: 60 * SECOND,
        warn_before: 3 * SECOND,
    }
}

/// A registered session as the registry holds it, and the receiving end
/// of its notices (what `Live::notice` reads).
fn entry() -> (Arc<Entry>, mpsc::Receiver<Notice>) {
    let (notices, received) = mpsc::channel(8);
    let grant = Grant {
        principal: Principal {
            identity: UserIdentity {
                email: "bob@example.test".into(),
                subject: "bob".into(),
                name: None,
                groups: vec!["engineers".into()],
                amr: Vec::new(),
                mfa: false,
                method: LoginMethod::Sso,
            },
            session_id: "jti-1".into(),
            expires_at_us: i64::MAX,
        },
        action: Action::Ssh,
        resource: Resource::Broker,
        context: RequestContext::default(),
        policies: Vec::new(),
    };
    let entry = Entry {
        id: "s-1".into(),
        kind: SessionKind::Ssh,
        grant,
        login: None,
        recording: None,
        started_us: 0,
        activity: Activity::new(),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        cancel: CancellationToken::new(),
        reason: Mutex::new(None),
        notices,
    };
    (Arc::new(entry), received)
}

/// One pass of the registry's once-a-second loop over this session.
fn tick(entry: &Entry) {
    entry.enforce(&limits(), Instant::now());
}

fn warnings(received: &mut mpsc::Receiver<Notice>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Notice::Warning(text)) = received.try_recv() {
        out.push(text);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_is_warned_through_its_notices_then_cancelled_as_idle() {
    let (entry, mut received) = entry();
    for _ in 0..6 {
        advance(SECOND).await;
        tick(&entry);
    }
    assert!(warnings(&mut received).is_empty());
    advance(SECOND).await;
    tick(&entry);
    assert_eq!(
        warnings(&mut received),
        ["pam: this session ends in 3s without input (idle timeout)"]
    );
    advance(2 * SECOND).await;
    tick(&entry);
    assert!(!entry.cancel.is_cancelled());
    assert!(warnings(&mut received).is_empty(), "warned once");
    advance(SECOND).await;
    tick(&entry);
    assert!(entry.cancel.is_cancelled(), "ended at the idle timeout");
    assert_eq!(entry.end_reason(), Some(EndReason::Idle(10 * SECOND)));
}

#[tokio::test(start_paused = true)]
async fn input_keeps_a_session_alive_until_its_maximum_duration() {
    let (entry, mut received) = entry();
    let started = Instant::now();
    let mut seen = Vec::new();
    while !entry.cancel.is_cancelled() {
        advance(SECOND).await;
        // The user types every 9 s: never idle for 10.
        if (Instant::now() - started).as_secs().is_multiple_of(9) {
            entry.activity.touch();
        }
        tick(&entry);
        seen.extend(warnings(&mut received));
        assert!(Instant::now() - started <= 61 * SECOND, "never ended");
    }
    assert_eq!(Instant::now() - started, 60 * SECOND);
    assert_eq!(
        entry.end_reason(),
        Some(EndReason::MaxDuration(60 * SECOND))
    );
    assert!(
        seen.iter()
            .any(|w| w == "pam: this session reaches its maximum duration in 3s"),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_the_room_ended_keeps_its_reason_and_gets_no_more_warnings() {
    let (entry, mut received) = entry();
    advance(8 * SECOND).await;
    entry.end(EndReason::Closed);
    tick(&entry);
    advance(5 * SECOND).await;
    tick(&entry);
    assert_eq!(entry.end_reason(), Some(EndReason::Closed));
    assert!(warnings(&mut received).is_empty());
}
