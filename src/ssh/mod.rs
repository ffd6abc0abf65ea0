//! The SSH room: plain OpenSSH clients connect here with a certificate from
//! `pam login`; the SSH username selects the target (`TARGET` or
//! `LOGIN@TARGET`); the broker checks policy, opens its own connection to
//! the target with a credential the user never sees, and relays, records
//! and audits every channel.
//!
//! One entry point, [`serve`]. One task per connection; the russh handler
//! (`handler.rs`) stays thin, checks at every channel open that the broker
//! session is still live, and hands each session channel to its own relay
//! task (`channel.rs`, `ecs_channel.rs`) and each `direct-tcpip` forward to
//! `forward.rs`; each is a session of its own, with one lifecycle.
//!
//! Before authentication a connection holds one of its source's slots
//! (`server.max_unauthenticated_per_source`, [`crate::edge`]) and has
//! `server.auth_timeout` to authenticate, from accept on: a client that
//! sends only a banner, or never finishes key exchange, is cut off.

mod channel;
mod command_log;
mod commands;
mod ecs_channel;
mod forward;
mod handler;
mod preamble;
mod relay;
mod sftp;
pub mod upstream;
pub mod username;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{HashAlg, PrivateKey};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audit::Audit;
use crate::config::SshConfig;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::edge::{Edge, TooMany, Unauthenticated};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::policy::Gate;
use crate::sessions::Sessions;

/// What the SSH room needs from the rest of the broker.
#[derive(Clone)]
pub struct Deps {
    pub identity: Identity,
    pub gate: Gate,
    pub sessions: Sessions,
    pub audit: Audit,
    /// Slots and deadlines of unauthenticated connections, failure events.
    pub edge: Edge,
    pub metrics: Arc<Metrics>,
    pub targets: crate::discovery::Targets,
    /// `[ssh]`: the algorithms offered.
    pub algorithms: SshConfig,
    pub host_key: PrivateKey,
    pub user_ca: PrivateKey,
    pub target_ca: PrivateKey,
    /// The broker's AWS access (ECS targets).
    pub aws: crate::aws::Aws,
    /// Record keystrokes of interactive shells.
    pub record_input: bool,
    pub target_cert_ttl: Duration,
    pub max_connections: usize,
    /// Environment variables passed on to targets (besides PAM_REASON, which
    /// the broker reads itself).
    pub env_allow: Vec<String>,
}

