//! Reading IAM policy documents (pure): whether a trust policy lets a
//! principal take an action (and with which `sts:ExternalId`), whether an
//! identity policy allows an action, and a summary of what a role may do by
//! service. Conditions other than `sts:ExternalId` are not evaluated: the
//! checks say "allowed unless a condition forbids it", never more.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One statement, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub allow: bool,
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub resources: Vec<String>,
    /// `Principal.AWS` entries (and `*` for `"Principal": "*"`).
    pub principals: Vec<String>,
    /// `sts:ExternalId` values a `StringEquals`/`StringLike` condition demands.
    pub external_ids: Vec<String>,
    /// Other condition keys present (reported, not evaluated).
    pub other_conditions: Vec<String>,
}

/// Parses a policy document; the error says where it is malformed.
pub fn parse(document: &str) -> Result<Vec<Statement>, String> {
    let value: Value =
        serde_json::from_str(document).map_err(|e| format!("not valid JSON ({e})"))?;
    let statements = match &value["Statement"] {
        Value::Array(list) => list.clone(),
        Value::Object(_) => vec![value["Statement"].clone()],
        _ => return Err("no Statement".into()),
    };
    statements
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let allow = match s["Effect"].as_str() {
                Some("Allow") => true,
                Some("Deny") => false,
                _ => return Err(format!("statement {i}: Effect is neither Allow nor Deny")),
            };
            let mut principals = Vec::new();
            match &s["Principal"] {
                Value::String(p) if p == "*" => principals.push("*".to_owned()),
                Value::Object(map) => {
                    for (kind, v) in map {
                        if kind == "AWS" {
                            principals.extend(strings(v));
                        }
                    }
                }
                _ => {}
            }
            let mut external_ids = Vec::new();
            let mut other_conditions = Vec::new();
            if let Value::Object(conditions) = &s["Condition"] {
                for (operator, keys) in conditions {
                    let Value::Object(keys) = keys else { continue };
                    for (key, values) in keys {
                        if key.eq_ignore_ascii_case("sts:ExternalId")
                            && operator.starts_with("String")
                        {
                            external_ids.extend(strings(values));
                        } else {
                            other_conditions.push(format!("{operator} {key}"));
                        }
                    }
                }
            }
            Ok(Statement {
                allow,
                actions: strings(&s["Action"]),
                not_actions: strings(&s["NotAction"]),
                resources: strings(&s["Resource"]),
                principals,
                external_ids,
                other_conditions,
            })
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// IAM's wildcard match (`*` any run, `?` one character), case-insensitive
/// as IAM action names are.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn covers_action(statement: &Statement, action: &str) -> bool {
    if !statement.not_actions.is_empty() {
        return !statement.not_actions.iter().any(|a| matches(a, action));
    }
    statement.actions.iter().any(|a| matches(a, action))
}

fn covers_principal(statement: &Statement, principal: &str, account: &str) -> bool {
    statement.principals.iter().any(|p| {
        p == "*"
            || p == account
            || p == &format!("arn:aws:iam::{account}:root")
            || matches(p, principal)
    })
}

/// What a trust policy says about `principal` (an IAM role or user ARN of
/// `account`) taking `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    Allowed {
        /// ExternalIds demanded (empty: none).
        external_ids: Vec<String>,
    },
    Denied,
    NotAllowed,
}

pub fn trust(statements: &[Statement], principal: &str, account: &str, action: &str) -> Trust {
    let relevant =
        |s: &&Statement| covers_action(s, action) && covers_principal(s, principal, account);
    if statements.iter().filter(|s| !s.allow).any(|s| relevant(&s)) {
        return Trust::Denied;
    }
    let allowing: Vec<&Statement> = statements
        .iter()
        .filter(|s| s.allow)
        .filter(relevant)
        .collect();
    if allowing.is_empty() {
        return Trust::NotAllowed;
    }
    // Any statement without an ExternalId condition allows without one.
    if allowing.iter().any(|s| s.external_ids.is_empty()) {
        return Trust::Allowed {
            external_ids: Vec::new(),
        };
    }
    Trust::Allowed {
        external_ids: allowing
            .iter()
            .flat_map(|s| s.external_ids.iter().cloned())
            .collect(),
    }
}

