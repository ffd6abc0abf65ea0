//! The WebSocket of a data channel: opening it with the session token
//! (docs/aws-protocols.md 1.1–1.2), batched writes, and ResumeSession with
//! a new socket when it is lost (sequence state kept, everything in flight
//! resent).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use url::Url;

use super::{Engine, Phase};
use crate::ssm::codec::OpenDataChannelInput;
use crate::ssm::{Error, Options};

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(super) type Reconnecting = Pin<Box<dyn Future<Output = Result<Socket, Error>> + Send>>;

/// Largest WebSocket message accepted. Agents send at most 1 KiB of payload
/// per message; the bound keeps the out-of-order buffer small too.
const MAX_MESSAGE: usize = 256 << 10;
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Opens the WebSocket and sends OpenDataChannelInput with `token`.
pub(super) async fn open_socket(
    url: &Url,
    token: &SecretString,
    options: &Options,
) -> Result<Socket, Error> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let fail = |reason: String| Error::Connect {
        host: host.clone(),
        reason,
    };
    let socket_error = |source: tokio_tungstenite::tungstenite::Error| Error::Socket {
        host: host.clone(),
        source: Box::new(source),
    };
    let request = url.as_str().into_client_request().map_err(socket_error)?;
    let connector = match url.scheme() {
        "wss" => Connector::Rustls(tls_config()?),
        _ => Connector::Plain,
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(64 << 10);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(connector),
    );
    let (mut socket, _response) = tokio::time::timeout(options.connect_timeout, connecting)
        .await
        .map_err(|_| fail("timed out".to_owned()))?
        .map_err(socket_error)?;
    let open = OpenDataChannelInput {
        message_schema_version: "1.0",
        request_id: uuid::Uuid::new_v4().hyphenated().to_string(),
        token_value: token.expose_secret(),
        client_id: options.client_id.hyphenated().to_string(),
        client_version: &options.client_version,
    };
    let text = serde_json::to_string(&open).expect("OpenDataChannelInput serializes");
    tokio::time::timeout(options.connect_timeout, socket.send(Message::text(text)))
        .await
        .map_err(|_| fail("timed out sending the token".to_owned()))?
        .map_err(socket_error)?;
    Ok(socket)
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| Error::Connect {
            host: String::new(),
            reason,
        })
}

impl Engine {
    /// Queues a message on the socket; [`Engine::flush`] at the end of each
    /// turn of the loop writes everything queued in one go.
    pub(super) async fn write(&mut self, message: Message) {
        let Some(socket) = &mut self.socket else {
            // Reconnecting: stream frames wait in `unacked` and go out after.
            return;
        };
        match socket.feed(message).await {
            Ok(()) => self.unflushed = true,
            Err(e) => self.lost(e.to_string()),
        }
    }

    pub(super) async fn flush(&mut self) {
        self.unflushed = false;
        let Some(socket) = &mut self.socket else {
            return;
        };
        if let Err(e) = socket.flush().await {
            self.lost(e.to_string());
        }
    }

    pub(super) async fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) {
        match message {
            Some(Ok(Message::Binary(data))) => self.on_frame(data).await,
            Some(Ok(Message::Text(text))) => self.on_frame(Bytes::from(text)).await,
            Some(Ok(Message::Close(_))) | None => {
                self.lost("the service closed the connection".to_owned());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => self.lost(e.to_string()),
        }
    }

    /// The socket is gone: resume if we can, else end the session.
    pub(super) fn lost(&mut self, reason: String) {
        self.socket = None;
        if matches!(self.phase, Phase::Finished) || self.reconnecting.is_some() {
            return;
        }
        let resume = match (&self.phase, &self.options.resume) {
            (Phase::Open, Some(resume)) => resume.clone(),
            _ => return self.fail(Error::Disconnected(reason)),
        };
        tracing::info!(session_id = %self.options.session_id, %reason, "data channel lost, resuming");
        let url = self.url.clone();
        let options = self.options.clone();
        self.reconnecting = Some(Box::pin(async move {
            let mut delay = RECONNECT_BASE;
            let mut last = reason;
            for attempt in 0..options.reconnect_attempts.max(1) {
                if attempt > 0 {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
                match resume.resume(&options.session_id).await {
                    Ok(Some(token)) => match open_socket(&url, &token, &options).await {
                        Ok(socket) => return Ok(socket),
                        Err(e) => last = e.to_string(),
                    },
                    Ok(None) => return Err(Error::SessionExpired),
                    Err(e) => last = format!("resuming the session: {e}"),
                }
            }
            Err(Error::Reconnect(last))
        }));
    }

    /// A new socket after ResumeSession: resend everything in flight.
    pub(super) async fn resumed(&mut self, socket: Socket) {
        tracing::info!(session_id = %self.options.session_id, "data channel resumed");
        self.socket = Some(socket);
        self.next_ping = Instant::now() + self.options.keepalive;
        let frames: Vec<Bytes> = self.unacked.iter().map(|u| u.frame.clone()).collect();
        let now = Instant::now();
        for unacked in &mut self.unacked {
            unacked.last_sent = now;
        }
        for frame in frames {
            self.write(Message::Binary(frame)).await;
            if self.socket.is_none() {
                break;
            }
        }
    }
}

pub(super) async fn next_frame(
    socket: &mut Option<Socket>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match socket {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn poll_reconnect(
    reconnecting: &mut Option<Reconnecting>,
) -> Result<Socket, Error> {
    match reconnecting {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
