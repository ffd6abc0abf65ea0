//! `pam login`, `pam logout`, `pam status`.
//!
//! Browser login works the way `tsh login` does (RFC 8252): the CLI listens
//! on a random loopback port, opens the broker's start URL, and the broker
//! sends the browser back to that port with a one-time code, which the CLI
//! redeems with its own PKCE verifier and a proof that it holds the key to
//! be certified.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::broker::{Broker, error_message};
use super::home::Home;
use crate::api::{
    BreakglassLoginRequest, DevicePollRequest, DeviceStartResponse, ExchangeRequest, LoginResponse,
    PollPending, Sensitive, WhoAmI,
};
use crate::identity::{cert, oidc};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The broker's URL (remembered after the first login; or `PAM_BROKER`).
    #[arg(long)]
    broker: Option<String>,
    /// Device authorization grant: for machines without a browser.
    #[arg(long, conflicts_with = "break_glass")]
    device: bool,
    /// Log in with a local emergency account (password + TOTP).
    #[arg(long, value_name = "USER")]
    break_glass: Option<String>,
    /// Suggest this account to the IdP.
    #[arg(long)]
    login_hint: Option<String>,
    /// Print the URL but do not try to open a browser.
    #[arg(long)]
    no_browser: bool,
    /// Give up waiting for the browser after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub async fn login(args: LoginArgs, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let home = Home::locate(&env)?;
    let url = args
        .broker
        .clone()
        .or_else(|| env.get("PAM_BROKER").cloned())
        .or_else(|| home.saved().broker)
        .context("which broker? pass --broker URL (it is remembered after the first login)")?;
    let broker = Broker::new(&url)?;
    home.save_broker(&broker.url)?;
    let key = crate::identity::new_client_key();
    let public_key = key.public_key().to_openssh()?;
    let response = if let Some(user) = &args.break_glass {
        breakglass_login(&broker, &key, &public_key, user, &env).await?
    } else if args.device {
        device_login(&broker, &key, &public_key).await?
    } else {
        browser_login(&broker, &key, &public_key, &args, &env).await?
    };
    home.save_login(&broker.url, &key, &response)?;
    eprintln!(
        "Logged in to {} as {}{}.",
        broker.url,
        response.user,
        if response.groups.is_empty() {
            String::new()
        } else {
            format!(" (groups: {})", response.groups.join(", "))
        }
    );
    eprintln!(
        "  session valid until {}; SSH certificate in {} (valid until {})",
        response.expires_at,
        home.cert_path().display(),
        response.certificate_expires_at
    );
    Ok(ExitCode::SUCCESS)
}

async fn browser_login(
    broker: &Broker,
    key: &russh::keys::ssh_key::PrivateKey,
    public_key: &str,
    args: &LoginArgs,
    env: &HashMap<String, String>,
) -> anyhow::Result<LoginResponse> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("opening a loopback port for the login callback")?;
    let port = listener.local_addr()?.port();
    let pkce = oidc::pkce();
    let mut start = url::Url::parse(&broker.endpoint("/auth/login"))?;
    start
        .query_pairs_mut()
        .append_pair("cli_port", &port.to_string())
        .append_pair("cli_challenge", &pkce.challenge);
    if let Some(hint) = &args.login_hint {
        start.query_pairs_mut().append_pair("login_hint", hint);
    }
    eprintln!("Opening your browser to log in. If it does not open, visit:\n\n  {start}\n");
    if !args.no_browser {
        open_browser(start.as_str(), env);
    }
    let callback = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        wait_for_callback(&listener),
    )
    .await
    .context("timed out waiting for the browser login")??;
    let code = match callback {
        Ok(code) => code,
        Err(message) => bail!("login failed: {message}"),
    };
    let proof = cert::sign_proof(key, &code)?;
    broker
        .post(
            "/api/v1/auth/exchange",
            &ExchangeRequest {
                code: Sensitive::new(code),
                code_verifier: Sensitive::new(pkce.verifier),
                public_key: public_key.to_owned(),
                proof,
            },
        )
        .await
}

