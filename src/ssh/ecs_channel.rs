//! An SSH session channel whose target is an ECS container: the broker
//! opens ECS Exec (the SSM data channel) with its own AWS identity and
//! relays it like a host's shell, with the same policy gate (`ecs_exec`),
//! recording, limits and audit. `pam exec` reaches the same code through
//! the SSH room.

use std::sync::Arc;

use bytes::Bytes;
use russh::server::{self, Msg};
use russh::{ChannelMsg, ChannelWriteHalf};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::channel::{Kind, Pty, refuse, terminal};
use super::handler::Authed;
use crate::audit::recording::Recorder;
use crate::config::TargetKind;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::session::SessionKind;
use crate::sessions::{Counters, EndReason, Finish, Live, NewSession, Notice};
use crate::ssm::Event;

/// What the client asked for on the channel.
pub(crate) struct Request {
    pub kind: Kind,
    pub pty: Option<Pty>,
    pub pty_pending: bool,
    pub reason: Option<String>,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    authed: Arc<Authed>,
    request: Request,
    down_rx: russh::ChannelReadHalf,
    down_tx: ChannelWriteHalf<Msg>,
    handle: server::Handle,
    id: russh::ChannelId,
) {
    let TargetKind::Ecs(target) = &authed.target.kind else {
        return;
    };
    let Request {
        kind,
        pty,
        pty_pending,
        reason,
    } = request;
    let fail = |message: String| refuse(&down_tx, &handle, id, pty_pending, message);
    let command = match &kind {
        Kind::Shell => None,
        Kind::Exec(command) => Some(command.clone()),
        Kind::Subsystem(name) => {
            fail(format!(
                "the {name} subsystem is not available in ECS containers"
            ))
            .await;
            return;
        }
    };

    let (mut live, mut shell) = match start(
        &shared,
        &authed,
        target,
        &kind,
        command.as_deref(),
        pty.as_ref(),
        reason,
    )
    .await
    {
        Ok(started) => started,
        Err((message, live)) => {
            fail(message.clone()).await;
            if let Some(live) = live {
                live.abort(EndReason::Error(message)).await;
            }
            return;
        }
    };
    let meta = serde_json::to_value(shell.meta()).unwrap_or_default();
    let recorder = live.recorder().cloned();
    if pty_pending {
        let _ = handle.channel_success(id).await;
    }
    let _ = handle.channel_success(id).await;
    if let Some(message) = &shell.info().customer_message
        && !message.is_empty()
    {
        let _ = down_tx
            .extended_data_bytes(1, Bytes::from(format!("{message}\r\n")))
            .await;
    }
    if let (Some(command), Some(r)) = (&command, &recorder) {
        let _ = r.input(Bytes::from(format!("{command}\n"))).await;
    }

    // Relay: client → container on a task, container → client here.
    let record_keys = shared.deps.record_input && matches!(kind, Kind::Shell);
    let input = shell.input().clone();
    let counters = live.counters();
    let inbound = tokio::spawn(client_to_container(
        down_rx,
        input.clone(),
        recorder.clone(),
        live.cancel_token(),
        counters,
        record_keys,
    ));
    let (exit_status, broker_ended) =
        container_to_client(&mut shell, &mut live, &down_tx, recorder.as_ref(), inbound).await;
    let _ = shell.close().await;
    let status = exit_status.unwrap_or(if broker_ended { 255 } else { 0 });
    let _ = down_tx.exit_status(status).await;
    let _ = down_tx.eof().await;
    let _ = down_tx.close().await;
    drop(recorder);
    live.finish(Finish {
        exit_status: exit_status.map(i64::from),
        details: json!({"channel": kind.name(), "ecs": meta}),
    })
    .await;
}