/// Serves SSH on `listener` until `shutdown`, then lets live sessions end.
pub async fn serve(
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(server_config(&deps)?);
    let deps = Arc::new(Shared {
        user_ca_fingerprint: deps.user_ca.public_key().fingerprint(HashAlg::Sha256),
        deps,
    });
    let connections = TaskTracker::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(deps.deps.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an SSH connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many SSH connections; refusing");
            Metrics::inc(&deps.deps.metrics.connection_errors);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let deps = deps.clone();
        let span = tracing::info_span!("ssh", %peer);
        let slot = match deps.deps.edge.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(too_many) => {
                connections.spawn(
                    async move {
                        let _permit = permit;
                        refuse_unauthenticated(stream, peer, &deps, too_many).await;
                    }
                    .instrument(span),
                );
                continue;
            }
        };
        let config = config.clone();
        let shutdown = shutdown.clone();
        connections.spawn(
            async move {
                let _permit = permit;
                if let Err(e) = connection(stream, peer, config, deps, shutdown, slot).await {
                    tracing::debug!(error = %e, "ssh connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    // New connections are refused at once, not left in the backlog.
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Shared per-room state.
pub(crate) struct Shared {
    pub deps: Deps,
    pub user_ca_fingerprint: russh::keys::ssh_key::Fingerprint,
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    slot: Unauthenticated,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + shared.deps.edge.auth_timeout();
    // A second handle on the socket: cutting it ends russh's session task
    // whatever state the handshake is in.
    let socket = stream.into_std()?;
    let cut = socket.try_clone()?;
    let stream = tokio::net::TcpStream::from_std(socket)?;
    let watch = handler::Watch::new(shared.clone(), peer);
    // `pam ssh-proxy` may announce the target before the SSH banner.
    let (stream, announced) = match tokio::time::timeout_at(deadline, preamble::read(stream)).await
    {
        Ok(read) => read?,
        Err(_) => return timed_out(&shared, &cut, watch).await,
    };
    let handler = watch.connection(announced, slot);
    let session =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler))
            .await
        {
            Ok(session) => session?,
            Err(_) => return timed_out(&shared, &cut, watch).await,
        };
    let handle = session.handle();
    let mut authenticated = watch.authenticated();
    let expired = async move {
        tokio::time::sleep_until(deadline).await;
        if *authenticated.borrow_and_update() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(session);
    tokio::select! {
        result = &mut session => {
            if let Err(e) = result {
                tracing::debug!(error = ?e, "ssh session error");
            }
        }
        _ = expired => {
            tracing::info!("no authentication within server.auth_timeout; disconnecting");
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "authentication timed out (server.auth_timeout)".into(),
                    "en".into(),
                )
                .await;
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut session).await;
            let _ = cut.shutdown(std::net::Shutdown::Both);
            let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
            return timed_out(&shared, &cut, watch).await;
        }
        _ = shutdown.cancelled() => {
            // Live channels get server.shutdown_grace and end through
            // Sessions (they tell the user why); then hang up.
            tokio::select! {
                _ = &mut session => {}
                _ = shared.deps.sessions.drained() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "the broker is shutting down".into(), "en".into())
                .await;
        }
    }
    watch.finish().await;
    Ok(())
}

/// Ends a connection that did not authenticate within `server.auth_timeout`
/// and records it.
async fn timed_out(
    shared: &Shared,
    cut: &std::net::TcpStream,
    watch: handler::Watch,
) -> anyhow::Result<()> {
    Metrics::inc(&shared.deps.metrics.auth_timeouts);
    let _ = cut.shutdown(std::net::Shutdown::Both);
    watch.timed_out();
    watch.finish().await;
    Ok(())
}

/// Tells a client over its source's unauthenticated-connection cap why it
/// is turned away (an SSH disconnect message, which OpenSSH prints), and
/// records it like a failed login.
async fn refuse_unauthenticated(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    too_many: TooMany,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reason = too_many.to_string();
    tracing::info!(%peer, "{reason}; refusing");
    let refusal = async {
        stream.write_all(&disconnect_before_kex(&reason)).await?;
        // Read what the client sends until it hangs up (bounded), so that
        // closing does not reset the connection before it read the message.
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            total += n;
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), refusal).await;
    shared
        .deps
        .edge
        .failure(
            AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
                .source_ip(Some(peer.ip()))
                .details(serde_json::json!({"method": "ssh", "reason": reason})),
            "ssh: connection refused (too many unauthenticated connections)",
        )
        .await;
}

/// The banner and an `SSH_MSG_DISCONNECT` (reason 12, too many
/// connections) in the clear, as allowed before the first key exchange.
fn disconnect_before_kex(description: &str) -> Vec<u8> {
    let mut payload = vec![1u8]; // SSH_MSG_DISCONNECT
    payload.extend_from_slice(&12u32.to_be_bytes());
    payload.extend_from_slice(&(description.len() as u32).to_be_bytes());
    payload.extend_from_slice(description.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag
    // packet_length + padding_length + payload + padding: a multiple of 8,
    // with at least 4 bytes of padding.
    let mut padding = 8 - (4 + 1 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut out = format!("{BANNER}\r\n").into_bytes();
    out.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// The identification string: no version (ssh-audit's advice; scanners
/// learn nothing from it).
pub const BANNER: &str = "SSH-2.0-pam";

/// The algorithms of `[ssh]`, checked by the config loader, as russh names.
pub fn preferred(algorithms: &SshConfig) -> anyhow::Result<russh::Preferred> {
    use std::borrow::Cow;
    fn each<T>(
        key: &str,
        names: &[String],
        parse: impl Fn(&str) -> Option<T>,
    ) -> anyhow::Result<Vec<T>> {
        names
            .iter()
            .map(|name| {
                parse(name).ok_or_else(|| anyhow::anyhow!("{key}: {name:?} is not supported"))
            })
            .collect()
    }
    let mut kex = each("ssh.kex", &algorithms.kex, |n| {
        russh::kex::Name::try_from(n).ok()
    })?;
    // RFC 8308 extensions and strict key exchange (the Terrapin
    // countermeasure) are markers, not choices.
    kex.extend([
        russh::kex::EXTENSION_SUPPORT_AS_SERVER,
        russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
    ]);
    let key = each(
        "ssh.host_key_algorithms",
        &algorithms.host_key_algorithms,
        |n| n.parse::<russh::keys::Algorithm>().ok(),
    )?;
    let cipher = each("ssh.ciphers", &algorithms.ciphers, |n| {
        russh::cipher::Name::try_from(n).ok()
    })?;
    let mac = each("ssh.macs", &algorithms.macs, |n| {
        russh::mac::Name::try_from(n).ok()
    })?;
    let compression = each("ssh.compression", &algorithms.compression, |n| {
        russh::compression::Name::try_from(n).ok()
    })?;
    Ok(russh::Preferred {
        kex: Cow::Owned(kex),
        key: Cow::Owned(key),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Owned(cipher),
        mac: Cow::Owned(mac),
        compression: Cow::Owned(compression),
    })
}

fn server_config(deps: &Deps) -> anyhow::Result<russh::server::Config> {
    let mut methods = russh::MethodSet::empty();
    methods.push(russh::MethodKind::PublicKey);
    Ok(russh::server::Config {
        server_id: russh::SshId::Standard(BANNER.into()),
        methods,
        // The broker delays refusals itself, and only real ones (a refused
        // certificate): OpenSSH queries the plain key before the
        // certificate on every login, and that is no failure (issue 19.16).
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        preferred: preferred(&deps.algorithms)?,
        keys: vec![deps.host_key.clone()],
        // Large windows and packets: russh's defaults (2 MiB, 32 KiB) cap
        // bulk throughput well below a direct connection.
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        event_buffer_size: 64,
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_the_config_accepts_is_one_russh_knows() {
        let all = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let every = SshConfig {
            kex: all(crate::config::SSH_KEX),
            ciphers: all(crate::config::SSH_CIPHERS),
            macs: all(crate::config::SSH_MACS),
            host_key_algorithms: all(crate::config::SSH_HOST_KEY),
            compression: all(crate::config::SSH_COMPRESSION),
        };
        let offered = preferred(&every).unwrap();
        assert_eq!(offered.kex.len(), crate::config::SSH_KEX.len() + 2);
        let defaults = preferred(&SshConfig::default()).unwrap();
        assert_eq!(defaults.kex[0].as_ref(), "mlkem768x25519-sha256");
        assert!(!defaults.mac.iter().any(|m| m.as_ref() == "hmac-sha2-256"));
    }

    #[test]
    fn the_refusal_is_a_well_formed_cleartext_packet() {
        let bytes = disconnect_before_kex("too many");
        let text = b"SSH-2.0-pam\r\n";
        assert!(bytes.starts_with(text));
        let packet = &bytes[text.len()..];
        let length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
        assert_eq!(packet.len(), 4 + length);
        assert_eq!(packet.len() % 8, 0);
        assert!(packet[4] >= 4);
        assert_eq!(packet[5], 1);
    }
}
