//! One session channel from open to close: collects the client's requests
//! (env, pty, shell / exec / subsystem), asks policy, opens the matching
//! channel on the target, then relays both directions while recording and
//! auditing, until either side closes or the broker ends the session.

use std::sync::Arc;

use bytes::Bytes;
use russh::server::{self, Msg};
use russh::{Channel, ChannelMsg, ChannelWriteHalf};
use serde_json::json;
use tokio::sync::OnceCell;

use super::Shared;
use super::handler::Authed;
use super::sftp;
use super::upstream::{self, Upstream};
use crate::domain::audit::{AuditError, AuditEvent, EventKind, Outcome};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::session::SessionKind;
use crate::sessions::{EndReason, Finish, Live, NewSession, Recording};

/// The upstream connection shared by the channels of one SSH connection.
pub(crate) type UpstreamCell = Arc<OnceCell<Result<Arc<Upstream>, upstream::Error>>>;

/// What this channel runs.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Shell,
    Exec(String),
    Subsystem(String),
}

impl Kind {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Kind::Shell => "shell",
            Kind::Exec(_) => "exec",
            Kind::Subsystem(_) => "subsystem",
        }
    }
}

pub(crate) struct Pty {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub modes: Vec<(russh::Pty, u32)>,
}

/// Longest PAM_REASON kept.
const MAX_REASON: usize = 500;

pub(crate) async fn run(
    shared: Arc<Shared>,
    authed: Arc<Authed>,
    upstream: UpstreamCell,
    channel: Channel<Msg>,
    handle: server::Handle,
) {
    let id = channel.id();
    let (mut down_rx, down_tx) = channel.split();
    let Some(Requested {
        kind,
        env,
        reason,
        pty,
        pty_pending,
    }) = requests(&shared, &authed, &mut down_rx, &handle, id).await
    else {
        return;
    };

    // A refusal is told on stderr with exit status 255, after accepting the
    // request: a client that sees a failed request may exit before it has
    // printed what came with it.
    if let crate::config::TargetKind::Ecs(_) = &authed.target.kind {
        let request = super::ecs_channel::Request {
            kind,
            pty,
            pty_pending,
            reason,
        };
        super::ecs_channel::run(shared, authed, request, down_rx, down_tx, handle, id).await;
        return;
    }
    let fail = |message: String| refuse(&down_tx, &handle, id, pty_pending, message);

    let (mut live, upstream) =
        match start(&shared, &authed, &upstream, &kind, pty.as_ref(), reason).await {
            Ok(started) => started,
            Err((message, live)) => {
                fail(message.clone()).await;
                if let Some(live) = live {
                    live.abort(EndReason::Error(message)).await;
                }
                return;
            }
        };

    // 3. The target's channel: the first thing that reaches the target.
    // What it runs is on record (durable) before the request is sent.
    let durable = async {
        audit_start(&shared, &authed, &live, &kind)
            .await
            .map_err(|e| format!("refused: {e}"))
    };
    let opened = open_target_channel(&upstream, &env, pty.as_ref(), &kind, durable).await;
    let (up_rx, up_tx, pty_ok) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            fail(e.clone()).await;
            live.abort(EndReason::Error(e)).await;
            return;
        }
    };
    if pty_pending {
        let _ = if pty_ok {
            handle.channel_success(id).await
        } else {
            handle.channel_failure(id).await
        };
    }
    let _ = handle.channel_success(id).await;

    // 4. What the channel does, in the recording.
    if let (Some(recorder), Kind::Exec(command)) = (live.recorder(), &kind) {
        let _ = recorder.input(Bytes::from(format!("{command}\n"))).await;
    }

    // 5. Relay.
    let exit_status = super::relay::relay(
        &shared,
        &authed,
        &mut live,
        &kind,
        down_rx,
        Arc::new(down_tx),
        up_rx,
        Arc::new(up_tx),
        handle.clone(),
        id,
    )
    .await;
    live.finish(Finish {
        exit_status: exit_status.map(i64::from),
        details: json!({"channel": kind.name(), "target_host_key": upstream.host_key}),
    })
    .await;
}

