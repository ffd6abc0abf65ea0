//! Query cancellation. The broker gives each client its own
//! `BackendKeyData`; a `CancelRequest` carrying it is forwarded to the
//! right database with that server's key (over TLS when the target uses
//! it). A request with an unknown or wrong key is dropped, as PostgreSQL
//! does, and audited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::protocol;
use crate::audit::Audit;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::edge::Edge;
use crate::sync::lock;

/// Where and how to cancel a session's running statement.
#[derive(Clone)]
pub struct Upstream {
    pub address: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub connect_timeout: Duration,
    pub pid: i32,
    pub key: Vec<u8>,
    /// The SSM target of a database reached through a port route: a
    /// cancel request opens a route of its own.
    pub via: Option<(crate::aws::Aws, String)>,
}

#[derive(Clone)]
struct Entry {
    key: [u8; 4],
    upstream: Upstream,
    session_id: String,
    user: String,
    target: String,
}

/// The broker's keys of live sessions.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<i32, Entry>>,
}

/// Removes its session's key when dropped.
pub struct Ticket<'a> {
    registry: &'a Registry,
    pub pid: i32,
    pub key: [u8; 4],
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.registry.entries).remove(&self.pid);
    }
}

impl Registry {
    /// A fresh (pid, key) for a session, mapped to its upstream's.
    pub fn register(
        &self,
        upstream: Upstream,
        session_id: &str,
        user: &str,
        target: &str,
    ) -> Ticket<'_> {
        let mut rng = rand::rngs::OsRng;
        let key: [u8; 4] = rng.r#gen();
        let mut entries = lock(&self.entries);
        let pid = loop {
            let pid = rng.gen_range(1..i32::MAX);
            if !entries.contains_key(&pid) {
                break pid;
            }
        };
        entries.insert(
            pid,
            Entry {
                key,
                upstream,
                session_id: session_id.to_owned(),
                user: user.to_owned(),
                target: target.to_owned(),
            },
        );
        Ticket {
            registry: self,
            pid,
            key,
        }
    }

    fn lookup(&self, pid: i32, key: &[u8]) -> Option<Entry> {
        let entries = lock(&self.entries);
        let entry = entries.get(&pid)?;
        // Constant time in the key, like the server's own comparison.
        let same: bool = subtle::ConstantTimeEq::ct_eq(key, &entry.key[..]).into();
        same.then(|| entry.clone())
    }

    /// Handles a `CancelRequest`: forwards it, or drops it when the key is
    /// not one of ours. Either way the client gets no answer.
    /// An unknown key comes from a client nobody authenticated: its record
    /// goes through the edge's flood aggregation.
    pub async fn cancel(
        &self,
        audit: &Audit,
        edge: &Edge,
        pid: i32,
        key: &[u8],
        source: std::net::IpAddr,
    ) {
        let Some(entry) = self.lookup(pid, key) else {
            edge.failure(
                AuditEvent::new(EventKind::DbQuery, Outcome::Denied)
                    .source_ip(Some(source))
                    .details(json!({"cancel_request": true, "error": "unknown cancel key"})),
                "postgres cancel request with an unknown key",
            )
            .await;
            return;
        };
        let result = send(&entry.upstream).await;
        let (outcome, error) = match &result {
            Ok(()) => (Outcome::Success, None),
            Err(e) => {
                tracing::warn!(error = %e, session = %entry.session_id, "forwarding a cancel request failed");
                (Outcome::Failure, Some(e.to_string()))
            }
        };
        audit
            .note(
                AuditEvent::new(EventKind::DbQuery, outcome)
                    .actor(&entry.user)
                    .source_ip(Some(source))
                    .target(&entry.target)
                    .session(&entry.session_id)
                    .details(json!({"cancel_request": true, "error": error})),
            )
            .await;
    }
}

/// Sends a `CancelRequest` for `upstream`'s running statement.
pub async fn send(upstream: &Upstream) -> std::io::Result<()> {
    let request = protocol::cancel_request(upstream.pid, &upstream.key);
    let work = async {
        match &upstream.via {
            None => {
                let tcp = TcpStream::connect(&upstream.address).await?;
                send_on(tcp, upstream, &request).await
            }
            Some((aws, ssm_target)) => {
                let (route, stream) =
                    super::upstream::open_route(aws, ssm_target, &upstream.address)
                        .await
                        .map_err(std::io::Error::other)?;
                let sent = send_on(stream, upstream, &request).await;
                let _ = route.close().await;
                sent
            }
        }
    };
    tokio::time::timeout(upstream.connect_timeout, work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

async fn send_on<S>(mut io: S, upstream: &Upstream, request: &[u8]) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match &upstream.tls {
        None => {
            io.write_all(request).await?;
            io.flush().await?;
            // The server closes when done; wait for that briefly.
            let mut byte = [0u8; 1];
            let _ = io.read(&mut byte).await;
        }
        Some(config) => {
            io.write_all(&protocol::ssl_request()).await?;
            let mut answer = [0u8; 1];
            io.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                return Err(std::io::Error::other(
                    "the server refused TLS for the cancel request",
                ));
            }
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let mut tls = connector.connect(upstream.server_name.clone(), io).await?;
            tls.write_all(request).await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            let _ = tls.read(&mut byte).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream {
            address: "127.0.0.1:5432".into(),
            tls: None,
            server_name: rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            connect_timeout: Duration::from_secs(1),
            pid: 7,
            key: vec![1, 2, 3, 4],
            via: None,
        }
    }

    /// A panic elsewhere while the registry was locked must not leave cancel
    /// keys unanswerable, nor the key of an ended session valid.
    #[test]
    fn a_poisoned_registry_still_maps_and_forgets_keys() {
        let registry = Registry::default();
        std::thread::scope(|s| {
            let poisoned = s
                .spawn(|| {
                    let _held = lock(&registry.entries);
                    panic!("a panic while the registry is locked");
                })
                .join();
            assert!(poisoned.is_err());
        });
        let ticket = registry.register(upstream(), "s-1", "a@example.test", "db");
        let (pid, key) = (ticket.pid, ticket.key);
        let found = registry.lookup(pid, &key).expect("the live session's key");
        assert_eq!(found.session_id, "s-1");
        assert!(registry.lookup(pid, &[0, 0, 0, 0]).is_none() || key == [0, 0, 0, 0]);
        drop(ticket);
        assert!(
            registry.lookup(pid, &key).is_none(),
            "the ended session's key still answers"
        );
    }
}
