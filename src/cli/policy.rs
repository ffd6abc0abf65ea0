//! `pam policy check|validate` (offline, against the policy files) and
//! `pam ls` (through the broker: the targets the user may use).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::StoreArgs;
use super::broker::Broker;
use super::home::Home;
use crate::api::TargetInfo;
use crate::domain::policy::{Action, RequestContext, Resource, TargetKind, TargetRef};
use crate::domain::principal::{LoginMethod, UserIdentity};
use crate::policy::Engine;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate a request and explain the decision (exit 0 allow, 1 deny).
    Check(CheckArgs),
    /// Parse the policy files and validate them against the schema.
    Validate {
        /// The policy directory (default: the config's policy.dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The user's email.
    principal: String,
    /// ssh, ssh_forward, ecs_exec, db_connect, aws_assume, view_audit or admin.
    action: String,
    /// A target name from the config, or `audit` / `broker`.
    resource: String,
    /// The user's groups (comma-separated).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// The user logged in with a second factor.
    #[arg(long)]
    mfa: bool,
    /// Request context as JSON: {"reason", "source_ip", "duration", "login", "forward", "mfa", "groups", "method"}.
    #[arg(long)]
    context: Option<String>,
    /// The policy directory (default: the config's policy.dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(command: PolicyCommand, env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Validate { dir, store } => {
            let dir = match dir {
                Some(dir) => dir,
                None => store.load(env)?.policy.dir,
            };
            let loaded = Engine::validate_dir(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{} policies in {} are valid against the schema (set {})",
                loaded.policy_ids().len(),
                dir.display(),
                &loaded.hash[..16]
            );
            for id in loaded.policy_ids() {
                println!("  {id:<32} {}", loaded.description(&id).unwrap_or(""));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check(args) => check(args, env),
    }
}

fn check(args: CheckArgs, env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    // A config the caller named must load; without one, the defaults (and
    // ./policies) are a convenience for trying policies out.
    let config = if args.store.direct() {
        Some(args.store.load(env)?)
    } else {
        args.store.load(env).ok()
    };
    let dir = match (&args.dir, &config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => config.policy.dir.clone(),
        (None, None) => PathBuf::from("policies"),
    };
    let engine = Engine::load(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let action = Action::parse(&args.action).with_context(|| {
        format!(
            "unknown action {:?}; one of {}",
            args.action,
            Action::ALL.map(Action::as_str).join(", ")
        )
    })?;
    let extra: serde_json::Value = match &args.context {
        Some(text) => serde_json::from_str(text).context("--context must be a JSON object")?,
        None => serde_json::json!({}),
    };
    if !extra.is_object() {
        bail!("--context must be a JSON object");
    }
    let text = |key: &str| extra.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let mut groups = args.groups.clone();
    if let Some(list) = extra.get("groups").and_then(|v| v.as_array()) {
        groups.extend(list.iter().filter_map(|g| g.as_str().map(str::to_owned)));
    }
    let method = match text("method").as_deref() {
        Some(m) => LoginMethod::parse(m).with_context(|| format!("unknown method {m:?}"))?,
        None => LoginMethod::Sso,
    };
    let who = UserIdentity {
        email: args.principal.clone(),
        subject: args.principal.clone(),
        name: None,
        groups,
        amr: Vec::new(),
        mfa: args.mfa || extra.get("mfa").and_then(|v| v.as_bool()).unwrap_or(false),
        method,
    };
    let resource = match args.resource.as_str() {
        "audit" => Resource::Audit,
        "broker" => Resource::Broker,
        name => match config.as_ref().and_then(|c| c.target(name)) {
            Some(target) => Resource::Target(target.to_ref()),
            None => {
                // A target not in this config: described by --context tags.
                let tags = extra
                    .get("tags")
                    .and_then(|t| serde_json::from_value(t.clone()).ok())
                    .unwrap_or_default();
                Resource::Target(TargetRef {
                    name: name.to_owned(),
                    kind: match text("kind").as_deref() {
                        None => TargetKind::Ssh,
                        Some(kind) => TargetKind::parse(kind).with_context(|| {
                            format!("unknown target kind {kind:?} (one of ssh, postgres, aws, ecs)")
                        })?,
                    },
                    tags,
                })
            }
        },
    };
    let context = RequestContext {
        source_ip: text("source_ip")
            .map(|ip| {
                ip.parse()
                    .with_context(|| format!("invalid source_ip {ip:?}"))
            })
            .transpose()?,
        reason: text("reason"),
        duration_secs: extra.get("duration").and_then(|v| v.as_u64()),
        login: text("login"),
        forward: text("forward"),
        time_us: 0,
    };
    let decision = engine.decide(&who, action, &resource, &context);
    if args.json {
        let out = match &decision {
            Ok(permit) => serde_json::json!({"decision": "allow", "policies": permit.policies}),
            Err(denied) => serde_json::json!({
                "decision": "deny", "policies": denied.policies,
                "message": denied.message, "hint": denied.hint,
            }),
        };
        println!("{out}");
    } else {
        match &decision {
            Ok(permit) => println!("ALLOW  (determined by: {})", permit.policies.join(", ")),
            Err(denied) => {
                println!("DENY   {}", denied.message);
                if let Some(hint) = &denied.hint {
                    println!("       {hint}");
                }
                if !denied.policies.is_empty() {
                    println!("       (determined by: {})", denied.policies.join(", "));
                }
            }
        }
    }
    Ok(if decision.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only targets of this kind: ssh, db, aws or ecs.
    kind: Option<String>,
    #[arg(long)]
    json: bool,
    /// What an aws target's role may do (its policies, by service and action).
    #[arg(long, value_name = "ROLE", conflicts_with = "kind")]
    explain: Option<String>,
}

pub async fn ls(args: LsArgs, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    if let Some(kind) = &args.kind
        && !["ssh", "db", "postgres", "aws", "ecs"].contains(&kind.as_str())
    {
        bail!("kind must be ssh, db, aws or ecs");
    }
    if let Some(role) = &args.explain {
        return super::targets::explain(role, args.json, env).await;
    }
    let home = Home::locate(&env)?;
    let broker = Broker::from_home(&home, &env)?;
    let path = match &args.kind {
        Some(kind) => format!("/api/v1/targets?kind={kind}"),
        None => "/api/v1/targets".to_owned(),
    };
    let targets: Vec<TargetInfo> = broker.get(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string(&targets)?);
        return Ok(ExitCode::SUCCESS);
    }
    if targets.is_empty() {
        eprintln!("no targets are available to you");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<28} {:<9} {:<30} NOTES", "TARGET", "KIND", "TAGS");
    for t in targets {
        let tags = t
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let notes = if t.requires.iter().any(|r| r == "reason") {
            "needs --reason"
        } else {
            ""
        };
        println!("{:<28} {:<9} {:<30} {notes}", t.name, t.kind, tags);
    }
    Ok(ExitCode::SUCCESS)
}
