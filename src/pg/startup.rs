//! The client side of a connection, up to the relay: TLS negotiation
//! (GSSAPI encryption is declined), the startup packet, the broker token
//! as a cleartext password over TLS, the token and user checks, the target
//! named in `database`, the policy gate, then the session opened from its
//! permit while the transport to the database connects, and the database
//! login once the session's records are durable. Every refusal is an
//! `ErrorResponse` with its SQLSTATE, and is audited.
//!
//! `database` is `TARGET` (the target's configured database) or
//! `TARGET/DBNAME` (another database on the same server). A reason for the
//! policy gate is given with the startup parameter `pam.reason` or in
//! `options` as `-c pam.reason=...` (PGOPTIONS); it is not passed on.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Severity, Startup};
use super::{Room, Stream, relay, upstream};
use crate::config::{PostgresTarget, TargetConfig, TargetKind};
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::principal::Principal;
use crate::domain::session::SessionKind;
use crate::edge::Unauthenticated;
use crate::identity::AuthError;
use crate::metrics::Metrics;
use crate::sessions::{EndReason, Finish, NewSession, Recording};

/// A refusal told to the client as a FATAL `ErrorResponse`.
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl Refusal {
    fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            sqlstate,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn encode(&self) -> Vec<u8> {
        protocol::error_response(
            Severity::Fatal,
            self.sqlstate,
            &self.message,
            None,
            self.hint.as_deref(),
        )
    }
}

/// What the client asked for in its startup packet.
struct Request {
    user: Option<String>,
    target: String,
    database: Option<String>,
    reason: Option<String>,
    application_name: Option<String>,
    /// Passed on to the database.
    params: Vec<(String, String)>,
}

