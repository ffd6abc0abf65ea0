//! OCSF output: every required attribute of its class, and the copy still verifies.

use super::*;

/// Required attributes of the OCSF classes the export writes (OCSF 1.3:
/// base event, Authentication 3002, Authorize Session 3003, API Activity
/// 6003, and the objects they require), checked line by line.
fn ocsf_problems(event: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_owned());
        }
    };
    let int = |key: &str| event[key].as_u64();
    for key in [
        "activity_id",
        "category_uid",
        "class_uid",
        "severity_id",
        "time",
        "type_uid",
    ] {
        need(int(key).is_some(), key);
    }
    let class = int("class_uid").unwrap_or(0);
    need(
        int("type_uid") == Some(class * 100 + int("activity_id").unwrap_or(0)),
        "type_uid = class_uid * 100 + activity_id",
    );
    need(int("category_uid") == Some(class / 1000), "category_uid");
    need(
        event["metadata"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "metadata.version 1.x",
    );
    need(
        event["metadata"]["product"]["name"].is_string(),
        "metadata.product",
    );
    let user_ok = |user: &serde_json::Value| {
        user.is_object()
            && ["account", "name", "uid"]
                .iter()
                .any(|k| !user[*k].is_null())
    };
    let endpoint_ok = |endpoint: &serde_json::Value| {
        endpoint.is_object()
            && [
                "ip",
                "uid",
                "name",
                "hostname",
                "svc_name",
                "instance_uid",
                "domain",
            ]
            .iter()
            .any(|k| !endpoint[*k].is_null())
    };
    match class {
        3002 => {
            need(user_ok(&event["user"]), "3002 user");
            need(
                event["service"].is_object() || endpoint_ok(&event["dst_endpoint"]),
                "3002 service or dst_endpoint",
            );
        }
        3003 => {
            need(user_ok(&event["user"]), "3003 user");
            need(
                ["privileges", "groups", "iam_roles"]
                    .iter()
                    .any(|k| event[*k].is_array()),
                "3003 privileges, groups or iam_roles",
            );
        }
        6003 => {
            let actor = &event["actor"];
            need(
                ["process", "user", "session", "app_name", "app_uid"]
                    .iter()
                    .any(|k| !actor[*k].is_null()),
                "6003 actor",
            );
            if !actor["user"].is_null() {
                need(user_ok(&actor["user"]), "6003 actor.user");
            }
            need(event["api"]["operation"].is_string(), "6003 api.operation");
            need(endpoint_ok(&event["src_endpoint"]), "6003 src_endpoint");
        }
        other => need(false, &format!("unexpected class {other}")),
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_output_has_every_required_field_of_its_class_and_still_verifies() {
    let receiver = Receiver::start(SECRET).await;
    let app = TestApp::spawn_with(Options {
        toml: webhook_toml(&receiver, "format = \"ocsf\""),
        env: webhook_env(),
        ..Options::default()
    })
    .await;
    let ip: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let alice = "alice@example.test";
    let events = vec![
        AuditEvent::new(EventKind::LoginSuccess, Outcome::Success)
            .actor(alice)
            .source_ip(Some(ip))
            .session("jti-1")
            .details(serde_json::json!({"method": "oidc", "mfa": true, "amr": ["pwd", "otp"]})),
        AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
            .source_ip(Some(ip))
            .details(serde_json::json!({"method": "oidc", "reason": "no second factor"})),
        AuditEvent::new(EventKind::Logout, Outcome::Success)
            .actor(alice)
            .session("jti-1"),
        AuditEvent::new(EventKind::PolicyDecision, Outcome::Success)
            .actor(alice)
            .target("orders-prod")
            .details(
                serde_json::json!({"action": "db_connect", "decision": "allow", "groups": ["dba"]}),
            ),
        AuditEvent::new(EventKind::PolicyDecision, Outcome::Denied)
            .actor(alice)
            .target("payments-prod")
            .details(
                serde_json::json!({"action": "ssh", "decision": "deny", "message": "no permit"}),
            ),
        AuditEvent::new(EventKind::SessionStart, Outcome::Success)
            .actor(alice)
            .source_ip(Some(ip))
            .target("orders-prod")
            .session("s-1"),
        AuditEvent::new(EventKind::DbQuery, Outcome::Success)
            .actor(alice)
            .target("orders-prod")
            .session("s-1")
            .details(serde_json::json!({"sql": "select 1"})),
        AuditEvent::new(EventKind::SessionEnd, Outcome::Success)
            .actor(alice)
            .target("orders-prod")
            .session("s-1"),
        AuditEvent::new(EventKind::AwsCredentialsIssued, Outcome::Success)
            .actor(alice)
            .target("prod-readonly"),
    ];
    append(&app, events).await;
    assert!(caught_up(&app, "siem").await);
    let lines = receiver.lines();
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    for line in &lines {
        let problems = ocsf_problems(line);
        assert!(problems.is_empty(), "{problems:?} missing in {line}");
        let kind = line["metadata"]["event_code"].as_str().unwrap().to_owned();
        classes.insert(kind, line["class_uid"].as_u64().unwrap());
        assert_eq!(line["metadata"]["sequence"], line["unmapped"]["pam"]["seq"]);
        assert!(line["unmapped"]["pam"]["hash"].is_string());
    }
    for (kind, class) in [
        ("login.success", 3002),
        ("login.failure", 3002),
        ("logout", 3002),
        ("policy.decision", 3003),
        ("session.start", 6003),
        ("session.end", 6003),
        ("db.query", 6003),
        ("aws.credentials.issued", 6003),
        ("server.start", 6003),
    ] {
        assert_eq!(classes.get(kind), Some(&class), "{kind}");
    }
    let logout = lines
        .iter()
        .find(|l| l["metadata"]["event_code"] == "logout")
        .unwrap();
    assert_eq!(logout["activity_id"], 2);
    let denied = lines
        .iter()
        .find(|l| l["metadata"]["event_code"] == "policy.decision" && l["status_id"] == 2)
        .unwrap();
    assert_eq!(denied["privileges"], serde_json::json!(["ssh"]));
    // OCSF lines carry the native event in raw_data: the copy verifies.
    let copy = app.dir.path().join("ocsf.jsonl");
    write_copy(&copy, &lines);
    let (ok, stdout, stderr) = verify_against(&app, &[&copy], false);
    assert!(ok, "{stdout}{stderr}");
}
