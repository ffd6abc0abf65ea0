//! The data-channel engine: one task owns the WebSocket and every piece of
//! sequence state (docs/aws-protocols.md 1.7–1.8), so nothing is shared or
//! locked. The engine's loop and receive path are here; `handshake.rs`
//! answers the agent's handshake (session type, KMS), `retransmit.rs` keeps
//! the unacknowledged frames and the RTO, `socket.rs` owns the WebSocket
//! (open, write, loss and ResumeSession).
//!
//! * Receive: in-order stream messages are acknowledged and processed;
//!   ahead-of-order ones are acknowledged and buffered (bounded; beyond the
//!   bound they are dropped unacknowledged and the agent resends them);
//!   duplicates are re-acknowledged, which cures the plugin's lost-ack race.
//! * Send: a frame enters the unacknowledged buffer *before* it is written.
//!   The oldest unacknowledged frame is resent once its RTO (Jacobson/Karels,
//!   Karn's rule for retransmitted samples) has passed, up to a bound.
//! * Socket loss: the [`Resume`](super::Resume) callback gets a new token, a
//!   new socket is opened with the same sequence state, and everything
//!   unacknowledged is resent at once (it was in flight on the dead socket).
//! * Back-pressure: the socket is only read while the event queue has room,
//!   and commands are only taken while fewer than `max_unacked` frames wait.

mod handshake;
mod retransmit;
mod socket;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use url::Url;

use self::retransmit::{Rtt, Unacked};
use self::socket::{Reconnecting, Socket, next_frame, open_socket, poll_reconnect};
use crate::ssm::codec::{self, ClientMessage, Flag, MessageType, PayloadType};
use crate::ssm::crypto::Cipher;
use crate::ssm::{Error, Event, Info, Input, Options, Output, Session, SessionType};

/// What the handles ask of the engine.
pub(crate) enum Command {
    /// An input_stream_data frame; the engine assigns its sequence number.
    Stream(BytesMut),
}

type Ready = oneshot::Sender<Result<(Info, Option<Arc<Cipher>>), Error>>;

const COMMAND_QUEUE: usize = 32;
/// Messages already buffered in the socket handled in one turn of the loop.
const BATCH: usize = 64;

pub(super) async fn connect(
    stream_url: &str,
    token: &SecretString,
    options: Options,
) -> Result<Session, Error> {
    let url = Url::parse(stream_url)?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(Error::UrlScheme(url.scheme().to_owned()));
    }
    let socket = open_socket(&url, token, &options).await?;
    let options = Arc::new(options);
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (events_tx, events_rx) = mpsc::channel(options.event_buffer.max(1));
    let (ready_tx, ready_rx) = oneshot::channel();
    let closing = CancellationToken::new();
    let engine = Engine::new(
        url,
        socket,
        options.clone(),
        commands_rx,
        events_tx,
        ready_tx,
        closing.clone(),
    );
    tokio::spawn(engine.run());
    // On timeout the handles are dropped here, which stops the engine.
    let (info, cipher) = match tokio::time::timeout(options.handshake_timeout, ready_rx).await {
        Err(_) => return Err(Error::HandshakeTimeout),
        Ok(Err(_)) => return Err(Error::Closed),
        Ok(Ok(result)) => result?,
    };
    let info = Arc::new(info);
    Ok(Session {
        input: Input {
            commands: commands_tx,
            closing,
            cipher,
            info: info.clone(),
        },
        output: Output {
            events: events_rx,
            info,
        },
    })
}

/// What woke the engine up.
enum Wake {
    /// Room for one event, or `None` when the consumer is gone.
    Deliver(Option<mpsc::OwnedPermit<Event>>),
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Reconnected(Result<Box<Socket>, Error>),
    Command(Option<Command>),
    Close,
    Retransmit,
    Ping,
}

enum Phase {
    /// Waiting for HandshakeComplete; `ready` tells `connect`.
    Handshake {
        ready: Option<Ready>,
        agent_version: Option<String>,
        session_type: Option<SessionType>,
        properties: serde_json::Value,
        kms_key_id: Option<String>,
    },
    Open,
    /// A terminal event is queued; deliver what is pending, then stop.
    Finished,
}

