//! The data-channel engine: one task owns the WebSocket and every piece of
//! sequence state (docs/aws-protocols.md 1.7–1.8), so nothing is shared or locked.
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

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::ssm::codec::{
    self, ActionStatus, ClientMessage, EncryptionChallenge, Flag, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, KmsEncryptionRequest, KmsEncryptionResponse, MessageType,
    OpenDataChannelInput, PayloadType, ProcessedClientAction, SessionTypeRequest,
};
use crate::ssm::crypto::{Cipher, DataKeyRequest};
use crate::ssm::{Error, Event, Info, Input, Options, Output, Session, SessionType};

/// What the handles ask of the engine.
pub(crate) enum Command {
    /// An input_stream_data frame; the engine assigns its sequence number.
    Stream(BytesMut),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Reconnecting = Pin<Box<dyn Future<Output = Result<Socket, Error>> + Send>>;
type Ready = oneshot::Sender<Result<(Info, Option<Arc<Cipher>>), Error>>;

const COMMAND_QUEUE: usize = 32;
/// Largest WebSocket message accepted. Agents send at most 1 KiB of payload
/// per message; the bound keeps the out-of-order buffer small too.
const MAX_MESSAGE: usize = 256 << 10;
/// Resends are at least this far apart, like the plugin's 100 ms resend
/// tick, so `resend_max_attempts` = 3000 still means about 5 minutes even
/// when the RTO is a few milliseconds.
const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// Messages already buffered in the socket handled in one turn of the loop.
const BATCH: usize = 64;
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub(super) async fn connect(
    stream_url: &str,
    token: &SecretString,
    options: Options,
) -> Result<Session, Error> {
    let url = Url::parse(stream_url).map_err(|e| Error::Url(e.to_string()))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(Error::Url(format!(
            "scheme {:?} is not ws or wss",
            url.scheme()
        )));
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

/// Opens the WebSocket and sends OpenDataChannelInput with `token`.
async fn open_socket(url: &Url, token: &SecretString, options: &Options) -> Result<Socket, Error> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let fail = |reason: String| Error::Connect {
        host: host.clone(),
        reason,
    };
    let request = url
        .as_str()
        .into_client_request()
        .map_err(|e| fail(e.to_string()))?;
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
        .map_err(|e| fail(e.to_string()))?;
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
        .map_err(|e| fail(e.to_string()))?;
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

/// Round-trip estimate and retransmission timeout (docs/aws-protocols.md 1.8).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rtt {
    srtt: f64,
    rttvar: f64,
    rto: Duration,
}

impl Rtt {
    const GRANULARITY: f64 = 0.010;
    const MAX_RTO: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Rtt {
        Rtt {
            srtt: 0.100,
            rttvar: 0.0,
            rto: Duration::from_millis(200),
        }
    }

    pub(crate) fn sample(&mut self, sample: Duration) {
        let sample = sample.as_secs_f64();
        self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - sample).abs();
        self.srtt = 0.875 * self.srtt + 0.125 * sample;
        let rto = self.srtt + (4.0 * self.rttvar).max(Self::GRANULARITY);
        self.rto = Duration::from_secs_f64(rto).min(Self::MAX_RTO);
    }

    pub(crate) fn rto(&self) -> Duration {
        self.rto
    }
}

/// A sent frame waiting for its acknowledgement.
struct Unacked {
    sequence: i64,
    frame: Bytes,
    last_sent: Instant,
    attempts: u32,
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
            // Retransmit only when acks can arrive: a socket, the remote side
            // active, and the socket being read (a slow consumer holds acks
            // back in the socket, and they must not count as lost).
            let retransmit_at = match self.unacked.front() {
                Some(oldest) if reading && !self.paused => {
                    let wait = if oldest.attempts == 0 {
                        self.rtt.rto()
                    } else {
                        self.rtt.rto().max(MIN_RESEND_INTERVAL)
                    };
                    Some(oldest.last_sent + wait)
                }
                _ => None,
            };
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

