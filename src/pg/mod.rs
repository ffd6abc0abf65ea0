//! The PostgreSQL room: a protocol v3 proxy on `server.postgres_listen`.
//!
//! A client connects with TLS (`sslmode=require`), names a target in
//! `database` (`TARGET` or `TARGET/DBNAME`) and gives its broker token as
//! the password. The broker checks the token and the policy gate, logs in
//! to the database itself (TLS per the target's `tls`; SCRAM-SHA-256, MD5
//! or cleartext with a Secrets Manager password, or an RDS IAM token), and
//! relays the session, auditing every statement as `db.query`.
//!
//! Phases: [`startup`] (client side), [`upstream`] (database side),
//! [`relay`] with [`query`] (statement audit), [`cancel`]; [`protocol`] is
//! the pure wire format, fuzzed in `fuzz/`.

pub mod cancel;
pub mod protocol;
pub mod query;
pub mod relay;
pub mod startup;
mod statement;
pub mod tls;
pub mod upstream;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audit::Audit;
use crate::aws::Aws;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::edge::Edge;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::policy::Gate;
use crate::sessions::Sessions;

/// What the PostgreSQL room needs from the rest of the broker.
#[derive(Clone)]
pub struct Deps {
    pub identity: Identity,
    pub gate: Gate,
    pub sessions: Sessions,
    pub audit: Audit,
    /// Slots and deadlines of unauthenticated connections, failure events.
    pub edge: Edge,
    pub aws: Aws,
    pub targets: crate::discovery::Targets,
    pub metrics: Arc<Metrics>,
    /// The listener's certificate; `None` only when TLS cannot be offered.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--dev`: cleartext is accepted from loopback clients.
    pub dev: bool,
    /// `audit.db_params`: record bind parameter values.
    pub db_params: bool,
    /// Statements whose `db.query` may still be in flight to the audit
    /// writer when the broker lets a client see `ReadyForQuery` (0: every
    /// statement is durable before its `ReadyForQuery`).
    pub audit_window: usize,
    /// `server.max_connections`.
    pub max_connections: usize,
}

/// State every connection of the room shares.
pub struct Room {
    pub deps: Deps,
    pub cancels: cancel::Registry,
    pub upstreams: upstream::Upstreams,
}

/// Accepts connections until `shutdown`; one task per connection, at most
/// `max_connections` at once. Live sessions end through `Sessions` on
/// shutdown; this waits for their tasks.
pub async fn serve(
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(deps.max_connections.max(1)));
    let room = Arc::new(Room {
        upstreams: upstream::Upstreams::new(deps.aws.clone()),
        cancels: cancel::Registry::default(),
        deps,
    });
    let tasks = TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accepting a PostgreSQL connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let room = room.clone();
        let shutdown = shutdown.clone();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tasks.spawn(async move {
                let mut socket = socket;
                let _ = socket
                    .write_all(&protocol::error_response(
                        protocol::Severity::Fatal,
                        "53300",
                        "too many connections to the broker",
                        None,
                        None,
                    ))
                    .await;
            });
            continue;
        };
        let span = tracing::info_span!("pg", %peer, session_id = tracing::field::Empty, user = tracing::field::Empty);
        let slot = match room.deps.edge.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(too_many) => {
                tasks.spawn(
                    async move {
                        refuse_unauthenticated(socket, peer, &room, too_many).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
                continue;
            }
        };
        tasks.spawn(
            async move {
                if let Err(e) = startup::handle(room, socket, peer, shutdown, slot).await {
                    tracing::info!(error = %format!("{e:#}"), "PostgreSQL connection ended with an error");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    // New connections are refused at once, not left in the backlog.
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Turns away a client over its source's unauthenticated-connection cap
/// with an `ErrorResponse` (libpq prints it even in answer to an
/// SSLRequest), recorded like a failed login.
async fn refuse_unauthenticated(
    mut socket: TcpStream,
    peer: std::net::SocketAddr,
    room: &Room,
    too_many: crate::edge::TooMany,
) {
    let reason = too_many.to_string();
    tracing::info!("{reason}; refusing");
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        socket.write_all(&protocol::error_response(
            protocol::Severity::Fatal,
            "53300",
            &reason,
            None,
            None,
        )),
    )
    .await;
    room.deps
        .edge
        .failure(
            AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
                .source_ip(Some(peer.ip()))
                .details(serde_json::json!({"method": "postgres", "reason": reason})),
            "postgres: connection refused (too many unauthenticated connections)",
        )
        .await;
}

/// A connection, in cleartext or TLS (client or server side), or to a
/// database through an SSM port route.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    Routed(Box<upstream::Routed>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(_) => true,
            Stream::Routed(r) => r.is_tls(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Routed(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Routed(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Routed(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Routed(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
