//! `ssh.command` events for a shell channel: both directions go through
//! the [`commands::Tracker`]; each command it finds is recorded with its
//! offset in the recording (committed before more output is relayed, so
//! all of a session's commands precede its end).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;

use super::Shared;
use super::commands::Tracker;
use super::handler::Authed;
use crate::audit::recording::Recorder;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};

/// Cheap to clone: one per direction.
#[derive(Clone)]
pub(crate) struct CommandLog {
    tracker: Arc<Mutex<Tracker>>,
    recorder: Option<Recorder>,
    started: Instant,
    shared: Arc<Shared>,
    authed: Arc<Authed>,
    session_id: String,
}

impl CommandLog {
    pub(crate) fn start(
        shared: &Arc<Shared>,
        authed: &Arc<Authed>,
        session_id: &str,
        recorder: Option<Recorder>,
    ) -> CommandLog {
        CommandLog {
            tracker: Arc::default(),
            recorder,
            started: Instant::now(),
            shared: shared.clone(),
            authed: authed.clone(),
            session_id: session_id.to_owned(),
        }
    }

    /// Seconds into the recording (into the session when nothing records).
    fn now(&self) -> f64 {
        match &self.recorder {
            Some(r) => r.offset(),
            None => self.started.elapsed().as_secs_f64(),
        }
    }

    /// Keystrokes from the client (never kept, only read).
    pub(crate) fn input(&self, data: &[u8]) {
        let now = self.now();
        crate::sync::lock(&self.tracker).input(data, now);
    }

    /// Output from the target; records the commands it completes.
    pub(crate) async fn output(&self, data: &[u8]) {
        let now = self.now();
        let commands = crate::sync::lock(&self.tracker).output(data, now);
        for command in commands {
            let mut details = json!({
                "command": command.text,
                "offset": (command.offset * 1000.0).round() / 1000.0,
                "source": command.source.as_str(),
                "login": self.authed.login,
            });
            if command.truncated {
                details["truncated"] = json!(true);
            }
            self.shared
                .deps
                .audit
                .note(
                    AuditEvent::new(EventKind::SshCommand, Outcome::Success)
                        .actor(self.authed.principal.email())
                        .source_ip(Some(self.authed.peer.ip()))
                        .target(&self.authed.target.name)
                        .session(&self.session_id)
                        .details(details),
                )
                .await;
        }
    }
}
