//! The agent side of one data-channel session (docs/aws-protocols.md 1.6–1.11):
//! handshake (session type, optional KMS with a challenge), sequenced output
//! with its own retransmission, acks (re-acking duplicates unless strict),
//! and fault injection on the first transmission of output messages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use base64::Engine as _;
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::apps::{self, App, AppIn, AppOut};
use super::{Faults, Plan, Stats, wire};

/// Unacknowledged output messages before the app is no longer read.
const WINDOW: usize = 512;
const RTO: Duration = Duration::from_millis(250);

pub struct Setup {
    pub plan: Plan,
    pub app: App,
    pub session_id: String,
    pub target: String,
}

enum Phase {
    Handshake,
    Challenge(Vec<u8>),
    Running,
}

struct Pending {
    frame: Vec<u8>,
    last_sent: Instant,
}

struct Agent {
    setup: Setup,
    stats: Arc<Mutex<Stats>>,
    writer: Option<mpsc::UnboundedSender<Message>>,
    reader: Option<SplitStream<WebSocket>>,
    out_sequence: i64,
    expected: i64,
    unacked: BTreeMap<i64, Pending>,
    ahead: BTreeMap<i64, wire::Msg>,
    phase: Phase,
    /// Agent view of the data key: encrypts with the first half.
    keys: Option<(LessSafeKey, LessSafeKey)>,
    app_in: Option<mpsc::Sender<AppIn>>,
    app_out: Option<mpsc::Receiver<AppOut>>,
    outputs: u32,
    inputs: u32,
    held: Option<Vec<u8>>,
    kills_left: u32,
    closing: Option<Instant>,
    done: bool,
}

