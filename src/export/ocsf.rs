//! Audit events as OCSF 1.3 events (docs/ocsf.md has the mapping):
//! logins and logouts are Authentication (3002), policy decisions are
//! Authorize Session (3003), everything else (sessions, commands, queries,
//! credentials, administration) is API Activity (6003) with the pam event
//! kind as the API operation. Every event keeps its place in the chain:
//! `metadata.sequence` is its `seq`, `unmapped.pam` holds `seq`, `hash` and
//! `prev_hash`, and `raw_data` is the native JSON line (which
//! `pam audit verify --against` checks).

use serde_json::{Map, Value, json};

use crate::domain::audit::{EventRecord, format_us};

/// The OCSF schema version written to `metadata.version`.
pub const VERSION: &str = "1.3.0";

/// An OCSF class and activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub class_uid: u32,
    pub class_name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
    pub activity_id: u32,
    pub activity_name: &'static str,
}

const AUTHENTICATION: (u32, &str) = (3002, "Authentication");
const AUTHORIZE_SESSION: (u32, &str) = (3003, "Authorize Session");
const API_ACTIVITY: (u32, &str) = (6003, "API Activity");

/// The class and activity a pam event kind maps to.
pub fn class_of(kind: &str) -> Class {
    let ((class_uid, class_name), (activity_id, activity_name)) = match kind {
        "login.success" | "login.failure" | "login.lockout" | "breakglass.used" => {
            (AUTHENTICATION, (1, "Logon"))
        }
        "logout" => (AUTHENTICATION, (2, "Logoff")),
        "token.issued" | "ssh_cert.issued" => (AUTHENTICATION, (3, "Authentication Ticket")),
        "token.rejected" => (AUTHENTICATION, (1, "Logon")),
        "policy.decision" => (AUTHORIZE_SESSION, (1, "Assign Privileges")),
        "session.start" | "aws.credentials.issued" | "aws.console.issued" => {
            (API_ACTIVITY, (1, "Create"))
        }
        "audit.view" | "audit.export" => (API_ACTIVITY, (2, "Read")),
        "admin.change" => (API_ACTIVITY, (3, "Update")),
        "session.end" | "token.revoked" => (API_ACTIVITY, (4, "Delete")),
        _ => (API_ACTIVITY, (99, "Other")),
    };
    let (category_uid, category_name) = if class_uid / 1000 == 3 {
        (3, "Identity & Access Management")
    } else {
        (6, "Application Activity")
    };
    Class {
        class_uid,
        class_name,
        category_uid,
        category_name,
        activity_id,
        activity_name,
    }
}