    fn on_ack(&mut self, message: &ClientMessage) {
        // Only the sequence number matters (as in the plugin); parsing just
        // that allocates nothing.
        #[derive(serde::Deserialize)]
        struct Acknowledged {
            #[serde(rename = "AcknowledgedMessageSequenceNumber")]
            sequence: i64,
        }
        let Ok(Acknowledged { sequence }) = message.json("acknowledge") else {
            return;
        };
        if let Some(index) = self.unacked.iter().position(|u| u.sequence == sequence)
            && let Some(acked) = self.unacked.remove(index)
            && acked.attempts == 0
        {
            // Karn: a retransmitted message's ack is ambiguous, no sample.
            self.rtt.sample(acked.last_sent.elapsed());
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
                self.fail(Error::Encryption(e.to_string()));
                None
            }
        }
    }

    async fn on_handshake_request(&mut self, message: &ClientMessage) {
        let request: HandshakeRequest = match message.json("handshake request") {
            Ok(request) => request,
            Err(e) => return self.fail(Error::Handshake(e.to_string())),
        };
        let mut actions = Vec::new();
        let mut errors = Vec::new();
        let mut failure = None;
        let mut session_type = None;
        let mut properties = serde_json::Value::Null;
        let mut kms_key_id = None;
        for action in &request.requested_client_actions {
            let mut processed = ProcessedClientAction {
                action_type: action.action_type.clone(),
                action_status: ActionStatus::Success,
                action_result: serde_json::Value::Null,
                error: String::new(),
            };
            let outcome = match action.action_type.as_str() {
                "SessionType" => {
                    self.session_type_action(&action.action_parameters)
                        .map(|(kind, props)| {
                            session_type = Some(kind);
                            properties = props;
                            serde_json::Value::Null
                        })
                }
                "KMSEncryption" => {
                    self.kms_action(&action.action_parameters)
                        .await
                        .map(|(key_id, blob)| {
                            kms_key_id = Some(key_id);
                            serde_json::to_value(KmsEncryptionResponse {
                                kms_cipher_text_key: base64::engine::general_purpose::STANDARD
                                    .encode(blob),
                            })
                            .expect("a KMS response serializes")
                        })
                }
                other => {
                    processed.action_status = ActionStatus::Unsupported;
                    processed.error = format!("Unsupported action {other}");
                    errors.push(processed.error.clone());
                    actions.push(processed);
                    continue;
                }
            };
            match outcome {
                Ok(result) => processed.action_result = result,
                Err(e) => {
                    processed.action_status = ActionStatus::Failed;
                    processed.error =
                        format!("Failed to process action {}: {e}", action.action_type);
                    errors.push(processed.error.clone());
                    failure.get_or_insert(e);
                }
            }
            actions.push(processed);
        }
        let response = HandshakeResponse {
            client_version: self.options.client_version.clone(),
            processed_client_actions: actions,
            errors: Some(errors).filter(|e| !e.is_empty()),
        };
        let payload = serde_json::to_vec(&response).expect("a handshake response serializes");
        let frame = super::stream_frame(PayloadType::HandshakeResponse, &[&payload]);
        // The agent learns why before we give up.
        self.send_stream(frame).await;
        if let Some(e) = failure {
            return self.fail(e);
        }
        if let Phase::Handshake {
            agent_version,
            session_type: kind,
            properties: props,
            kms_key_id: key,
            ..
        } = &mut self.phase
        {
            *agent_version = Some(request.agent_version);
            *kind = session_type;
            *props = properties;
            *key = kms_key_id;
        }
    }

    fn session_type_action(
        &self,
        parameters: &serde_json::Value,
    ) -> Result<(SessionType, serde_json::Value), Error> {
        let request: SessionTypeRequest = serde_json::from_value(parameters.clone())
            .map_err(|e| Error::Handshake(format!("session type: {e}")))?;
        let kind = SessionType::parse(&request.session_type)
            .ok_or_else(|| Error::SessionType(request.session_type.clone()))?;
        Ok((kind, request.properties))
    }

    async fn kms_action(
        &mut self,
        parameters: &serde_json::Value,
    ) -> Result<(String, Vec<u8>), Error> {
        let request: KmsEncryptionRequest = serde_json::from_value(parameters.clone())
            .map_err(|e| Error::Handshake(format!("KMS encryption: {e}")))?;
        let Some(keys) = self.options.data_keys.clone() else {
            return Err(Error::Encryption(
                "the agent requires KMS encryption and no KMS access is configured".to_owned(),
            ));
        };
        let key = keys
            .generate(DataKeyRequest {
                key_id: &request.kms_key_id,
                session_id: &self.options.session_id,
                target_id: &self.options.target_id,
            })
            .await
            .map_err(|e| Error::Encryption(format!("generating a data key: {e}")))?;
        let cipher =
            Cipher::client(&key.plaintext).map_err(|e| Error::Encryption(e.to_string()))?;
        self.cipher = Some(Arc::new(cipher));
        Ok((request.kms_key_id, key.ciphertext_blob))
    }

    async fn on_challenge(&mut self, message: &ClientMessage) {
        let result = (|| {
            let cipher = self
                .cipher
                .clone()
                .ok_or_else(|| Error::Encryption("challenge without a data key".to_owned()))?;
            let request: EncryptionChallenge = message.json("encryption challenge")?;
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(&request.challenge)
                .map_err(|e| Error::Encryption(format!("challenge: {e}")))?;
            let challenge = cipher
                .open(&sealed)
                .map_err(|e| Error::Encryption(format!("challenge: {e}")))?;
            let answer = cipher
                .seal(&[&challenge])
                .map_err(|e| Error::Encryption(e.to_string()))?;
            let response = EncryptionChallenge {
                challenge: base64::engine::general_purpose::STANDARD.encode(answer),
            };
            Ok::<_, Error>(serde_json::to_vec(&response).expect("a challenge serializes"))
        })();
        match result {
            Ok(payload) => {
                let frame = super::stream_frame(PayloadType::EncChallengeResponse, &[&payload]);
                self.send_stream(frame).await;
            }
            Err(e) => self.fail(e),
        }
    }

    async fn on_handshake_complete(&mut self, message: &ClientMessage) {
        let complete: HandshakeComplete = message.json("handshake complete").unwrap_or_default();
        let Phase::Handshake {
            ready,
            agent_version,
            session_type,
            properties,
            kms_key_id,
        } = std::mem::replace(&mut self.phase, Phase::Open)
        else {
            return;
        };
        let Some(session_type) = session_type else {
            return self.fail(Error::Handshake(
                "the handshake completed without a session type".to_owned(),
            ));
        };
        let info = Info {
            session_id: self.options.session_id.clone(),
            agent_version,
            session_type,
            properties,
            kms_key_id,
            customer_message: Some(complete.customer_message).filter(|m| !m.is_empty()),
        };
        self.opened(info, ready).await;
    }

    /// Agents older than the handshake start with output: that is a shell.
    async fn legacy_handshake(&mut self) {
        let Phase::Handshake {
            agent_version: None,
            ..
        } = &self.phase
        else {
            return;
        };
        let Phase::Handshake { ready, .. } = std::mem::replace(&mut self.phase, Phase::Open) else {
            return;
        };
        let info = Info {
            session_id: self.options.session_id.clone(),
            agent_version: None,
            session_type: SessionType::StandardStream,
            properties: serde_json::Value::Null,
            kms_key_id: None,
            customer_message: None,
        };
        self.opened(info, ready).await;
    }

    async fn opened(&mut self, info: Info, ready: Option<Ready>) {
        if info.session_type.is_shell()
            && let Some((cols, rows)) = self.options.initial_size
        {
            let payload =
                serde_json::to_vec(&codec::SizeData { cols, rows }).expect("a size serializes");
            let frame = super::stream_frame(PayloadType::Size, &[&payload]);
            self.send_stream(frame).await;
        }
        if let Some(ready) = ready {
            let _ = ready.send(Ok((info, self.cipher.clone())));
        }
    }

    /// Assigns the next sequence number, buffers the frame, then writes it.
    async fn send_stream(&mut self, mut frame: BytesMut) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        codec::set_sequence_number(&mut frame, sequence);
        let frame = frame.freeze();
        self.unacked.push_back(Unacked {
            sequence,
            frame: frame.clone(),
            last_sent: Instant::now(),
            attempts: 0,
        });
        self.write(Message::Binary(frame)).await;
    }

    async fn retransmit(&mut self) {
        let max = self.options.resend_max_attempts;
        let Some(oldest) = self.unacked.front_mut() else {
            return;
        };
        if oldest.attempts >= max {
            let sequence = oldest.sequence;
            return self.fail(Error::ResendTimeout {
                sequence,
                attempts: max,
            });
        }
        oldest.attempts += 1;
        oldest.last_sent = Instant::now();
        let frame = oldest.frame.clone();
        tracing::debug!(
            sequence = oldest.sequence,
            attempt = oldest.attempts,
            "resending"
        );
        self.write(Message::Binary(frame)).await;
    }

    /// Queues a message on the socket; [`Engine::flush`] at the end of each
    /// turn of the loop writes everything queued in one go.
    async fn write(&mut self, message: Message) {
        let Some(socket) = &mut self.socket else {
            // Reconnecting: stream frames wait in `unacked` and go out after.
            return;
        };
        match socket.feed(message).await {
            Ok(()) => self.unflushed = true,
            Err(e) => self.lost(e.to_string()),
        }
    }

    async fn flush(&mut self) {
        self.unflushed = false;
        let Some(socket) = &mut self.socket else {
            return;
        };
        if let Err(e) = socket.flush().await {
            self.lost(e.to_string());
        }
    }

    fn reading(&self) -> bool {
        self.socket.is_some()
            && !matches!(self.phase, Phase::Finished)
            && self.pending.len() < self.options.event_buffer.max(1)
    }

    async fn on_message(
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
    fn lost(&mut self, reason: String) {
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
    async fn resumed(&mut self, socket: Socket) {
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

async fn next_frame(
    socket: &mut Option<Socket>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match socket {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

async fn poll_reconnect(reconnecting: &mut Option<Reconnecting>) -> Result<Socket, Error> {
    match reconnecting {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rto_follows_jacobson_karels() {
        let mut rtt = Rtt::new();
        assert_eq!(rtt.rto(), Duration::from_millis(200));
        // One 100 ms sample equal to the initial estimate: RTTVAR stays 0,
        // so the RTO is SRTT plus the 10 ms clock granularity.
        rtt.sample(Duration::from_millis(100));
        assert_eq!(rtt.rto().as_millis(), 110);
        // Fast loopback samples pull it down.
        for _ in 0..100 {
            rtt.sample(Duration::from_micros(200));
        }
        assert!(rtt.rto() < Duration::from_millis(12), "{:?}", rtt.rto());
        assert!(rtt.rto() >= Duration::from_millis(10));
        // A slow network is capped at 1 s.
        for _ in 0..100 {
            rtt.sample(Duration::from_secs(5));
        }
        assert_eq!(rtt.rto(), Duration::from_secs(1));
    }

    #[test]
    fn variance_widens_the_timeout() {
        let mut rtt = Rtt::new();
        // 100 ms then 300 ms: RTTVAR = 0.25·0.2 = 50 ms; SRTT = 125 ms;
        // RTO = 125 + 4·50 = 325 ms.
        rtt.sample(Duration::from_millis(100));
        rtt.sample(Duration::from_millis(300));
        assert_eq!(rtt.rto().as_millis(), 325);
    }
}