/// Serves one client connection from accept to close. Until its broker
/// token is accepted it holds `slot` and has until `server.auth_timeout`.
pub async fn handle(
    room: Arc<Room>,
    socket: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    slot: Unauthenticated,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + room.deps.edge.auth_timeout();
    let negotiated = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        negotiated = tokio::time::timeout_at(deadline, negotiate(&room, Stream::Plain(socket), peer)) => negotiated,
    };
    let (mut stream, params) = match negotiated {
        Err(_) => {
            // A silent client: nothing to tell it, but it is recorded.
            timed_out(&room, peer, None).await;
            return Ok(());
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok((_, Negotiated::Done))) => return Ok(()),
        Ok(Ok((stream, Negotiated::Refused(refusal)))) => {
            return refuse(stream, &refusal).await;
        }
        Ok(Ok((stream, Negotiated::Startup(params)))) => (stream, params),
    };
    let request = match parse_request(params) {
        Ok(request) => request,
        Err(refusal) => return refuse(stream, &refusal).await,
    };
    let login =
        tokio::time::timeout_at(deadline, authenticate(&room, &mut stream, peer, &request)).await;
    let login = match login {
        Ok(login) => login,
        Err(_) => {
            timed_out(&room, peer, Some(&request)).await;
            Err(Refusal::new(
                "08006",
                "timed out waiting for the broker token (server.auth_timeout)",
            ))
        }
    };
    let (principal, target, pg) = match login {
        Ok(found) => found,
        Err(refusal) => return refuse(stream, &refusal).await,
    };
    // Authenticated: the slot goes back to the source's allowance.
    drop(slot);
    tracing::Span::current().record("user", principal.email());
    let database = request
        .database
        .clone()
        .unwrap_or_else(|| pg.database.clone());

    // 1. Policy decides before the broker touches the database.
    let context = RequestContext {
        source_ip: Some(peer.ip()),
        reason: request.reason.clone(),
        login: pg.db_user.clone(),
        ..RequestContext::default()
    };
    let permit = match room
        .deps
        .gate
        .permit(
            &principal,
            Action::DbConnect,
            Resource::Target(target.to_ref()),
            context,
        )
        .await
    {
        Ok(permit) => permit,
        Err(denied) => {
            let mut refusal = Refusal::new(
                "42501",
                format!("access to {} denied: {}", target.name, denied.message),
            );
            if let Some(hint) = denied.hint {
                refusal = refusal.hint(format!(
                    "{hint} (a reason goes in PGOPTIONS=\"-c pam.reason=...\")"
                ));
            }
            return refuse(stream, &refusal).await;
        }
    };
    let upstream_failed =
        |e: &upstream::Error| Refusal::new(e.sqlstate(), format!("target {}: {e}", target.name));

    // 2. The broker's credential for the database (it names the database
    // user the session is recorded with); nothing reaches the database.
    let credential = match room.upstreams.credential(&target.name, &pg).await {
        Ok(credential) => credential,
        Err(e) => {
            room.deps
                .audit
                .note(
                    AuditEvent::new(EventKind::SessionStart, Outcome::Failure)
                        .actor(principal.email())
                        .source_ip(Some(peer.ip()))
                        .target(&target.name)
                        .details(json!({
                            "kind": "postgres",
                            "broker_session": principal.session_id,
                            "database": database,
                            "error": e.to_string(),
                        })),
                )
                .await;
            return refuse(stream, &upstream_failed(&e)).await;
        }
    };

    // 3. The transport to the database (TCP or an SSM route, TLS) while the
    // session's records are written; the login goes out once they are
    // durable.
    let new = NewSession {
        kind: SessionKind::Postgres,
        login: Some(credential.user().to_owned()),
        client: request.application_name.clone(),
        details: json!({
            "database": database,
            "db_user": credential.user(),
            "address": pg.address,
            "tls": upstream::tls_mode(pg.tls),
            "client_tls": stream.is_tls(),
            "via_ssm_target": pg.via.as_ref().map(|v| v.ssm_target.clone()),
        }),
    };
    let recording = Recording::QueryLog {
        title: format!("postgres {} ({database})", target.name),
    };
    let (transport, opened) = tokio::join!(
        room.upstreams.transport(&target.name, &pg),
        room.deps.sessions.open(permit, new, recording),
    );
    let mut live = match opened {
        Ok(live) => live,
        Err(e) => {
            let refusal = Refusal::new("57P03", e.to_string());
            return refuse(stream, &refusal).await;
        }
    };
    tracing::Span::current().record("session_id", live.id());
    // A password that goes in cleartext or as MD5 (the target allows it)
    // is on record before it goes.
    let weak_auth = WeakAuthRecord {
        audit: &room.deps.audit,
        actor: principal.email(),
        peer,
        target: &target.name,
        session: live.id(),
        db_user: credential.user().to_owned(),
    };
    let gate = |method, tls| weak_auth.gate(method, tls);
    let connected = match transport {
        Ok(transport) => {
            room.upstreams
                .login_on(
                    &target.name,
                    &pg,
                    transport,
                    credential,
                    upstream::LoginSession {
                        database: &database,
                        params: &request.params,
                        gate: &gate,
                    },
                )
                .await
        }
        Err(e) => Err(e),
    };
    let connected = match connected {
        Ok(connected) => connected,
        Err(e) => {
            let refused = refuse(stream, &upstream_failed(&e)).await;
            live.abort(EndReason::Error(e.to_string())).await;
            return refused;
        }
    };

    // 4. The relay.
    let ticket = room.cancels.register(
        connected.cancel.clone(),
        live.id(),
        principal.email(),
        &target.name,
    );
    let mut hello = protocol::authentication(0);
    hello.extend_from_slice(&connected.parameter_status);
    hello.extend_from_slice(&protocol::backend_key_data(ticket.pid, &ticket.key));
    hello.extend_from_slice(&protocol::ready_for_query(connected.status));
    if let Err(e) = stream.write_all(&hello).await {
        drop(ticket);
        live.abort(EndReason::Error(e.to_string())).await;
        return Ok(());
    }
    let _ = stream.flush().await;
    let context = relay::Context {
        audit: room.deps.audit.clone(),
        actor: principal.email().to_owned(),
        target: target.name.clone(),
        session_id: live.id().to_owned(),
        source_ip: peer.ip(),
        window: room.deps.audit_window,
        db_params: room.deps.db_params,
        cancel: connected.cancel.clone(),
    };
    let relayed = relay::run(stream, connected.stream, &mut live, context).await;
    drop(ticket);
    live.finish(Finish {
        details: json!({
            "statements": relayed.statements,
            "statements_failed": relayed.failed,
            "audit_failures": relayed.audit_failures,
        }),
        ..Default::default()
    })
    .await;
    Ok(())
}