/// Policy, then the target (one connection per client connection, shared
/// by its channels) and the session's records at once. Refused: what to
/// tell the client, and the live session to abort if it was opened.
async fn start(
    shared: &Shared,
    authed: &Authed,
    upstream: &UpstreamCell,
    kind: &Kind,
    pty: Option<&Pty>,
    reason: Option<String>,
) -> Result<(Live, Arc<Upstream>), (String, Option<Live>)> {
    // 1. Policy decides before the broker touches the target. Its record is
    // queued; connecting to the target overlaps with writing it and the
    // session's records, and nothing reaches the target before all are
    // durable (`Sessions::open`).
    let principal = &authed.principal;
    let context = RequestContext {
        source_ip: Some(authed.peer.ip()),
        reason,
        login: Some(authed.login.clone()),
        ..RequestContext::default()
    };
    let permit = match shared
        .deps
        .gate
        .permit(
            principal,
            Action::Ssh,
            Resource::Target(authed.target.to_ref()),
            context,
        )
        .await
    {
        Ok(permit) => permit,
        Err(denied) => {
            return Err((
                format!("access to {} denied: {denied}", authed.target.name),
                None,
            ));
        }
    };

    // 2. The target (one connection per client connection, shared by its
    // channels: transport and authentication) and the session, at once.
    let command = match &kind {
        Kind::Exec(command) => Some(command.clone()),
        Kind::Subsystem(name) => Some(name.clone()),
        Kind::Shell => None,
    };
    let new = NewSession {
        kind: SessionKind::Ssh,
        login: Some(authed.login.clone()),
        client: authed.client.clone(),
        details: json!({
            "channel": kind.name(),
            "command": command,
            "term": pty.map(|p| p.term.clone()),
            "pty": pty.map(|p| format!("{}x{}", p.cols, p.rows)),
            "login": authed.login,
        }),
    };
    let recording = match &kind {
        // SFTP is audited operation by operation, its data not recorded.
        Kind::Subsystem(_) => Recording::Off,
        _ => terminal(authed, pty),
    };
    let (connected, opened) = tokio::join!(
        upstream.get_or_init(|| async {
            super::handler::connect_upstream(shared, authed)
                .await
                .map(Arc::new)
        }),
        shared.deps.sessions.open(permit, new, recording),
    );
    let live = match opened {
        Ok(live) => live,
        Err(e) => return Err((e.to_string(), None)),
    };
    match connected {
        Ok(upstream) => Ok((live, upstream.clone())),
        Err(e) => Err((e.to_string(), Some(live))),
    }
}

/// What the client asked for before its shell, command or subsystem.
struct Requested {
    kind: Kind,
    /// Variables of `env_allow` (PAM_REASON is the reason instead).
    env: Vec<(String, String)>,
    reason: Option<String>,
    pty: Option<Pty>,
    /// A PTY request that wants its reply once the target answered it.
    pty_pending: bool,
}

/// Reads the channel's requests up to the one that says what it runs
/// (`None`: the client went away first).
async fn requests(
    shared: &Shared,
    authed: &Authed,
    down_rx: &mut russh::ChannelReadHalf,
    handle: &server::Handle,
    id: russh::ChannelId,
) -> Option<Requested> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut reason: Option<String> = authed.reason.clone();
    let mut pty: Option<Pty> = None;
    // Requests that want a reply, answered once the target answered them.
    let mut pty_pending = false;
    let kind = loop {
        let message = down_rx.wait().await?;
        match message {
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                if variable_name == "PAM_REASON" {
                    reason = Some(variable_value.chars().take(MAX_REASON).collect());
                } else if shared.deps.env_allow.iter().any(|allowed| {
                    allowed == &variable_name
                        || (allowed.ends_with('*')
                            && variable_name.starts_with(allowed.trim_end_matches('*')))
                }) {
                    env.push((variable_name, variable_value));
                }
            }
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                terminal_modes,
                ..
            } => {
                pty = Some(Pty {
                    term,
                    cols: col_width,
                    rows: row_height,
                    modes: terminal_modes,
                });
                pty_pending = true;
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(pty) = pty.as_mut() {
                    pty.cols = col_width;
                    pty.rows = row_height;
                }
            }
            ChannelMsg::RequestShell { .. } => break Kind::Shell,
            ChannelMsg::Exec { command, .. } => {
                break Kind::Exec(String::from_utf8_lossy(&command).into_owned());
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                if name == "sftp" {
                    break Kind::Subsystem(name);
                }
                let _ = handle.channel_failure(id).await;
            }
            ChannelMsg::RequestX11 { .. } => {
                refuse_forward(shared, authed, "x11").await;
                let _ = handle.channel_failure(id).await;
            }
            ChannelMsg::Eof | ChannelMsg::Close => return None,
            _ => {}
        }
    };
    Some(Requested {
        kind,
        env,
        reason,
        pty,
        pty_pending,
    })
}

/// The terminal recording of a channel, sized like the client's PTY.
pub(crate) fn terminal(authed: &Authed, pty: Option<&Pty>) -> Recording {
    Recording::Terminal {
        title: format!("{} on {}", authed.principal.email(), authed.target.name),
        cols: pty.map(|p| p.cols).unwrap_or(80),
        rows: pty.map(|p| p.rows).unwrap_or(24),
        term: pty.map(|p| p.term.clone()),
    }
}

