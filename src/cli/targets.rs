//! `pam targets check [NAME...] [--json]` (admin, through the broker): one
//! line per check of each target, what to change when one fails, exit 1
//! when any fails; and `pam ls --explain ROLE`.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::broker::Broker;
use super::home::Home;
use crate::api::{RoleExplain, TargetCheck, TargetsCheckRequest};

#[derive(Debug, Subcommand)]
pub enum TargetsCommand {
    /// Prove with AWS (IAM, STS, RDS, ECS, SSM, Secrets Manager) that each
    /// target will work; exit 1 when any check fails.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Targets to check (all when none are named).
    names: Vec<String>,
    /// One JSON object per target and line.
    #[arg(long)]
    json: bool,
}

pub async fn run(
    command: TargetsCommand,
    env: HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    match command {
        TargetsCommand::Check(args) => check(args, env).await,
    }
}

async fn check(args: CheckArgs, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let home = Home::locate(&env)?;
    let broker = Broker::from_home(&home, &env)?;
    let reports: Vec<TargetCheck> = broker
        .post(
            "/api/v1/targets/check",
            &TargetsCheckRequest {
                targets: args.names,
            },
        )
        .await?;
    if args.json {
        for report in &reports {
            println!("{}", serde_json::to_string(report)?);
        }
    } else {
        for report in &reports {
            for line in &report.checks {
                let mark = if line.ok { "PASS" } else { "FAIL" };
                let mut text = format!(
                    "{mark} {} ({}) {}: {}",
                    report.target, report.kind, line.check, line.detail
                );
                if let Some(fix) = &line.fix {
                    text.push_str(&format!(" -- fix: {fix}"));
                }
                println!("{}", one_line(&text));
            }
        }
        let failed = reports.iter().filter(|r| !r.ok).count();
        eprintln!(
            "{} targets checked: {} pass, {failed} fail",
            reports.len(),
            reports.len() - failed
        );
    }
    Ok(if reports.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `pam ls --explain ROLE`: the role's policies summarised by service.
pub async fn explain(
    role: &str,
    json: bool,
    env: HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    if !crate::config::valid_target_name(role) {
        anyhow::bail!("invalid role name (see `pam ls aws`)");
    }
    let home = Home::locate(&env)?;
    let broker = Broker::from_home(&home, &env)?;
    let explained: RoleExplain = broker
        .get(&format!("/api/v1/targets/{role}/explain"))
        .await?;
    if json {
        println!("{}", serde_json::to_string(&explained)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} -> {}", explained.target, explained.role_arn);
    for policy in &explained.policies {
        match &policy.arn {
            Some(arn) => println!("  policy {} ({}, {arn})", policy.name, policy.kind),
            None => println!("  policy {} ({})", policy.name, policy.kind),
        }
    }
    if explained.services.is_empty() {
        println!("  (no permissions)");
    }
    for (service, what) in &explained.services {
        println!(
            "  {service}: {}{}",
            what.actions.join(", "),
            if what.resources.is_empty() || what.resources == ["*"] {
                String::new()
            } else {
                format!(" on {}", what.resources.join(", "))
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Control characters from AWS answers never reach the terminal.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
