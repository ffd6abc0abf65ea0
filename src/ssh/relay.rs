//! Both directions of a session channel once it is open: bytes relayed,
//! recorded and counted, SFTP operations audited (a request that cannot be
//! parsed ends the session), shell commands logged, and the end told to
//! the client.

use std::sync::Arc;

use bytes::Bytes;
use russh::server::{self, Msg};
use russh::{ChannelMsg, ChannelWriteHalf};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::channel::{Kind, UpRead, UpWrite};
use super::command_log::CommandLog;
use super::handler::Authed;
use super::sftp;
use crate::audit::recording::Recorder;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::sessions::{Counters, EndReason, Live, Notice};
use crate::sync::lock;

#[allow(clippy::too_many_arguments)]
pub(super) async fn relay(
    shared: &Arc<Shared>,
    authed: &Arc<Authed>,
    live: &mut Live,
    kind: &Kind,
    down_rx: russh::ChannelReadHalf,
    down_tx: Arc<ChannelWriteHalf<Msg>>,
    up_rx: UpRead,
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

    let pipe = Pipe {
        shared: shared.clone(),
        authed: authed.clone(),
        live_id: live.id().to_owned(),
        recorder: recorder.clone(),
        cancel: cancel.clone(),
        counters: live.counters(),
        sftp: sftp.clone(),
        commands: commands.clone(),
    };
    let inbound = client_to_target(pipe.clone(), down_rx, up_tx.clone(), record_keys);
    let outbound = target_to_client(pipe, up_rx, down_tx.clone(), handle, id);

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

/// What both directions of a relayed channel share.
#[derive(Clone)]
struct Pipe {
    shared: Arc<Shared>,
    authed: Arc<Authed>,
    live_id: String,
    recorder: Option<Recorder>,
    cancel: CancellationToken,
    counters: Counters,
    /// SFTP's auditor, when the channel runs SFTP.
    sftp: Option<Arc<std::sync::Mutex<sftp::Auditor>>>,
    /// Shell commands from the screen, for shells.
    commands: Option<CommandLog>,
}

/// Client → target. Returns why an SFTP request was refused, if one was.
async fn client_to_target(
    pipe: Pipe,
    mut down_rx: russh::ChannelReadHalf,
    up_tx: Arc<UpWrite>,
    record_keys: bool,
) -> Option<String> {
    loop {
        let message = tokio::select! {
            _ = pipe.cancel.cancelled() => break,
            m = down_rx.wait() => m,
        };
        match message {
            Some(ChannelMsg::Data { data }) => {
                pipe.counters.input(data.len());
                if let Some(commands) = &pipe.commands {
                    commands.input(&data);
                }
                if let Some(auditor) = &pipe.sftp {
                    // Recorded before the bytes that complete them go on.
                    match sftp_client(auditor, &data) {
                        Ok(ops) => {
                            for op in ops {
                                let details = sftp_details(&op);
                                audit_op(
                                    &pipe.shared,
                                    &pipe.authed,
                                    &pipe.live_id,
                                    Outcome::Success,
                                    details,
                                )
                                .await;
                            }
                        }
                        Err(sftp::Refused(reason)) => {
                            let details = json!({"protocol": "sftp", "operation": "refused", "reason": reason});
                            audit_op(
                                &pipe.shared,
                                &pipe.authed,
                                &pipe.live_id,
                                Outcome::Denied,
                                details,
                            )
                            .await;
                            return Some(format!("refused: {reason}"));
                        }
                    }
                }
                // Unrecorded input goes nowhere (fail closed).
                if record_keys
                    && let Some(r) = &pipe.recorder
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
                if let Some(r) = &pipe.recorder {
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

/// Target → client. Returns the command's exit status, if it sent one.
async fn target_to_client(
    pipe: Pipe,
    mut up_rx: UpRead,
    down_tx: Arc<ChannelWriteHalf<Msg>>,
    handle: server::Handle,
    id: russh::ChannelId,
) -> Option<u32> {
    let mut exit_status = None;
    loop {
        let message = tokio::select! {
            _ = pipe.cancel.cancelled() => break,
            m = up_rx.wait() => m,
        };
        match message {
            Some(ChannelMsg::Data { data }) => {
                pipe.counters.output(data.len());
                if let Some(auditor) = &pipe.sftp {
                    let ops = lock(auditor).server(&data);
                    for op in ops {
                        let details = sftp_details(&op);
                        audit_op(
                            &pipe.shared,
                            &pipe.authed,
                            &pipe.live_id,
                            Outcome::Success,
                            details,
                        )
                        .await;
                    }
                }
                // Unrecorded output goes nowhere (fail closed).
                if let Some(r) = &pipe.recorder
                    && r.output(data.clone()).await.is_err()
                {
                    break;
                }
                if let Some(commands) = &pipe.commands {
                    commands.output(&data).await;
                }
                if down_tx.data_bytes(data).await.is_err() {
                    break;
                }
            }
            Some(ChannelMsg::ExtendedData { data, ext }) => {
                pipe.counters.output(data.len());
                if let Some(r) = &pipe.recorder
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
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
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
