//! The SSM Session Manager `ClientMessage` binary codec and the JSON
//! payloads that travel inside it (docs/aws-protocols.md 1.3–1.6).
//!
//! Every frame after the first is one binary WebSocket message: a 120-byte
//! big-endian header followed by the payload, which runs to the end of the
//! frame. [`decode`] never panics on arbitrary bytes; [`ClientMessage::validate`]
//! applies the receiver's checks (non-empty type, non-zero date, SHA-256
//! digest). Frames are built with [`encode`] in one allocation; the
//! sequence number of a stream frame can be filled in later with
//! [`set_sequence_number`], so a frame can be built by the caller before
//! the channel assigns its place in the stream.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The value of the HeaderLength field: the offset of PayloadLength, not the
/// full header size.
pub const HEADER_LENGTH: u32 = 116;
/// Bytes before the payload.
pub const HEADER_SIZE: usize = 120;
/// Bytes of the space-padded MessageType field.
pub const MESSAGE_TYPE_SIZE: usize = 32;
/// The largest payload the plugin puts in one message (`StreamDataPayloadSize`).
pub const MAX_STREAM_PAYLOAD: usize = 1024;
/// Flags of an acknowledge message (SYN | FIN), as the plugin sends them.
pub const ACK_FLAGS: u64 = 3;

const SCHEMA_VERSION: u32 = 1;
const OFFSET_MESSAGE_TYPE: usize = 4;
const OFFSET_SCHEMA_VERSION: usize = 36;
const OFFSET_CREATED_DATE: usize = 40;
const OFFSET_SEQUENCE_NUMBER: usize = 48;
const OFFSET_FLAGS: usize = 56;
const OFFSET_MESSAGE_ID: usize = 64;
const OFFSET_PAYLOAD_DIGEST: usize = 80;
const OFFSET_PAYLOAD_TYPE: usize = 112;
const OFFSET_PAYLOAD_LENGTH: usize = 116;

/// Why a frame or payload was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("frame of {0} bytes is shorter than the {HEADER_SIZE}-byte header")]
    TooShort(usize),
    #[error("header length {header_length} does not fit a frame of {frame} bytes")]
    HeaderLength { header_length: u32, frame: usize },
    #[error("message type is empty")]
    EmptyMessageType,
    #[error("message type is not UTF-8")]
    MessageTypeEncoding,
    #[error("created date is zero")]
    ZeroCreatedDate,
    #[error("payload digest does not match the payload")]
    Digest,
    #[error("{what} payload: {reason}")]
    Payload { what: &'static str, reason: String },
}

/// The 32-byte MessageType string (docs/aws-protocols.md 1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageType {
    InputStreamData,
    OutputStreamData,
    Acknowledge,
    ChannelClosed,
    StartPublication,
    PausePublication,
    AgentSessionState,
    /// Any other name (at most 32 bytes; longer names are truncated on encode).
    Other(String),
}

/// The PayloadType field (docs/aws-protocols.md 1.5). 0 is used by acknowledge and
/// channel_closed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadType {
    Undefined,
    Output,
    Error,
    Size,
    Parameter,
    HandshakeRequest,
    HandshakeResponse,
    HandshakeComplete,
    EncChallengeRequest,
    EncChallengeResponse,
    Flag,
    StdErr,
    ExitCode,
    Other(u32),
}

/// The payload of a [`PayloadType::Flag`] message: a 4-byte big-endian u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Client: the local TCP connection closed (basic port forwarding).
    DisconnectToPort,
    /// Client: end the session (agent > 2.3.722.0).
    TerminateSession,
    /// Agent: it could not connect to the destination port.
    ConnectToPortError,
    Other(u32),
}

/// One decoded frame. The payload shares the frame's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    pub header_length: u32,
    pub message_type: MessageType,
    pub schema_version: u32,
    /// Unix epoch milliseconds.
    pub created_date: u64,
    pub sequence_number: i64,
    pub flags: u64,
    pub message_id: Uuid,
    pub payload_digest: [u8; 32],
    pub payload_type: PayloadType,
    /// The PayloadLength field as sent; the payload itself is the rest of
    /// the frame, whatever this says (as in the plugin's parser).
    pub payload_length: u32,
    pub payload: Bytes,
}