/// Client → container: keystrokes (recorded when `record_keys`), window
/// sizes and signals, until the client closes or the session is cancelled.
async fn client_to_container(
    mut down_rx: russh::ChannelReadHalf,
    input: crate::ssm::Input,
    recorder: Option<Recorder>,
    cancel: CancellationToken,
    counters: Counters,
    record_keys: bool,
) {
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            m = down_rx.wait() => m,
        };
        match message {
            Some(ChannelMsg::Data { data }) => {
                counters.input(data.len());
                // Unrecorded input goes nowhere (fail closed).
                if record_keys
                    && let Some(r) = &recorder
                    && r.input(data.clone()).await.is_err()
                {
                    break;
                }
                if input.send_input(&data).await.is_err() {
                    break;
                }
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                let _ = input.resize(col_width, row_height).await;
                if let Some(r) = &recorder {
                    let _ = r
                        .resize(
                            col_width.min(u32::from(u16::MAX)) as u16,
                            row_height.min(u32::from(u16::MAX)) as u16,
                        )
                        .await;
                }
            }
            // Signals travel as the bytes a terminal would send.
            Some(ChannelMsg::Signal { signal }) => {
                let byte: &[u8] = match signal {
                    russh::Sig::INT => b"\x03",
                    russh::Sig::QUIT => b"\x1c",
                    _ => b"",
                };
                if !byte.is_empty() {
                    let _ = input.send_input(byte).await;
                }
            }
            Some(ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
}

/// Container → client, the broker's notices, and the end: returns the
/// command's exit status (if it sent one) and whether the broker ended the
/// session (the client was told why).
async fn container_to_client(
    shell: &mut crate::ecs::Shell,
    live: &mut Live,
    down_tx: &ChannelWriteHalf<Msg>,
    recorder: Option<&Recorder>,
    inbound: tokio::task::JoinHandle<()>,
) -> (Option<u32>, bool) {
    let out_counters = live.counters();
    let cancel = live.cancel_token();
    let mut exit_status: Option<u32> = None;
    let mut inbound = inbound;
    loop {
        tokio::select! {
            event = shell.recv() => match event {
                Some(Event::Output(data)) => {
                    out_counters.output(data.len());
                    // Unrecorded output goes nowhere (fail closed).
                    if let Some(r) = recorder
                        && r.output(data.clone()).await.is_err()
                    {
                        break;
                    }
                    if down_tx.data_bytes(data).await.is_err() {
                        live.end(EndReason::Closed);
                        break;
                    }
                }
                Some(Event::StdErr(data)) => {
                    out_counters.output(data.len());
                    if let Some(r) = recorder
                        && r.output(data.clone()).await.is_err()
                    {
                        break;
                    }
                    let _ = down_tx.extended_data_bytes(1, data).await;
                }
                Some(Event::ExitCode(code)) => exit_status = Some(code.clamp(0, 255) as u32),
                Some(Event::Flag(_)) => {}
                Some(Event::Closed(message)) => {
                    if let Some(message) = message.filter(|m| !m.is_empty()) {
                        let _ = down_tx.extended_data_bytes(1, Bytes::from(format!("\r\n{message}\r\n"))).await;
                    }
                    if live.end_reason().is_none() {
                        live.end(EndReason::UpstreamClosed);
                    }
                    break;
                }
                Some(Event::Failed(e)) => {
                    live.end(EndReason::Error(e.to_string()));
                    break;
                }
                None => {
                    if live.end_reason().is_none() {
                        live.end(EndReason::UpstreamClosed);
                    }
                    break;
                }
            },
            _ = cancel.cancelled() => break,
            notice = live.notice() => {
                let Notice::Warning(text) = notice;
                let _ = down_tx.extended_data_bytes(1, Bytes::from(format!("\r\n{text}\r\n"))).await;
                if let Some(r) = recorder {
                    let _ = r.marker(text).await;
                }
            }
            _ = &mut inbound => {
                if live.end_reason().is_none() {
                    live.end(EndReason::Closed);
                }
                break;
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
        if let Some(r) = recorder {
            let _ = r.marker(message).await;
        }
    }
    inbound.abort();
    (exit_status, broker_ended)
}

/// Policy, then the session's records while the task is chosen, then
/// ExecuteCommand. Refused: what to tell the client, and the live session
/// to abort if it was opened.
async fn start(
    shared: &Shared,
    authed: &Authed,
    target: &crate::config::EcsTarget,
    kind: &Kind,
    command: Option<&str>,
    pty: Option<&Pty>,
    reason: Option<String>,
) -> Result<(Live, crate::ecs::Shell), (String, Option<Live>)> {
    // Policy first. Choosing the task (reads of the ECS control plane)
    // overlaps with writing the decision and the session's records; the
    // command runs (ExecuteCommand) only once they are durable.
    let principal = &authed.principal;
    let context = RequestContext {
        source_ip: Some(authed.peer.ip()),
        reason,
        ..RequestContext::default()
    };
    let permit = match shared
        .deps
        .gate
        .permit(
            principal,
            Action::EcsExec,
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
    let size = pty.map(|p| (p.cols, p.rows)).unwrap_or((80, 24));
    let new = NewSession {
        kind: SessionKind::Ecs,
        login: None,
        client: authed.client.clone(),
        details: json!({
            "channel": kind.name(),
            "command": command,
            "cluster": target.cluster,
            "service": target.service,
            "container": target.container,
            "pty": pty.map(|p| format!("{}x{}", p.cols, p.rows)),
        }),
    };
    let (selected, opened) = tokio::join!(
        crate::ecs::select(target, &shared.deps.aws),
        shared
            .deps
            .sessions
            .open(permit, new, terminal(authed, pty)),
    );
    let live = match opened {
        Ok(live) => live,
        Err(e) => return Err((e.to_string(), None)),
    };
    let selected = match selected {
        Ok(selected) => selected,
        Err(e) => return Err((e.to_string(), Some(live))),
    };
    // The command is on record (durable) before ExecuteCommand runs it.
    if let Some(command) = command {
        let exec = AuditEvent::new(EventKind::SshExec, Outcome::Success)
            .actor(authed.principal.email())
            .source_ip(Some(authed.peer.ip()))
            .target(&authed.target.name)
            .session(live.id())
            .details(json!({"command": command, "ecs": {
                "cluster": target.cluster,
                "task_arn": selected.task_arn(),
                "container": selected.container(),
            }}));
        if let Err(e) = shared.deps.audit.gate(exec).await {
            return Err((format!("refused: {e}"), Some(live)));
        }
    }
    let executed = crate::ecs::execute(selected, target, &shared.deps.aws, command, size).await;
    match executed {
        Ok(shell) => Ok((live, shell)),
        Err(e) => Err((e.to_string(), Some(live))),
    }
}
