//! `pam aws creds|env|console ROLE` and `pam config aws`: short-lived AWS
//! credentials from the broker for the AWS CLI and SDKs
//! (`credential_process`), the shell, and the console.
//!
//! Credentials are cached under `~/.pam/aws/` (0600) for the broker
//! session that obtained them, until five minutes before they expire.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::broker::Broker;
use super::home::Home;
use crate::api::{AwsConsole, AwsCredentials, AwsRequest, TargetInfo};
use crate::config::HumanDuration;

#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Credentials as `credential_process` JSON (Version 1).
    Creds(RoleArgs),
    /// Credentials as `export AWS_...` lines for a shell.
    Env(RoleArgs),
    /// A one-time AWS console sign-in URL.
    Console {
        #[command(flatten)]
        role: RoleArgs,
        /// Open it with $BROWSER (else xdg-open).
        #[arg(long)]
        open: bool,
    },
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    /// The role (an `aws` target; see `pam ls aws`).
    role: String,
    /// How long the credentials should last (e.g. 30m, 1h; capped by policy and the role).
    #[arg(long)]
    duration: Option<String>,
    /// Why you need them (policy may require it; it is audited).
    #[arg(long, env = "PAM_REASON")]
    reason: Option<String>,
    /// Ask the broker even if cached credentials are still fresh.
    #[arg(long)]
    no_cache: bool,
}

/// Refresh cached credentials this long before they expire.
const REFRESH_BEFORE_SECS: i64 = 300;

pub async fn run(command: AwsCommand, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    match command {
        AwsCommand::Creds(args) => {
            let credentials = credentials(&args, &env).await?;
            println!("{}", serde_json::to_string(&credentials)?);
        }
        AwsCommand::Env(args) => {
            let c = credentials(&args, &env).await?;
            println!("export AWS_ACCESS_KEY_ID={}", c.access_key_id);
            println!(
                "export AWS_SECRET_ACCESS_KEY={}",
                c.secret_access_key.expose()
            );
            println!("export AWS_SESSION_TOKEN={}", c.session_token.expose());
            println!("export AWS_CREDENTIAL_EXPIRATION={}", c.expiration);
        }
        AwsCommand::Console { role, open } => {
            let home = Home::locate(&env)?;
            let broker = Broker::from_home(&home, &env)?;
            let console: AwsConsole = broker.post("/api/v1/aws/console", &request(&role)?).await?;
            println!("{}", console.url.expose());
            eprintln!(
                "(valid for 15 minutes; the console session lasts until {})",
                console.expires_at
            );
            if open {
                let browser = env
                    .get("BROWSER")
                    .cloned()
                    .unwrap_or_else(|| "xdg-open".into());
                let _ = std::process::Command::new(browser)
                    .arg(console.url.expose())
                    .spawn();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn request(args: &RoleArgs) -> anyhow::Result<AwsRequest> {
    let duration_secs = args
        .duration
        .as_deref()
        .map(|d| HumanDuration::parse(d).map(|d| d.0.as_secs()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    Ok(AwsRequest {
        role: args.role.clone(),
        duration_secs,
        reason: args.reason.clone(),
    })
}

async fn credentials(
    args: &RoleArgs,
    env: &HashMap<String, String>,
) -> anyhow::Result<AwsCredentials> {
    if !crate::config::valid_target_name(&args.role) {
        bail!("invalid role name {:?} (see `pam ls aws`)", args.role);
    }
    let home = Home::locate(env)?;
    let session = home.saved().session_id.unwrap_or_default();
    let cache = cache_path(&home, &args.role);
    if !args.no_cache
        && args.duration.is_none()
        && let Some(cached) = read_cache(&cache, &session)
    {
        return Ok(cached);
    }
    let broker = Broker::from_home(&home, env)?;
    let credentials: AwsCredentials = broker
        .post("/api/v1/aws/credentials", &request(args)?)
        .await?;
    let entry = serde_json::json!({"session_id": session, "credentials": credentials});
    crate::keys::create_private_dir(cache.parent().unwrap_or(&home.dir))?;
    crate::keys::write_private_file(&cache, entry.to_string().as_bytes())?;
    Ok(credentials)
}

fn cache_path(home: &Home, role: &str) -> PathBuf {
    home.dir.join("aws").join(format!("{role}.json"))
}

/// Cached credentials of this broker session that stay fresh for more
/// than five minutes.
fn read_cache(path: &PathBuf, session: &str) -> Option<AwsCredentials> {
    let text = std::fs::read_to_string(path).ok()?;
    let entry: serde_json::Value = serde_json::from_str(&text).ok()?;
    if entry["session_id"].as_str()? != session {
        return None;
    }
    let credentials: AwsCredentials = serde_json::from_value(entry["credentials"].clone()).ok()?;
    let expires = time::OffsetDateTime::parse(
        &credentials.expiration,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    let left = expires.unix_timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
    (left > REFRESH_BEFORE_SECS).then_some(credentials)
}

/// `pam config aws`: `~/.aws/config` profiles that use `credential_process`.
pub async fn config(env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let home = Home::locate(env)?;
    let broker = Broker::from_home(&home, env)?;
    let targets: Vec<TargetInfo> = broker.get("/api/v1/targets?kind=aws").await?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pam".into());
    let region = env
        .get("AWS_REGION")
        .or_else(|| env.get("AWS_DEFAULT_REGION"));
    println!("# pam: AWS profiles through the broker {}", broker.url);
    println!("# Add to ~/.aws/config, then: aws --profile pam-ROLE sts get-caller-identity");
    if targets.is_empty() {
        println!("# (no AWS roles are available to you)");
    }
    for target in targets {
        println!();
        if target.requires.iter().any(|r| r == "reason") {
            println!(
                "# {} needs a reason: set PAM_REASON before using this profile",
                target.name
            );
        }
        println!("[profile pam-{}]", target.name);
        println!("credential_process = {exe} aws creds {}", target.name);
        if let Some(region) = region {
            println!("region = {region}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn clear_cache(home: &Home) {
    let _ = std::fs::remove_dir_all(home.dir.join("aws"));
}
