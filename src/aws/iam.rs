//! IAM reads for discovery, `pam targets check` and `pam ls --explain`:
//! roles and their tags, a role's trust policy and session limit, its
//! attached and inline policies, and `SimulatePrincipalPolicy`. Policy
//! documents come URL-encoded from IAM and are decoded here.

use std::collections::BTreeMap;

use super::Aws;
use super::error::{ApiError, from_sdk};

const SERVICE: &str = "iam";

/// A role and what discovery and the checks need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub arn: String,
    /// Seconds (IAM's default is 3600).
    pub max_session_duration: u32,
    /// The trust policy, decoded; `None` when IAM gave none.
    pub trust_policy: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// One policy of a role: attached (managed) or inline, with its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    pub name: String,
    /// The managed policy's ARN; `None` for an inline policy.
    pub arn: Option<String>,
    pub document: String,
}

/// What `SimulatePrincipalPolicy` decided for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulated {
    pub action: String,
    /// `allowed`, `explicitDeny` or `implicitDeny`.
    pub decision: String,
}

/// Roles that carry the tag key `tag`, with all their tags (ListRoles
/// does not return tags, so each role's are read with ListRoleTags,
/// `concurrency` at a time). At most `limit` roles are looked at.
pub async fn tagged_roles(
    aws: &Aws,
    tag: &str,
    limit: usize,
    concurrency: usize,
) -> Result<Vec<Role>, ApiError> {
    let client = aws.iam();
    let mut listed = Vec::new();
    let mut marker = None;
    loop {
        let page = client
            .list_roles()
            .set_marker(marker)
            .max_items(1000)
            .send()
            .await
            .map_err(|e| from_sdk(SERVICE, "ListRoles", e))?;
        for role in page.roles() {
            listed.push(Role {
                name: role.role_name().to_owned(),
                arn: role.arn().to_owned(),
                max_session_duration: role
                    .max_session_duration()
                    .and_then(|d| u32::try_from(d).ok())
                    .unwrap_or(3600),
                trust_policy: role.assume_role_policy_document().map(decode_document),
                tags: role
                    .tags()
                    .iter()
                    .map(|t| (t.key().to_owned(), t.value().to_owned()))
                    .collect(),
            });
        }
        marker = page.marker().map(str::to_owned);
        if !page.is_truncated() || marker.is_none() || listed.len() >= limit {
            break;
        }
    }
    listed.truncate(limit);
    // Roles whose listing already carried tags need no second call.
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for role in listed {
        if role.tags.is_empty() {
            pending.push(role);
        } else if role.tags.contains_key(tag) {
            out.push(role);
        }
    }
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for mut role in pending {
        let client = client.clone();
        let semaphore = semaphore.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            role.tags = role_tags(&client, &role.name).await?;
            Ok::<_, ApiError>(role)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let role =
            joined.map_err(|e| ApiError::new(SERVICE, "ListRoleTags", None, e.to_string()))??;
        if role.tags.contains_key(tag) {
            out.push(role);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn role_tags(
    client: &aws_sdk_iam::Client,
    role: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut tags = BTreeMap::new();
    let mut marker = None;
    loop {
        let page = client
            .list_role_tags()
            .role_name(role)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| from_sdk(SERVICE, "ListRoleTags", e))?;
        for tag in page.tags() {
            tags.insert(tag.key().to_owned(), tag.value().to_owned());
        }
        marker = page.marker().map(str::to_owned);
        if !page.is_truncated() || marker.is_none() {
            return Ok(tags);
        }
    }
}

/// `GetRole` by name (the last segment of a role ARN's path).
pub async fn role(aws: &Aws, name: &str) -> Result<Role, ApiError> {
    let output = aws
        .iam()
        .get_role()
        .role_name(name)
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "GetRole", e))?;
    let role = output
        .role()
        .ok_or_else(|| ApiError::missing(SERVICE, "GetRole", "Role"))?;
    Ok(Role {
        name: role.role_name().to_owned(),
        arn: role.arn().to_owned(),
        max_session_duration: role
            .max_session_duration()
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(3600),
        trust_policy: role.assume_role_policy_document().map(decode_document),
        tags: role
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect(),
    })
}

