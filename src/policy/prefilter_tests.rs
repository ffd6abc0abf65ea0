//! The pre-filter ([`Loaded::slice`]) against full Cedar evaluation: for
//! random policy sets over a schema with nested action groups, and random
//! requests, deciding with the slice must give the same decision and the
//! same deciding policies as Cedar with every policy of the set.

use std::collections::BTreeMap;

use cedar_policy::{Authorizer, Decision};
use proptest::prelude::*;

use super::*;
use crate::domain::principal::LoginMethod;

/// The production vocabulary, with actions in groups (two levels deep)
/// the way an operator's schema may put them.
const SCHEMA: &str = r#"
entity Group;
entity User in [Group] { email: String, mfa: Bool, amr: Set<String>, method: String };
entity Target { name: String, kind: String, env: String } tags String;
entity Audit;
entity Broker;
type RequestContext = {
  source_ip: ipaddr, mfa: Bool, reason: String, has_reason: Bool, duration: Long,
  hour: Long, weekday: Long, login: String, forward: String, method: String,
};
action remote;
action shells in [remote];
action oversight;
action ssh, ecs_exec in [shells] appliesTo { principal: [User], resource: [Target], context: RequestContext };
action db_connect, ssh_forward in [remote] appliesTo { principal: [User], resource: [Target], context: RequestContext };
action aws_assume appliesTo { principal: [User], resource: [Target], context: RequestContext };
action view_audit in [oversight] appliesTo { principal: [User], resource: [Audit], context: RequestContext };
action admin in [oversight] appliesTo { principal: [User], resource: [Broker], context: RequestContext };
"#;

const USERS: [&str; 3] = ["u0@example.test", "u1@example.test", "u2@example.test"];
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
const ACTION_NAMES: [&str; 10] = [
    "ssh",
    "ecs_exec",
    "db_connect",
    "ssh_forward",
    "aws_assume",
    "view_audit",
    "admin",
    "remote",
    "shells",
    "oversight",
];
const CONDITIONS: [&str; 6] = [
    "",
    " when { context.mfa }",
    " unless { principal.mfa }",
    " when { context.has_reason }",
    " unless { context.hour < 12 }",
    " when { principal.email like \"u1*\" }",
];

fn policy_text() -> impl Strategy<Value = String> {
    let principal = prop_oneof![
        Just("principal".to_owned()),
        (0..USERS.len()).prop_map(|u| format!("principal == User::\"{}\"", USERS[u])),
        (0..GROUPS.len()).prop_map(|g| format!("principal in Group::\"{}\"", GROUPS[g])),
        (0..GROUPS.len()).prop_map(|g| format!("principal is User in Group::\"{}\"", GROUPS[g])),
    ];
    let action = prop_oneof![
        Just("action".to_owned()),
        (0..ACTION_NAMES.len()).prop_map(|a| format!("action == Action::\"{}\"", ACTION_NAMES[a])),
        (0..ACTION_NAMES.len()).prop_map(|a| format!("action in Action::\"{}\"", ACTION_NAMES[a])),
        proptest::collection::vec(0..ACTION_NAMES.len(), 1..3).prop_map(|list| {
            let list: Vec<String> = list
                .iter()
                .map(|a| format!("Action::\"{}\"", ACTION_NAMES[*a]))
                .collect();
            format!("action in [{}]", list.join(", "))
        }),
    ];
    (any::<bool>(), principal, action, 0..CONDITIONS.len()).prop_map(
        |(permit, principal, action, condition)| {
            let effect = if permit { "permit" } else { "forbid" };
            format!(
                "{effect}({principal}, {action}, resource){};",
                CONDITIONS[condition]
            )
        },
    )
}

fn policy_set() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(policy_text(), 1..8)
}

#[derive(Debug, Clone)]
struct Case {
    user: usize,
    groups: Vec<usize>,
    mfa: bool,
    action: Action,
    reason: bool,
    hour: i64,
}

fn request() -> impl Strategy<Value = Case> {
    (
        0..USERS.len(),
        proptest::sample::subsequence((0..GROUPS.len()).collect::<Vec<_>>(), 0..=GROUPS.len()),
        any::<bool>(),
        proptest::sample::select(Action::ALL.to_vec()),
        any::<bool>(),
        0i64..24,
    )
        .prop_map(|(user, groups, mfa, action, reason, hour)| Case {
            user,
            groups,
            mfa,
            action,
            reason,
            hour,
        })
}

/// Whether the validator accepts `policy` against [`SCHEMA`].
fn valid(policy: &str) -> bool {
    static SCHEMA_PARSED: std::sync::LazyLock<Schema> = std::sync::LazyLock::new(|| {
        Schema::from_cedarschema_str(SCHEMA)
            .expect("the test schema parses")
            .0
    });
    let Ok(set) = PolicySet::from_str(policy) else {
        return false;
    };
    Validator::new(SCHEMA_PARSED.clone())
        .validate(&set, ValidationMode::Strict)
        .validation_passed()
}

