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
use super::command_log::CommandLog;
use super::handler::Authed;
use super::sftp;
use super::upstream::{self, Upstream};
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::session::SessionKind;
use crate::sessions::{EndReason, Finish, Live, NewSession, Notice, Recording};
use crate::sync::lock;

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
    let mut env: Vec<(String, String)> = Vec::new();
    let mut reason: Option<String> = authed.reason.clone();
    let mut pty: Option<Pty> = None;
    // Requests that want a reply, answered once the target answered them.
    let mut pty_pending = false;
    let kind = loop {
        let Some(message) = down_rx.wait().await else {
            return;
        };
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
                refuse_forward(&shared, &authed, "x11").await;
                let _ = handle.channel_failure(id).await;
            }
            ChannelMsg::Eof | ChannelMsg::Close => return,
            _ => {}
        }
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
            fail(format!("access to {} denied: {denied}", authed.target.name)).await;
            return;
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
            "term": pty.as_ref().map(|p| p.term.clone()),
            "pty": pty.as_ref().map(|p| format!("{}x{}", p.cols, p.rows)),
            "login": authed.login,
        }),
    };
    let recording = match &kind {
        // SFTP is audited operation by operation, its data not recorded.
        Kind::Subsystem(_) => Recording::Off,
        _ => terminal(&authed, pty.as_ref()),
    };
    let (connected, opened) = tokio::join!(
        upstream.get_or_init(|| async {
            super::handler::connect_upstream(&shared, &authed)
                .await
                .map(Arc::new)
        }),
        shared.deps.sessions.open(permit, new, recording),
    );
    let mut live = match opened {
        Ok(live) => live,
        Err(e) => {
            fail(e.to_string()).await;
            return;
        }
    };
    let upstream = match connected {
        Ok(upstream) => upstream.clone(),
        Err(e) => {
            fail(e.to_string()).await;
            live.abort(EndReason::Error(e.to_string())).await;
            return;
        }
    };

    // 3. The target's channel: the first thing that reaches the target.
    let opened = open_target_channel(&upstream, &env, pty.as_ref(), &kind).await;
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

    // 4. What the channel does, in the audit trail and the recording.
    audit_start(&shared, &authed, &live, &kind).await;
    if let (Some(recorder), Kind::Exec(command)) = (live.recorder(), &kind) {
        let _ = recorder.input(Bytes::from(format!("{command}\n"))).await;
    }

    // 5. Relay.
    let exit_status = relay(
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

type UpRead = russh::ChannelReadHalf;
type UpWrite = ChannelWriteHalf<russh::client::Msg>;

/// Opens the target channel and asks for the same things the client did.
/// Returns whether the target granted the PTY.
async fn open_target_channel(
    upstream: &Upstream,
    env: &[(String, String)],
    pty: Option<&Pty>,
    kind: &Kind,
) -> Result<(UpRead, UpWrite, bool), String> {
    let channel = upstream
        .handle
        .channel_open_session()
        .await
        .map_err(|e| format!("the target refused a session channel: {e}"))?;
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

async fn audit_start(shared: &Shared, authed: &Authed, live: &Live, kind: &Kind) {
    let email = authed.principal.email().to_owned();
    match kind {
        Kind::Exec(command) => {
            shared
                .deps
                .audit
                .note(
                    AuditEvent::new(EventKind::SshExec, Outcome::Success)
                        .actor(&email)
                        .source_ip(Some(authed.peer.ip()))
                        .target(&authed.target.name)
                        .session(live.id())
                        .details(json!({"command": command, "login": authed.login})),
                )
                .await;
            if let Some((direction, path)) = sftp::scp_command(command) {
                file_transfer(
                    shared,
                    authed,
                    live,
                    json!({"protocol": "scp", "direction": direction, "path": path}),
                )
                .await;
            }
        }
        Kind::Subsystem(name) => {
            shared
                .deps
                .audit
                .note(
                    AuditEvent::new(EventKind::SshFileTransfer, Outcome::Success)
                        .actor(&email)
                        .source_ip(Some(authed.peer.ip()))
                        .target(&authed.target.name)
                        .session(live.id())
                        .details(
                            json!({"protocol": name, "operation": "start", "login": authed.login}),
                        ),
                )
                .await;
        }
        Kind::Shell => {}
    }
}

async fn file_transfer(shared: &Shared, authed: &Authed, live: &Live, details: serde_json::Value) {
    shared
        .deps
        .audit
        .note(
            AuditEvent::new(EventKind::SshFileTransfer, Outcome::Success)
                .actor(authed.principal.email())
                .source_ip(Some(authed.peer.ip()))
                .target(&authed.target.name)
                .session(live.id())
                .details(details),
        )
        .await;
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

#[allow(clippy::too_many_arguments)]
async fn relay(
    shared: &Arc<Shared>,
    authed: &Arc<Authed>,
    live: &mut Live,
    kind: &Kind,
    mut down_rx: russh::ChannelReadHalf,
    down_tx: Arc<ChannelWriteHalf<Msg>>,
    mut up_rx: UpRead,
    up_tx: Arc<UpWrite>,
    handle: server::Handle,
    id: russh::ChannelId,
) -> Option<u32> {
    let record_keys = shared.deps.record_input && matches!(kind, Kind::Shell);
    // SFTP, as a subsystem or by running sftp-server as a command: every
    // file operation is audited, what cannot be parsed is refused.
    let sftp = match kind {
        Kind::Subsystem(_) => true,
        Kind::Exec(command) => sftp::runs_sftp_server(command),
        Kind::Shell => false,
    }
    .then(|| Arc::new(std::sync::Mutex::new(sftp::Auditor::default())));
    let cancel = live.cancel_token();
    let recorder = live.recorder().cloned();
    let commands = matches!(kind, Kind::Shell)
        .then(|| CommandLog::start(shared, authed, live.id(), recorder.clone()));

    // Client → target.
    let inbound = {
        let up_tx = up_tx.clone();
        let recorder = recorder.clone();
        let cancel = cancel.clone();
        let shared = shared.clone();
        let authed = authed.clone();
        let live_id = live.id().to_owned();
        let touch = live.counters();
        let sftp = sftp.clone();
        let commands = commands.clone();
        async move {
            loop {
                let message = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = down_rx.wait() => m,
                };
                match message {
                    Some(ChannelMsg::Data { data }) => {
                        touch.input(data.len());
                        if let Some(commands) = &commands {
                            commands.input(&data);
                        }
                        if let Some(auditor) = &sftp {
                            // Recorded before the bytes that complete them go on.
                            match sftp_client(auditor, &data) {
                                Ok(ops) => {
                                    for op in ops {
                                        let details = sftp_details(&op);
                                        audit_op(
                                            &shared,
                                            &authed,
                                            &live_id,
                                            Outcome::Success,
                                            details,
                                        )
                                        .await;
                                    }
                                }
                                Err(sftp::Refused(reason)) => {
                                    let details = json!({"protocol": "sftp", "operation": "refused", "reason": reason});
                                    audit_op(&shared, &authed, &live_id, Outcome::Denied, details)
                                        .await;
                                    return Some(format!("refused: {reason}"));
                                }
                            }
                        }
                        // Unrecorded input goes nowhere (fail closed).
                        if record_keys
                            && let Some(r) = &recorder
                            && r.input(data.clone()).await.is_err()
                        {
                            break;
                        }
                        if up_tx.data_bytes(data).await.is_err() {
                            break;
                        }
                    }
                    Some(ChannelMsg::WindowChange {
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                    }) => {
                        let _ = up_tx
                            .window_change(col_width, row_height, pix_width, pix_height)
                            .await;
                        if let Some(r) = &recorder {
                            let _ = r
                                .resize(
                                    col_width.min(u32::from(u16::MAX)) as u16,
                                    row_height.min(u32::from(u16::MAX)) as u16,
                                )
                                .await;
                        }
                    }
                    Some(ChannelMsg::Signal { signal }) => {
                        let _ = up_tx.signal(signal).await;
                    }
                    Some(ChannelMsg::Eof) => {
                        let _ = up_tx.eof().await;
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
            None
        }
    };

    // Target → client.
    let outbound = {
        let down_tx = down_tx.clone();
        let recorder = recorder.clone();
        let handle = handle.clone();
        let cancel = cancel.clone();
        let touch = live.counters();
        let sftp = sftp.clone();
        let shared = shared.clone();
        let authed = authed.clone();
        let live_id = live.id().to_owned();
        let commands = commands.clone();
        async move {
            let mut exit_status = None;
            loop {
                let message = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = up_rx.wait() => m,
                };
                match message {
                    Some(ChannelMsg::Data { data }) => {
                        touch.output(data.len());
                        if let Some(auditor) = &sftp {
                            let ops = lock(auditor).server(&data);
                            for op in ops {
                                let details = sftp_details(&op);
                                audit_op(&shared, &authed, &live_id, Outcome::Success, details)
                                    .await;
                            }
                        }
                        // Unrecorded output goes nowhere (fail closed).
                        if let Some(r) = &recorder
                            && r.output(data.clone()).await.is_err()
                        {
                            break;
                        }
                        if let Some(commands) = &commands {
                            commands.output(&data).await;
                        }
                        if down_tx.data_bytes(data).await.is_err() {
                            break;
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, ext }) => {
                        touch.output(data.len());
                        if let Some(r) = &recorder
                            && r.output(data.clone()).await.is_err()
                        {
                            break;
                        }
                        if down_tx.extended_data_bytes(ext, data).await.is_err() {
                            break;
                        }
                    }
                    Some(ChannelMsg::ExitStatus {
                        exit_status: status,
                    }) => {
                        exit_status = Some(status);
                        let _ = down_tx.exit_status(status).await;
                    }
                    Some(ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    }) => {
                        let _ = handle
                            .exit_signal_request(
                                id,
                                signal_name,
                                core_dumped,
                                error_message,
                                lang_tag,
                            )
                            .await;
                    }
                    Some(ChannelMsg::Eof) => {
                        let _ = down_tx.eof().await;
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
            exit_status
        }
    };

    let mut inbound = tokio::spawn(inbound);
    let outbound = tokio::spawn(outbound);
    tokio::pin!(outbound);
    let mut inbound_done = false;
    let exit_status;
    loop {
        tokio::select! {
            result = &mut outbound => {
                exit_status = result.ok().flatten();
                // The target is done: the client's side ends too.
                if live.end_reason().is_none() {
                    live.end(EndReason::UpstreamClosed);
                }
                break;
            }
            notice = live.notice() => {
                let Notice::Warning(text) = notice;
                let _ = down_tx.extended_data_bytes(1, Bytes::from(format!("\r\n{text}\r\n"))).await;
                if let Some(r) = &recorder {
                    let _ = r.marker(text).await;
                }
            }
            result = &mut inbound, if !inbound_done => {
                inbound_done = true;
                match result {
                    // A refused SFTP packet ends the session.
                    Ok(Some(refusal)) => live.end(EndReason::Error(refusal)),
                    // The client closed: the target side ends too.
                    _ if live.end_reason().is_none() => live.end(EndReason::Closed),
                    _ => {}
                }
            }
        }
    }
    let reason = live.end_reason();
    let broker_ended = reason.as_ref().is_some_and(|r| !r.is_normal());
    if broker_ended && let Some(reason) = &reason {
        let message = reason.message();
        let _ = down_tx
            .extended_data_bytes(1, Bytes::from(format!("\r\npam: {message}\r\n")))
            .await;
        if let Some(r) = &recorder {
            let _ = r.marker(message).await;
        }
        let _ = down_tx.exit_status(exit_status.unwrap_or(255)).await;
    }
    inbound.abort();
    // Files still open when the channel ended, with what they moved.
    if let Some(auditor) = &sftp {
        let ops = lock(auditor).finish();
        for op in ops {
            audit_op(
                shared,
                authed,
                live.id(),
                Outcome::Success,
                sftp_details(&op),
            )
            .await;
        }
    }
    let _ = up_tx.close().await;
    let _ = down_tx.eof().await;
    let _ = down_tx.close().await;
    drop(recorder);
    exit_status
}

/// Client bytes through the SFTP auditor; a server speaking another
/// version than 3 cannot be followed, so its requests are refused too.
fn sftp_client(
    auditor: &std::sync::Mutex<sftp::Auditor>,
    data: &[u8],
) -> Result<Vec<sftp::Operation>, sftp::Refused> {
    let mut auditor = lock(auditor);
    if let Some(version) = auditor.unsupported_version() {
        return Err(sftp::Refused(format!(
            "the server speaks SFTP version {version}; the broker audits version 3 only"
        )));
    }
    auditor.client(data)
}

fn sftp_details(op: &sftp::Operation) -> serde_json::Value {
    use sftp::Operation as Op;
    let (operation, mut details) = match op {
        Op::Open { path, direction } => ("open", json!({"direction": direction, "path": path})),
        Op::Close {
            path,
            direction,
            bytes_read,
            bytes_written,
            closed,
        } => (
            "close",
            json!({
                "path": path,
                "direction": direction,
                "bytes_read": bytes_read,
                "bytes_written": bytes_written,
                "closed": closed,
            }),
        ),
        Op::Remove { path } => ("remove", json!({"path": path})),
        Op::Rename { from, to } => ("rename", json!({"path": from, "to": to})),
        Op::Mkdir { path } => ("mkdir", json!({"path": path})),
        Op::Rmdir { path } => ("rmdir", json!({"path": path})),
        Op::Setstat { path, changes } => ("setstat", json!({"path": path, "changes": changes})),
        Op::Symlink { target, link } => ("symlink", json!({"path": link, "to": target})),
        Op::Hardlink { target, link } => ("hardlink", json!({"path": link, "to": target})),
        Op::List { path } => ("list", json!({"path": path})),
        Op::Copy { from, to, length } => {
            ("copy", json!({"path": from, "to": to, "length": length}))
        }
        Op::Extended { name } => ("extended", json!({"name": name})),
    };
    details["protocol"] = json!("sftp");
    details["operation"] = json!(operation);
    details
}

async fn audit_op(
    shared: &Shared,
    authed: &Authed,
    session_id: &str,
    outcome: Outcome,
    details: serde_json::Value,
) {
    shared
        .deps
        .audit
        .note(
            AuditEvent::new(EventKind::SshFileTransfer, outcome)
                .actor(authed.principal.email())
                .source_ip(Some(authed.peer.ip()))
                .target(&authed.target.name)
                .session(session_id)
                .details(details),
        )
        .await;
}
