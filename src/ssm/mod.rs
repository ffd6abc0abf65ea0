//! The SSM Session Manager data channel, client side: what the AWS
//! session-manager-plugin does, as a library the broker drives
//! (docs/aws-protocols.md section 1).
//!
//! `ecs:ExecuteCommand` and `ssm:StartSession` return a stream URL and a
//! token; [`Session::connect`] opens the WebSocket, answers the agent's
//! handshake (session type, optional KMS encryption) and hands back a
//! session that carries terminal or port bytes reliably: per-direction
//! sequence numbers, acknowledgements, retransmission with a Jacobson/Karels
//! RTO, reordering, duplicate suppression, and reconnection through
//! `ssm:ResumeSession` with the sequence state kept.
//!
//! # Using a session
//!
//! ```no_run
//! # async fn example(url: &str, token: secrecy::SecretString) -> Result<(), pam::ssm::Error> {
//! use pam::ssm::{Event, Options, Session};
//! let mut options = Options::new("session-id", "ecs:cluster_task_runtime");
//! options.initial_size = Some((120, 40));
//! let mut session = Session::connect(url, &token, options).await?;
//! session.send_input(b"echo hi; exit 3\r").await?;
//! while let Some(event) = session.recv().await {
//!     match event {
//!         Event::Output(bytes) | Event::StdErr(bytes) => { /* to the user, and the recording */ }
//!         Event::ExitCode(code) => { /* the command's exit status */ }
//!         Event::Flag(_) => {}
//!         Event::Closed(_) | Event::Failed(_) => break,
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! [`Session::recv`] is cancel-safe, so a caller can `select!` on it next to
//! its own input; [`Session::split`] gives an [`Input`] (cheap to clone, for
//! another task) and an [`Output`]. Every queue is bounded: a caller that
//! stops reading stops the channel from reading the socket (and the agent,
//! through TCP, from sending), and writers wait while 1024 messages are
//! unacknowledged.
//!
//! Port forwarding sessions go to [`port::Tunnel`], which turns the
//! session into `AsyncRead + AsyncWrite` streams (smux v1, or the basic
//! one-connection mode for old agents).
//!
//! Not here, on purpose: AWS API calls (the caller injects [`Resume`] and
//! [`crypto::DataKeys`]; `crate::ecs` wires them to `crate::aws`), and
//! recording or audit (the rooms do that with the bytes they receive).

mod channel;
pub mod codec;
pub mod crypto;
pub mod port;
pub mod smux;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ssm::codec::{Flag, Header, MessageType, PayloadType, SizeData};
use crate::ssm::crypto::{Cipher, DataKeys};

/// The plugin version the broker reports to agents. Agents gate features on
/// the client's version (separate stdout/stderr needs > 1.2.295), so it
/// names the plugin release whose protocol this module implements.
pub const CLIENT_VERSION: &str = "1.2.650.0";

/// Settings of one data channel. [`Options::new`] gives the plugin's
/// defaults.
#[derive(Clone)]
pub struct Options {
    /// The session id from StartSession/ExecuteCommand (for ResumeSession and
    /// the KMS encryption context).
    pub session_id: String,
    /// The SSM target (`i-…` or `ecs:CLUSTER_TASKID_RUNTIMEID`), for the KMS
    /// encryption context.
    pub target_id: String,
    /// Identifies this client to the service; one per broker process is fine.
    pub client_id: Uuid,
    pub client_version: String,
    /// Terminal size (cols, rows) sent right after the handshake of a shell
    /// session. `None` sends nothing.
    pub initial_size: Option<(u32, u32)>,
    /// Bound on opening the WebSocket (TCP, TLS, HTTP upgrade).
    pub connect_timeout: Duration,
    /// Bound on the whole handshake, including a KMS call.
    pub handshake_timeout: Duration,
    /// WebSocket ping interval (the plugin: 5 minutes).
    pub keepalive: Duration,
    /// Retransmissions of one message before the session fails (the plugin:
    /// 3000, about 5 minutes).
    pub resend_max_attempts: u32,
    /// Unacknowledged messages before writers wait.
    pub max_unacked: usize,
    /// Ahead-of-order messages buffered before later ones are dropped
    /// unacknowledged (the agent retransmits them).
    pub max_out_of_order: usize,
    /// Events buffered for a slow reader before the socket is no longer read.
    pub event_buffer: usize,
    /// ResumeSession attempts after a lost socket, with exponential backoff
    /// from 100 ms to 5 s.
    pub reconnect_attempts: u32,
    /// How to get a new token after a lost socket; `None` ends the session.
    pub resume: Option<Arc<dyn Resume>>,
    /// KMS data keys, needed if the agent asks for encryption.
    pub data_keys: Option<Arc<dyn DataKeys>>,
}