/// A policy directory with `policies`, loaded and validated.
fn load(policies: &[String]) -> Result<(tempfile::TempDir, Engine), PolicyError> {
    let dir = tempfile::tempdir().map_err(|e| PolicyError(e.to_string()))?;
    std::fs::write(dir.path().join(SCHEMA_FILE), SCHEMA).map_err(|e| PolicyError(e.to_string()))?;
    let text: String = policies
        .iter()
        .enumerate()
        .map(|(i, p)| format!("@id(\"p{i}\")\n{p}\n"))
        .collect();
    std::fs::write(dir.path().join("random.cedar"), text)
        .map_err(|e| PolicyError(e.to_string()))?;
    let engine = Engine::load(dir.path())?;
    Ok((dir, engine))
}

fn inputs(case: &Case) -> (UserIdentity, Resource, RequestContext) {
    let who = UserIdentity {
        email: USERS[case.user].to_owned(),
        subject: USERS[case.user].to_owned(),
        name: None,
        groups: case.groups.iter().map(|g| GROUPS[*g].to_owned()).collect(),
        amr: Vec::new(),
        mfa: case.mfa,
        method: LoginMethod::Sso,
    };
    let resource = match case.action {
        Action::ViewAudit => Resource::Audit,
        Action::Admin => Resource::Broker,
        _ => Resource::Target(TargetRef {
            name: "t".into(),
            kind: crate::domain::policy::TargetKind::Ssh,
            tags: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
        }),
    };
    // 2026-01-05 (a Monday) at `hour`:00 UTC.
    let time_us = (1_767_571_200 + case.hour * 3600) * 1_000_000;
    let context = RequestContext {
        reason: case.reason.then(|| "ticket 1".to_owned()),
        time_us,
        ..RequestContext::default()
    };
    (who, resource, context)
}

/// Cedar with the whole set: `(allowed, deciding policies)`.
fn full_evaluation(engine: &Engine, case: &Case) -> (bool, Vec<String>) {
    let loaded = engine.active();
    let (who, resource, context) = inputs(case);
    let (request, entities) =
        build_request(&loaded.actions, &who, case.action, &resource, &context).unwrap();
    let response = Authorizer::new().is_authorized(&request, &loaded.policies, &entities);
    let mut policies: Vec<String> = response
        .diagnostics()
        .reason()
        .map(|id| id.to_string())
        .collect();
    policies.sort();
    assert!(
        response.diagnostics().errors().next().is_none(),
        "evaluation errors"
    );
    (response.decision() == Decision::Allow, policies)
}

/// The engine, which evaluates the pre-filtered slice.
fn engine_decision(engine: &Engine, case: &Case) -> (bool, Vec<String>) {
    let (who, resource, context) = inputs(case);
    match engine.decide(&who, case.action, &resource, &context) {
        Ok(allowed) => (true, allowed.policies),
        Err(denied) => (false, denied.policies),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_prefilter_decides_as_cedar_does_with_every_policy(
        policies in policy_set(),
        cases in proptest::collection::vec(request(), 1..12),
    ) {
        // Only policies the validator accepts make live policy sets.
        let policies: Vec<String> = policies.into_iter().filter(|p| valid(p)).collect();
        prop_assume!(!policies.is_empty());
        let loaded = load(&policies);
        let (_dir, engine) = loaded.map_err(|e| TestCaseError::fail(e.0))?;
        for case in &cases {
            prop_assert_eq!(
                engine_decision(&engine, case),
                full_evaluation(&engine, case),
                "{:?} with {:#?}", case, policies
            );
        }
    }
}

#[test]
fn a_forbid_on_an_action_group_applies_to_its_members() {
    let (_dir, engine) = load(&[
        "permit(principal, action, resource);".to_owned(),
        "forbid(principal, action in Action::\"remote\", resource) unless { principal.mfa };"
            .to_owned(),
    ])
    .unwrap();
    for (action, forbidden) in [
        (Action::Ssh, true),
        (Action::EcsExec, true),
        (Action::DbConnect, true),
        (Action::AwsAssume, false),
    ] {
        let case = Case {
            user: 0,
            groups: vec![],
            mfa: false,
            action,
            reason: false,
            hour: 9,
        };
        let (allowed, policies) = engine_decision(&engine, &case);
        assert_eq!(allowed, !forbidden, "{action}: {policies:?}");
        if forbidden {
            assert_eq!(policies, ["p1"], "{action}");
        }
    }
}
