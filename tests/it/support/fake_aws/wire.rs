//! The fake agent's own codec, written from docs/aws-protocols.md 1.3 and 1.10
//! independently of `pam::ssm::codec` (a shared bug would otherwise pass
//! every test); checked against the same golden vector.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// One decoded ClientMessage.
#[derive(Debug, Clone)]
pub struct Msg {
    pub message_type: String,
    pub sequence: i64,
    pub flags: u64,
    pub id: Uuid,
    pub payload_type: u32,
    pub payload: Vec<u8>,
    pub digest_ok: bool,
}

pub fn encode(
    message_type: &str,
    sequence: i64,
    flags: u64,
    payload_type: u32,
    id: Uuid,
    created_ms: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(120 + payload.len());
    b.extend(116u32.to_be_bytes());
    let mut name = [b' '; 32];
    name[..message_type.len()].copy_from_slice(message_type.as_bytes());
    b.extend(name);
    b.extend(1u32.to_be_bytes());
    b.extend(created_ms.to_be_bytes());
    b.extend(sequence.to_be_bytes());
    b.extend(flags.to_be_bytes());
    let u = id.as_bytes();
    b.extend(&u[8..16]);
    b.extend(&u[0..8]);
    b.extend(Sha256::digest(payload));
    b.extend(payload_type.to_be_bytes());
    b.extend((payload.len() as u32).to_be_bytes());
    b.extend(payload);
    b
}

pub fn decode(frame: &[u8]) -> Option<Msg> {
    if frame.len() < 120 {
        return None;
    }
    let u32_at = |o: usize| u32::from_be_bytes(frame[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_be_bytes(frame[o..o + 8].try_into().unwrap());
    let header_length = u32_at(0) as usize;
    if header_length < 116 || header_length + 4 > frame.len() {
        return None;
    }
    let message_type = String::from_utf8_lossy(&frame[4..36])
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_owned();
    let mut id = [0u8; 16];
    id[8..16].copy_from_slice(&frame[64..72]);
    id[0..8].copy_from_slice(&frame[72..80]);
    let payload = frame[header_length + 4..].to_vec();
    let digest_ok = payload.is_empty() || Sha256::digest(&payload)[..] == frame[80..112];
    Some(Msg {
        message_type,
        sequence: u64_at(48) as i64,
        flags: u64_at(56),
        id: Uuid::from_bytes(id),
        payload_type: u32_at(112),
        payload,
        digest_ok,
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The acknowledge frame for `msg`, as the agent sends it.
pub fn ack(msg: &Msg) -> Vec<u8> {
    let content = serde_json::json!({
        "AcknowledgedMessageType": msg.message_type,
        "AcknowledgedMessageId": msg.id.hyphenated().to_string(),
        "AcknowledgedMessageSequenceNumber": msg.sequence,
        "IsSequentialMessage": true,
    });
    encode(
        "acknowledge",
        0,
        3,
        0,
        Uuid::new_v4(),
        now_ms(),
        content.to_string().as_bytes(),
    )
}

/// An smux v1 frame (little-endian header).
pub fn smux(command: u8, stream: u32, data: &[u8]) -> Vec<u8> {
    let mut f = vec![1, command];
    f.extend((data.len() as u16).to_le_bytes());
    f.extend(stream.to_le_bytes());
    f.extend(data);
    f
}

/// Collects the smux byte stream and yields whole frames.
#[derive(Default)]
pub struct SmuxReader {
    buffer: Vec<u8>,
}

impl SmuxReader {
    /// (command, stream, data) of every frame completed by `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            if self.buffer.len() < 8 {
                return frames;
            }
            assert_eq!(self.buffer[0], 1, "smux version");
            let length = u16::from_le_bytes([self.buffer[2], self.buffer[3]]) as usize;
            if self.buffer.len() < 8 + length {
                return frames;
            }
            let stream = u32::from_le_bytes(self.buffer[4..8].try_into().unwrap());
            let command = self.buffer[1];
            let data = self.buffer[8..8 + length].to_vec();
            self.buffer.drain(..8 + length);
            frames.push((command, stream, data));
        }
    }
}

/// `a > b` for dotted versions (the agent's own comparison).
pub fn newer(a: &str, b: &str) -> bool {
    let p = |v: &str| -> Vec<u64> { v.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    let (a, b) = (p(a), p(b));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (*a.get(i).unwrap_or(&0), *b.get(i).unwrap_or(&0));
        if x != y {
            return x > y;
        }
    }
    false
}