struct Engine {
    url: Url,
    options: Arc<Options>,
    socket: Option<Socket>,
    reconnecting: Option<Reconnecting>,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    /// Cancelled by `Input::close`; works even when writers are blocked.
    closing: CancellationToken,
    events: mpsc::Sender<Event>,
    pending: VecDeque<Event>,
    next_sequence: i64,
    expected_sequence: i64,
    unacked: VecDeque<Unacked>,
    ahead: BTreeMap<i64, ClientMessage>,
    rtt: Rtt,
    /// The service said the remote side is inactive (pause_publication).
    paused: bool,
    phase: Phase,
    cipher: Option<Arc<Cipher>>,
    next_ping: Instant,
    /// Messages were queued on the socket since the last flush.
    unflushed: bool,
}

impl Engine {
    fn new(
        url: Url,
        socket: Socket,
        options: Arc<Options>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        ready: Ready,
        closing: CancellationToken,
    ) -> Engine {
        Engine {
            url,
            next_ping: Instant::now() + options.keepalive,
            options,
            socket: Some(socket),
            reconnecting: None,
            commands,
            commands_open: true,
            closing,
            events,
            pending: VecDeque::new(),
            next_sequence: 0,
            expected_sequence: 0,
            unacked: VecDeque::new(),
            ahead: BTreeMap::new(),
            rtt: Rtt::new(),
            paused: false,
            phase: Phase::Handshake {
                ready: Some(ready),
                agent_version: None,
                session_type: None,
                properties: serde_json::Value::Null,
                kms_key_id: None,
            },
            cipher: None,
            unflushed: false,
        }
    }