/// `$BROWSER` (colon-separated list, as xdg does), else xdg-open.
fn open_browser(url: &str, env: &HashMap<String, String>) {
    let candidates: Vec<String> = match env.get("BROWSER").filter(|b| !b.is_empty()) {
        Some(list) => list.split(':').map(str::to_owned).collect(),
        None => vec!["xdg-open".into()],
    };
    for candidate in candidates {
        let mut parts = candidate.split_whitespace();
        let Some(program) = parts.next() else {
            continue;
        };
        let spawned = std::process::Command::new(program)
            .args(parts)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if spawned.is_ok() {
            return;
        }
    }
}

/// Serves the loopback listener until the broker's redirect arrives.
/// Returns the one-time code, or the error the broker reported.
async fn wait_for_callback(listener: &TcpListener) -> anyhow::Result<Result<String, String>> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut buffer = vec![0u8; 8192];
        let mut read = 0;
        // Read the request head (a GET has no body).
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer[read..]))
                .await
                .unwrap_or(Ok(0))?;
            if n == 0 {
                break;
            }
            read += n;
            if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") || read == buffer.len() {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buffer[..read]);
        let target = head
            .lines()
            .next()
            .and_then(|line| line.split_whitespace().nth(1))
            .unwrap_or("/");
        let url = url::Url::parse(&format!("http://127.0.0.1{target}"))?;
        if url.path() != "/callback" {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let (result, page) = match (query.get("code"), query.get("error")) {
            (Some(code), _) => (
                Ok(code.clone()),
                "<h1>Logged in</h1><p>You can close this window and return to the terminal.</p>",
            ),
            (None, error) => (
                Err(query
                    .get("error_description")
                    .or(error)
                    .cloned()
                    .unwrap_or_else(|| "no code in the callback".into())),
                "<h1>Login failed</h1><p>See the terminal for details.</p>",
            ),
        };
        let body = format!("<!doctype html><meta charset=utf-8><title>pam login</title>{page}");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        return Ok(result);
    }
}

async fn device_login(
    broker: &Broker,
    key: &russh::keys::ssh_key::PrivateKey,
    public_key: &str,
) -> anyhow::Result<LoginResponse> {
    let start: DeviceStartResponse = broker
        .post("/api/v1/auth/device", &serde_json::json!({}))
        .await?;
    eprintln!(
        "To log in, open this URL on any device:\n\n  {}\n\nand enter the code:  {}\n",
        start.verification_uri, start.user_code
    );
    if let Some(complete) = &start.verification_uri_complete {
        eprintln!("(or open {complete} which has the code filled in)\n");
    }
    eprintln!("Waiting for approval...");
    let proof = cert::sign_proof(key, &start.request_id)?;
    let mut interval = start.interval.max(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(start.expires_in);
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if tokio::time::Instant::now() > deadline {
            bail!("the device login expired before it was approved");
        }
        let raw = broker
            .post_raw(
                "/api/v1/auth/device/poll",
                &DevicePollRequest {
                    request_id: start.request_id.clone(),
                    public_key: public_key.to_owned(),
                    proof: proof.clone(),
                },
            )
            .await?;
        if raw.status.is_success() {
            return serde_json::from_slice(&raw.body).context("unexpected answer from the broker");
        }
        match serde_json::from_slice::<PollPending>(&raw.body) {
            Ok(pending) if pending.error == "authorization_pending" => {
                interval = pending.interval.max(1)
            }
            Ok(pending) if pending.error == "slow_down" => {
                interval = pending.interval.max(interval + 5)
            }
            _ => bail!("login failed: {}", error_message(raw.status, &raw.body)),
        }
    }
}

