//! Policy: the shipped `policies/` decide a table of requests as the story
//! says; invalid policy sets are refused with clear errors; reloads (file
//! changes and SIGHUP) are audited and a bad set never replaces a good one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pam::domain::policy::{Action, RequestContext, Resource, TargetKind, TargetRef};
use pam::domain::principal::{LoginMethod, UserIdentity};
use pam::policy::Engine;

use crate::support::{Options, TestApp, eventually, pam_command};

fn shipped() -> Engine {
    Engine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
}

fn user(groups: &[&str], mfa: bool) -> UserIdentity {
    UserIdentity {
        email: "someone@example.test".into(),
        subject: "someone".into(),
        name: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        amr: vec![],
        mfa,
        method: LoginMethod::Sso,
    }
}

fn target(tags: &[(&str, &str)]) -> Resource {
    Resource::Target(TargetRef {
        name: "t".into(),
        kind: TargetKind::Ssh,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    })
}

struct Case {
    who: UserIdentity,
    action: Action,
    resource: Resource,
    context: RequestContext,
    /// Ok(permitting policy) or Err(forbidding policy, "" when nothing permits).
    expect: Result<&'static str, &'static str>,
}

fn ctx(reason: Option<&str>, duration: Option<u64>, forward: Option<&str>) -> RequestContext {
    RequestContext {
        reason: reason.map(str::to_owned),
        duration_secs: duration,
        forward: forward.map(str::to_owned),
        ..RequestContext::default()
    }
}

