//! The binary framing of a data channel message (docs/aws-protocols.md
//! 1.3–1.5): header fields, decode, encode, acknowledgements.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Error;

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
    use crate::ssm::codec::{AcknowledgeContent, Flag, parse_exit_code};

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
}
