//! `pam ssh`, `pam exec`, `pam config ssh` and `pam ssh-proxy`: OpenSSH
//! through the broker with the certificate from `pam login`.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::AsyncWriteExt;

use super::home::Home;

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The target (see `pam ls ssh`).
    target: String,
    /// Log in as this account on the target (default: the target's login).
    #[arg(short = 'l', long)]
    login: Option<String>,
    /// Why you need access (policy may require it; it is audited).
    #[arg(long, env = "PAM_REASON")]
    reason: Option<String>,
    /// Command to run instead of a shell (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The ECS container target (see `pam ls ecs`).
    target: String,
    /// Why you need access (policy may require it; it is audited).
    #[arg(long, env = "PAM_REASON")]
    reason: Option<String>,
    /// Ask for a terminal even for a command (for interactive programs such
    /// as a REPL); a shell always gets one when stdin is a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Command to run instead of the target's shell (after `--`); the
    /// container runs it with `sh -c`.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The host OpenSSH asked for (`TARGET.pam`).
    host: String,
}

/// The known_hosts name every `*.pam` host shares (HostKeyAlias).
pub const HOST_ALIAS: &str = "pam-broker";

pub fn ssh(args: SshArgs, env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let user = match &args.login {
        Some(login) => format!("{login}@{}", args.target),
        None => args.target.clone(),
    };
    exec_ssh(&user, args.reason.as_deref(), &[], &args.command, env)
}

/// `pam exec`: the SSH room runs ECS targets' shells and commands over
/// ECS Exec, so this is `pam ssh` with a terminal when one is wanted.
pub fn exec(args: ExecArgs, env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let tty = if args.tty { &["-t"][..] } else { &[] };
    exec_ssh(
        &args.target,
        args.reason.as_deref(),
        tty,
        &args.command,
        env,
    )
}

/// Replaces this process with `ssh` to the broker as `user`.
fn exec_ssh(
    user: &str,
    reason: Option<&str>,
    options: &[&str],
    command: &[String],
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let home = Home::locate(env)?;
    let saved = home.saved();
    let addr = saved
        .ssh_addr
        .clone()
        .context("not logged in; run `pam login`")?;
    check_certificate(&home)?;
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("malformed broker SSH address {addr:?}"))?;
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(identity_options(&home))
        .args(options)
        .arg("-p")
        .arg(port)
        .arg("-l")
        .arg(user);
    if let Some(reason) = reason {
        // Quoted: OpenSSH splits SetEnv values on spaces otherwise.
        let reason = reason.replace(['"', '\\', '\n', '\r'], " ");
        cmd.arg("-o").arg(format!("SetEnv=PAM_REASON=\"{reason}\""));
    }
    cmd.arg(host.trim_matches(['[', ']']));
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    use std::os::unix::process::CommandExt;
    let error = cmd.exec();
    Err(anyhow::anyhow!(
        "running ssh: {error} (is the OpenSSH client installed?)"
    ))
}

fn identity_options(home: &Home) -> Vec<String> {
    vec![
        "-i".into(),
        home.key_path().display().to_string(),
        "-o".into(),
        format!("CertificateFile={}", home.cert_path().display()),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", home.known_hosts_path().display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
    ]
}

fn check_certificate(home: &Home) -> anyhow::Result<()> {
    let Some(cert) = home.certificate() else {
        bail!("no certificate in {}; run `pam login`", home.dir.display());
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    if cert.valid_before() <= now {
        bail!("your certificate has expired; run `pam login`");
    }
    Ok(())
}

/// `pam config ssh`: an ssh_config block for `ssh [LOGIN@]TARGET.pam`.
pub fn config(env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let home = Home::locate(env)?;
    let saved = home.saved();
    let broker = saved
        .broker
        .clone()
        .context("not logged in; run `pam login`")?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pam".into());
    println!("# pam: SSH through the broker {broker}");
    println!(
        "# Add to ~/.ssh/config (or `pam config ssh >> ~/.ssh/config`), then: ssh TARGET.pam, ssh LOGIN@TARGET.pam, scp FILE TARGET.pam:"
    );
    println!("Host *.pam");
    println!("  User -");
    println!("  Port 22");
    println!("  ProxyCommand {exe} ssh-proxy %h");
    println!("  HostKeyAlias {HOST_ALIAS}");
    println!("  IdentityFile {}", home.key_path().display());
    println!("  CertificateFile {}", home.cert_path().display());
    println!("  IdentitiesOnly yes");
    println!("  UserKnownHostsFile {}", home.known_hosts_path().display());
    println!("  StrictHostKeyChecking yes");
    println!("  SendEnv PAM_REASON");
    Ok(ExitCode::SUCCESS)
}

/// `pam ssh-proxy HOST`: OpenSSH's ProxyCommand. Connects to the broker,
/// announces the target, then relays stdin/stdout.
pub async fn proxy(args: ProxyArgs, env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let home = Home::locate(env)?;
    let addr = home
        .saved()
        .ssh_addr
        .context("not logged in; run `pam login`")?;
    let target = args.host.strip_suffix(".pam").unwrap_or(&args.host);
    if !crate::config::valid_target_name(target) {
        bail!("{target:?} is not a target name");
    }
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to the broker at {addr}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(format!("PAM-TARGET {target}\r\n").as_bytes())
        .await?;
    let (mut read, mut write) = stream.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let up = async {
        let _ = tokio::io::copy(&mut stdin, &mut write).await;
        let _ = write.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut read, &mut stdout).await;
        let _ = stdout.flush().await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
    }
    Ok(ExitCode::SUCCESS)
}
