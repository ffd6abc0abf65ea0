//! Policy: Cedar policies in `policies/` decide every access, default deny.
//! The only module that names `cedar_policy`.
//!
//! [`Engine`] holds the active policy set, replaced atomically on reload; a
//! set that fails to parse or validate against the schema is refused and the
//! previous one stays. [`gate::Gate`] is what every access point calls: it
//! decides, explains a denial in one line, and records every decision.

pub mod gate;
pub mod permit;
#[cfg(test)]
mod prefilter_tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, Policy, PolicyId, PolicySet,
    Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use crate::domain::policy::{Action, Allowed, Denied, RequestContext, Resource, TargetRef};
use crate::domain::principal::UserIdentity;
use crate::sync::{lock, read, write};

pub use gate::Gate;
pub use permit::Permit;

/// The schema file in the policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The example policies shipped in `policies/`, embedded so that
/// `pam serve --dev` works from any directory.
pub const EXAMPLES: [(&str, &str); 7] = [
    (
        "schema.cedarschema",
        include_str!("../../policies/schema.cedarschema"),
    ),
    ("admins.cedar", include_str!("../../policies/admins.cedar")),
    (
        "analysts.cedar",
        include_str!("../../policies/analysts.cedar"),
    ),
    (
        "auditors.cedar",
        include_str!("../../policies/auditors.cedar"),
    ),
    (
        "engineers.cedar",
        include_str!("../../policies/engineers.cedar"),
    ),
    (
        "guardrails.cedar",
        include_str!("../../policies/guardrails.cedar"),
    ),
    ("sre.cedar", include_str!("../../policies/sre.cedar")),
];

/// Why a policy set was refused. The message names files and policies.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// A parsed and validated policy set.
pub struct Loaded {
    policies: PolicySet,
    /// The schema's actions with their groups (`action ssh in [remote]`),
    /// part of every request's entities so that `action in ...` sees them.
    actions: Entities,
    /// Per (action, principal): only the policies whose scope can match
    /// them. Cedar evaluates every policy of the set it is given; a user
    /// typically matches a handful of a hundred.
    slices: std::sync::Mutex<HashMap<SliceKey, Arc<PolicySet>>>,
    /// SHA-256 over the files' names and contents.
    pub hash: String,
    /// Policy id → `@description`, for explanations.
    descriptions: HashMap<String, String>,
    /// Policy id → `@advice`, what to do when it refuses.
    advice: HashMap<String, String>,
    pub files: Vec<String>,
}

/// The active policy set and how to reload it.
pub struct Engine {
    dir: PathBuf,
    active: RwLock<Arc<Loaded>>,
    generation: tokio::sync::watch::Sender<u64>,
    authorizer: Authorizer,
}