pub async fn run(
    setup: Setup,
    mut attach: mpsc::Receiver<WebSocket>,
    stats: Arc<Mutex<Stats>>,
    terminate: CancellationToken,
) {
    let kills_left = setup.plan.faults.kill_socket_times;
    let mut agent = Agent {
        setup,
        stats,
        writer: None,
        reader: None,
        out_sequence: 0,
        expected: 0,
        unacked: BTreeMap::new(),
        ahead: BTreeMap::new(),
        phase: Phase::Handshake,
        keys: None,
        app_in: None,
        app_out: None,
        outputs: 0,
        inputs: 0,
        held: None,
        kills_left,
        closing: None,
        done: false,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut first = true;
    while !agent.done {
        if let Some(deadline) = agent.closing
            && (agent.unacked.is_empty() || Instant::now() > deadline)
            && agent.writer.is_some()
        {
            agent.channel_closed();
            break;
        }
        let taking_output = matches!(agent.phase, Phase::Running)
            && agent.unacked.len() < WINDOW
            && agent.closing.is_none();
        tokio::select! {
            socket = attach.recv() => {
                let Some(socket) = socket else { break };
                agent.attach(socket);
                if first {
                    first = false;
                    agent.start();
                } else {
                    agent.resend_all();
                }
            }
            message = next(&mut agent.reader), if agent.reader.is_some() => {
                match message {
                    Some(Ok(Message::Binary(data))) => agent.on_frame(&data).await,
                    Some(Ok(Message::Ping(_))) => agent.stats.lock().unwrap().pings += 1,
                    Some(Ok(Message::Text(_))) => agent.stats.lock().unwrap().unexpected_text += 1,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => agent.detach(),
                    Some(Ok(_)) => {}
                }
            }
            output = recv_app(&mut agent.app_out), if taking_output => {
                match output {
                    Some(AppOut::Data(payload_type, data)) => agent.send_stream(payload_type, &data),
                    Some(AppOut::Exit(code)) => {
                        agent.stats.lock().unwrap().exit_status = Some(code);
                        if agent.setup.plan.send_exit_code {
                            agent.send_stream(12, format!("EXIT_CODE: {code}").as_bytes());
                        }
                        agent.closing = Some(Instant::now() + Duration::from_secs(5));
                    }
                    None => agent.closing = Some(Instant::now() + Duration::from_secs(5)),
                }
            }
            _ = tick.tick() => agent.retransmit(),
            _ = terminate.cancelled(), if agent.closing.is_none() => {
                agent.stats.lock().unwrap().terminated = true;
                agent.closing = Some(Instant::now());
            }
        }
    }
    agent.app_in = None;
}

async fn next(reader: &mut Option<SplitStream<WebSocket>>) -> Option<Result<Message, axum::Error>> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

async fn recv_app(app: &mut Option<mpsc::Receiver<AppOut>>) -> Option<AppOut> {
    match app {
        Some(app) => app.recv().await,
        None => std::future::pending().await,
    }
}

impl Agent {
    fn attach(&mut self, socket: WebSocket) {
        let (mut sink, stream) = socket.split();
        // Unbounded on purpose: the fake must never stop reading because it
        // is blocked writing, or a slow client could deadlock the test.
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                // Everything already queued goes out in one flush.
                if sink.feed(message).await.is_err() {
                    return;
                }
                while let Ok(message) = rx.try_recv() {
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        self.writer = Some(tx);
        self.reader = Some(stream);
        self.stats.lock().unwrap().connections += 1;
    }

    fn detach(&mut self) {
        self.writer = None;
        self.reader = None;
    }

    fn send(&self, frame: Vec<u8>) {
        if let Some(writer) = &self.writer {
            let _ = writer.send(Message::Binary(frame.into()));
        }
    }

    fn start(&mut self) {
        if !self.setup.plan.handshake {
            self.start_app();
            return;
        }
        let mut actions = vec![serde_json::json!({
            "ActionType": "SessionType",
            "ActionParameters": {
                "SessionType": self.setup.plan.session_type,
                "Properties": self.setup.plan.properties,
            },
        })];
        if let Some(kms) = &self.setup.plan.kms {
            actions.push(serde_json::json!({
                "ActionType": "KMSEncryption",
                "ActionParameters": {"KMSKeyId": kms.key_id},
            }));
        }
        let request = serde_json::json!({
            "AgentVersion": self.setup.plan.agent_version,
            "RequestedClientActions": actions,
        });
        self.send_stream(5, request.to_string().as_bytes());
    }

    fn start_app(&mut self) {
        self.phase = Phase::Running;
        let (in_tx, in_rx) = mpsc::channel(1024);
        let (out_tx, out_rx) = mpsc::channel(64);
        apps::spawn(self.setup.app.clone(), in_rx, out_tx, self.stats.clone());
        self.app_in = Some(in_tx);
        self.app_out = Some(out_rx);
    }

    fn complete_handshake(&mut self) {
        let complete = serde_json::json!({
            "HandshakeTimeToComplete": 1_500_000,
            "CustomerMessage": self.setup.plan.customer_message,
        });
        self.send_stream(7, complete.to_string().as_bytes());
        self.start_app();
    }

    /// Sends a sequenced output message, faults applied to its first copy.
    fn send_stream(&mut self, payload_type: u32, payload: &[u8]) {
        let encrypted;
        let payload = match &self.keys {
            Some((encrypt, _)) if matches!(payload_type, 1 | 11 | 12) => {
                encrypted = seal(encrypt, payload);
                &encrypted[..]
            }
            _ => payload,
        };
        let sequence = self.out_sequence;
        self.out_sequence += 1;
        let frame = wire::encode(
            "output_stream_data",
            sequence,
            0,
            payload_type,
            Uuid::new_v4(),
            wire::now_ms(),
            payload,
        );
        self.unacked.insert(
            sequence,
            Pending {
                frame: frame.clone(),
                last_sent: Instant::now(),
            },
        );
        if !matches!(self.phase, Phase::Running) {
            self.send(frame);
            return;
        }
        self.outputs += 1;
        let n = self.outputs;
        let faults = self.setup.plan.faults.clone();
        let every = |k: u32| k > 0 && n.is_multiple_of(k);
        let mut stats = self.stats.lock().unwrap();
        if every(faults.drop_every) {
            stats.dropped += 1;
            return;
        }
        if every(faults.bad_digest_every) {
            stats.corrupted += 1;
            drop(stats);
            let mut bad = frame;
            bad[80] ^= 0xff;
            self.send(bad);
            return;
        }
        if every(faults.reorder_every) && self.held.is_none() {
            stats.reordered += 1;
            self.held = Some(frame);
            return;
        }
        let duplicate = every(faults.duplicate_every);
        if duplicate {
            stats.duplicated += 1;
        }
        drop(stats);
        self.send(frame.clone());
        if duplicate {
            self.send(frame);
        }
        if let Some(held) = self.held.take() {
            self.send(held);
        }
        if every(faults.kill_socket_after) && self.kills_left > 0 && self.writer.is_some() {
            self.kills_left -= 1;
            self.stats.lock().unwrap().kills += 1;
            self.detach();
        }
    }

    fn retransmit(&mut self) {
        if self.writer.is_none() {
            return;
        }
        let now = Instant::now();
        let mut frames = Vec::new();
        for pending in self.unacked.values_mut() {
            if now.duration_since(pending.last_sent) > RTO {
                pending.last_sent = now;
                frames.push(pending.frame.clone());
            }
        }
        self.stats.lock().unwrap().retransmits += frames.len() as u32;
        for frame in frames {
            self.send(frame);
        }
    }

    fn resend_all(&mut self) {
        let now = Instant::now();
        let frames: Vec<Vec<u8>> = self
            .unacked
            .values_mut()
            .map(|p| {
                p.last_sent = now;
                p.frame.clone()
            })
            .collect();
        for frame in frames {
            self.send(frame);
        }
    }

    fn channel_closed(&mut self) {
        let payload = serde_json::json!({
            "MessageId": Uuid::new_v4().hyphenated().to_string(),
            "CreatedDate": "2024-01-01T00:00:00.000Z",
            "DestinationId": self.setup.target,
            "SessionId": self.setup.session_id,
            "MessageType": "channel_closed",
            "SchemaVersion": 1,
            "Output": self.setup.plan.closed_output.clone().unwrap_or_default(),
        });
        let frame = wire::encode(
            "channel_closed",
            0,
            0,
            0,
            Uuid::new_v4(),
            wire::now_ms(),
            payload.to_string().as_bytes(),
        );
        self.send(frame);
        self.stats.lock().unwrap().closed = true;
        self.done = true;
        // Dropping the writer closes the socket after the frame is out.
        self.detach();
    }

    async fn on_frame(&mut self, data: &[u8]) {
        let Some(message) = wire::decode(data) else {
            self.stats.lock().unwrap().malformed += 1;
            return;
        };
        if !message.digest_ok {
            self.stats.lock().unwrap().bad_digests += 1;
            return;
        }
        match message.message_type.as_str() {
            "acknowledge" => {
                let ack: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                let sequence = ack["AcknowledgedMessageSequenceNumber"].as_i64().unwrap();
                self.unacked.remove(&sequence);
                let mut stats = self.stats.lock().unwrap();
                stats.acks += 1;
                if message.sequence != 0 || message.flags != 3 || message.payload_type != 0 {
                    stats.bad_acks += 1;
                }
            }
            "input_stream_data" => self.on_input(message).await,
            other => self
                .stats
                .lock()
                .unwrap()
                .unexpected_types
                .push(other.to_owned()),
        }
    }

    async fn on_input(&mut self, message: wire::Msg) {
        if message.sequence < self.expected {
            self.stats.lock().unwrap().duplicates += 1;
            if !self.setup.plan.strict_duplicates {
                self.ack(&message);
            }
            return;
        }
        if message.sequence > self.expected {
            self.ack(&message);
            self.ahead.insert(message.sequence, message);
            return;
        }
        self.inputs += 1;
        let faults: &Faults = &self.setup.plan.faults;
        if faults.drop_acks_every > 0 && self.inputs.is_multiple_of(faults.drop_acks_every) {
            self.stats.lock().unwrap().acks_dropped += 1;
        } else {
            self.ack(&message);
        }
        self.process(message).await;
        self.expected += 1;
        while let Some(next) = self.ahead.remove(&self.expected) {
            self.process(next).await;
            self.expected += 1;
        }
    }

    fn ack(&self, message: &wire::Msg) {
        let frame = wire::ack(message);
        let delay = self.setup.plan.faults.ack_delay;
        if delay.is_zero() {
            self.send(frame);
        } else if let Some(writer) = self.writer.clone() {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = writer.send(Message::Binary(frame.into()));
            });
        }
    }

    async fn process(&mut self, message: wire::Msg) {
        match message.payload_type {
            6 => {
                let response: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                self.stats.lock().unwrap().handshake_response = Some(response.clone());
                match self.setup.plan.kms.clone() {
                    None => self.complete_handshake(),
                    Some(kms) => self.start_encryption(&kms, &response).await,
                }
            }
            9 => {
                let Phase::Challenge(expected) = &self.phase else {
                    return;
                };
                let response: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                let sealed = base64::engine::general_purpose::STANDARD
                    .decode(response["Challenge"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                let opened = self
                    .keys
                    .as_ref()
                    .and_then(|(_, decrypt)| open(decrypt, &sealed));
                if opened.as_deref() == Some(&expected[..]) {
                    self.stats.lock().unwrap().encrypted = true;
                    self.complete_handshake();
                } else {
                    self.stats.lock().unwrap().kms_error = Some("challenge mismatch".into());
                    self.closing = Some(Instant::now());
                }
            }
            1 => {
                let data = match &self.keys {
                    Some((_, decrypt)) => match open(decrypt, &message.payload) {
                        Some(data) => {
                            self.stats.lock().unwrap().encrypted_inputs += 1;
                            data
                        }
                        None => {
                            self.stats.lock().unwrap().kms_error = Some("bad input".into());
                            return;
                        }
                    },
                    None => message.payload,
                };
                self.stats.lock().unwrap().input.0.extend_from_slice(&data);
                if let Some(app) = &self.app_in {
                    let _ = app.send(AppIn::Data(data)).await;
                }
            }
            3 => {
                let size: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                let (cols, rows) = (
                    size["cols"].as_u64().unwrap() as u32,
                    size["rows"].as_u64().unwrap() as u32,
                );
                self.stats.lock().unwrap().sizes.push((cols, rows));
                if let Some(app) = &self.app_in {
                    let _ = app.send(AppIn::Resize(cols, rows)).await;
                }
            }
            10 => {
                let flag = u32::from_be_bytes(message.payload[..4].try_into().unwrap());
                self.stats.lock().unwrap().flags.push(flag);
                if let Some(app) = &self.app_in {
                    let _ = app.send(AppIn::Flag(flag)).await;
                }
                if flag == 2 {
                    self.closing = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            other => self
                .stats
                .lock()
                .unwrap()
                .unexpected_payload_types
                .push(other),
        }
    }

    async fn start_encryption(&mut self, kms: &super::Kms, response: &serde_json::Value) {
        let result = response["ProcessedClientActions"]
            .as_array()
            .and_then(|actions| {
                actions
                    .iter()
                    .find(|a| a["ActionType"] == "KMSEncryption" && a["ActionStatus"] == 1)
            })
            .and_then(|a| a["ActionResult"]["KMSCipherTextKey"].as_str())
            .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap());
        let Some(blob) = result else {
            self.stats.lock().unwrap().kms_error = Some("no KMSCipherTextKey".into());
            self.closing = Some(Instant::now());
            return;
        };
        let decrypted = kms
            .client
            .decrypt()
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
            .encryption_context("aws:ssm:SessionId", &self.setup.session_id)
            .encryption_context("aws:ssm:TargetId", &self.setup.target)
            .send()
            .await;
        let plaintext = match decrypted {
            Ok(output) => output.plaintext().unwrap().as_ref().to_vec(),
            Err(e) => {
                self.stats.lock().unwrap().kms_error =
                    Some(format!("{}", aws_sdk_kms::error::DisplayErrorContext(e)));
                self.closing = Some(Instant::now());
                return;
            }
        };
        assert_eq!(plaintext.len(), 64);
        let key = |bytes: &[u8]| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).unwrap());
        // The client decrypts with the first half, so the agent encrypts with it.
        self.keys = Some((key(&plaintext[..32]), key(&plaintext[32..])));
        let mut challenge = vec![0u8; 64];
        SystemRandom::new().fill(&mut challenge).unwrap();
        let sealed = seal(&self.keys.as_ref().unwrap().0, &challenge);
        let request = serde_json::json!({
            "Challenge": base64::engine::general_purpose::STANDARD.encode(sealed),
        });
        self.phase = Phase::Challenge(challenge);
        self.send_stream(8, request.to_string().as_bytes());
    }
}

fn seal(key: &LessSafeKey, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    SystemRandom::new().fill(&mut nonce).unwrap();
    let mut data = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .unwrap();
    let mut out = nonce.to_vec();
    out.extend(data);
    out
}

fn open(key: &LessSafeKey, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 28 {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[..12]).ok()?;
    let mut data = sealed[12..].to_vec();
    let plain = key.open_in_place(nonce, Aad::empty(), &mut data).ok()?;
    Some(plain.to_vec())
}
