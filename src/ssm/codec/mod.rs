//! The SSM Session Manager `ClientMessage` binary codec and the payloads
//! that travel inside it (docs/aws-protocols.md 1.3–1.6).
//!
//! `frame.rs` is the framing: every frame after the first is one binary
//! WebSocket message, a 120-byte big-endian header followed by the payload,
//! which runs to the end of the frame. [`decode`] never panics on arbitrary
//! bytes; [`ClientMessage::validate`] applies the receiver's checks
//! (non-empty type, non-zero date, SHA-256 digest). Frames are built with
//! [`encode`] in one allocation; the sequence number of a stream frame can
//! be filled in later with [`set_sequence_number`], so a frame can be built
//! by the caller before the channel assigns its place in the stream.
//!
//! `payload.rs` is what the frames carry: the JSON payloads
//! (Go struct field names, in Go's field order), flags and exit codes.

mod frame;
mod payload;

pub use frame::*;
pub use payload::*;

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