impl Engine {
    /// Loads and validates the policies in `dir`.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let loaded = load_dir(dir)?;
        let (generation, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            dir: dir.to_path_buf(),
            active: RwLock::new(Arc::new(loaded)),
            generation,
            authorizer: Authorizer::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The active set.
    pub fn active(&self) -> Arc<Loaded> {
        read(&self.active).clone()
    }

    /// Re-reads the directory. On success the new set is active and the
    /// generation moves (live sessions re-check); on failure nothing changes.
    pub fn reload(&self) -> Result<Arc<Loaded>, PolicyError> {
        let loaded = Arc::new(load_dir(&self.dir)?);
        *write(&self.active) = loaded.clone();
        self.generation.send_modify(|g| *g += 1);
        Ok(loaded)
    }

    /// Changes when a new policy set becomes active.
    pub fn generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Hash of the files as they are on disk now (to notice edits).
    pub fn disk_hash(&self) -> Option<String> {
        read_files(&self.dir).ok().map(|files| hash_files(&files))
    }

    /// Decides a request against the active set.
    pub fn decide(
        &self,
        who: &UserIdentity,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Result<Allowed, Denied> {
        let loaded = self.active();
        let outcome = self.evaluate(&loaded, who, action, resource, context);
        match outcome {
            Ok(policies) => Ok(Allowed { policies }),
            Err((policies, errors)) => {
                Err(self.explain(&loaded, who, action, resource, context, policies, errors))
            }
        }
    }

    /// One Cedar evaluation: Ok(permitting policies) or Err((forbidding
    /// policies, evaluation errors)).
    fn evaluate(
        &self,
        loaded: &Loaded,
        who: &UserIdentity,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Result<Vec<String>, (Vec<String>, Vec<String>)> {
        let request = match build_request(&loaded.actions, who, action, resource, context) {
            Ok(request) => request,
            Err(e) => return Err((Vec::new(), vec![e])),
        };
        let slice = loaded.slice(who, action);
        let response = self
            .authorizer
            .is_authorized(&request.0, &slice, &request.1);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        policies.sort();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        match response.decision() {
            Decision::Allow => Ok(policies),
            Decision::Deny => Err((policies, errors)),
        }
    }

    /// Turns a denial into one line, and looks for what would allow it.
    #[allow(clippy::too_many_arguments)]
    fn explain(
        &self,
        loaded: &Loaded,
        who: &UserIdentity,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
        policies: Vec<String>,
        errors: Vec<String>,
    ) -> Denied {
        let target = resource.name();
        let mut message = if let Some(first) = policies.first() {
            let why = loaded
                .descriptions
                .get(first)
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            format!("{action} to {target} denied by policy {first}{why}")
        } else {
            format!("no policy permits {} to {action} {target}", who.email)
        };
        if !errors.is_empty() {
            message.push_str(&format!(" [policy errors: {}]", errors.join("; ")));
        }
        // Counterfactuals: would MFA, a reason, or both have allowed it?
        let with_reason = RequestContext {
            reason: Some("stated".into()),
            ..context.clone()
        };
        let mut with_mfa = who.clone();
        with_mfa.mfa = true;
        let missing_reason = context
            .reason
            .as_deref()
            .is_none_or(|r| r.trim().is_empty());
        let mut tries: Vec<(&str, &UserIdentity, &RequestContext)> = Vec::new();
        if missing_reason {
            tries.push((
                "a reason (--reason, or PAM_REASON over SSH)",
                who,
                &with_reason,
            ));
        }
        if !who.mfa {
            tries.push((
                "MFA (log in again with a second factor)",
                &with_mfa,
                context,
            ));
        }
        if missing_reason && !who.mfa {
            tries.push(("MFA and a reason (--reason)", &with_mfa, &with_reason));
        }
        let mut hint = tries
            .into_iter()
            .find(|(_, who, ctx)| self.evaluate(loaded, who, action, resource, ctx).is_ok())
            .map(|(needs, _, _)| format!("it would be allowed with {needs}"));
        if hint.is_none()
            && let Some(advice) = policies.iter().find_map(|p| loaded.advice.get(p))
        {
            hint = Some(advice.clone());
        }
        Denied {
            policies,
            message,
            hint,
        }
    }

    /// Checks a policy directory without activating it (`pam policy validate`).
    pub fn validate_dir(dir: &Path) -> Result<Loaded, PolicyError> {
        load_dir(dir)
    }
}

/// Which policies a request can match: its action and principal.
type SliceKey = (Action, String, Vec<String>);

/// Cached slices kept at most (the cache is cleared when it grows past this).
const MAX_SLICES: usize = 10_000;

impl Loaded {
    /// The policies whose action and principal scope can match `who`
    /// doing `action` (cached). Conservative: conditions are left to Cedar.
    /// It matches scopes against exactly the hierarchy the request is
    /// evaluated with: the action's groups from the schema, the user's
    /// groups from the IdP (`prefilter_tests.rs` checks it against Cedar).
    fn slice(&self, who: &UserIdentity, action: Action) -> Arc<PolicySet> {
        let mut groups = who.groups.clone();
        groups.sort();
        let key = (action, who.email.clone(), groups);
        if let Some(slice) = lock(&self.slices).get(&key) {
            return slice.clone();
        }
        let action_uid = uid("Action", action.as_str()).ok();
        let user_uid = uid("User", &who.email).ok();
        let group_uids: Vec<EntityUid> = who
            .groups
            .iter()
            .filter_map(|g| uid("Group", g).ok())
            .collect();
        let principal_matches = |candidate: &EntityUid| {
            user_uid.as_ref() == Some(candidate) || group_uids.contains(candidate)
        };
        let mut slice = PolicySet::new();
        for policy in self.policies.policies() {
            let action_ok = match policy.action_constraint() {
                cedar_policy::ActionConstraint::Any => true,
                cedar_policy::ActionConstraint::Eq(a) => Some(&a) == action_uid.as_ref(),
                cedar_policy::ActionConstraint::In(list) => action_uid
                    .as_ref()
                    .is_some_and(|a| list.iter().any(|group| self.action_in(a, group))),
            };
            let principal_ok = match policy.principal_constraint() {
                cedar_policy::PrincipalConstraint::Any
                | cedar_policy::PrincipalConstraint::Is(_) => true,
                cedar_policy::PrincipalConstraint::Eq(p) => user_uid.as_ref() == Some(&p),
                cedar_policy::PrincipalConstraint::In(p)
                | cedar_policy::PrincipalConstraint::IsIn(_, p) => principal_matches(&p),
            };
            if action_ok && principal_ok {
                // Ids are unique in the full set, so adding cannot fail.
                let _ = slice.add(policy.clone());
            }
        }
        let slice = Arc::new(slice);
        {
            let mut slices = lock(&self.slices);
            if slices.len() >= MAX_SLICES {
                slices.clear();
            }
            slices.insert(key, slice.clone());
        }
        slice
    }

    /// `action in group`: the same action, or one of its groups'
    /// descendants in the schema.
    fn action_in(&self, action: &EntityUid, group: &EntityUid) -> bool {
        action == group
            || self
                .actions
                .ancestors(action)
                .is_some_and(|mut ancestors| ancestors.any(|a| a == group))
    }

    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .policies
            .policies()
            .map(|p| p.id().to_string())
            .collect();
        ids.sort();
        ids
    }

    pub fn description(&self, id: &str) -> Option<&str> {
        self.descriptions.get(id).map(String::as_str)
    }
}

fn read_files(dir: &Path) -> Result<BTreeMap<String, String>, PolicyError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| PolicyError(format!("reading policy directory {}: {e}", dir.display())))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| PolicyError(format!("reading {}: {e}", dir.display())))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".cedar") || name == SCHEMA_FILE {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| PolicyError(format!("reading {}: {e}", path.display())))?;
            files.insert(name, text);
        }
    }
    Ok(files)
}