enum Negotiated {
    Done,
    Refused(Refusal),
    Startup(Vec<(String, String)>),
}

/// SSL and GSS negotiation, cancel requests, and the startup packet.
async fn negotiate(
    room: &Room,
    mut stream: Stream,
    peer: SocketAddr,
) -> anyhow::Result<(Stream, Negotiated)> {
    loop {
        let packet = read_startup(&mut stream).await?;
        match packet {
            Startup::Ssl => {
                let Stream::Plain(mut tcp) = stream else {
                    anyhow::bail!("SSLRequest inside TLS");
                };
                let Some(config) = room.deps.tls.clone() else {
                    tcp.write_all(b"N").await?;
                    stream = Stream::Plain(tcp);
                    continue;
                };
                tcp.write_all(b"S").await?;
                // Nothing was read past the SSLRequest, so no cleartext
                // can be smuggled into the TLS session.
                let tls = tokio_rustls::TlsAcceptor::from(config)
                    .accept(tcp)
                    .await
                    .context("TLS handshake with the client")?;
                stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
            }
            Startup::GssEnc => {
                if stream.is_tls() {
                    anyhow::bail!("GSSENCRequest inside TLS");
                }
                stream.write_all(b"N").await?;
            }
            Startup::Cancel { pid, key } => {
                room.cancels
                    .cancel(&room.deps.audit, &room.deps.edge, pid, &key, peer.ip())
                    .await;
                return Ok((stream, Negotiated::Done));
            }
            Startup::Startup {
                major,
                minor,
                params,
            } => {
                if major != 3 {
                    let refusal = Refusal::new(
                        "0A000",
                        format!(
                            "unsupported frontend protocol {major}.{minor}: the broker speaks 3.0"
                        ),
                    );
                    return Ok((stream, Negotiated::Refused(refusal)));
                }
                if !(stream.is_tls() || room.deps.dev && peer.ip().is_loopback()) {
                    let refusal = Refusal::new("28000", "the broker requires TLS")
                        .hint("connect with sslmode=require (or use `pam db connect`)");
                    return Ok((stream, Negotiated::Refused(refusal)));
                }
                let unrecognized: Vec<&str> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.as_str())
                    .collect();
                if minor > 0 || !unrecognized.is_empty() {
                    stream
                        .write_all(&protocol::negotiate_protocol_version(0, &unrecognized))
                        .await?;
                }
                return Ok((stream, Negotiated::Startup(params)));
            }
        }
    }
}

async fn read_startup(stream: &mut Stream) -> anyhow::Result<Startup> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let len = i32::from_be_bytes(head);
    if len < 8 || len as usize > protocol::MAX_STARTUP {
        anyhow::bail!("invalid startup packet length {len}");
    }
    let mut packet = vec![0u8; len as usize];
    packet[..4].copy_from_slice(&head);
    stream.read_exact(&mut packet[4..]).await?;
    match protocol::parse_startup(&packet)? {
        Some((startup, _)) => Ok(startup),
        None => anyhow::bail!("incomplete startup packet"),
    }
}

fn parse_request(params: Vec<(String, String)>) -> Result<Request, Refusal> {
    let mut request = Request {
        user: None,
        target: String::new(),
        database: None,
        reason: None,
        application_name: None,
        params: Vec::new(),
    };
    let mut database = None;
    for (key, value) in params {
        match key.as_str() {
            "user" => request.user = Some(value).filter(|v| !v.is_empty()),
            "database" => database = Some(value),
            "replication" if value != "false" && value != "off" && value != "0" => {
                return Err(Refusal::new(
                    "0A000",
                    "replication connections are not brokered",
                ));
            }
            "pam.reason" => request.reason = Some(value),
            "options" => {
                let (options, reason) = strip_reason(&value);
                if reason.is_some() {
                    request.reason = reason;
                }
                if !options.is_empty() {
                    request.params.push((key, options));
                }
            }
            k if k.starts_with("_pq_.") || k.starts_with("pam.") => {}
            _ => {
                if key == "application_name" {
                    request.application_name = Some(value.clone());
                }
                request.params.push((key, value));
            }
        }
    }
    // libpq defaults the database to the user name: no target named.
    let database = database
        .filter(|d| !d.is_empty() && Some(d) != request.user.as_ref())
        .ok_or_else(|| {
            Refusal::new("3D000", "no target given").hint(
                "set dbname to a PostgreSQL target: TARGET or TARGET/DBNAME (see `pam ls db`)",
            )
        })?;
    match database.split_once('/') {
        Some((target, db)) if !db.is_empty() => {
            request.target = target.to_owned();
            request.database = Some(db.to_owned());
        }
        Some((target, _)) => request.target = target.to_owned(),
        None => request.target = database,
    }
    Ok(request)
}

