//! Brokered sessions as records: what the sessions table holds and how
//! listings filter it.

use std::fmt;

/// What kind of target a session reaches (the `kind` column and field of
/// `session.start` / `session.end`).
/// Stored and serialized as `ssh`, `ecs` or `postgres`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// An SSH target: a shell, command, subsystem or TCP forward.
    Ssh,
    /// A shell or command in an ECS container (ECS Exec).
    Ecs,
    /// A PostgreSQL database.
    Postgres,
}

impl SessionKind {
    pub const ALL: [SessionKind; 3] = [SessionKind::Ssh, SessionKind::Ecs, SessionKind::Postgres];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Ssh => "ssh",
            SessionKind::Ecs => "ecs",
            SessionKind::Postgres => "postgres",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// A stored kind that is none of [`SessionKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown session kind {0:?} (one of ssh, ecs, postgres)")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for SessionKind {
    type Err = UnknownKind;

    fn from_str(text: &str) -> Result<Self, UnknownKind> {
        Self::parse(text).ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

impl fmt::Display for SessionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub kind: SessionKind,
    pub user_email: String,
    pub broker_session: Option<String>,
    pub target: String,
    pub login: Option<String>,
    pub node: String,
    pub source_ip: Option<String>,
    pub client: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub status: String,
    pub end_reason: Option<String>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub recording: Option<String>,
    pub recording_sha256: Option<String>,
    pub exit_status: Option<i64>,
    pub details: String,
    pub terminate_requested_at: Option<i64>,
    pub terminate_by: Option<String>,
    pub terminate_reason: Option<String>,
}

/// A page of sessions, live first, then newest first.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Keyset cursor: sessions that started before this (µs), with id tiebreak.
    pub before: Option<(i64, String)>,
    /// Only sessions that are no longer live (the web view lists live ones
    /// separately, so that this page walks the `started_at` index).
    pub exclude_live: bool,
    /// Newest first, live or not (for keyset paging over everything).
    pub by_start: bool,
    pub limit: u32,
}
