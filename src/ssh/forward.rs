//! One `direct-tcpip` channel (`ssh -L`, `ssh -W`, ProxyJump) from open to
//! close: a session like a shell. Policy (`ssh_forward`, context
//! `forward = "tcp"`) decides through the gate, `Sessions::open` makes the
//! session durable before the target opens the connection, the registry's
//! limits, termination and revocation end it, and `session.end` carries
//! its byte counts. The connection goes out from the target, like
//! OpenSSH's own forwarding; nothing is recorded besides the counts.

use std::sync::Arc;

use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use serde_json::json;

use super::Shared;
use super::channel::UpstreamCell;
use super::handler::{Authed, connect_upstream};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::session::SessionKind;
use crate::sessions::{EndReason, Finish, NewSession, Recording};

/// Where the client asked to be connected, and from where.
pub(crate) struct Destination {
    pub host: String,
    pub port: u32,
    pub originator: String,
    pub originator_port: u32,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    authed: Arc<Authed>,
    upstream: UpstreamCell,
    channel: Channel<Msg>,
    reply: russh::server::ChannelOpenHandle,
    to: Destination,
) {
    // 1. Policy, recorded; the record is durable before the target hears
    // of this forward (`Sessions::open`).
    let context = RequestContext {
        source_ip: Some(authed.peer.ip()),
        forward: Some("tcp".into()),
        login: Some(authed.login.clone()),
        reason: authed.reason.clone(),
        ..RequestContext::default()
    };
    let permit = match shared
        .deps
        .gate
        .permit(
            &authed.principal,
            Action::SshForward,
            Resource::Target(authed.target.to_ref()),
            context,
        )
        .await
    {
        Ok(permit) => permit,
        Err(_) => {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
    };

    // 2. The session and the broker's connection to the target, at once.
    let new = NewSession {
        kind: SessionKind::Ssh,
        login: Some(authed.login.clone()),
        client: authed.client.clone(),
        details: json!({
            "channel": "direct-tcpip",
            "forward": "tcp",
            "host": to.host,
            "port": to.port,
            "originator": format!("{}:{}", to.originator, to.originator_port),
            "login": authed.login,
        }),
    };
    let (connected, opened) = tokio::join!(
        upstream.get_or_init(|| async { connect_upstream(&shared, &authed).await.map(Arc::new) }),
        shared.deps.sessions.open(permit, new, Recording::Off),
    );
    let mut live = match opened {
        Ok(live) => live,
        Err(e) => {
            tracing::info!(error = %e, "forward refused");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
    };
    let upstream = match connected {
        Ok(upstream) => upstream.clone(),
        Err(e) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            live.abort(EndReason::Error(e.to_string())).await;
            return;
        }
    };

    // 3. The target opens the connection: the first thing it hears.
    let target = match upstream
        .handle
        .channel_open_direct_tcpip(
            to.host.clone(),
            to.port,
            to.originator.clone(),
            to.originator_port,
        )
        .await
    {
        Ok(target) => target,
        Err(e) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            live.abort(EndReason::Error(format!(
                "the target could not open {}:{}: {e}",
                to.host, to.port
            )))
            .await;
            return;
        }
    };
    reply.accept().await;

    // 4. Relay until either side closes or the broker ends the session.
    let (mut down_rx, down_tx) = channel.split();
    let (mut up_rx, up_tx) = target.split();
    let counters = live.counters();
    let cancel = live.cancel_token();
    let inbound = {
        let counters = counters.clone();
        let up_tx = &up_tx;
        let down_rx = &mut down_rx;
        async move {
            while let Some(message) = down_rx.wait().await {
                match message {
                    ChannelMsg::Data { data } => {
                        counters.input(data.len());
                        if up_tx.data_bytes(data).await.is_err() {
                            break;
                        }
                    }
                    ChannelMsg::Eof => {
                        let _ = up_tx.eof().await;
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
        }
    };
    let outbound = async {
        while let Some(message) = up_rx.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    counters.output(data.len());
                    if down_tx.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = down_tx.eof().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    // A forward has no terminal to warn on: its notices are dropped.
    let notices = async {
        loop {
            let _ = live.notice().await;
        }
    };
    let reason = tokio::select! {
        _ = cancel.cancelled() => None,
        _ = inbound => Some(EndReason::Closed),
        _ = outbound => Some(EndReason::UpstreamClosed),
        _ = notices => None,
    };
    if let Some(reason) = reason {
        live.end(reason);
    }
    let _ = up_tx.eof().await;
    let _ = up_tx.close().await;
    let _ = down_tx.eof().await;
    let _ = down_tx.close().await;
    live.finish(Finish {
        exit_status: None,
        details: json!({"channel": "direct-tcpip", "target_host_key": upstream.host_key}),
    })
    .await;
}