/// Gets a fresh token for an existing session (`ssm:ResumeSession`).
/// `Ok(None)` means the session is gone (timed out or terminated).
pub trait Resume: Send + Sync {
    fn resume<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretString>, Box<dyn std::error::Error + Send + Sync>>>;
}

/// What the agent told us in the handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub session_id: String,
    /// `None` when the agent predates the handshake (its first message was output).
    pub agent_version: Option<String>,
    pub session_type: SessionType,
    /// The SessionType action's `Properties` (port sessions: `portNumber`, `type`, …).
    pub properties: serde_json::Value,
    /// The KMS key when the session is encrypted.
    pub kms_key_id: Option<String>,
    /// Text the agent wants shown to the user (HandshakeComplete).
    pub customer_message: Option<String>,
}

/// The session types a client can handle (docs/aws-protocols.md 1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    StandardStream,
    InteractiveCommands,
    NonInteractiveCommands,
    Port,
}

/// What a session delivers, in order. `Closed` and `Failed` are the last
/// event; after them [`Session::recv`] returns `None`.
#[derive(Debug)]
pub enum Event {
    /// Terminal output or port bytes.
    Output(Bytes),
    /// Standard error of a non-interactive command (and agent error text).
    StdErr(Bytes),
    /// The command's exit status (agents send it for commands; an
    /// interactive ECS Exec shell may end with `Closed` alone).
    ExitCode(i32),
    /// A flag from the agent (ConnectToPortError).
    Flag(Flag),
    /// The session ended: `channel_closed` from the service (with its
    /// message, if any), or `None` after [`Session::close`].
    Closed(Option<String>),
    /// The channel failed and could not recover.
    Failed(Error),
}