#[test]
fn the_shipped_policies_tell_the_fintech_story() {
    let engine = shipped();
    let dev = || target(&[("env", "dev")]);
    let prod = || target(&[("env", "prod")]);
    let none = || ctx(None, None, None);
    let why = || ctx(Some("INC-4711"), None, None);
    let mut breakglass = user(&["breakglass"], true);
    breakglass.method = LoginMethod::Breakglass;
    let cases = vec![
        // Engineers: dev shells, dev data, TCP forwarding in dev; nothing in prod.
        Case {
            who: user(&["engineers"], false),
            action: Action::Ssh,
            resource: dev(),
            context: none(),
            expect: Ok("engineers-dev-shell"),
        },
        Case {
            who: user(&["engineers"], false),
            action: Action::EcsExec,
            resource: dev(),
            context: none(),
            expect: Ok("engineers-dev-shell"),
        },
        Case {
            who: user(&["engineers"], false),
            action: Action::DbConnect,
            resource: dev(),
            context: none(),
            expect: Ok("engineers-dev-data"),
        },
        Case {
            who: user(&["engineers"], false),
            action: Action::AwsAssume,
            resource: dev(),
            context: none(),
            expect: Ok("engineers-dev-data"),
        },
        Case {
            who: user(&["engineers"], false),
            action: Action::SshForward,
            resource: dev(),
            context: ctx(None, None, Some("tcp")),
            expect: Ok("engineers-dev-port-forward"),
        },
        Case {
            who: user(&["engineers"], false),
            action: Action::SshForward,
            resource: dev(),
            context: ctx(None, None, Some("agent")),
            expect: Err(""),
        },
        Case {
            who: user(&["engineers"], true),
            action: Action::Ssh,
            resource: prod(),
            context: why(),
            expect: Err(""),
        },
        Case {
            who: user(&["engineers"], false),
            action: Action::ViewAudit,
            resource: Resource::Audit,
            context: none(),
            expect: Err(""),
        },
        // SREs: prod only with MFA and a reason; AWS in prod at most an hour.
        Case {
            who: user(&["sre"], true),
            action: Action::Ssh,
            resource: prod(),
            context: why(),
            expect: Ok("sre-prod-access"),
        },
        Case {
            who: user(&["sre"], true),
            action: Action::EcsExec,
            resource: prod(),
            context: why(),
            expect: Ok("sre-prod-access"),
        },
        Case {
            who: user(&["sre"], true),
            action: Action::Ssh,
            resource: prod(),
            context: none(),
            expect: Err(""),
        },
        Case {
            who: user(&["sre"], false),
            action: Action::Ssh,
            resource: prod(),
            context: why(),
            expect: Err("prod-requires-mfa"),
        },
        Case {
            who: user(&["sre"], true),
            action: Action::AwsAssume,
            resource: prod(),
            context: ctx(Some("INC-1"), Some(3600), None),
            expect: Ok("sre-prod-access"),
        },
        Case {
            who: user(&["sre"], true),
            action: Action::AwsAssume,
            resource: prod(),
            context: ctx(Some("INC-1"), Some(7200), None),
            expect: Err("prod-aws-short"),
        },
        Case {
            who: user(&["sre"], false),
            action: Action::Ssh,
            resource: dev(),
            context: none(),
            expect: Ok("sre-dev-access"),
        },
        Case {
            who: user(&["sre"], true),
            action: Action::SshForward,
            resource: prod(),
            context: ctx(Some("x"), None, Some("agent")),
            expect: Err("no-agent-forwarding-to-prod"),
        },
        // Analysts: read-only databases, nothing else.
        Case {
            who: user(&["analysts"], true),
            action: Action::DbConnect,
            resource: target(&[("env", "prod"), ("access", "read-only")]),
            context: none(),
            expect: Ok("analysts-read-only-db"),
        },
        Case {
            who: user(&["analysts"], false),
            action: Action::DbConnect,
            resource: target(&[("env", "prod"), ("access", "read-only")]),
            context: none(),
            expect: Err("prod-requires-mfa"),
        },
        Case {
            who: user(&["analysts"], true),
            action: Action::DbConnect,
            resource: target(&[("env", "prod"), ("access", "read-write")]),
            context: none(),
            expect: Err(""),
        },
        Case {
            who: user(&["analysts"], true),
            action: Action::Ssh,
            resource: target(&[("env", "dev"), ("access", "read-only")]),
            context: none(),
            expect: Err(""),
        },
        // Auditors: the audit trail only.
        Case {
            who: user(&["auditors"], false),
            action: Action::ViewAudit,
            resource: Resource::Audit,
            context: none(),
            expect: Ok("auditors-view-audit"),
        },
        Case {
            who: user(&["auditors"], false),
            action: Action::Admin,
            resource: Resource::Broker,
            context: none(),
            expect: Err(""),
        },
        Case {
            who: user(&["auditors"], false),
            action: Action::Ssh,
            resource: dev(),
            context: none(),
            expect: Err(""),
        },
        // Admins administer; break-glass may do anything, but only as break-glass.
        Case {
            who: user(&["pam-admins"], false),
            action: Action::Admin,
            resource: Resource::Broker,
            context: none(),
            expect: Ok("admins-manage-broker"),
        },
        Case {
            who: breakglass.clone(),
            action: Action::Ssh,
            resource: prod(),
            context: none(),
            expect: Ok("breakglass-everything"),
        },
        Case {
            who: user(&["breakglass"], true),
            action: Action::Ssh,
            resource: dev(),
            context: none(),
            expect: Err(""),
        },
        // Default deny.
        Case {
            who: user(&[], true),
            action: Action::Ssh,
            resource: dev(),
            context: why(),
            expect: Err(""),
        },
        Case {
            who: user(&["unknown-group"], true),
            action: Action::ViewAudit,
            resource: Resource::Audit,
            context: none(),
            expect: Err(""),
        },
    ];
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let got = engine.decide(&case.who, case.action, &case.resource, &case.context);
        let ok = match (&got, &case.expect) {
            (Ok(permit), Ok(policy)) => permit.policies.contains(&policy.to_string()),
            (Err(denied), Err("")) => denied.policies.is_empty(),
            (Err(denied), Err(policy)) => denied.policies.contains(&policy.to_string()),
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "case {i}: {:?} {} {:?} -> {got:?}, expected {:?}",
                case.who.groups, case.action, case.resource, case.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn denials_say_in_one_line_what_would_allow_them() {
    let engine = shipped();
    let prod = target(&[("env", "prod")]);
    let denied = engine
        .decide(
            &user(&["sre"], true),
            Action::Ssh,
            &prod,
            &RequestContext::default(),
        )
        .unwrap_err();
    assert_eq!(denied.to_string().lines().count(), 1);
    assert!(
        denied
            .to_string()
            .contains("it would be allowed with a reason"),
        "{denied}"
    );
    let denied = engine
        .decide(
            &user(&["sre"], false),
            Action::Ssh,
            &prod,
            &ctx(Some("INC-1"), None, None),
        )
        .unwrap_err();
    assert_eq!(denied.policies, ["prod-requires-mfa"]);
    assert!(
        denied
            .message
            .contains("denied by policy prod-requires-mfa"),
        "{denied}"
    );
    assert!(
        denied.to_string().contains("it would be allowed with MFA"),
        "{denied}"
    );
    let denied = engine
        .decide(
            &user(&["analysts"], true),
            Action::Ssh,
            &target(&[("env", "dev")]),
            &RequestContext::default(),
        )
        .unwrap_err();
    assert!(denied.hint.is_none(), "nothing would allow it: {denied}");
    assert!(denied.message.starts_with("no policy permits"), "{denied}");
}

fn copy_policies(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
    {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn invalid_policy_sets_are_refused_with_clear_errors() {
    let cases = [
        (
            "syntax.cedar",
            "permit(principal, action, resource) when { ;",
            "syntax.cedar",
        ),
        (
            "unknown-attr.cedar",
            "@id(\"bad-attr\")\npermit(principal, action == Action::\"ssh\", resource is Target) when { resource.colour == \"red\" };",
            "policy bad-attr",
        ),
        (
            "unknown-action.cedar",
            "@id(\"bad-action\")\npermit(principal, action == Action::\"fly\", resource);",
            "bad-action",
        ),
        (
            "no-id.cedar",
            "permit(principal, action, resource);",
            "has no @id",
        ),
        (
            "duplicate.cedar",
            "@id(\"auditors-view-audit\")\npermit(principal in Group::\"x\", action == Action::\"view_audit\", resource is Audit);",
            "auditors-view-audit",
        ),
    ];
    for (file, text, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_policies(dir.path());
        std::fs::write(dir.path().join(file), text).unwrap();
        let error = match Engine::load(dir.path()) {
            Ok(_) => panic!("{file} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(needle), "{file}: {error}");
        // The CLI says the same and exits non-zero.
        let out = pam_command()
            .args(["policy", "validate", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
    }
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    std::fs::remove_file(dir.path().join("schema.cedarschema")).unwrap();
    assert!(
        Engine::load(dir.path())
            .err()
            .unwrap()
            .to_string()
            .contains("missing schema.cedarschema")
    );
}

#[test]
fn pam_policy_check_explains_and_exits_by_decision() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let run = |args: &[&str]| {
        pam_command()
            .args(["policy", "check"])
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let allow = run(&[
        "carol@example.test",
        "ssh",
        "web-prod",
        "--groups",
        "sre",
        "--mfa",
        "--context",
        r#"{"reason":"INC-9","tags":{"env":"prod"}}"#,
    ]);
    assert!(allow.status.success());
    assert!(
        String::from_utf8_lossy(&allow.stdout).contains("ALLOW  (determined by: sre-prod-access)")
    );
    let deny = run(&[
        "carol@example.test",
        "ssh",
        "web-prod",
        "--groups",
        "sre",
        "--context",
        r#"{"reason":"INC-9","tags":{"env":"prod"}}"#,
        "--json",
    ]);
    assert_eq!(deny.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&deny.stdout).unwrap();
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["policies"], serde_json::json!(["prod-requires-mfa"]));
}

#[test]
fn pam_policy_check_with_a_config_that_does_not_load_says_why_and_stops() {
    // ./policies would allow the request: a config that fails to load must
    // not fall back to it.
    let cwd = tempfile::tempdir().unwrap();
    copy_policies(&cwd.path().join("policies"));
    let config = cwd.path().join("pam.toml");
    std::fs::write(&config, "[policy]\ndirr = \"elsewhere\"\n").unwrap();
    let run = |config: &Path| {
        pam_command()
            .current_dir(cwd.path())
            .args(["policy", "check", "carol@example.test", "ssh", "web-prod"])
            .args(["--groups", "sre", "--mfa", "--context"])
            .arg(r#"{"reason":"INC-9","tags":{"env":"prod"}}"#)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };
    let out = run(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("policy.dirr"), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
    let missing = run(&cwd.path().join("missing.toml"));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{stderr}");
    assert!(missing.stdout.is_empty());
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

/// A broker whose policies live in a copy we can edit.
async fn app_with_policy_copy() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    let app = TestApp::spawn_with(Options {
        env: [
            (
                "PAM_POLICY__DIR".to_owned(),
                dir.path().display().to_string(),
            ),
            ("PAM_POLICY__WATCH_INTERVAL".to_owned(), "200ms".to_owned()),
        ]
        .into(),
        ..Options::default()
    })
    .await;
    (app, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_reload_and_bad_sets_never_replace_good_ones() {
    let (app, dir) = app_with_policy_copy().await;
    // A valid change: auditors may now also administer.
    std::fs::write(
        dir.path().join("extra.cedar"),
        "@id(\"auditors-admin\")\npermit(principal in Group::\"auditors\", action == Action::\"admin\", resource is Broker);\n",
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            !app.events("admin.change").await.is_empty()
        })
        .await,
        "a file change is picked up"
    );
    let change = &app.event_details("admin.change").await[0];
    assert_eq!(change["change"], "policy.reload");
    assert!(
        change["policies"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("auditors-admin"))
    );
    let good_hash = change["hash"].as_str().unwrap().to_owned();

    // A broken change is refused, audited, and the good set stays.
    std::fs::write(
        dir.path().join("broken.cedar"),
        "permit(principal, action, resource) when {",
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.events("admin.change").await.len() >= 2
        })
        .await
    );
    let refused = &app.events("admin.change").await[1];
    assert_eq!(refused.outcome, "failure");
    let details: serde_json::Value = serde_json::from_str(&refused.details).unwrap();
    assert_eq!(details["active_hash"], good_hash.as_str());
    assert!(details["error"].as_str().unwrap().contains("broken.cedar"));

    // The listing API still answers with the good set (auditors see no targets, but it works).
    let (_, _) = (app, dir);
}

#[tokio::test]
async fn sighup_reloads_the_policies_of_a_running_broker() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_policies(&policies);
    let database = crate::support::TestDatabase::create(dir.path()).await;
    let config = dir.path().join("pam.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:0\"\nssh_listen = \"127.0.0.1:0\"\npostgres_listen = \"127.0.0.1:0\"\n\
             data_dir = \"{}\"\ndatabase_url = \"{}\"\n[policy]\ndir = \"{}\"\nwatch_interval = \"1h\"\n",
            dir.path().join("data").display(),
            database.url,
            policies.display()
        ),
    )
    .unwrap();
    let mut child = pam_command()
        .args(["serve", "--config"])
        .arg(&config)
        .env("PAM_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("broker output");
        if line.contains(needle) {
            return;
        }
    };
    wait_for("listening");
    std::fs::write(
        policies.join("extra.cedar"),
        "@id(\"hup-test\")\npermit(principal in Group::\"auditors\", action == Action::\"admin\", resource is Broker);\n",
    )
    .unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for("policies reloaded");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = pam_command()
        .args([
            "audit",
            "events",
            "--json",
            "--kind",
            "admin.change",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let event: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["actor"], "pam (SIGHUP)", "{text}");
    assert!(
        event["details"]["policies"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("hup-test"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_ls_lists_only_what_policy_allows() {
    let app = TestApp::spawn_with(Options {
        idp: true,
        toml: r#"
[[target]]
name = "web-dev"
kind = "ssh"
address = "127.0.0.1:22"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJpueAFIo1aoPRJMKM6y3ugcWby1d5dPpCO+wc3jCHIN"
login = "app"
tags = { env = "dev" }

[[target]]
name = "web-prod"
kind = "ssh"
address = "127.0.0.1:22"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJpueAFIo1aoPRJMKM6y3ugcWby1d5dPpCO+wc3jCHIN"
login = "app"
tags = { env = "prod" }

[[target]]
name = "orders-ro"
kind = "postgres"
address = "127.0.0.1:5432"
database = "orders"
credential = { from = "secretsmanager", secret_id = "x" }
tags = { env = "prod", access = "read-only" }
"#
        .into(),
        ..Options::default()
    })
    .await;
    async fn list(app: &TestApp, user: &str) -> Vec<String> {
        let token = app.sso_login(user).await.unwrap().response.token;
        let targets: Vec<serde_json::Value> = app
            .client
            .get(app.url("/api/v1/targets"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        targets
            .iter()
            .map(|t| {
                let needs_reason = !t["requires"].as_array().unwrap().is_empty();
                format!(
                    "{}{}",
                    t["name"].as_str().unwrap(),
                    if needs_reason { " (reason)" } else { "" }
                )
            })
            .collect()
    }
    assert_eq!(list(&app, "bob").await, ["web-dev"], "engineers: dev only");
    assert_eq!(
        list(&app, "carol").await,
        ["web-dev", "web-prod (reason)", "orders-ro (reason)"],
        "SRE with MFA: prod needs a reason"
    );
    assert_eq!(
        list(&app, "dave").await,
        ["orders-ro"],
        "analysts: read-only DB"
    );
    assert!(list(&app, "erin").await.is_empty(), "auditors: no targets");

    // The same through the CLI.
    let home = tempfile::tempdir().unwrap();
    let browser = format!(
        "python3 {}",
        crate::support::peers::peers_dir()
            .join("browser.py")
            .display()
    );
    let login = pam_command()
        .args(["login", "--broker", &app.base_url, "--login-hint", "bob"])
        .env("PAM_HOME", home.path())
        .env("BROWSER", &browser)
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let ls = pam_command()
        .args(["ls", "ssh"])
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    let text = String::from_utf8(ls.stdout).unwrap();
    assert!(text.contains("web-dev"), "{text}");
    assert!(!text.contains("web-prod"), "{text}");
}
