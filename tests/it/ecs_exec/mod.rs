//! ECS Exec shells and SSM port routes end to end: `pam::ecs` and
//! `pam::ssm` against the fake control plane and the protocol-faithful
//! agent in `support::fake_aws` (a real `/bin/sh` in a PTY, real TCP
//! services, moto's KMS), including lost, duplicated, reordered and
//! corrupted messages and dropped sockets.

mod ports;
mod recovery;
mod shell;
mod targets;

use std::time::Duration;

use pam::config::EcsTarget;
use pam::ecs;
use pam::ssm::{self, Event, Options, Session};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::fake_aws::{self, App, FakeAws, Faults, Kms, Plan, Task, wire};

const WAIT: Duration = Duration::from_secs(30);

async fn fake() -> FakeAws {
    crate::support::init_logging();
    let fake = FakeAws::start(std::env::var("PAM_TEST_MOTO_URL").ok()).await;
    fake.add_task(Task::running("prod", "orders-api", "abc123", "app"));
    fake
}

fn target() -> EcsTarget {
    EcsTarget {
        cluster: "prod".into(),
        service: Some("orders-api".into()),
        task: None,
        container: "app".into(),
        command: None,
    }
}

/// Anything that yields session events.
trait Events {
    async fn next_event(&mut self) -> Option<Event>;
}

impl Events for ecs::Shell {
    async fn next_event(&mut self) -> Option<Event> {
        self.recv().await
    }
}

impl Events for Session {
    async fn next_event(&mut self) -> Option<Event> {
        self.recv().await
    }
}

/// Reads output until it contains `needle`; returns all of it.
async fn read_until(events: &mut impl Events, needle: &str) -> String {
    let mut seen = Vec::new();
    let result = tokio::time::timeout(WAIT, async {
        loop {
            match events.next_event().await {
                Some(Event::Output(bytes)) | Some(Event::StdErr(bytes)) => {
                    seen.extend_from_slice(&bytes);
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        return;
                    }
                }
                Some(Event::ExitCode(_)) | Some(Event::Flag(_)) => {}
                other => panic!(
                    "session ended before {needle:?}: {other:?}; output so far: {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "timed out waiting for {needle:?}; output so far: {:?}",
        String::from_utf8_lossy(&seen)
    );
    String::from_utf8_lossy(&seen).into_owned()
}

/// Exactly `len` output bytes.
async fn read_exactly(events: &mut impl Events, len: usize) -> Vec<u8> {
    let mut seen = Vec::with_capacity(len);
    tokio::time::timeout(WAIT, async {
        while seen.len() < len {
            match events.next_event().await {
                Some(Event::Output(bytes)) => seen.extend_from_slice(&bytes),
                other => panic!("unexpected {other:?} after {} bytes", seen.len()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {} of {len} bytes", seen.len()));
    assert_eq!(seen.len(), len, "more output than expected");
    seen
}

/// Everything up to the end: (output, exit code, how it ended).
async fn drain(events: &mut impl Events) -> (String, Option<i32>, String) {
    let mut output = Vec::new();
    let mut exit = None;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match events.next_event().await {
                Some(Event::Output(bytes)) | Some(Event::StdErr(bytes)) => {
                    output.extend_from_slice(&bytes)
                }
                Some(Event::ExitCode(code)) => exit = Some(code),
                Some(Event::Flag(_)) => {}
                Some(Event::Closed(reason)) => return format!("closed: {reason:?}"),
                Some(Event::Failed(e)) => return format!("failed: {e}"),
                None => return "none".to_owned(),
            }
        }
    })
    .await
    .expect("the session did not end");
    (String::from_utf8_lossy(&output).into_owned(), exit, end)
}

fn options(session_id: &str) -> Options {
    let mut options = Options::new(session_id, "i-0123456789abcdef0");
    options.handshake_timeout = Duration::from_secs(10);
    options
}

/// A session on the fake agent without the control plane.
async fn echo_session(
    fake: &FakeAws,
    id: &str,
    plan: Plan,
    tune: impl FnOnce(&mut Options),
) -> Session {
    fake.set_plan(plan);
    let (url, token) = fake.create_session(id, "i-0123456789abcdef0", App::Echo, "Standard_Stream");
    let mut options = options(id);
    tune(&mut options);
    Session::connect(&url, &SecretString::from(token), options)
        .await
        .expect("connecting to the fake agent")
}

/// A deterministic pseudo-random payload.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
