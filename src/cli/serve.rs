//! `pam serve`: loads the configuration, installs signal handlers and runs
//! the broker until SIGTERM or SIGINT.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file (TOML); every key can be overridden by `PAM_SECTION__KEY`.
    #[arg(long, env = "PAM_CONFIG", required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Development mode: no config file, SQLite and keys under --data-dir,
    /// loopback listeners, a break-glass admin printed once.
    #[arg(long, conflicts_with = "config")]
    dev: bool,
    /// Data directory for --dev.
    #[arg(long, default_value = "./pam-data", requires = "dev")]
    data_dir: PathBuf,
}

pub async fn run(args: ServeArgs, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Config::load(path, &env)?,
        None => Config::dev(&args.data_dir, &env)?,
    };
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let dev = config.dev;
    let broker = tokio::spawn(crate::app::run(
        config,
        env,
        shutdown.clone(),
        Some(ready_tx),
    ));
    if let Ok(running) = ready_rx.await
        && dev
    {
        println!("pam broker (dev mode) is running");
        println!("  web UI and API:  http://{}/ui/", running.http);
        println!(
            "  SSH:             ssh -p {} TARGET@{}",
            running.ssh.port(),
            running.ssh.ip()
        );
        println!(
            "  PostgreSQL:      psql \"host={} port={} dbname=TARGET\"",
            running.postgres.ip(),
            running.postgres.port()
        );
        if let Some(admin) = &running.dev_breakglass {
            use secrecy::ExposeSecret;
            println!();
            println!("  break-glass admin (shown once; stored hashed):");
            println!("    user:        {}", admin.username);
            println!("    password:    {}", admin.password.expose_secret());
            println!("    TOTP secret: {}", admin.totp_secret.expose_secret());
            println!(
                "    log in with: pam login --broker {} --break-glass {}",
                running.public_url, admin.username
            );
            println!();
        }
        println!("  stop with Ctrl-C");
    }
    broker.await.context("broker task")??;
    Ok(ExitCode::SUCCESS)
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    });
    Ok(())
}
