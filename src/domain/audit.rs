//! Audit events: the closed set of kinds and the record every room emits.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// What happened. Names are the contract of docs/PRODUCT.md ("Audit events").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "login.success")]
    LoginSuccess,
    #[serde(rename = "login.failure")]
    LoginFailure,
    #[serde(rename = "login.lockout")]
    LoginLockout,
    #[serde(rename = "logout")]
    Logout,
    #[serde(rename = "token.issued")]
    TokenIssued,
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    #[serde(rename = "token.rejected")]
    TokenRejected,
    #[serde(rename = "ssh_cert.issued")]
    SshCertIssued,
    #[serde(rename = "policy.decision")]
    PolicyDecision,
    #[serde(rename = "session.start")]
    SessionStart,
    #[serde(rename = "session.end")]
    SessionEnd,
    #[serde(rename = "ssh.exec")]
    SshExec,
    #[serde(rename = "ssh.file_transfer")]
    SshFileTransfer,
    #[serde(rename = "ssh.command")]
    SshCommand,
    #[serde(rename = "ssh.host_key_mismatch")]
    SshHostKeyMismatch,
    #[serde(rename = "db.query")]
    DbQuery,
    #[serde(rename = "aws.credentials.issued")]
    AwsCredentialsIssued,
    #[serde(rename = "aws.console.issued")]
    AwsConsoleIssued,
    #[serde(rename = "admin.change")]
    AdminChange,
    #[serde(rename = "audit.view")]
    AuditView,
    #[serde(rename = "audit.export")]
    AuditExport,
    #[serde(rename = "breakglass.used")]
    BreakglassUsed,
    #[serde(rename = "server.start")]
    ServerStart,
    #[serde(rename = "server.stop")]
    ServerStop,
    #[serde(rename = "export.lagging")]
    ExportLagging,
    #[serde(rename = "audit.write_failed")]
    AuditWriteFailed,
    /// The broker logged in to a database with cleartext or MD5 password
    /// authentication (a target with `allow_weak_auth = true`).
    #[serde(rename = "db.weak_auth")]
    DbWeakAuth,
    #[serde(rename = "target.discovered")]
    TargetDiscovered,
    #[serde(rename = "target.changed")]
    TargetChanged,
    #[serde(rename = "target.removed")]
    TargetRemoved,
    /// A discovery source failed; the last good set stays.
    #[serde(rename = "target.discovery_failed")]
    TargetDiscoveryFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 31] = [
        EventKind::LoginSuccess,
        EventKind::LoginFailure,
        EventKind::LoginLockout,
        EventKind::Logout,
        EventKind::TokenIssued,
        EventKind::TokenRevoked,
        EventKind::TokenRejected,
        EventKind::SshCertIssued,
        EventKind::PolicyDecision,
        EventKind::SessionStart,
        EventKind::SessionEnd,
        EventKind::SshExec,
        EventKind::SshFileTransfer,
        EventKind::SshCommand,
        EventKind::SshHostKeyMismatch,
        EventKind::DbQuery,
        EventKind::AwsCredentialsIssued,
        EventKind::AwsConsoleIssued,
        EventKind::AdminChange,
        EventKind::AuditView,
        EventKind::AuditExport,
        EventKind::BreakglassUsed,
        EventKind::ServerStart,
        EventKind::ServerStop,
        EventKind::ExportLagging,
        EventKind::AuditWriteFailed,
        EventKind::DbWeakAuth,
        EventKind::TargetDiscovered,
        EventKind::TargetChanged,
        EventKind::TargetRemoved,
        EventKind::TargetDiscoveryFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LoginSuccess => "login.success",
            EventKind::LoginFailure => "login.failure",
            EventKind::LoginLockout => "login.lockout",
            EventKind::Logout => "logout",
            EventKind::TokenIssued => "token.issued",
            EventKind::TokenRevoked => "token.revoked",
            EventKind::TokenRejected => "token.rejected",
            EventKind::SshCertIssued => "ssh_cert.issued",
            EventKind::PolicyDecision => "policy.decision",
            EventKind::SessionStart => "session.start",
            EventKind::SessionEnd => "session.end",
            EventKind::SshExec => "ssh.exec",
            EventKind::SshFileTransfer => "ssh.file_transfer",
            EventKind::SshCommand => "ssh.command",
            EventKind::SshHostKeyMismatch => "ssh.host_key_mismatch",
            EventKind::DbQuery => "db.query",
            EventKind::AwsCredentialsIssued => "aws.credentials.issued",
            EventKind::AwsConsoleIssued => "aws.console.issued",
            EventKind::AdminChange => "admin.change",
            EventKind::AuditView => "audit.view",
            EventKind::AuditExport => "audit.export",
            EventKind::BreakglassUsed => "breakglass.used",
            EventKind::ServerStart => "server.start",
            EventKind::ServerStop => "server.stop",
            EventKind::ExportLagging => "export.lagging",
            EventKind::AuditWriteFailed => "audit.write_failed",
            EventKind::DbWeakAuth => "db.weak_auth",
            EventKind::TargetDiscovered => "target.discovered",
            EventKind::TargetChanged => "target.changed",
            EventKind::TargetRemoved => "target.removed",
            EventKind::TargetDiscoveryFailed => "target.discovery_failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            "denied" => Some(Outcome::Denied),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit record before it takes its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: Uuid,
    /// Microseconds since the Unix epoch, UTC.
    pub time_us: i64,
    pub kind: EventKind,
    /// The human (email) or the component that acted.
    pub actor: Option<String>,
    pub source_ip: Option<String>,
    pub target: Option<String>,
    pub session_id: Option<String>,
    pub outcome: Outcome,
    /// Kind-specific structured fields; never secrets.
    pub details: Value,
}