    async fn run(mut self) {
        loop {
            if matches!(self.phase, Phase::Finished) && self.pending.is_empty() {
                break;
            }
            let reading = self.reading();
            let taking_commands = self.commands_open
                && matches!(self.phase, Phase::Open)
                && self.unacked.len() < self.options.max_unacked.max(1);
            let retransmit_at = self.retransmit_at(reading);
            let far = Instant::now() + Duration::from_secs(86_400);
            let wake = tokio::select! {
                permit = self.events.clone().reserve_owned(), if !self.pending.is_empty() => Wake::Deliver(permit.ok()),
                _ = self.events.closed(), if self.pending.is_empty() => Wake::Deliver(None),
                frame = next_frame(&mut self.socket), if reading => Wake::Frame(frame),
                result = poll_reconnect(&mut self.reconnecting), if self.reconnecting.is_some() => Wake::Reconnected(result.map(Box::new)),
                command = self.commands.recv(), if taking_commands => Wake::Command(command),
                _ = self.closing.cancelled(), if !matches!(self.phase, Phase::Finished) => Wake::Close,
                _ = tokio::time::sleep_until(retransmit_at.unwrap_or(far)), if retransmit_at.is_some() => Wake::Retransmit,
                _ = tokio::time::sleep_until(self.next_ping), if self.socket.is_some() => Wake::Ping,
            };
            match wake {
                // The consumer is gone: nobody wants this session any more.
                Wake::Deliver(None) => break,
                Wake::Deliver(Some(permit)) => {
                    if let Some(event) = self.pending.pop_front() {
                        permit.send(event);
                    }
                }
                Wake::Frame(message) => {
                    self.on_message(message).await;
                    // Take what is already buffered too, so that a burst is
                    // acknowledged with one write instead of one per message.
                    for _ in 0..BATCH {
                        if !self.reading() {
                            break;
                        }
                        let Some(socket) = &mut self.socket else {
                            break;
                        };
                        match socket.next().now_or_never() {
                            Some(message) => self.on_message(message).await,
                            None => break,
                        }
                    }
                }
                Wake::Reconnected(result) => {
                    self.reconnecting = None;
                    match result {
                        Ok(socket) => self.resumed(*socket).await,
                        Err(e) => self.fail(e),
                    }
                }
                Wake::Command(Some(Command::Stream(frame))) => self.send_stream(frame).await,
                Wake::Close => self.close().await,
                Wake::Command(None) => self.commands_open = false,
                Wake::Retransmit => self.retransmit().await,
                Wake::Ping => {
                    self.next_ping = Instant::now() + self.options.keepalive;
                    self.write(Message::Ping(Bytes::from_static(b"keepalive")))
                        .await;
                }
            }
            if self.unflushed {
                self.flush().await;
            }
        }
        if let Some(mut socket) = self.socket.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
        }
    }

    async fn on_frame(&mut self, data: Bytes) {
        let message = match codec::decode(data).and_then(|m| m.validate().map(|()| m)) {
            Ok(message) => message,
            Err(e) => {
                // Not acknowledged, so the agent resends a good copy.
                tracing::debug!(error = %e, "dropping an invalid data channel message");
                return;
            }
        };
        match message.message_type {
            MessageType::OutputStreamData => self.on_stream_data(message).await,
            MessageType::Acknowledge => self.on_ack(&message),
            MessageType::ChannelClosed => {
                let closed: codec::ChannelClosed =
                    message.json("channel_closed").unwrap_or_default();
                let output = Some(closed.output).filter(|o| !o.is_empty());
                self.finish(Event::Closed(output));
            }
            MessageType::PausePublication => self.paused = true,
            MessageType::StartPublication => self.paused = false,
            _ => {}
        }
    }

    async fn on_stream_data(&mut self, message: ClientMessage) {
        let sequence = message.sequence_number;
        if sequence < self.expected_sequence {
            // A duplicate: our ack was lost or is racing; ack it again.
            self.write(Message::Binary(codec::encode_ack(&message)))
                .await;
            return;
        }
        if sequence > self.expected_sequence {
            if self.ahead.len() >= self.options.max_out_of_order
                && !self.ahead.contains_key(&sequence)
            {
                return;
            }
            self.write(Message::Binary(codec::encode_ack(&message)))
                .await;
            self.ahead.insert(sequence, message);
            return;
        }
        self.write(Message::Binary(codec::encode_ack(&message)))
            .await;
        self.process(message).await;
        self.expected_sequence += 1;
        while let Some(next) = self.ahead.remove(&self.expected_sequence) {
            if matches!(self.phase, Phase::Finished) {
                return;
            }
            self.process(next).await;
            self.expected_sequence += 1;
        }
    }

    /// Handles one in-order stream message.
    async fn process(&mut self, message: ClientMessage) {
        match message.payload_type {
            PayloadType::HandshakeRequest => self.on_handshake_request(&message).await,
            PayloadType::EncChallengeRequest => self.on_challenge(&message).await,
            PayloadType::HandshakeComplete => self.on_handshake_complete(&message).await,
            PayloadType::Output => {
                self.legacy_handshake().await;
                if let Some(payload) = self.decrypt(message.payload) {
                    self.pending.push_back(Event::Output(payload));
                }
            }
            PayloadType::StdErr | PayloadType::Error => {
                if let Some(payload) = self.decrypt(message.payload) {
                    self.pending.push_back(Event::StdErr(payload));
                }
            }
            PayloadType::ExitCode => {
                if let Some(payload) = self.decrypt(message.payload) {
                    match codec::parse_exit_code(&payload) {
                        Ok(code) => self.pending.push_back(Event::ExitCode(code)),
                        Err(e) => tracing::debug!(error = %e, "ignoring an exit code"),
                    }
                }
            }
            PayloadType::Flag => match Flag::from_payload(&message.payload) {
                Ok(flag) => self.pending.push_back(Event::Flag(flag)),
                Err(e) => tracing::debug!(error = %e, "ignoring a flag"),
            },
            _ => {}
        }
    }

    fn decrypt(&mut self, payload: Bytes) -> Option<Bytes> {
        let Some(cipher) = &self.cipher else {
            return Some(payload);
        };
        match cipher.open(&payload) {
            Ok(plain) => Some(Bytes::from(plain)),
            Err(e) => {
                // Acknowledged already, so it cannot be fetched again.
                self.fail(Error::Encryption(e.into()));
                None
            }
        }
    }

    fn reading(&self) -> bool {
        self.socket.is_some()
            && !matches!(self.phase, Phase::Finished)
            && self.pending.len() < self.options.event_buffer.max(1)
    }

    /// Sends what writers queued before the close, then closes the socket.
    async fn close(&mut self) {
        while let Ok(Command::Stream(frame)) = self.commands.try_recv() {
            self.send_stream(frame).await;
        }
        if let Some(mut socket) = self.socket.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
        }
        self.reconnecting = None;
        self.finish(Event::Closed(None));
    }

    fn fail(&mut self, error: Error) {
        tracing::debug!(session_id = %self.options.session_id, error = %error, "data channel failed");
        if let Phase::Handshake { ready, .. } = &mut self.phase {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(error));
            }
            self.phase = Phase::Finished;
            return;
        }
        self.finish(Event::Failed(error));
    }

    fn finish(&mut self, last: Event) {
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        if let Phase::Handshake { ready, .. } = &mut self.phase
            && let Some(ready) = ready.take()
        {
            let error = match last {
                Event::Closed(Some(output)) => Error::Handshake(output),
                Event::Failed(e) => e,
                _ => Error::Closed,
            };
            let _ = ready.send(Err(error));
            self.phase = Phase::Finished;
            return;
        }
        self.phase = Phase::Finished;
        self.reconnecting = None;
        self.pending.push_back(last);
    }
}
