//! Fuzzes the PostgreSQL wire parser the broker runs on untrusted input:
//! startup packets, message framing, frontend (and backend) message bodies,
//! and the incremental scanner, which must see the same messages however
//! the stream is cut into reads.
//!
//! `cargo +nightly fuzz run frontend -- -max_total_time=60`

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/pg/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use protocol::{Scanner, Seen};

fuzz_target!(|data: &[u8]| {
    let _ = protocol::parse_startup(data);

    let mut rest = data;
    while let Ok(Some((tag, body, used))) = protocol::split_message(rest, 1 << 20) {
        assert!(used >= 5 && used <= rest.len());
        let _ = protocol::parse_frontend(tag, body);
        let _ = protocol::parse_backend(tag, body);
        let _ = protocol::command_rows(body);
        rest = &rest[used..];
    }

    if data.len() > 2 {
        let piece = data[0] as usize % 23 + 1;
        let cap = data[1] as usize * 3;
        let stream = &data[2..];
        let whole = scan(stream, stream.len(), cap);
        let cut = scan(stream, piece, cap);
        assert_eq!(whole, cut);
    }
});

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Message(u8, Vec<u8>, usize),
    Chunks(u8, Vec<u8>),
    Skipped(u8, usize),
}

/// The scanner's events over `stream` fed `piece` bytes at a time, with
/// consecutive chunks joined, and whether it stopped on an error.
fn scan(stream: &[u8], piece: usize, cap: usize) -> (Vec<Event>, bool, bool) {
    let mut scanner = Scanner::new(b"QPBECSFXfCEZIs1GHWRK", cap);
    let mut events: Vec<Event> = Vec::new();
    let mut failed = false;
    for part in stream.chunks(piece.max(1)) {
        let result = scanner.feed(part, &mut |seen| match seen {
            Seen::Message { tag, body, len } => {
                assert!(body.len() <= cap.max(len.min(cap)));
                assert!(body.len() == len || body.len() == cap);
                events.push(Event::Message(tag, body.to_vec(), len));
            }
            Seen::Chunk { tag, data } => match events.last_mut() {
                Some(Event::Chunks(t, joined)) if *t == tag => joined.extend_from_slice(data),
                _ => events.push(Event::Chunks(tag, data.to_vec())),
            },
            Seen::Skipped { tag, len } => events.push(Event::Skipped(tag, len)),
        });
        if result.is_err() {
            failed = true;
            break;
        }
    }
    (events, failed, scanner.at_boundary())
}