impl AuditEvent {
    pub fn new(kind: EventKind, outcome: Outcome) -> Self {
        Self {
            id: Uuid::now_v7(),
            time_us: now_us(),
            kind,
            actor: None,
            source_ip: None,
            target: None,
            session_id: None,
            outcome,
            details: Value::Object(Default::default()),
        }
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(safe_field(actor.into()));
        self
    }

    pub fn source_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.source_ip = ip.map(|ip| ip.to_canonical().to_string());
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(safe_field(target.into()));
        self
    }

    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(safe_field(session_id.into()));
        self
    }

    pub fn details(mut self, mut details: Value) -> Self {
        safe_value(&mut details);
        self.details = details;
        self
    }

    /// Makes every string of the event safe to store and to show (see
    /// [`safe_text`]). The builder methods already do; the trail applies it
    /// again on entry for fields set directly. Idempotent.
    pub fn make_safe(&mut self) {
        for field in [
            &mut self.actor,
            &mut self.source_ip,
            &mut self.target,
            &mut self.session_id,
        ] {
            if let Some(value) = field.take() {
                *field = Some(safe_field(value));
            }
        }
        safe_value(&mut self.details);
    }

    pub fn time(&self) -> OffsetDateTime {
        from_us(self.time_us)
    }
}

/// An event as stored, field for field: what the hash chain covers. Fields
/// are kept as stored text so that verification never depends on parsing
/// (a tampered `kind` must still be hashed, and reported, as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: i64,
    pub id: String,
    pub time_us: i64,
    pub kind: String,
    pub actor: Option<String>,
    pub source_ip: Option<String>,
    pub target: Option<String>,
    pub session_id: Option<String>,
    pub outcome: String,
    /// Canonical JSON: sorted keys, no insignificant whitespace.
    pub details: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// A signed statement that the chain's event `seq` has hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub time_us: i64,
    pub hash: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// Which events to list. Every field narrows; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub kinds: Vec<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub session_id: Option<String>,
    pub outcome: Option<String>,
    pub source_ip: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Keyset cursor: only events with a smaller `seq` (newest first pages).
    pub before_seq: Option<i64>,
    /// Keyset cursor: only events with a larger `seq` (oldest first pages).
    pub after_seq: Option<i64>,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    pub limit: u32,
}

/// A time bound of a filter that is neither a time nor an age.
#[derive(Debug, thiserror::Error)]
#[error("invalid time {0:?}: use RFC 3339, YYYY-MM-DD, or an age like 15m or 7d")]
pub struct InvalidTime(String);

/// A bound of [`EventFilter::since_us`] / `until_us`: an absolute time
/// (RFC 3339 or `YYYY-MM-DD`, UTC) or an age (`15m`, `7d`).
pub fn parse_time(text: &str) -> Result<i64, InvalidTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1000) as i64);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        let t = date.midnight().assume_utc();
        return Ok((t.unix_timestamp_nanos() / 1000) as i64);
    }
    if let Ok(age) = super::duration::HumanDuration::parse(text) {
        return Ok(now_us() - age.0.as_micros() as i64);
    }
    Err(InvalidTime(text.to_owned()))
}

impl EventRecord {
    /// The JSON form used by `--json` output, exports and the API.
    pub fn to_json(&self) -> Value {
        let details = serde_json::from_str(&self.details)
            .unwrap_or_else(|_| Value::String(self.details.clone()));
        serde_json::json!({
            "seq": self.seq,
            "id": self.id,
            "time": format_us(self.time_us),
            "kind": self.kind,
            "actor": self.actor,
            "source_ip": self.source_ip,
            "target": self.target,
            "session_id": self.session_id,
            "outcome": self.outcome,
            "details": details,
            "prev_hash": hex::encode(&self.prev_hash),
            "hash": hex::encode(&self.hash),
        })
    }
}

