//! `pam db connect TARGET`: a local PostgreSQL listener that tunnels to the
//! broker's PostgreSQL listener over TLS and logs in with the saved broker
//! token, so local clients connect without a password
//! (`psql "host=127.0.0.1 port=N ... sslmode=disable"`). The local side
//! only listens on loopback.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::home::Home;
use crate::config::TlsMode;
use crate::pg::protocol::{self, Startup};
use crate::pg::{Stream, tls, upstream};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Open a local listener that tunnels to TARGET through the broker; prints the psql command.
    Connect(ConnectArgs),
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The PostgreSQL target (see `pam ls db`).
    target: String,
    /// Local port to listen on (default: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Another database on the target's server (TARGET/DBNAME).
    #[arg(long)]
    dbname: Option<String>,
    /// A reason for the access (an incident or change number); policy may require one.
    #[arg(long, env = "PAM_REASON")]
    reason: Option<String>,
    /// CA bundle for the broker's PostgreSQL certificate (default: the public web PKI;
    /// a broker on loopback is not verified).
    #[arg(long, env = "PAM_DB_CA")]
    ca_file: Option<PathBuf>,
}

/// Everything a tunnelled connection needs.
struct Tunnel {
    broker: String,
    tls: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    token: String,
    user: String,
    database: String,
    reason: Option<String>,
}

pub async fn run(command: DbCommand, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let DbCommand::Connect(args) = command;
    let home = Home::locate(&env)?;
    let saved = home.saved();
    let token = home.token().context("not logged in; run `pam login`")?;
    let broker = env
        .get("PAM_POSTGRES_ADDR")
        .cloned()
        .or(saved.postgres_addr)
        .context("the saved login has no PostgreSQL address; run `pam login` again")?;
    let user = saved.user.context("not logged in; run `pam login`")?;
    let host = tls::host_of(&broker).to_owned();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mode = if args.ca_file.is_none() && loopback {
        TlsMode::Require
    } else {
        TlsMode::VerifyFull
    };
    let tls = tls::client_config_with(mode, args.ca_file.as_deref())?
        .context("TLS configuration for the broker")?;
    let database = match &args.dbname {
        Some(db) => format!("{}/{db}", args.target),
        None => args.target.clone(),
    };
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();
    let tunnel = Arc::new(Tunnel {
        server_name: tls::server_name(&broker)?,
        broker: broker.clone(),
        tls,
        token,
        user: user.clone(),
        database: database.clone(),
        reason: args.reason.clone(),
    });
    println!("psql \"host=127.0.0.1 port={port} user={user} dbname={database} sslmode=disable\"");
    use std::io::Write;
    std::io::stdout().flush()?;
    eprintln!(
        "Tunnel to {} through the broker at {broker} on 127.0.0.1:{port}; no password needed. Ctrl-C to stop.",
        args.target
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => {
                let (local, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        eprintln!("pam: accepting a local connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let tunnel = tunnel.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(local, &tunnel).await {
                        eprintln!("pam: tunnel connection: {e:#}");
                    }
                });
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(mut local: TcpStream, tunnel: &Tunnel) -> anyhow::Result<()> {
    let _ = local.set_nodelay(true);
    let params = loop {
        let mut head = [0u8; 4];
        local.read_exact(&mut head).await?;
        let len = i32::from_be_bytes(head);
        if len < 8 || len as usize > protocol::MAX_STARTUP {
            bail!("invalid startup packet from the local client");
        }
        let mut packet = vec![0u8; len as usize];
        packet[..4].copy_from_slice(&head);
        local.read_exact(&mut packet[4..]).await?;
        match protocol::parse_startup(&packet)? {
            Some((Startup::Ssl | Startup::GssEnc, _)) => local.write_all(b"N").await?,
            Some((Startup::Cancel { pid, key }, _)) => {
                let mut broker = connect(tunnel).await?;
                broker
                    .write_all(&protocol::cancel_request(pid, &key))
                    .await?;
                broker.flush().await?;
                return Ok(());
            }
            Some((Startup::Startup { params, .. }, _)) => break params,
            None => bail!("incomplete startup packet"),
        }
    };
    let mut broker = connect(tunnel).await?;
    let mut startup: Vec<(&str, &str)> =
        vec![("user", &tunnel.user), ("database", &tunnel.database)];
    for (key, value) in &params {
        if key != "user" && key != "database" {
            startup.push((key, value));
        }
    }
    if let Some(reason) = &tunnel.reason {
        startup.push(("pam.reason", reason));
    }
    broker
        .write_all(&protocol::startup_message(&startup))
        .await?;
    broker.flush().await?;
    // Answer the broker's password request with the token; pass on
    // anything else (an error ends the connection).
    loop {
        let (tag, body) = upstream::read_message(&mut broker, 1 << 20).await?;
        if tag == b'R' && body.get(..4) == Some(&3i32.to_be_bytes()[..]) {
            broker
                .write_all(&protocol::password_message(tunnel.token.as_bytes()))
                .await?;
            broker.flush().await?;
            break;
        }
        let mut message = vec![tag];
        message.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        message.extend_from_slice(&body);
        local.write_all(&message).await?;
        if tag == b'E' {
            return Ok(());
        }
    }
    tokio::io::copy_bidirectional(&mut local, &mut broker).await?;
    Ok(())
}

async fn connect(tunnel: &Tunnel) -> anyhow::Result<Stream> {
    let work = async {
        let mut tcp = TcpStream::connect(&tunnel.broker)
            .await
            .with_context(|| format!("connecting to the broker at {}", tunnel.broker))?;
        let _ = tcp.set_nodelay(true);
        tcp.write_all(&protocol::ssl_request()).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            bail!("the broker does not offer TLS on {}", tunnel.broker);
        }
        let tls = tokio_rustls::TlsConnector::from(tunnel.tls.clone())
            .connect(tunnel.server_name.clone(), tcp)
            .await
            .context("TLS with the broker")?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
    };
    tokio::time::timeout(Duration::from_secs(15), work)
        .await
        .context("the broker did not answer within 15s")?
}
