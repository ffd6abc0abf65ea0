//! The vocabulary of access decisions: actions, resources, request context,
//! and the two outcomes. A denial is a value, not an error.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What a principal asks to do. Names are the Cedar action ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Ssh,
    SshForward,
    EcsExec,
    DbConnect,
    AwsAssume,
    ViewAudit,
    Admin,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::Ssh,
        Action::SshForward,
        Action::EcsExec,
        Action::DbConnect,
        Action::AwsAssume,
        Action::ViewAudit,
        Action::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Ssh => "ssh",
            Action::SshForward => "ssh_forward",
            Action::EcsExec => "ecs_exec",
            Action::DbConnect => "db_connect",
            Action::AwsAssume => "aws_assume",
            Action::ViewAudit => "view_audit",
            Action::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configured target as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub name: String,
    pub kind: TargetKind,
    pub tags: BTreeMap<String, String>,
}

/// What a target is, as policies see it (the `kind` attribute of a
/// `Target`): `ssh`, `postgres`, `aws` or `ecs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Ssh,
    Postgres,
    Aws,
    Ecs,
}

impl TargetKind {
    pub const ALL: [TargetKind; 4] = [
        TargetKind::Ssh,
        TargetKind::Postgres,
        TargetKind::Aws,
        TargetKind::Ecs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Ssh => "ssh",
            TargetKind::Postgres => "postgres",
            TargetKind::Aws => "aws",
            TargetKind::Ecs => "ecs",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the action is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Target(TargetRef),
    /// The audit trail (`view_audit`).
    Audit,
    /// The broker itself (`admin`).
    Broker,
}

impl Resource {
    pub fn name(&self) -> &str {
        match self {
            Resource::Target(t) => &t.name,
            Resource::Audit => "audit",
            Resource::Broker => "broker",
        }
    }
}

/// The circumstances of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub source_ip: Option<IpAddr>,
    /// The reason the user stated, if any.
    pub reason: Option<String>,
    /// Requested duration in seconds (AWS credentials).
    pub duration_secs: Option<u64>,
    /// The login asked for on an SSH target.
    pub login: Option<String>,
    /// For `ssh_forward`: `agent`, `tcp` or `x11`.
    pub forward: Option<String>,
    /// Microseconds since the epoch (the request's time; now when 0).
    pub time_us: i64,
}

/// Policy allowed a request: the policies that did. A decision, not a
/// licence: access to a target needs the gate's `policy::Permit`, which
/// only the gate makes, after recording the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub policies: Vec<String>,
}

/// A refusal with its reasons, told to the user in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Policies that determined the denial (empty: nothing permitted it).
    pub policies: Vec<String>,
    /// Why, in one line.
    pub message: String,
    /// What would allow it (MFA, a reason), if anything would.
    pub hint: Option<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}
