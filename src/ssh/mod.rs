//! The SSH room: plain OpenSSH clients connect here with a certificate from
//! `pam login`; the SSH username selects the target (`TARGET` or
//! `LOGIN@TARGET`); the broker checks policy, opens its own connection to
//! the target with a credential the user never sees, and relays, records
//! and audits every channel.
//!
//! One entry point, [`serve`]. One task per connection; the russh handler
//! (`handler.rs`) stays thin and hands each session channel to its own relay
//! task (`channel.rs`) that owns the channel's state.

mod channel;
mod ecs_channel;
mod handler;
mod preamble;
mod sftp;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{HashAlg, PrivateKey};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audit::Audit;
use crate::config::TargetConfig;
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
    pub metrics: Arc<Metrics>,
    pub targets: Arc<Vec<TargetConfig>>,
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
    let config = Arc::new(server_config(&deps));
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
        let config = config.clone();
        let deps = deps.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("ssh", %peer);
        connections.spawn(
            async move {
                let _permit = permit;
                if let Err(e) = connection(stream, peer, config, deps, shutdown).await {
                    tracing::debug!(error = %e, "ssh connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
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
) -> anyhow::Result<()> {
    // `pam ssh-proxy` may announce the target before the SSH banner.
    let (stream, announced) = preamble::read(stream).await?;
    let handler = handler::Connection::new(shared.clone(), peer, announced);
    let watch = handler.watch();
    let session = russh::server::run_stream(config, stream, handler).await?;
    let handle = session.handle();
    tokio::select! {
        result = session => {
            if let Err(e) = result {
                tracing::debug!(error = ?e, "ssh session error");
            }
        }
        _ = shutdown.cancelled() => {
            // Live channels end through Sessions (they tell the user why);
            // give them a moment, then hang up.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "the broker is shutting down".into(), "en".into())
                .await;
        }
    }
    watch.finish().await;
    Ok(())
}

fn server_config(deps: &Deps) -> russh::server::Config {
    let mut methods = russh::MethodSet::empty();
    methods.push(russh::MethodKind::PublicKey);
    russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-pam_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
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
    }
}