/// The OCSF event for `record`; `native` is its native JSON line.
pub fn event(record: &EventRecord, native: &str) -> Value {
    let class = class_of(&record.kind);
    let details: Value = serde_json::from_str(&record.details).unwrap_or(Value::Null);
    let text = |key: &str| details.get(key).and_then(Value::as_str).map(str::to_owned);
    let (status_id, status) = match record.outcome.as_str() {
        "success" => (1, "Success"),
        "failure" | "denied" => (2, "Failure"),
        _ => (0, "Unknown"),
    };
    let (severity_id, severity) = match (record.kind.as_str(), status_id) {
        ("breakglass.used" | "login.lockout" | "ssh.host_key_mismatch", _) => (4, "High"),
        ("export.lagging", 2) => (3, "Medium"),
        (_, 2) => (3, "Medium"),
        _ => (1, "Informational"),
    };
    let mut out = Map::new();
    out.insert("class_uid".into(), json!(class.class_uid));
    out.insert("class_name".into(), json!(class.class_name));
    out.insert("category_uid".into(), json!(class.category_uid));
    out.insert("category_name".into(), json!(class.category_name));
    out.insert("activity_id".into(), json!(class.activity_id));
    out.insert("activity_name".into(), json!(class.activity_name));
    out.insert(
        "type_uid".into(),
        json!(u64::from(class.class_uid) * 100 + u64::from(class.activity_id)),
    );
    out.insert(
        "type_name".into(),
        json!(format!("{}: {}", class.class_name, class.activity_name)),
    );
    out.insert("time".into(), json!(record.time_us / 1000));
    out.insert("severity_id".into(), json!(severity_id));
    out.insert("severity".into(), json!(severity));
    out.insert("status_id".into(), json!(status_id));
    out.insert("status".into(), json!(status));
    if let Some(reason) = text("reason").or_else(|| text("message")) {
        out.insert("status_detail".into(), json!(reason));
    }
    out.insert(
        "message".into(),
        json!(format!("{} {}", record.kind, record.outcome)),
    );
    let mut metadata = json!({
        "version": VERSION,
        "product": {"name": "pam", "vendor_name": "pam", "version": env!("CARGO_PKG_VERSION")},
        "uid": record.id,
        "sequence": record.seq,
        "event_code": record.kind,
        "log_name": "pam.audit",
        "original_time": format_us(record.time_us),
    });
    if let Some(session) = &record.session_id {
        metadata["correlation_uid"] = json!(session);
    }
    out.insert("metadata".into(), metadata);

    let user = user(record, &details);
    let src = record.source_ip.as_ref().map(|ip| json!({"ip": ip}));
    let target = record
        .target
        .as_ref()
        .map(|t| json!({"name": t, "svc_name": t}));
    match class.class_uid {
        3002 => {
            out.insert("user".into(), user);
            out.insert("service".into(), json!({"name": "pam"}));
            if let Some(target) = target {
                out.insert("dst_endpoint".into(), target);
            }
            if let Some(src) = src {
                out.insert("src_endpoint".into(), src);
                out.insert("is_remote".into(), json!(true));
            }
            if let Some(method) = text("method") {
                out.insert("auth_protocol_id".into(), json!(99));
                out.insert("auth_protocol".into(), json!(method));
            }
            if let Some(mfa) = details.get("mfa").and_then(Value::as_bool) {
                out.insert("is_mfa".into(), json!(mfa));
            }
            if let Some(session) = &record.session_id {
                out.insert("session".into(), json!({"uid": session}));
            }
        }
        3003 => {
            out.insert("user".into(), user);
            let action = text("action").unwrap_or_else(|| "unknown".into());
            out.insert("privileges".into(), json!([action]));
            if let Some(groups) = details.get("groups").and_then(Value::as_array) {
                let groups: Vec<Value> = groups
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|g| json!({"name": g}))
                    .collect();
                out.insert("groups".into(), Value::Array(groups));
            }
            if let Some(target) = target {
                out.insert("dst_endpoint".into(), target);
            }
            if let Some(src) = src {
                out.insert("src_endpoint".into(), src);
            }
            if let Some(session) = &record.session_id {
                out.insert("session".into(), json!({"uid": session}));
            }
        }
        _ => {
            out.insert("actor".into(), json!({"user": user, "app_name": "pam"}));
            out.insert(
                "api".into(),
                json!({"operation": record.kind, "service": {"name": "pam"}}),
            );
            out.insert(
                "src_endpoint".into(),
                src.unwrap_or_else(|| json!({"svc_name": "pam"})),
            );
            if let Some(target) = &record.target {
                out.insert(
                    "dst_endpoint".into(),
                    json!({"name": target, "svc_name": target}),
                );
                out.insert(
                    "resources".into(),
                    json!([{"name": target, "type": "pam target"}]),
                );
            }
            if let Some(session) = &record.session_id {
                out.insert("actor".into(), json!({"user": out["actor"]["user"].clone(), "app_name": "pam", "session": {"uid": session}}));
            }
        }
    }
    out.insert(
        "unmapped".into(),
        json!({"pam": {
            "seq": record.seq,
            "hash": hex::encode(&record.hash),
            "prev_hash": hex::encode(&record.prev_hash),
            "kind": record.kind,
            "outcome": record.outcome,
            "target": record.target,
            "details": details,
        }}),
    );
    out.insert("raw_data".into(), json!(native));
    Value::Object(out)
}

/// The OCSF user for the event's actor: a person (email), the broker
/// itself (`pam@node`, `pam (...)`), or whoever the details name.
fn user(record: &EventRecord, details: &Value) -> Value {
    let actor = record.actor.clone().or_else(|| {
        ["email", "user", "username"]
            .iter()
            .find_map(|k| details.get(*k).and_then(Value::as_str).map(str::to_owned))
    });
    match actor {
        Some(actor) if actor.starts_with("pam@") || actor.starts_with("pam (") => {
            json!({"name": actor, "type_id": 3, "type": "System"})
        }
        Some(actor) if actor.contains('@') => {
            json!({"name": actor, "email_addr": actor, "type_id": 1, "type": "User"})
        }
        Some(actor) => json!({"name": actor, "type_id": 0, "type": "Unknown"}),
        None => json!({"name": "unknown", "type_id": 0, "type": "Unknown"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_classes_of_the_issue() {
        assert_eq!(class_of("login.success").class_uid, 3002);
        assert_eq!(class_of("login.failure").activity_id, 1);
        assert_eq!(class_of("logout").activity_id, 2);
        assert_eq!(class_of("policy.decision").class_uid, 3003);
        for kind in [
            "session.start",
            "session.end",
            "aws.credentials.issued",
            "db.query",
        ] {
            assert_eq!(class_of(kind).class_uid, 6003, "{kind}");
            assert_eq!(class_of(kind).category_uid, 6);
        }
        for kind in crate::domain::audit::EventKind::ALL {
            let class = class_of(kind.as_str());
            assert!(matches!(class.class_uid, 3002 | 3003 | 6003), "{kind}");
        }
    }
}
