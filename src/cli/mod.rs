//! The `pam` command line: argument parsing, logging set-up and dispatch.
//! `pam serve` runs the broker ([`crate::app::run`]); every other command
//! is a client or an offline tool, one file per command group.

mod admin;
mod audit;
mod aws;
mod broker;
mod db;
mod home;
mod login;
mod policy;
mod search;
mod serve;
mod ssh;
mod targets;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "pam",
    version,
    about = "Privileged access broker: SSO login, short-lived credentials, brokered and recorded sessions",
    propagate_version = true
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PAM_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Log filter (e.g. `info`, `pam=debug`).
    #[arg(long, global = true, env = "PAM_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker: HTTP API and web UI, SSH and PostgreSQL listeners.
    Serve(serve::ServeArgs),
    /// Apply the database migrations (also done on every start).
    Migrate(StoreArgs),
    /// Show the broker's SSH certificate authorities.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Read and verify the audit trail.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Log in to the broker with the company SSO (or a break-glass account).
    Login(login::LoginArgs),
    /// Revoke the broker session and remove the local key and certificate.
    Logout,
    /// Who am I, groups, MFA, token and certificate expiry.
    Status(login::StatusArgs),
    /// Evaluate and validate Cedar policies.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// List the targets you may use.
    Ls(policy::LsArgs),
    /// Target administration through the broker (`pam targets check`).
    Targets {
        #[command(subcommand)]
        command: targets::TargetsCommand,
    },
    /// Short-lived AWS credentials (CLI/SDK credential_process, shell, console).
    Aws {
        #[command(subcommand)]
        command: aws::AwsCommand,
    },
    /// SSH to a target through the broker with your certificate.
    Ssh(ssh::SshArgs),
    /// A shell or command in an ECS container through the broker (ECS Exec).
    Exec(ssh::ExecArgs),
    /// Print client configuration (ssh_config blocks, AWS profiles).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// OpenSSH ProxyCommand for `ssh TARGET.pam` (see `pam config ssh`).
    #[command(hide = true)]
    SshProxy(ssh::ProxyArgs),
    /// PostgreSQL through the broker.
    Db {
        #[command(subcommand)]
        command: db::DbCommand,
    },
    /// Broker administration (offline tools that use the broker's store).
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// An ssh_config block so plain `ssh TARGET.pam` works.
    Ssh,
    /// ~/.aws/config profiles that use `pam aws creds` as credential_process.
    Aws,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print a CA public key in OpenSSH format.
    Show {
        /// `user`: the CA users' certificates are signed by (trusted by the broker's SSH listener);
        /// `target`: the CA targets trust with `TrustedUserCAKeys`.
        which: CaKind,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CaKind {
    User,
    Target,
}

/// Where the offline tools find the broker's store and keys.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The broker's config file.
    #[arg(long, env = "PAM_CONFIG", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory of a `pam serve --dev` broker.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// Whether the caller named a store to read directly.
    fn direct(&self) -> bool {
        self.config.is_some() || self.data_dir.is_some()
    }

    fn load(&self, env: &HashMap<String, String>) -> anyhow::Result<Config> {
        let config = match (&self.config, &self.data_dir) {
            (Some(path), _) => Config::load(path, env)?,
            (None, Some(dir)) => Config::dev(dir, env)?,
            (None, None) => Config::dev(std::path::Path::new("./pam-data"), env)?,
        };
        Ok(config)
    }
}

/// Parses the command line, runs the command, and turns any error into one
/// line on stderr and a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let serving = matches!(cli.command, Command::Serve(_));
    init_logging(cli.log_format, cli.log.as_deref(), serving);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pam: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, env)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pam: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve::run(args, env).await,
        Command::Migrate(store) => {
            let config = store.load(&env)?;
            crate::keys::create_private_dir(&config.server.data_dir)?;
            let url = config.database_url();
            if let Some(path) = crate::app::sqlite_path(&url) {
                crate::app::create_private_file(&path)?;
            }
            let db = crate::store::Db::connect(&url, std::time::Duration::from_secs(10))
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "connecting to database {}: {e}",
                        crate::store::redact_url(&url)
                    )
                })?;
            let applied = db.migrate().await?;
            println!(
                "{} migration(s) applied to {}",
                applied,
                crate::store::redact_url(&url)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca {
            command: CaCommand::Show { which, store },
        } => {
            let config = store.load(&env)?;
            let keys = crate::keys::KeyMaterial::load(&config.keys_dir())?;
            let line = match which {
                CaKind::User => crate::keys::openssh_public(&keys.ssh_user_ca, "pam-user-ca"),
                CaKind::Target => crate::keys::openssh_public(&keys.ssh_target_ca, "pam-target-ca"),
            };
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => audit::run(command, env).await,
        Command::Login(args) => login::login(args, env).await,
        Command::Logout => login::logout(env).await,
        Command::Status(args) => login::status(args, env).await,
        Command::Admin { command } => admin::run(command, env).await,
        Command::Db { command } => db::run(command, env).await,
        Command::Policy { command } => policy::run(command, &env),
        Command::Ls(args) => policy::ls(args, env).await,
        Command::Targets { command } => targets::run(command, env).await,
        Command::Ssh(args) => ssh::ssh(args, &env),
        Command::Exec(args) => ssh::exec(args, &env),
        Command::Config {
            command: ConfigCommand::Ssh,
        } => ssh::config(&env),
        Command::SshProxy(args) => ssh::proxy(args, &env).await,
        Command::Aws { command } => aws::run(command, env).await,
        Command::Config {
            command: ConfigCommand::Aws,
        } => aws::config(&env).await,
    }
}

fn init_logging(format: LogFormat, filter: Option<&str>, serving: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if serving { "info" } else { "warn" };
    let filter =
        EnvFilter::try_new(filter.unwrap_or(default)).unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