/// Why a data channel could not be opened or kept.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid stream URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("invalid stream URL: scheme {0:?} is not ws or wss")]
    UrlScheme(String),
    #[error("connecting the data channel to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("connecting the data channel to {host}: {source}")]
    Socket {
        host: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("the data channel handshake timed out")]
    HandshakeTimeout,
    #[error("data channel handshake: {0}")]
    Handshake(String),
    #[error("data channel handshake: {0}")]
    HandshakeMessage(#[source] codec::Error),
    #[error("data channel handshake: {what}: {source}")]
    HandshakeJson {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent asked for session type {0:?}, which is not supported")]
    SessionType(String),
    #[error("session encryption: {0}")]
    Encryption(#[source] EncryptionError),
    #[error("message {sequence} was not acknowledged after {attempts} retransmissions")]
    ResendTimeout { sequence: i64, attempts: u32 },
    #[error("the data channel was lost and could not be resumed: {0}")]
    Reconnect(String),
    #[error("the session expired while the data channel was lost")]
    SessionExpired,
    #[error("the data channel connection was lost: {0}")]
    Disconnected(String),
    #[error("the session is closed")]
    Closed,
    #[error(transparent)]
    Codec(#[from] codec::Error),
}

/// Why session encryption failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("the agent requires KMS encryption and no KMS access is configured")]
    NotConfigured,
    #[error("generating a data key: {0}")]
    DataKey(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("challenge without a data key")]
    NoDataKey,
    #[error("challenge: {0}")]
    ChallengeEncoding(#[source] base64::DecodeError),
    #[error("challenge: {0}")]
    Challenge(#[source] crypto::Error),
    #[error(transparent)]
    Cipher(#[from] crypto::Error),
}

/// A connected data channel after its handshake.
pub struct Session {
    input: Input,
    output: Output,
}

/// The writing half: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Input {
    commands: mpsc::Sender<channel::Command>,
    closing: CancellationToken,
    cipher: Option<Arc<Cipher>>,
    info: Arc<Info>,
}

/// The reading half.
pub struct Output {
    events: mpsc::Receiver<Event>,
    info: Arc<Info>,
}

impl Options {
    /// The plugin's defaults for `session_id` on `target_id`.
    pub fn new(session_id: impl Into<String>, target_id: impl Into<String>) -> Options {
        Options {
            session_id: session_id.into(),
            target_id: target_id.into(),
            client_id: Uuid::new_v4(),
            client_version: CLIENT_VERSION.to_owned(),
            initial_size: None,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(5 * 60),
            resend_max_attempts: 3000,
            max_unacked: 1024,
            max_out_of_order: 1024,
            event_buffer: 64,
            reconnect_attempts: 5,
            resume: None,
            data_keys: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("session_id", &self.session_id)
            .field("target_id", &self.target_id)
            .field("client_id", &self.client_id)
            .field("initial_size", &self.initial_size)
            .field("resume", &self.resume.is_some())
            .field("data_keys", &self.data_keys.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionType {
    pub fn parse(name: &str) -> Option<SessionType> {
        match name {
            "Standard_Stream" => Some(SessionType::StandardStream),
            "InteractiveCommands" => Some(SessionType::InteractiveCommands),
            "NonInteractiveCommands" => Some(SessionType::NonInteractiveCommands),
            "Port" => Some(SessionType::Port),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::StandardStream => "Standard_Stream",
            SessionType::InteractiveCommands => "InteractiveCommands",
            SessionType::NonInteractiveCommands => "NonInteractiveCommands",
            SessionType::Port => "Port",
        }
    }

    /// Shell-like sessions carry a terminal (the plugin's shell handler).
    pub fn is_shell(self) -> bool {
        self != SessionType::Port
    }
}

impl Info {
    /// Whether payloads are encrypted end to end with a KMS data key.
    pub fn encrypted(&self) -> bool {
        self.kms_key_id.is_some()
    }

    /// Whether the agent's version is strictly greater than `version`
    /// (how the plugin gates features). Unknown versions compare as 0.
    pub fn agent_newer_than(&self, version: &str) -> bool {
        let agent = self.agent_version.as_deref().unwrap_or("0");
        version_newer(agent, version)
    }
}

impl Session {
    /// Opens the data channel at `stream_url` with `token` and completes the
    /// handshake. Fails if the agent wants something this client cannot do
    /// (an unknown session type, or encryption without `options.data_keys`).
    pub async fn connect(
        stream_url: &str,
        token: &SecretString,
        options: Options,
    ) -> Result<Session, Error> {
        channel::connect(stream_url, token, options).await
    }

    pub fn info(&self) -> &Info {
        &self.input.info
    }

    /// The writing half, to clone into another task.
    pub fn input(&self) -> &Input {
        &self.input
    }

    /// Sends terminal or port bytes (split into 1 KiB messages). Waits while
    /// the agent is behind.
    pub async fn send_input(&self, data: &[u8]) -> Result<(), Error> {
        self.input.send_input(data).await
    }

    /// Tells the agent the terminal size changed.
    pub async fn resize(&self, cols: u32, rows: u32) -> Result<(), Error> {
        self.input.resize(cols, rows).await
    }

    pub async fn send_flag(&self, flag: Flag) -> Result<(), Error> {
        self.input.send_flag(flag).await
    }

    /// The next event; `None` after the last one. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Event> {
        self.output.recv().await
    }

    /// Closes the WebSocket. The agent keeps the session until it times out
    /// or `ssm:TerminateSession` is called (the caller's job).
    pub async fn close(&self) {
        self.input.close().await;
    }

    pub fn split(self) -> (Input, Output) {
        (self.input, self.output)
    }
}

impl Input {
    pub fn info(&self) -> &Info {
        &self.info
    }

    pub async fn send_input(&self, data: &[u8]) -> Result<(), Error> {
        for chunk in data.chunks(codec::MAX_STREAM_PAYLOAD) {
            let frame = self.output_frame(&[chunk])?;
            self.send_frame(frame).await?;
        }
        Ok(())
    }

    pub async fn resize(&self, cols: u32, rows: u32) -> Result<(), Error> {
        let payload =
            serde_json::to_vec(&SizeData { cols, rows }).expect("a size always serializes");
        self.send_frame(stream_frame(PayloadType::Size, &[&payload]))
            .await
    }

    pub async fn send_flag(&self, flag: Flag) -> Result<(), Error> {
        self.send_frame(stream_frame(PayloadType::Flag, &[&flag.to_payload()]))
            .await
    }

    /// Closes the WebSocket (see [`Session::close`]) after sending what
    /// was queued; the reader then gets `Closed(None)`. Works even while
    /// writers wait for acknowledgements.
    pub async fn close(&self) {
        self.closing.cancel();
    }

    /// An Output frame of `parts` (encrypted if the session is), ready for
    /// [`Input::send_frame`] or a `PollSender` from [`Input::sender`].
    pub(crate) fn output_frame(&self, parts: &[&[u8]]) -> Result<BytesMut, Error> {
        match &self.cipher {
            None => Ok(stream_frame(PayloadType::Output, parts)),
            Some(cipher) => {
                let sealed = cipher
                    .seal(parts)
                    .map_err(|e| Error::Encryption(e.into()))?;
                Ok(stream_frame(PayloadType::Output, &[&sealed]))
            }
        }
    }

    /// A Flag frame for a `PollSender`.
    pub(crate) fn flag_frame(flag: Flag) -> BytesMut {
        stream_frame(PayloadType::Flag, &[&flag.to_payload()])
    }

    pub(crate) async fn send_frame(&self, frame: BytesMut) -> Result<(), Error> {
        self.commands
            .send(channel::Command::Stream(frame))
            .await
            .map_err(|_| Error::Closed)
    }

    /// The channel's command queue, for writers that need `poll_*` access.
    pub(crate) fn sender(&self) -> mpsc::Sender<channel::Command> {
        self.commands.clone()
    }

    /// Whether the channel has ended (nothing more can be sent).
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}

impl Output {
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The next event; `None` after the last one. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

/// An input_stream_data frame with sequence number 0; the channel fills in
/// the real one when it sends it.
fn stream_frame(payload_type: PayloadType, parts: &[&[u8]]) -> BytesMut {
    codec::encode(
        &Header {
            message_type: MessageType::InputStreamData,
            created_date: codec::now_millis(),
            sequence_number: 0,
            flags: 0,
            message_id: Uuid::new_v4(),
            payload_type,
        },
        parts,
    )
}

/// `a > b` for dotted version numbers, component by component; missing or
/// non-numeric components count as 0 (the plugin's version validator).
pub fn version_newer(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.trim()
            .split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect()
    };
    let (a, b) = (parse(a), parse(b));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x > y;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_like_the_plugin() {
        for (a, b, newer) in [
            ("3.0.197.0", "3.0.196.0", true),
            ("3.0.196.0", "3.0.196.0", false),
            ("3.0.196", "3.0.196.0", false),
            ("3.1.1511.1", "3.1.1511.0", true),
            ("3.10.0.0", "3.9.9999.0", true),
            ("2.3.722.0", "3.0.196.0", false),
            ("", "0", false),
            ("garbage", "1.0", false),
        ] {
            assert_eq!(version_newer(a, b), newer, "{a} > {b}");
        }
    }

    #[test]
    fn session_types_round_trip() {
        for name in [
            "Standard_Stream",
            "InteractiveCommands",
            "NonInteractiveCommands",
            "Port",
        ] {
            assert_eq!(SessionType::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(SessionType::parse("Shell"), None);
        assert!(!SessionType::Port.is_shell());
    }

    #[test]
    fn options_debug_shows_no_callbacks() {
        let text = format!("{:?}", Options::new("s-1", "i-1"));
        assert!(text.contains("s-1"));
        assert!(text.contains("resume: false"));
    }
}