fn hash_files(files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, text) in files {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn load_dir(dir: &Path) -> Result<Loaded, PolicyError> {
    let files = read_files(dir)?;
    let schema_text = files
        .get(SCHEMA_FILE)
        .ok_or_else(|| PolicyError(format!("{}: missing {SCHEMA_FILE}", dir.display())))?;
    let (schema, _warnings) = Schema::from_cedarschema_str(schema_text)
        .map_err(|e| PolicyError(format!("{SCHEMA_FILE}: {}", diagnostic(&e))))?;
    let mut policies = PolicySet::new();
    let mut descriptions = HashMap::new();
    let mut advice = HashMap::new();
    let mut problems = Vec::new();
    let mut count = 0;
    for (name, text) in files.iter().filter(|(n, _)| n.ends_with(".cedar")) {
        let parsed = match PolicySet::from_str(text) {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.push(format!("{name}: {}", diagnostic(&e)));
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            problems.push(format!(
                "{name}: templates are not supported; write plain policies"
            ));
        }
        for policy in parsed.policies() {
            count += 1;
            let id = match policy.annotation("id") {
                Some(id) => id.to_owned(),
                None => {
                    problems.push(format!(
                        "{name}: policy {} has no @id(\"...\") annotation (every policy needs a stable id for the audit trail)",
                        policy.id()
                    ));
                    continue;
                }
            };
            let renamed: Policy = policy.new_id(PolicyId::new(&id));
            if let Some(d) = policy.annotation("description") {
                descriptions.insert(id.clone(), d.to_owned());
            }
            if let Some(a) = policy.annotation("advice") {
                advice.insert(id.clone(), a.to_owned());
            }
            if let Err(e) = policies.add(renamed) {
                problems.push(format!("{name}: policy {id}: {e}"));
            }
        }
    }
    if count == 0 && problems.is_empty() {
        problems.push(format!("{}: no policies (*.cedar)", dir.display()));
    }
    if problems.is_empty() {
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        for error in result.validation_errors() {
            problems.push(format!(
                "policy {}: {}",
                error.policy_id(),
                diagnostic(error)
            ));
        }
    }
    if !problems.is_empty() {
        return Err(PolicyError(format!(
            "policies in {} are invalid:\n  {}",
            dir.display(),
            problems.join("\n  ")
        )));
    }
    let actions = schema
        .action_entities()
        .map_err(|e| PolicyError(format!("{SCHEMA_FILE}: actions: {e}")))?;
    Ok(Loaded {
        policies,
        actions,
        slices: std::sync::Mutex::new(HashMap::new()),
        hash: hash_files(&files),
        descriptions,
        advice,
        files: files.keys().cloned().collect(),
    })
}

/// A cedar diagnostic with its help text, on one line.
fn diagnostic(error: &(dyn miette::Diagnostic + 'static)) -> String {
    let mut text = error.to_string();
    if let Some(help) = error.help() {
        text.push_str(&format!(" (help: {help})"));
    }
    text.replace('\n', " ")
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let type_name = cedar_policy::EntityTypeName::from_str(kind).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(
        type_name,
        cedar_policy::EntityId::new(id),
    ))
}

/// The Cedar request and entities for one decision.
fn build_request(
    actions: &Entities,
    who: &UserIdentity,
    action: Action,
    resource: &Resource,
    context: &RequestContext,
) -> Result<(Request, Entities), String> {
    let user = uid("User", &who.email)?;
    let mut entities = Vec::with_capacity(who.groups.len() + 2);
    let mut parents = HashSet::new();
    for group in &who.groups {
        let g = uid("Group", group)?;
        parents.insert(g.clone());
        entities.push(Entity::new_no_attrs(g, HashSet::new()));
    }
    let user_entity = Entity::new(
        user.clone(),
        HashMap::from([
            (
                "email".to_owned(),
                RestrictedExpression::new_string(who.email.clone()),
            ),
            ("mfa".to_owned(), RestrictedExpression::new_bool(who.mfa)),
            (
                "amr".to_owned(),
                RestrictedExpression::new_set(
                    who.amr
                        .iter()
                        .map(|a| RestrictedExpression::new_string(a.clone())),
                ),
            ),
            (
                "method".to_owned(),
                RestrictedExpression::new_string(who.method.as_str().to_owned()),
            ),
        ]),
        parents,
    )
    .map_err(|e| e.to_string())?;
    entities.push(user_entity);
    let resource_uid = match resource {
        Resource::Target(target) => {
            let u = uid("Target", &target.name)?;
            entities.push(target_entity(&u, target)?);
            u
        }
        Resource::Audit => {
            let u = uid("Audit", "trail")?;
            entities.push(Entity::new_no_attrs(u.clone(), HashSet::new()));
            u
        }
        Resource::Broker => {
            let u = uid("Broker", "pam")?;
            entities.push(Entity::new_no_attrs(u.clone(), HashSet::new()));
            u
        }
    };
    let time = crate::domain::audit::from_us(if context.time_us == 0 {
        crate::domain::audit::now_us()
    } else {
        context.time_us
    });
    let ip = context
        .source_ip
        .map(|ip| ip.to_canonical())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let reason = context.reason.clone().unwrap_or_default();
    let cedar_context = Context::from_pairs([
        (
            "source_ip".to_owned(),
            RestrictedExpression::new_ip(ip.to_string()),
        ),
        ("mfa".to_owned(), RestrictedExpression::new_bool(who.mfa)),
        (
            "has_reason".to_owned(),
            RestrictedExpression::new_bool(!reason.trim().is_empty()),
        ),
        (
            "reason".to_owned(),
            RestrictedExpression::new_string(reason),
        ),
        (
            "duration".to_owned(),
            RestrictedExpression::new_long(
                context
                    .duration_secs
                    .map(|d| d.min(i64::MAX as u64) as i64)
                    .unwrap_or(0),
            ),
        ),
        (
            "hour".to_owned(),
            RestrictedExpression::new_long(i64::from(time.hour())),
        ),
        (
            "weekday".to_owned(),
            RestrictedExpression::new_long(i64::from(time.weekday().number_from_monday())),
        ),
        (
            "login".to_owned(),
            RestrictedExpression::new_string(context.login.clone().unwrap_or_default()),
        ),
        (
            "forward".to_owned(),
            RestrictedExpression::new_string(context.forward.clone().unwrap_or_default()),
        ),
        (
            "method".to_owned(),
            RestrictedExpression::new_string(who.method.as_str().to_owned()),
        ),
    ])
    .map_err(|e| e.to_string())?;
    let action_uid = uid("Action", action.as_str())?;
    let request = Request::new(user, action_uid, resource_uid, cedar_context, None)
        .map_err(|e| e.to_string())?;
    entities.extend(actions.iter().cloned());
    let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
    Ok((request, entities))
}

fn target_entity(uid: &EntityUid, target: &TargetRef) -> Result<Entity, String> {
    Entity::new_with_tags(
        uid.clone(),
        [
            (
                "name".to_owned(),
                RestrictedExpression::new_string(target.name.clone()),
            ),
            (
                "kind".to_owned(),
                RestrictedExpression::new_string(target.kind.as_str().to_owned()),
            ),
            (
                "env".to_owned(),
                RestrictedExpression::new_string(
                    target.tags.get("env").cloned().unwrap_or_default(),
                ),
            ),
        ],
        HashSet::new(),
        target
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
    )
    .map_err(|e| e.to_string())
}
