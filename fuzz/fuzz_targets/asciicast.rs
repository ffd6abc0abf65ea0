//! Fuzzes the asciicast v2 encoder every terminal recording is written
//! with: whatever bytes a target sends, cut into reads anywhere (invalid
//! UTF-8, a character split across reads, control bytes), the recording
//! says exactly what the client received. Each line is read back as
//! asciicast v2 with `serde_json` (the event's text read as a JSON string
//! of bytes, lone surrogates as WTF-8), unescaped, and joined: it must be
//! the input, byte for byte; the broker's reader (`read_event`, what
//! `pam audit play` uses) reads the same.
//!
//! Input: `n = data[0] % 4` cut lengths `data[1..=n]` (0 counts as 1),
//! applied in turn to the rest, which is the output stream; `n = 0` writes
//! it whole. tests/it/recording.rs writes the seeds through the real
//! writer and reads them with asciinema.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run asciicast corpus/asciicast seeds/asciicast -- -max_total_time=600`

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, Error, Visitor};

#[path = "../../src/audit/asciicast.rs"]
#[allow(dead_code)]
mod asciicast;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 4).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let mut text = String::new();
    let mut carry = Vec::new();
    let mut at = 0;
    let mut time = 0.0;
    for cut in cuts.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + usize::from(*cut).max(1)).min(stream.len());
        asciicast::event(&mut text, time, "o", &mut carry, &stream[at..end]);
        assert!(carry.len() <= 3, "carry of {} bytes", carry.len());
        at = end;
        time += 0.25;
    }
    if cuts.is_empty() {
        asciicast::event(&mut text, time, "o", &mut carry, stream);
    }
    asciicast::flush(&mut text, time, "o", &mut carry);
    assert!(carry.is_empty());

    let mut read = Vec::new();
    for line in text.split_inclusive('\n') {
        let line = line
            .strip_suffix('\n')
            .expect("every line ends with a newline");
        let (t, kind, Bytes(raw)): (f64, String, Bytes) =
            serde_json::from_str(line).expect("an asciicast v2 event line");
        assert!(t >= 0.0);
        assert_eq!(kind, "o");
        let bytes = asciicast::unescape_wtf8(&raw).expect("only byte escapes");
        assert!(!bytes.is_empty(), "an empty event: {line}");
        if !line.contains("\\udc") {
            // No escapes: plain JSON text, as any reader takes it.
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
            assert_eq!(value[2].as_str().map(str::as_bytes), Some(&bytes[..]));
        }
        // The broker's own reader (`pam audit play`) agrees.
        assert_eq!(
            asciicast::read_event(line),
            Some((t, kind.clone(), bytes.clone()))
        );
        read.extend_from_slice(&bytes);
    }
    assert_eq!(read, stream, "the recording is not what was sent");
});

/// A JSON string read as its bytes (WTF-8: lone surrogates kept).
struct Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Raw;
        impl Visitor<'_> for Raw {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes(v.as_bytes().to_vec()))
            }
        }
        d.deserialize_byte_buf(Raw)
    }
}