/// The header fields of a frame to build; the digest and lengths are
/// computed by [`encode`].
#[derive(Debug, Clone)]
pub struct Header {
    pub message_type: MessageType,
    pub created_date: u64,
    pub sequence_number: i64,
    pub flags: u64,
    pub message_id: Uuid,
    pub payload_type: PayloadType,
}

/// Decodes one frame without validating it (see [`ClientMessage::validate`]).
/// Never panics: short frames and impossible header lengths are errors.
pub fn decode(frame: Bytes) -> Result<ClientMessage, Error> {
    if frame.len() < HEADER_SIZE {
        return Err(Error::TooShort(frame.len()));
    }
    let header_length = read_u32(&frame, 0);
    // The payload starts after the PayloadLength field, which sits at
    // HeaderLength. Fixed fields come first, so it cannot be earlier than 116.
    let payload_start = (header_length as usize).checked_add(4);
    let payload_start = match payload_start {
        Some(start) if header_length >= HEADER_LENGTH && start <= frame.len() => start,
        _ => {
            return Err(Error::HeaderLength {
                header_length,
                frame: frame.len(),
            });
        }
    };
    let message_type = parse_message_type(&frame[OFFSET_MESSAGE_TYPE..OFFSET_SCHEMA_VERSION])?;
    let mut id = [0u8; 16];
    // Wire order is the UUID's least-significant half first.
    id[8..16].copy_from_slice(&frame[OFFSET_MESSAGE_ID..OFFSET_MESSAGE_ID + 8]);
    id[0..8].copy_from_slice(&frame[OFFSET_MESSAGE_ID + 8..OFFSET_PAYLOAD_DIGEST]);
    let mut payload_digest = [0u8; 32];
    payload_digest.copy_from_slice(&frame[OFFSET_PAYLOAD_DIGEST..OFFSET_PAYLOAD_TYPE]);
    Ok(ClientMessage {
        header_length,
        message_type,
        schema_version: read_u32(&frame, OFFSET_SCHEMA_VERSION),
        created_date: read_u64(&frame, OFFSET_CREATED_DATE),
        sequence_number: read_u64(&frame, OFFSET_SEQUENCE_NUMBER) as i64,
        flags: read_u64(&frame, OFFSET_FLAGS),
        message_id: Uuid::from_bytes(id),
        payload_digest,
        payload_type: PayloadType::from(read_u32(&frame, OFFSET_PAYLOAD_TYPE)),
        payload_length: read_u32(&frame, OFFSET_PAYLOAD_LENGTH),
        payload: frame.slice(payload_start..),
    })
}

/// Builds a frame in one allocation: header, SHA-256 of the payload, and the
/// payload given as consecutive parts (so a caller can prepend its own
/// framing without copying twice).
pub fn encode(header: &Header, payload: &[&[u8]]) -> BytesMut {
    let length: usize = payload.iter().map(|part| part.len()).sum();
    encode_with(header, length, |frame| {
        for part in payload {
            frame.put_slice(part);
        }
    })
}

/// Builds a frame whose payload `write` appends in place (JSON payloads are
/// serialized straight into the frame). `capacity` is a size hint.
fn encode_with(header: &Header, capacity: usize, write: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut frame = BytesMut::with_capacity(HEADER_SIZE + capacity);
    frame.put_u32(HEADER_LENGTH);
    let name = header.message_type.as_str().as_bytes();
    let name = &name[..name.len().min(MESSAGE_TYPE_SIZE)];
    frame.put_slice(name);
    frame.put_bytes(b' ', MESSAGE_TYPE_SIZE - name.len());
    frame.put_u32(SCHEMA_VERSION);
    frame.put_u64(header.created_date);
    frame.put_i64(header.sequence_number);
    frame.put_u64(header.flags);
    let id = header.message_id.as_bytes();
    frame.put_slice(&id[8..16]);
    frame.put_slice(&id[0..8]);
    // Digest and length are filled in once the payload is there.
    frame.put_bytes(0, 32);
    frame.put_u32(u32::from(header.payload_type));
    frame.put_u32(0);
    write(&mut frame);
    let digest = Sha256::digest(&frame[HEADER_SIZE..]);
    frame[OFFSET_PAYLOAD_DIGEST..OFFSET_PAYLOAD_TYPE].copy_from_slice(&digest);
    // A payload over 4 GiB cannot be framed; stream payloads are 1 KiB.
    let length = u32::try_from(frame.len() - HEADER_SIZE).unwrap_or(u32::MAX);
    frame[OFFSET_PAYLOAD_LENGTH..HEADER_SIZE].copy_from_slice(&length.to_be_bytes());
    frame
}