/// `options` without `-c pam.reason=...` / `--pam.reason=...`, and the reason.
fn strip_reason(options: &str) -> (String, Option<String>) {
    let words: Vec<&str> = options.split_whitespace().collect();
    let mut kept = Vec::new();
    let mut reason = None;
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        if word == "-c"
            && let Some(next) = words.get(i + 1)
            && let Some(value) = next.strip_prefix("pam.reason=")
        {
            reason = Some(value.replace("\\ ", " "));
            i += 2;
            continue;
        }
        if let Some(value) = word
            .strip_prefix("-cpam.reason=")
            .or_else(|| word.strip_prefix("--pam.reason="))
        {
            reason = Some(value.to_owned());
            i += 1;
            continue;
        }
        kept.push(word);
        i += 1;
    }
    (kept.join(" "), reason)
}

/// Password (the broker token), user and target.
async fn authenticate(
    room: &Room,
    stream: &mut Stream,
    peer: SocketAddr,
    request: &Request,
) -> Result<(Principal, TargetConfig, PostgresTarget), Refusal> {
    let audit = &room.deps.audit;
    stream
        .write_all(&protocol::authentication(3))
        .await
        .map_err(|_| Refusal::new("08006", "connection lost"))?;
    stream
        .flush()
        .await
        .map_err(|_| Refusal::new("08006", "connection lost"))?;
    let (tag, body) = upstream::read_message(stream, 64 * 1024)
        .await
        .map_err(|_| Refusal::new("08006", "connection lost during authentication"))?;
    if tag != b'p' {
        return Err(Refusal::new("08P01", "expected a password message"));
    }
    let token = protocol::cstr(&body)
        .and_then(|(token, _)| std::str::from_utf8(token).ok())
        .unwrap_or("")
        .trim()
        .to_owned();
    let rejected = |reason: String| {
        AuditEvent::new(EventKind::TokenRejected, Outcome::Denied)
            .source_ip(Some(peer.ip()))
            .target(&request.target)
            .details(json!({
                "room": "postgres",
                "user": request.user,
                "reason": reason,
            }))
    };
    let tried = format!(
        "postgres user {:?} target {:?}",
        request.user.as_deref().unwrap_or_default(),
        request.target
    );
    let principal = match room.deps.identity.authenticate(&token).await {
        Ok(principal) => principal,
        Err(e) => {
            room.deps
                .edge
                .failure(rejected(e.to_string()), &tried)
                .await;
            let refusal = match e {
                AuthError::Unavailable => {
                    Refusal::new("57P03", "the broker's session store is unavailable")
                }
                AuthError::Missing => Refusal::new("28P01", "no broker token given")
                    .hint("the password is the token from `pam login`"),
                AuthError::Expired => Refusal::new("28P01", "the broker session has expired")
                    .hint("run `pam login` and use the new token"),
                AuthError::Revoked => {
                    Refusal::new("28P01", "the broker session was revoked").hint("run `pam login`")
                }
                AuthError::Invalid => Refusal::new("28P01", "invalid broker token")
                    .hint("the password is the token from `pam login` (~/.pam/token)"),
            };
            return Err(refusal);
        }
    };
    if let Some(user) = &request.user
        && !user.eq_ignore_ascii_case(principal.email())
    {
        room.deps
            .edge
            .failure(
                rejected(format!(
                    "the token belongs to {}, not to the user named",
                    principal.email()
                )),
                &tried,
            )
            .await;
        return Err(Refusal::new(
            "28000",
            format!("user {user:?} does not match the broker session"),
        )
        .hint("set user to your email or leave it out"));
    }
    let found = room
        .deps
        .targets
        .get(&request.target)
        .and_then(|t| match &t.kind {
            TargetKind::Postgres(pg) => Some((t.clone(), pg.clone())),
            _ => None,
        });
    let Some((target, pg)) = found else {
        audit
            .note(
                AuditEvent::new(EventKind::SessionStart, Outcome::Failure)
                    .actor(principal.email())
                    .source_ip(Some(peer.ip()))
                    .target(&request.target)
                    .details(json!({"kind": "postgres", "error": "no such PostgreSQL target"})),
            )
            .await;
        return Err(Refusal::new(
            "3D000",
            format!("no PostgreSQL target named {:?}", request.target),
        )
        .hint("`pam ls db` lists the targets you may use"));
    };
    Ok((principal, target, pg))
}