/// A refusal is told on stderr with exit status 255, after accepting the
/// request: a client that sees a failed request may exit before it has
/// printed what came with it.
pub(crate) async fn refuse(
    down_tx: &ChannelWriteHalf<Msg>,
    handle: &server::Handle,
    id: russh::ChannelId,
    pty_pending: bool,
    message: String,
) {
    if pty_pending {
        let _ = handle.channel_success(id).await;
    }
    let _ = handle.channel_success(id).await;
    let _ = down_tx
        .extended_data_bytes(1, Bytes::from(format!("pam: {message}\r\n")))
        .await;
    let _ = down_tx.exit_status(255).await;
    let _ = down_tx.eof().await;
    let _ = down_tx.close().await;
}

pub(super) type UpRead = russh::ChannelReadHalf;
pub(super) type UpWrite = ChannelWriteHalf<russh::client::Msg>;

/// Opens the target channel and asks for the same things the client did,
/// the shell, command or subsystem only once `durable` (its audit record)
/// has succeeded. Returns whether the target granted the PTY.
async fn open_target_channel(
    upstream: &Upstream,
    env: &[(String, String)],
    pty: Option<&Pty>,
    kind: &Kind,
    durable: impl Future<Output = Result<(), String>>,
) -> Result<(UpRead, UpWrite, bool), String> {
    let (channel, durable) = tokio::join!(upstream.handle.channel_open_session(), durable);
    durable?;
    let channel = channel.map_err(|e| format!("the target refused a session channel: {e}"))?;
    let (mut rx, tx) = channel.split();
    for (name, value) in env {
        let _ = tx.set_env(false, name.as_str(), value.as_str()).await;
    }
    let mut pty_ok = false;
    if let Some(pty) = pty {
        tx.request_pty(true, &pty.term, pty.cols, pty.rows, 0, 0, &pty.modes)
            .await
            .map_err(|e| e.to_string())?;
        pty_ok = wait_reply(&mut rx).await?;
    }
    match kind {
        Kind::Shell => tx.request_shell(true).await,
        Kind::Exec(command) => tx.exec(true, command.as_bytes()).await,
        Kind::Subsystem(name) => tx.request_subsystem(true, name.as_str()).await,
    }
    .map_err(|e| e.to_string())?;
    if !wait_reply(&mut rx).await? {
        return Err(format!("the target refused the {} request", kind.name()));
    }
    Ok((rx, tx, pty_ok))
}

async fn wait_reply(rx: &mut UpRead) -> Result<bool, String> {
    loop {
        match rx.wait().await {
            Some(ChannelMsg::Success) => return Ok(true),
            Some(ChannelMsg::Failure) => return Ok(false),
            Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) | None => {
                return Err("the target closed the channel".into());
            }
            Some(_) => {}
        }
    }
}

/// Records what the channel is about to run on the target (`ssh.exec`, a
/// file transfer's start) and waits until it is durable: with a fail-closed
/// trail nothing runs on the target that is not on record ([`crate::audit::Audit::gate_all`]).
async fn audit_start(
    shared: &Shared,
    authed: &Authed,
    live: &Live,
    kind: &Kind,
) -> Result<(), AuditError> {
    let event = |kind: EventKind, details: serde_json::Value| {
        AuditEvent::new(kind, Outcome::Success)
            .actor(authed.principal.email())
            .source_ip(Some(authed.peer.ip()))
            .target(&authed.target.name)
            .session(live.id())
            .details(details)
    };
    let events = match kind {
        Kind::Exec(command) => {
            let mut events = vec![event(
                EventKind::SshExec,
                json!({"command": command, "login": authed.login}),
            )];
            if let Some((direction, path)) = sftp::scp_command(command) {
                events.push(event(
                    EventKind::SshFileTransfer,
                    json!({"protocol": "scp", "direction": direction, "path": path}),
                ));
            }
            events
        }
        Kind::Subsystem(name) => vec![event(
            EventKind::SshFileTransfer,
            json!({"protocol": name, "operation": "start", "login": authed.login}),
        )],
        Kind::Shell => return Ok(()),
    };
    shared.deps.audit.gate_all(events).await
}

/// Records a refused forwarding request through the policy gate.
pub(crate) async fn refuse_forward(shared: &Shared, authed: &Authed, forward: &str) {
    let context = RequestContext {
        source_ip: Some(authed.peer.ip()),
        forward: Some(forward.into()),
        login: Some(authed.login.clone()),
        ..RequestContext::default()
    };
    let decision = shared
        .deps
        .gate
        .check(
            &authed.principal.identity,
            Some(&authed.principal.session_id),
            Action::SshForward,
            &Resource::Target(authed.target.to_ref()),
            &context,
        )
        .await;
    if decision.is_ok() {
        tracing::info!(
            forward,
            "policy allows this forwarding, but the broker does not relay it"
        );
    }
}