/// Overwrites the SequenceNumber of an encoded frame (the digest covers
/// only the payload, so the frame stays valid).
pub fn set_sequence_number(frame: &mut [u8], sequence_number: i64) {
    if let Some(field) = frame.get_mut(OFFSET_SEQUENCE_NUMBER..OFFSET_SEQUENCE_NUMBER + 8) {
        field.copy_from_slice(&sequence_number.to_be_bytes());
    }
}

/// The current time as the protocol's CreatedDate (epoch milliseconds,
/// never zero).
pub fn now_millis() -> u64 {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(1);
    u64::try_from(millis).unwrap_or(u64::MAX).max(1)
}

/// Builds the acknowledge frame for a received stream message (one
/// allocation: the JSON is written into the frame).
pub fn encode_ack(acknowledged: &ClientMessage) -> Bytes {
    #[derive(Serialize)]
    struct Content<'a> {
        #[serde(rename = "AcknowledgedMessageType")]
        message_type: &'a str,
        #[serde(rename = "AcknowledgedMessageId")]
        message_id: Uuid,
        #[serde(rename = "AcknowledgedMessageSequenceNumber")]
        sequence_number: i64,
        #[serde(rename = "IsSequentialMessage")]
        is_sequential_message: bool,
    }
    let content = Content {
        message_type: acknowledged.message_type.as_str(),
        message_id: acknowledged.message_id,
        sequence_number: acknowledged.sequence_number,
        is_sequential_message: true,
    };
    let header = Header {
        message_type: MessageType::Acknowledge,
        created_date: now_millis(),
        sequence_number: 0,
        flags: ACK_FLAGS,
        message_id: Uuid::new_v4(),
        payload_type: PayloadType::Undefined,
    };
    encode_with(&header, 160, |frame| {
        serde_json::to_writer(frame.writer(), &content).expect("an acknowledge serializes");
    })
    .freeze()
}

impl ClientMessage {
    /// The receiver's checks (the plugin's `Validate`): publication messages
    /// always pass; otherwise the header length, type and date must be set,
    /// and a non-empty payload must match its digest. (The plugin checks the
    /// digest only when PayloadLength is non-zero; a frame that carries bytes
    /// while claiming length zero is rejected here too.)
    pub fn validate(&self) -> Result<(), Error> {
        if matches!(
            self.message_type,
            MessageType::StartPublication | MessageType::PausePublication
        ) {
            return Ok(());
        }
        if self.header_length == 0 {
            return Err(Error::HeaderLength {
                header_length: 0,
                frame: HEADER_SIZE + self.payload.len(),
            });
        }
        if matches!(&self.message_type, MessageType::Other(name) if name.is_empty()) {
            return Err(Error::EmptyMessageType);
        }
        if self.created_date == 0 {
            return Err(Error::ZeroCreatedDate);
        }
        if (self.payload_length != 0 || !self.payload.is_empty())
            && Sha256::digest(&self.payload)[..] != self.payload_digest[..]
        {
            return Err(Error::Digest);
        }
        Ok(())
    }

    /// Whether this message is sequenced (input/output stream data).
    pub fn is_stream_data(&self) -> bool {
        matches!(
            self.message_type,
            MessageType::InputStreamData | MessageType::OutputStreamData
        )
    }

    /// Parses the payload as the JSON type `T`.
    pub fn json<'a, T: Deserialize<'a>>(&'a self, what: &'static str) -> Result<T, Error> {
        serde_json::from_slice(&self.payload).map_err(|e| Error::Payload {
            what,
            reason: e.to_string(),
        })
    }
}