async fn breakglass_login(
    broker: &Broker,
    key: &russh::keys::ssh_key::PrivateKey,
    public_key: &str,
    user: &str,
    env: &HashMap<String, String>,
) -> anyhow::Result<LoginResponse> {
    eprintln!("BREAK-GLASS login as {user}: this use is recorded and reported.");
    let password = secret_input("Password: ", "PAM_BREAKGLASS_PASSWORD", env)?;
    let totp = secret_input("TOTP code: ", "PAM_BREAKGLASS_TOTP", env)?;
    let proof = cert::sign_proof(key, &format!("breakglass:{user}"))?;
    broker
        .post(
            "/api/v1/auth/breakglass",
            &BreakglassLoginRequest {
                username: user.to_owned(),
                password: Sensitive::new(password),
                totp: Sensitive::new(totp),
                public_key: public_key.to_owned(),
                proof,
            },
        )
        .await
}

/// Reads a secret from the terminal without echo, or from `var` when set
/// (automation), or one line of stdin.
fn secret_input(prompt: &str, var: &str, env: &HashMap<String, String>) -> anyhow::Result<String> {
    if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
        return Ok(value.clone());
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).context("reading from the terminal");
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn logout(env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let home = Home::locate(&env)?;
    let result = match Broker::from_home(&home, &env) {
        Ok(broker) => {
            broker
                .post_empty("/api/v1/auth/logout", &serde_json::json!({}))
                .await
        }
        Err(e) => Err(e),
    };
    home.clear_login()?;
    super::aws::clear_cache(&home);
    match result {
        Ok(()) => {
            eprintln!("Logged out; the session is revoked and the local key removed.");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "pam: warning: the local key and token were removed, but the broker could not revoke the session: {e:#}"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn status(args: StatusArgs, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let home = Home::locate(&env)?;
    let saved = home.saved();
    let Some(user) = saved.user.clone() else {
        bail!("not logged in; run `pam login`");
    };
    let certificate = home.certificate();
    let cert_expires = certificate
        .as_ref()
        .map(|c| crate::domain::audit::format_us(c.valid_before() as i64 * 1_000_000));
    let principals = certificate
        .as_ref()
        .map(|c| c.valid_principals().to_vec())
        .unwrap_or_default();
    let live: Result<WhoAmI, String> = match Broker::from_home(&home, &env) {
        Ok(broker) => broker
            .get("/api/v1/auth/whoami")
            .await
            .map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    };
    if args.json {
        let out = serde_json::json!({
            "broker": saved.broker,
            "user": user,
            "groups": saved.groups,
            "mfa": saved.mfa,
            "method": saved.method,
            "session_id": saved.session_id,
            "token_expires_at": saved.expires_at,
            "certificate": home.cert_path(),
            "certificate_expires_at": cert_expires,
            "certificate_principals": principals,
            "valid": live.is_ok(),
            "error": live.as_ref().err(),
        });
        println!("{out}");
    } else {
        println!("Broker:        {}", saved.broker.as_deref().unwrap_or("-"));
        println!("User:          {user}");
        println!(
            "Groups:        {}",
            if saved.groups.is_empty() {
                "-".into()
            } else {
                saved.groups.join(", ")
            }
        );
        println!("MFA:           {}", if saved.mfa { "yes" } else { "no" });
        println!("Login method:  {}", saved.method.as_deref().unwrap_or("-"));
        println!(
            "Session:       {}",
            saved.session_id.as_deref().unwrap_or("-")
        );
        println!(
            "Token expires: {}",
            saved.expires_at.as_deref().unwrap_or("-")
        );
        println!(
            "Certificate:   {} (expires {}; principals {})",
            home.cert_path().display(),
            cert_expires.as_deref().unwrap_or("-"),
            principals.join(", ")
        );
        match &live {
            Ok(_) => println!("Status:        valid"),
            Err(e) => println!("Status:        NOT valid: {e}"),
        }
    }
    Ok(if live.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