/// Why an audit record could not be written. Callers that needed the record
/// refuse their action when the trail is fail-closed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The store's error (shared: one failed batch answers many writers).
    #[error("the audit trail cannot be written: {0}")]
    Unavailable(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
    #[error("the audit trail is shutting down")]
    ShuttingDown,
    /// The store refused this one event while it takes others (the refusal
    /// itself is on record as `audit.write_failed`): retrying cannot help.
    #[error("the audit trail cannot be written: {0}")]
    Refused(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
}

impl AuditError {
    /// The trail cannot be written because of `source`.
    pub fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        AuditError::Unavailable(source.into().into())
    }
}

/// Longest `actor`, `source_ip`, `target` or `session_id` kept, in bytes.
pub const FIELD_MAX: usize = 1024;
/// Longest string kept inside `details`, in bytes (above the 16 KiB of a
/// `db.query` statement, whose escapes may lengthen it).
pub const DETAIL_MAX: usize = 64 * 1024;

/// `text` made safe for every store and every reader, once, where an event
/// is built: control characters (C0 including NUL, DEL, C1) and the Unicode
/// bidirectional overrides are escaped, never dropped (`\0`, `\n`, `\r`,
/// `\t`, else `\u{1b}`), so the evidence stays faithful; longer text than
/// `max` bytes is cut at a character boundary and ends with the marker
/// `…[truncated: N bytes]` (N the escaped length). The result holds no
/// control character and is at most `max` bytes, so applying it again
/// changes nothing.
pub fn safe_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    use std::fmt::Write as _;
    let mut out: Cow<'_, str> = if text.chars().any(needs_escape) {
        let mut escaped = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            match c {
                '\0' => escaped.push_str("\\0"),
                '\n' => escaped.push_str("\\n"),
                '\r' => escaped.push_str("\\r"),
                '\t' => escaped.push_str("\\t"),
                c if needs_escape(c) => {
                    let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
                }
                c => escaped.push(c),
            }
        }
        Cow::Owned(escaped)
    } else {
        Cow::Borrowed(text)
    };
    if out.len() > max {
        let marker = format!("…[truncated: {} bytes]", out.len());
        let mut cut = max.saturating_sub(marker.len());
        while cut > 0 && !out.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut kept = out[..cut].to_owned();
        kept.push_str(&marker);
        out = Cow::Owned(kept);
    }
    out
}

/// `text` for a human reader (a terminal, a CSV cell): every control
/// character escaped as [`safe_text`] does, nothing cut. Rows written before
/// events were made safe at the source, and columns outside the chain,
/// pass through here too.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    safe_text(text, usize::MAX)
}

/// Control characters and the bidirectional overrides that can reorder
/// what a reader sees.
pub fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn safe_field(text: String) -> String {
    match safe_text(&text, FIELD_MAX) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(safe) => safe,
    }
}

/// Every string of a JSON value, keys included, through [`safe_text`].
fn safe_value(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let std::borrow::Cow::Owned(safe) = safe_text(text, DETAIL_MAX) {
                *text = safe;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(safe_value),
        Value::Object(map) => {
            if map.keys().any(|k| safe_text(k, FIELD_MAX) != k.as_str()) {
                let old = std::mem::take(map);
                for (key, mut item) in old {
                    safe_value(&mut item);
                    map.insert(safe_text(&key, FIELD_MAX).into_owned(), item);
                }
            } else {
                map.values_mut().for_each(safe_value);
            }
        }
        _ => {}
    }
}

pub fn now_us() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

pub fn from_us(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 with microseconds, always UTC (`2026-11-26T12:00:00.123456Z`).
pub fn format_us(us: i64) -> String {
    let t = from_us(us);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn hostile_text_is_escaped_capped_and_stays_so() {
        assert_eq!(safe_text("plain é ✓", 100), "plain é ✓");
        assert_eq!(
            safe_text("a\0b\x1b[31m\n\u{9b}\u{202e}", 100),
            "a\\0b\\u{1b}[31m\\n\\u{9b}\\u{202e}"
        );
        let long = "é".repeat(1000);
        let capped = safe_text(&long, 100);
        assert!(capped.len() <= 100, "{capped}");
        assert!(capped.ends_with("…[truncated: 2000 bytes]"), "{capped}");
        assert_eq!(safe_text(&capped, 100), capped);
        let escaped = safe_text("\0\0\0", 100);
        assert_eq!(safe_text(&escaped, 100), escaped);
        let event = AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
            .actor("x\0")
            .details(serde_json::json!({"k\u{1b}": ["v\0", {"n": "\r"}]}));
        assert_eq!(event.actor.as_deref(), Some("x\\0"));
        assert_eq!(
            event.details,
            serde_json::json!({"k\\u{1b}": ["v\\0", {"n": "\\r"}]})
        );
    }

    #[test]
    fn times_format_in_utc_with_micros() {
        assert_eq!(format_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_us(1_795_689_093_123_456),
            "2026-11-26T10:31:33.123456Z"
        );
    }
}