impl MessageType {
    pub fn as_str(&self) -> &str {
        match self {
            MessageType::InputStreamData => "input_stream_data",
            MessageType::OutputStreamData => "output_stream_data",
            MessageType::Acknowledge => "acknowledge",
            MessageType::ChannelClosed => "channel_closed",
            MessageType::StartPublication => "start_publication",
            MessageType::PausePublication => "pause_publication",
            MessageType::AgentSessionState => "agent_session_state",
            MessageType::Other(name) => name,
        }
    }

    fn from_name(name: &str) -> MessageType {
        match name {
            "input_stream_data" => MessageType::InputStreamData,
            "output_stream_data" => MessageType::OutputStreamData,
            "acknowledge" => MessageType::Acknowledge,
            "channel_closed" => MessageType::ChannelClosed,
            "start_publication" => MessageType::StartPublication,
            "pause_publication" => MessageType::PausePublication,
            "agent_session_state" => MessageType::AgentSessionState,
            other => MessageType::Other(other.to_owned()),
        }
    }
}

impl From<u32> for PayloadType {
    fn from(value: u32) -> Self {
        match value {
            0 => PayloadType::Undefined,
            1 => PayloadType::Output,
            2 => PayloadType::Error,
            3 => PayloadType::Size,
            4 => PayloadType::Parameter,
            5 => PayloadType::HandshakeRequest,
            6 => PayloadType::HandshakeResponse,
            7 => PayloadType::HandshakeComplete,
            8 => PayloadType::EncChallengeRequest,
            9 => PayloadType::EncChallengeResponse,
            10 => PayloadType::Flag,
            11 => PayloadType::StdErr,
            12 => PayloadType::ExitCode,
            other => PayloadType::Other(other),
        }
    }
}

impl From<PayloadType> for u32 {
    fn from(value: PayloadType) -> Self {
        match value {
            PayloadType::Undefined => 0,
            PayloadType::Output => 1,
            PayloadType::Error => 2,
            PayloadType::Size => 3,
            PayloadType::Parameter => 4,
            PayloadType::HandshakeRequest => 5,
            PayloadType::HandshakeResponse => 6,
            PayloadType::HandshakeComplete => 7,
            PayloadType::EncChallengeRequest => 8,
            PayloadType::EncChallengeResponse => 9,
            PayloadType::Flag => 10,
            PayloadType::StdErr => 11,
            PayloadType::ExitCode => 12,
            PayloadType::Other(other) => other,
        }
    }
}

impl Flag {
    /// The 4-byte payload of a Flag message.
    pub fn to_payload(self) -> [u8; 4] {
        u32::from(self).to_be_bytes()
    }

    /// Parses a Flag payload; anything but exactly 4 bytes is an error.
    pub fn from_payload(payload: &[u8]) -> Result<Flag, Error> {
        let bytes: [u8; 4] = payload.try_into().map_err(|_| Error::Payload {
            what: "flag",
            reason: format!("expected 4 bytes, got {}", payload.len()),
        })?;
        Ok(Flag::from(u32::from_be_bytes(bytes)))
    }
}

impl From<u32> for Flag {
    fn from(value: u32) -> Self {
        match value {
            1 => Flag::DisconnectToPort,
            2 => Flag::TerminateSession,
            3 => Flag::ConnectToPortError,
            other => Flag::Other(other),
        }
    }
}

impl From<Flag> for u32 {
    fn from(value: Flag) -> Self {
        match value {
            Flag::DisconnectToPort => 1,
            Flag::TerminateSession => 2,
            Flag::ConnectToPortError => 3,
            Flag::Other(other) => other,
        }
    }
}

/// Parses an ExitCode payload. The agent sends `EXIT_CODE: <n>` as text;
/// a bare number and a 4-byte big-endian integer are accepted too.
pub fn parse_exit_code(payload: &[u8]) -> Result<i32, Error> {
    let text = std::str::from_utf8(payload).ok().map(|text| {
        let text = text.trim();
        text.strip_prefix("EXIT_CODE:").unwrap_or(text).trim()
    });
    if let Some(code) = text.and_then(|text| text.parse::<i32>().ok()) {
        return Ok(code);
    }
    if let Ok(bytes) = <[u8; 4]>::try_from(payload) {
        return Ok(i32::from_be_bytes(bytes));
    }
    Err(Error::Payload {
        what: "exit code",
        reason: format!("unrecognised {} bytes", payload.len()),
    })
}