/// Whether identity policy statements allow `action` (on any resource
/// matching `resource`): an Allow covers it and no Deny does.
pub fn allows(statements: &[Statement], action: &str, resource: &str) -> bool {
    let covers = |s: &&Statement| {
        covers_action(s, action)
            && (s.resources.is_empty() || s.resources.iter().any(|r| matches(r, resource)))
    };
    statements.iter().filter(|s| s.allow).any(|s| covers(&s))
        && !statements.iter().filter(|s| !s.allow).any(|s| covers(&s))
}

/// What statements allow, by service: `service` → actions (`*` for all),
/// with the resources they apply to. Deny statements are listed apart.
pub fn summarise(
    statements: &[Statement],
) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for s in statements {
        let actions: Vec<String> = if s.not_actions.is_empty() {
            s.actions.clone()
        } else {
            vec![format!("* except {}", s.not_actions.join(", "))]
        };
        for action in actions {
            let (service, name) = match action.split_once(':') {
                Some((service, name)) => (service.to_ascii_lowercase(), name.to_owned()),
                None => ("*".to_owned(), action.clone()),
            };
            let entry = out
                .entry(if s.allow {
                    service
                } else {
                    format!("{service} (denied)")
                })
                .or_default();
            entry.0.insert(name);
            for r in &s.resources {
                entry.1.insert(r.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROKER: &str = "arn:aws:iam::123456789012:role/pam-broker";

    #[test]
    fn wildcards_match_like_iam() {
        assert!(matches("sts:*", "sts:AssumeRole"));
        assert!(matches("sts:Assume*", "STS:assumerole"));
        assert!(matches("*", "anything"));
        assert!(matches(
            "ssmmessages:?penDataChannel",
            "ssmmessages:OpenDataChannel"
        ));
        assert!(!matches("sts:TagSession", "sts:AssumeRole"));
        assert!(matches(
            "arn:aws:rds-db:*:*:dbuser:*/pam_ro",
            "arn:aws:rds-db:eu-central-1:1:dbuser:db-ABC/pam_ro"
        ));
    }

    #[test]
    fn trust_needs_the_principal_the_action_and_no_deny() {
        let doc = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:role/pam-broker"},
             "Action":["sts:AssumeRole","sts:SetSourceIdentity"],
             "Condition":{"StringEquals":{"sts:ExternalId":"xyz"}}}]}"#;
        let s = parse(doc).unwrap();
        assert_eq!(
            trust(&s, BROKER, "123456789012", "sts:AssumeRole"),
            Trust::Allowed {
                external_ids: vec!["xyz".into()]
            }
        );
        assert_eq!(
            trust(&s, BROKER, "123456789012", "sts:TagSession"),
            Trust::NotAllowed
        );
        assert_eq!(
            trust(
                &s,
                "arn:aws:iam::123456789012:role/other",
                "123456789012",
                "sts:AssumeRole"
            ),
            Trust::NotAllowed
        );
        let root = parse(r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"123456789012"},"Action":"sts:*"}}"#).unwrap();
        assert_eq!(
            trust(&root, BROKER, "123456789012", "sts:TagSession"),
            Trust::Allowed {
                external_ids: vec![]
            }
        );
        let denied = parse(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"sts:*"},{"Effect":"Deny","Principal":"*","Action":"sts:TagSession"}]}"#).unwrap();
        assert_eq!(
            trust(&denied, BROKER, "123456789012", "sts:TagSession"),
            Trust::Denied
        );
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(parse("{not json").unwrap_err().contains("not valid JSON"));
        assert!(parse(r#"{"Statement":[{"Effect":"Maybe"}]}"#).is_err());
        assert!(parse(r#"{"Version":"2012-10-17"}"#).is_err());
    }

    #[test]
    fn identity_policies_allow_unless_denied_and_summarise_by_service() {
        let s = parse(r#"{"Statement":[
            {"Effect":"Allow","Action":["ssmmessages:*","s3:GetObject","s3:ListBucket"],"Resource":"*"},
            {"Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::secret/*"}]}"#)
        .unwrap();
        assert!(allows(&s, "ssmmessages:OpenDataChannel", "*"));
        assert!(allows(&s, "s3:GetObject", "arn:aws:s3:::public/x"));
        assert!(!allows(&s, "s3:GetObject", "arn:aws:s3:::secret/x"));
        assert!(!allows(&s, "ec2:RunInstances", "*"));
        let summary = summarise(&s);
        assert_eq!(
            summary["s3"].0.iter().cloned().collect::<Vec<_>>(),
            ["GetObject", "ListBucket"]
        );
        assert!(summary.contains_key("s3 (denied)"));
        assert!(summary["ssmmessages"].0.contains("*"));
    }
}