/// The role's attached managed policies (their default version) and
/// inline policies, with their documents.
pub async fn role_policies(aws: &Aws, role: &str) -> Result<Vec<RolePolicy>, ApiError> {
    let client = aws.iam();
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let page = client
            .list_attached_role_policies()
            .role_name(role)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| from_sdk(SERVICE, "ListAttachedRolePolicies", e))?;
        for attached in page.attached_policies() {
            let (Some(name), Some(arn)) = (attached.policy_name(), attached.policy_arn()) else {
                continue;
            };
            let policy = client
                .get_policy()
                .policy_arn(arn)
                .send()
                .await
                .map_err(|e| from_sdk(SERVICE, "GetPolicy", e))?;
            let Some(version) = policy.policy().and_then(|p| p.default_version_id()) else {
                continue;
            };
            let version = client
                .get_policy_version()
                .policy_arn(arn)
                .version_id(version)
                .send()
                .await
                .map_err(|e| from_sdk(SERVICE, "GetPolicyVersion", e))?;
            let document = version
                .policy_version()
                .and_then(|v| v.document())
                .map(decode_document)
                .unwrap_or_default();
            out.push(RolePolicy {
                name: name.to_owned(),
                arn: Some(arn.to_owned()),
                document,
            });
        }
        marker = page.marker().map(str::to_owned);
        if !page.is_truncated() || marker.is_none() {
            break;
        }
    }
    let mut marker = None;
    loop {
        let page = client
            .list_role_policies()
            .role_name(role)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| from_sdk(SERVICE, "ListRolePolicies", e))?;
        for name in page.policy_names() {
            let inline = client
                .get_role_policy()
                .role_name(role)
                .policy_name(name)
                .send()
                .await
                .map_err(|e| from_sdk(SERVICE, "GetRolePolicy", e))?;
            out.push(RolePolicy {
                name: name.clone(),
                arn: None,
                document: decode_document(inline.policy_document()),
            });
        }
        marker = page.marker().map(str::to_owned);
        if !page.is_truncated() || marker.is_none() {
            break;
        }
    }
    Ok(out)
}

/// `SimulatePrincipalPolicy`: would `principal_arn`'s identity policies
/// allow `actions` on `resource`?
pub async fn simulate(
    aws: &Aws,
    principal_arn: &str,
    actions: &[&str],
    resource: &str,
) -> Result<Vec<Simulated>, ApiError> {
    let output = aws
        .iam()
        .simulate_principal_policy()
        .policy_source_arn(principal_arn)
        .set_action_names(Some(actions.iter().map(|a| (*a).to_owned()).collect()))
        .resource_arns(resource)
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "SimulatePrincipalPolicy", e))?;
    Ok(output
        .evaluation_results()
        .iter()
        .map(|r| Simulated {
            action: r.eval_action_name().to_owned(),
            decision: r.eval_decision().as_str().to_owned(),
        })
        .collect())
}

/// IAM gives policy documents URL-encoded (RFC 3986); a document that is
/// already JSON is left as it is.
pub fn decode_document(text: &str) -> String {
    if text.trim_start().starts_with('{') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The IAM principal ARN of a caller ARN: an assumed-role session
/// (`arn:aws:sts::ACCT:assumed-role/ROLE/SESSION`) is its role
/// (`arn:aws:iam::ACCT:role/ROLE`); users and roles stay as they are.
pub fn principal_of(caller_arn: &str) -> String {
    let Some(rest) = caller_arn.strip_prefix("arn:") else {
        return caller_arn.to_owned();
    };
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    if let [partition, "sts", _, account, resource] = parts.as_slice()
        && let Some(path) = resource.strip_prefix("assumed-role/")
        && let Some((role, _session)) = path.rsplit_once('/')
    {
        return format!("arn:{partition}:iam::{account}:role/{role}");
    }
    caller_arn.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_url_decoded() {
        assert_eq!(
            decode_document("%7B%22Version%22%3A%222012-10-17%22%7D"),
            r#"{"Version":"2012-10-17"}"#
        );
        assert_eq!(decode_document(r#"{"a":"%41"}"#), r#"{"a":"%41"}"#);
        // a truncated escape is kept, not a panic
        assert_eq!(decode_document("%7"), "%7");
    }

    #[test]
    fn an_assumed_role_session_is_its_role() {
        assert_eq!(
            principal_of("arn:aws:sts::123456789012:assumed-role/pam-broker/i-0abc"),
            "arn:aws:iam::123456789012:role/pam-broker"
        );
        assert_eq!(
            principal_of("arn:aws:iam::123456789012:user/ops"),
            "arn:aws:iam::123456789012:user/ops"
        );
    }
}