/// Records a connection that gave no accepted broker token within
/// `server.auth_timeout`.
async fn timed_out(room: &Room, peer: SocketAddr, request: Option<&Request>) {
    Metrics::inc(&room.deps.metrics.auth_timeouts);
    let mut event = AuditEvent::new(EventKind::TokenRejected, Outcome::Denied)
        .source_ip(Some(peer.ip()))
        .details(json!({
            "room": "postgres",
            "user": request.and_then(|r| r.user.clone()),
            "reason": "no broker token within server.auth_timeout",
        }));
    if let Some(request) = request {
        event = event.target(&request.target);
    }
    let tried = match request {
        Some(r) => format!(
            "postgres user {:?} target {:?}: timed out",
            r.user.as_deref().unwrap_or_default(),
            r.target
        ),
        None => "postgres: timed out before the startup packet".to_owned(),
    };
    room.deps.edge.failure(event, &tried).await;
}

async fn refuse(mut stream: Stream, refusal: &Refusal) -> anyhow::Result<()> {
    let _ = stream.write_all(&refusal.encode()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    Ok(())
}

/// What a `db.weak_auth` record says, but for how the password goes.
struct WeakAuthRecord<'a> {
    audit: &'a crate::audit::Audit,
    actor: &'a str,
    peer: SocketAddr,
    target: &'a str,
    session: &'a str,
    db_user: String,
}

impl WeakAuthRecord<'_> {
    /// The [`upstream::WeakAuthGate`]: records `db.weak_auth` (gated) before
    /// the password goes out `method`.
    fn gate(
        &self,
        method: &'static str,
        tls: bool,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let event = AuditEvent::new(EventKind::DbWeakAuth, Outcome::Success)
            .actor(self.actor)
            .source_ip(Some(self.peer.ip()))
            .target(self.target)
            .session(self.session)
            .details(json!({
                "password_sent": method,
                "db_user": self.db_user,
                "upstream_tls": tls,
            }));
        Box::pin(async move { self.audit.gate(event).await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(params: &[(&str, &str)]) -> Result<Request, Refusal> {
        parse_request(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn database_names_a_target_and_maybe_a_database() {
        let r = request(&[("user", "a@x"), ("database", "orders")])
            .ok()
            .unwrap();
        assert_eq!((r.target.as_str(), r.database), ("orders", None));
        let r = request(&[("database", "orders/reports")]).ok().unwrap();
        assert_eq!(
            (r.target.as_str(), r.database.as_deref()),
            ("orders", Some("reports"))
        );
        assert_eq!(
            request(&[("user", "a@x"), ("database", "a@x")])
                .err()
                .unwrap()
                .sqlstate,
            "3D000"
        );
        assert_eq!(
            request(&[("database", "x"), ("replication", "database")])
                .err()
                .unwrap()
                .sqlstate,
            "0A000"
        );
    }

    #[test]
    fn the_reason_is_taken_out_of_options() {
        let r = request(&[
            ("database", "orders"),
            ("options", "-c search_path=app -c pam.reason=INC-42"),
            ("application_name", "psql"),
        ])
        .ok()
        .unwrap();
        assert_eq!(r.reason.as_deref(), Some("INC-42"));
        assert!(
            r.params
                .contains(&("options".into(), "-c search_path=app".into()))
        );
        assert!(
            r.params
                .contains(&("application_name".into(), "psql".into()))
        );
        assert_eq!(strip_reason("--pam.reason=x").1.as_deref(), Some("x"));
    }
}