// --- JSON payloads (Go struct field names, in Go's field order) ---

/// The first frame of every connection (text, JSON).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenDataChannelInput<'a> {
    pub message_schema_version: &'a str,
    pub request_id: String,
    pub token_value: &'a str,
    pub client_id: String,
    pub client_version: &'a str,
}

/// Payload of an `acknowledge` message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcknowledgeContent {
    #[serde(rename = "AcknowledgedMessageType")]
    pub acknowledged_message_type: String,
    #[serde(rename = "AcknowledgedMessageId")]
    pub acknowledged_message_id: String,
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub acknowledged_message_sequence_number: i64,
    #[serde(rename = "IsSequentialMessage", default)]
    pub is_sequential_message: bool,
}

/// Payload of a `channel_closed` message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ChannelClosed {
    pub message_id: String,
    pub created_date: String,
    pub destination_id: String,
    pub session_id: String,
    pub message_type: String,
    pub schema_version: i64,
    pub output: String,
}

/// HandshakeRequest (agent → client, payload type 5).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeRequest {
    pub agent_version: String,
    pub requested_client_actions: Vec<RequestedClientAction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestedClientAction {
    pub action_type: String,
    pub action_parameters: serde_json::Value,
}

/// `ActionParameters` of the SessionType action.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionTypeRequest {
    pub session_type: String,
    pub properties: serde_json::Value,
}

/// `ActionParameters` of the KMSEncryption action.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct KmsEncryptionRequest {
    #[serde(rename = "KMSKeyId")]
    pub kms_key_id: String,
}

/// `ActionResult` of a successful KMSEncryption action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KmsEncryptionResponse {
    /// Base64 of the KMS CiphertextBlob.
    #[serde(rename = "KMSCipherTextKey")]
    pub kms_cipher_text_key: String,
}

/// HandshakeResponse (client → agent, payload type 6).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeResponse {
    pub client_version: String,
    pub processed_client_actions: Vec<ProcessedClientAction>,
    pub errors: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessedClientAction {
    pub action_type: String,
    pub action_status: ActionStatus,
    pub action_result: serde_json::Value,
    pub error: String,
}

/// `ActionStatus` of a processed action: 1 Success, 2 Failed, 3 Unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum ActionStatus {
    Success,
    Failed,
    Unsupported,
    Other(i64),
}

/// HandshakeComplete (agent → client, payload type 7).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HandshakeComplete {
    /// A Go `time.Duration`: nanoseconds.
    pub handshake_time_to_complete: i64,
    pub customer_message: String,
}

/// EncChallengeRequest / EncChallengeResponse (payload types 8 and 9).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionChallenge {
    /// Base64 of nonce ‖ ciphertext ‖ tag.
    #[serde(rename = "Challenge")]
    pub challenge: String,
}

/// Size (client → agent, payload type 3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SizeData {
    pub cols: u32,
    pub rows: u32,
}

impl From<i64> for ActionStatus {
    fn from(value: i64) -> Self {
        match value {
            1 => ActionStatus::Success,
            2 => ActionStatus::Failed,
            3 => ActionStatus::Unsupported,
            other => ActionStatus::Other(other),
        }
    }
}

impl From<ActionStatus> for i64 {
    fn from(value: ActionStatus) -> Self {
        match value {
            ActionStatus::Success => 1,
            ActionStatus::Failed => 2,
            ActionStatus::Unsupported => 3,
            ActionStatus::Other(other) => other,
        }
    }
}

fn parse_message_type(field: &[u8]) -> Result<MessageType, Error> {
    // The plugin strips NULs, then whitespace.
    let start = field.iter().position(|&b| b != 0).unwrap_or(field.len());
    let end = field.iter().rposition(|&b| b != 0).map_or(start, |i| i + 1);
    let name = std::str::from_utf8(&field[start..end]).map_err(|_| Error::MessageTypeEncoding)?;
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::EmptyMessageType);
    }
    Ok(MessageType::from_name(name))
}

fn read_u32(frame: &[u8], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&frame[offset..offset + 4]);
    u32::from_be_bytes(bytes)
}

fn read_u64(frame: &[u8], offset: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&frame[offset..offset + 8]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/aws-protocols.md 1.3: produced by the plugin's own Go encoder.
    const GOLDEN: &str = concat!(
        "00000074",
        "696e7075745f73747265616d5f64617461202020202020202020202020202020",
        "00000001",
        "0000015e0baa7884",
        "0000000000000007",
        "0000000000000000",
        "a508b5f073f31b16dd01e56bff48483e",
        "1d887ce0f8672e4914d9000e801cd74ecd805dd9366c0bc42dc16adc0197dc2f",
        "00000001",
        "00000003",
        "6c730d",
    );

    fn golden() -> Bytes {
        Bytes::from(hex::decode(GOLDEN).unwrap())
    }

    fn golden_header() -> Header {
        Header {
            message_type: MessageType::InputStreamData,
            created_date: 1503434274948,
            sequence_number: 7,
            flags: 0,
            message_id: Uuid::parse_str("dd01e56b-ff48-483e-a508-b5f073f31b16").unwrap(),
            payload_type: PayloadType::Output,
        }
    }

    #[test]
    fn encodes_the_golden_vector_byte_for_byte() {
        let frame = encode(&golden_header(), &[b"ls\r"]);
        assert_eq!(frame.len(), 123);
        assert_eq!(hex::encode(&frame), GOLDEN);
        // Parts are concatenated exactly like one payload.
        let split = encode(&golden_header(), &[b"l", b"", b"s\r"]);
        assert_eq!(hex::encode(&split), GOLDEN);
    }

    #[test]
    fn decodes_the_golden_vector() {
        let message = decode(golden()).unwrap();
        assert_eq!(message.header_length, 116);
        assert_eq!(message.message_type, MessageType::InputStreamData);
        assert_eq!(message.schema_version, 1);
        assert_eq!(message.created_date, 1503434274948);
        assert_eq!(message.sequence_number, 7);
        assert_eq!(message.flags, 0);
        assert_eq!(
            message.message_id.hyphenated().to_string(),
            "dd01e56b-ff48-483e-a508-b5f073f31b16"
        );
        assert_eq!(message.payload_type, PayloadType::Output);
        assert_eq!(message.payload_length, 3);
        assert_eq!(&message.payload[..], b"ls\r");
        message.validate().unwrap();
    }

    #[test]
    fn sequence_numbers_can_be_set_after_encoding() {
        let mut header = golden_header();
        header.sequence_number = 0;
        let mut frame = encode(&header, &[b"ls\r"]);
        set_sequence_number(&mut frame, 7);
        assert_eq!(hex::encode(&frame), GOLDEN);
        // A short buffer is left alone rather than panicking.
        set_sequence_number(&mut [0u8; 10], 7);
    }

    #[test]
    fn round_trips_every_field() {
        let check = |header: Header, payload: &[u8]| {
            let frame = encode(&header, &[payload]).freeze();
            let message = decode(frame).unwrap();
            message.validate().unwrap();
            assert_eq!(message.message_type, header.message_type);
            assert_eq!(message.created_date, header.created_date);
            assert_eq!(message.sequence_number, header.sequence_number);
            assert_eq!(message.flags, header.flags);
            assert_eq!(message.message_id, header.message_id);
            assert_eq!(message.payload_type, header.payload_type);
            assert_eq!(message.payload_length as usize, payload.len());
            assert_eq!(&message.payload[..], payload);
        };
        let types = [
            MessageType::InputStreamData,
            MessageType::OutputStreamData,
            MessageType::Acknowledge,
            MessageType::ChannelClosed,
            MessageType::StartPublication,
            MessageType::PausePublication,
            MessageType::AgentSessionState,
            MessageType::Other("x".repeat(32)),
        ];
        for (i, message_type) in types.into_iter().enumerate() {
            for payload_type in (0..14).map(PayloadType::from) {
                check(
                    Header {
                        message_type: message_type.clone(),
                        created_date: 1 + i as u64,
                        sequence_number: [0, 1, i64::MAX, -1][i % 4],
                        flags: [0, 3, u64::MAX][i % 3],
                        message_id: Uuid::new_v4(),
                        payload_type,
                    },
                    &vec![i as u8; i * 100],
                );
            }
        }
        for value in [0u32, 1, 12, 13, 99, u32::MAX] {
            assert_eq!(u32::from(PayloadType::from(value)), value);
            assert_eq!(u32::from(Flag::from(value)), value);
        }
    }

    #[test]
    fn an_ack_names_the_acknowledged_message() {
        let original = decode(golden()).unwrap();
        let ack = decode(encode_ack(&original)).unwrap();
        ack.validate().unwrap();
        assert_eq!(ack.message_type, MessageType::Acknowledge);
        assert_eq!(ack.sequence_number, 0);
        assert_eq!(ack.flags, ACK_FLAGS);
        assert_eq!(ack.payload_type, PayloadType::Undefined);
        let content: AcknowledgeContent = ack.json("acknowledge").unwrap();
        assert_eq!(
            content,
            AcknowledgeContent {
                acknowledged_message_type: "input_stream_data".into(),
                acknowledged_message_id: "dd01e56b-ff48-483e-a508-b5f073f31b16".into(),
                acknowledged_message_sequence_number: 7,
                is_sequential_message: true,
            }
        );
        let text = std::str::from_utf8(&ack.payload).unwrap();
        assert!(text.starts_with(r#"{"AcknowledgedMessageType":"input_stream_data","#));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let frame = golden();
        for len in 0..frame.len() {
            let result = decode(frame.slice(..len));
            if len < HEADER_SIZE {
                assert_eq!(result, Err(Error::TooShort(len)));
            } else {
                // Long enough to parse; the digest catches the missing bytes.
                assert_eq!(result.unwrap().validate(), Err(Error::Digest));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A fixed xorshift stream instead of a property-testing crate.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let golden = golden().to_vec();
        for round in 0..20_000 {
            let mut frame = if round % 2 == 0 {
                golden.clone()
            } else {
                let len = (next() % 300) as usize;
                (0..len).map(|_| next() as u8).collect()
            };
            // Flip a few bytes, including the header length.
            for _ in 0..(next() % 4) {
                if !frame.is_empty() {
                    let i = (next() as usize) % frame.len();
                    frame[i] = next() as u8;
                }
            }
            if let Ok(message) = decode(Bytes::from(frame)) {
                let _ = message.validate();
                let _ = message.json::<AcknowledgeContent>("acknowledge");
                let _ = parse_exit_code(&message.payload);
                let _ = Flag::from_payload(&message.payload);
            }
        }
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let check = |edit: &dyn Fn(&mut Vec<u8>), expect: Error| {
            let mut frame = golden().to_vec();
            edit(&mut frame);
            let result = decode(Bytes::from(frame)).and_then(|m| m.validate());
            assert_eq!(result, Err(expect));
        };
        check(
            &|f| f[0..4].copy_from_slice(&115u32.to_be_bytes()),
            Error::HeaderLength {
                header_length: 115,
                frame: 123,
            },
        );
        check(
            &|f| f[0..4].copy_from_slice(&200u32.to_be_bytes()),
            Error::HeaderLength {
                header_length: 200,
                frame: 123,
            },
        );
        check(
            &|f| f[0..4].copy_from_slice(&u32::MAX.to_be_bytes()),
            Error::HeaderLength {
                header_length: u32::MAX,
                frame: 123,
            },
        );
        check(&|f| f[4..36].fill(b' '), Error::EmptyMessageType);
        check(&|f| f[4..36].fill(0), Error::EmptyMessageType);
        check(&|f| f[4] = 0xff, Error::MessageTypeEncoding);
        check(&|f| f[40..48].fill(0), Error::ZeroCreatedDate);
        check(&|f| f[80] ^= 1, Error::Digest);
        check(&|f| f[122] ^= 1, Error::Digest);
        // A frame that says its payload is empty but carries one is still checked.
        check(
            &|f| {
                f[116..120].copy_from_slice(&0u32.to_be_bytes());
                f[81] ^= 1;
            },
            Error::Digest,
        );
    }

    #[test]
    fn longer_header_lengths_move_the_payload() {
        // HeaderLength 118: two extra header bytes before PayloadLength's successor.
        let mut frame = golden().to_vec();
        frame[0..4].copy_from_slice(&118u32.to_be_bytes());
        let message = decode(Bytes::from(frame)).unwrap();
        assert_eq!(&message.payload[..], b"\r");
    }

    #[test]
    fn publication_messages_skip_validation() {
        let mut frame = encode(
            &Header {
                message_type: MessageType::PausePublication,
                created_date: 0,
                ..golden_header()
            },
            &[b"x"],
        );
        frame[80] ^= 1;
        decode(frame.freeze()).unwrap().validate().unwrap();
    }

    #[test]
    fn padding_and_nuls_are_stripped_from_the_type() {
        let mut frame = golden().to_vec();
        frame[4..36].fill(0);
        frame[6..17].copy_from_slice(b"acknowledge");
        frame[17] = b' ';
        let message = decode(Bytes::from(frame)).unwrap();
        assert_eq!(message.message_type, MessageType::Acknowledge);
    }

    #[test]
    fn flags_and_exit_codes_parse() {
        assert_eq!(Flag::TerminateSession.to_payload(), [0, 0, 0, 2]);
        assert_eq!(
            Flag::from_payload(&[0, 0, 0, 1]),
            Ok(Flag::DisconnectToPort)
        );
        assert_eq!(
            Flag::from_payload(&[0, 0, 0, 3]),
            Ok(Flag::ConnectToPortError)
        );
        assert!(Flag::from_payload(&[0, 0, 1]).is_err());
        assert_eq!(parse_exit_code(b"EXIT_CODE: 3"), Ok(3));
        assert_eq!(parse_exit_code(b"EXIT_CODE: -1\n"), Ok(-1));
        assert_eq!(parse_exit_code(b"127"), Ok(127));
        assert_eq!(parse_exit_code(&[0, 0, 0, 5]), Ok(5));
        assert!(parse_exit_code(b"EXIT_CODE: x").is_err());
    }

    #[test]
    fn json_payloads_match_the_plugin() {
        let response = HandshakeResponse {
            client_version: "1.2.0.0".into(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: "SessionType".into(),
                action_status: ActionStatus::Success,
                action_result: serde_json::Value::Null,
                error: String::new(),
            }],
            errors: None,
        };
        // docs/aws-protocols.md 1.6, verified on the wire.
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
        );
        let request: HandshakeRequest = serde_json::from_str(
            r#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[
                {"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":null}},
                {"ActionType":"KMSEncryption","ActionParameters":{"KMSKeyId":"arn:aws:kms:k"}}]}"#,
        )
        .unwrap();
        assert_eq!(request.agent_version, "3.3.987.0");
        let kms: KmsEncryptionRequest = serde_json::from_value(
            request.requested_client_actions[1]
                .action_parameters
                .clone(),
        )
        .unwrap();
        assert_eq!(kms.kms_key_id, "arn:aws:kms:k");
        let complete: HandshakeComplete = serde_json::from_str(
            r#"{"HandshakeTimeToComplete":1500000,"CustomerMessage":"hello"}"#,
        )
        .unwrap();
        assert_eq!(complete.customer_message, "hello");
        let closed: ChannelClosed =
            serde_json::from_str(r#"{"SessionId":"s-1","Output":"bye","SchemaVersion":1}"#)
                .unwrap();
        assert_eq!(closed.output, "bye");
        let open = OpenDataChannelInput {
            message_schema_version: "1.0",
            request_id: "r".into(),
            token_value: "tok-123",
            client_id: "c".into(),
            client_version: "1.2.0.0",
        };
        assert_eq!(
            serde_json::to_string(&open).unwrap(),
            r#"{"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":"tok-123","ClientId":"c","ClientVersion":"1.2.0.0"}"#
        );
        assert_eq!(
            serde_json::to_string(&SizeData {
                cols: 300,
                rows: 100
            })
            .unwrap(),
            r#"{"cols":300,"rows":100}"#
        );
    }
}
