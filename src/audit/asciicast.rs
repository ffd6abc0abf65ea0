//! The asciicast v2 event encoder: one chunk of terminal bytes into one
//! `[time, "o", "text"]` line, losslessly.
//!
//! asciicast v2 carries terminal data as JSON strings, but a terminal
//! stream is bytes: a multibyte character can be cut between two reads, and
//! a program can write bytes that are not UTF-8 at all. Nothing is lost:
//!
//! - an incomplete character at the end of a chunk waits (in `carry`, at
//!   most 3 bytes) for the next chunk, and [`flush`] writes what is still
//!   waiting when the stream ends;
//! - a byte that is not part of valid UTF-8 is written as the lone
//!   surrogate `\udc80`..`\udcff` (byte `0x80 + n` → U+DC80 + n), the
//!   "surrogateescape" convention of PEP 383. Valid UTF-8 never decodes to
//!   a lone surrogate, so the mapping is unambiguous: Python's `json`
//!   (asciinema 2) reads it back, and writing the text with
//!   `errors="surrogateescape"` (`PYTHONIOENCODING=utf-8:surrogateescape
//!   asciinema cat`) gives the original bytes; a browser's `JSON.parse`
//!   takes it too and a player shows U+FFFD for it.
//!
//! [`read_event`] is the reader (`pam audit play`). Std and serde only:
//! `fuzz/fuzz_targets/asciicast.rs` includes this file.

use std::fmt::Write as _;

/// Appends the line for `carry ++ data` to `line`: everything but an
/// incomplete character at the very end, which is left in `carry` for the
/// next chunk. Appends nothing when there is nothing complete yet.
pub fn event(line: &mut String, time: f64, kind: &str, carry: &mut Vec<u8>, data: &[u8]) {
    let joined: std::borrow::Cow<'_, [u8]> = if carry.is_empty() {
        std::borrow::Cow::Borrowed(data)
    } else {
        let mut bytes = std::mem::take(carry);
        bytes.extend_from_slice(data);
        std::borrow::Cow::Owned(bytes)
    };
    let bytes = &joined[..];
    let complete = bytes.len() - incomplete_tail(bytes);
    carry.clear();
    carry.extend_from_slice(&bytes[complete..]);
    push_line(line, time, kind, &bytes[..complete]);
}

/// Appends the line for what is still waiting in `carry` (the stream ended
/// inside a character): its bytes, escaped. Appends nothing when empty.
pub fn flush(line: &mut String, time: f64, kind: &str, carry: &mut Vec<u8>) {
    let bytes = std::mem::take(carry);
    push_line(line, time, kind, &bytes);
}

fn push_line(line: &mut String, time: f64, kind: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let _ = write!(line, "[{time:.6}, \"{kind}\", \"");
    for chunk in bytes.utf8_chunks() {
        escape_json(line, chunk.valid());
        for byte in chunk.invalid() {
            // Never ASCII: an invalid byte is 0x80..=0xff.
            let _ = write!(line, "\\u{:04x}", 0xdc00 | u16::from(*byte));
        }
    }
    line.push_str("\"]\n");
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 character
/// that more bytes could complete (0..=3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    let start = bytes.len().saturating_sub(3);
    for i in (start..bytes.len()).rev() {
        if bytes[i] & 0xc0 != 0x80 {
            let tail = &bytes[i..];
            return match std::str::from_utf8(tail) {
                Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => tail.len(),
                _ => 0,
            };
        }
    }
    0
}

/// JSON string escaping (quote, backslash, control characters), as
/// `serde_json` writes it.
pub fn escape_json(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if short.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

/// The bytes a text written by [`event`] stands for, given the text as
/// WTF-8 (what `serde_json` gives when it reads a JSON string as bytes: a
/// lone surrogate U+D800..U+DFFF as its three-byte encoding): U+DC80..U+DCFF
/// become the byte they escape. `None` for any other lone surrogate.
pub fn unescape_wtf8(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        // A surrogate in WTF-8: ED A0..BF 80..BF.
        if text[i] == 0xed && text.get(i + 1).is_some_and(|b| *b >= 0xa0) {
            let b1 = *text.get(i + 1)?;
            let b2 = *text.get(i + 2)?;
            let code = 0xd000 | (u32::from(b1 & 0x3f) << 6) | u32::from(b2 & 0x3f);
            if !(0xdc80..=0xdcff).contains(&code) {
                return None;
            }
            out.push((code & 0xff) as u8);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

/// One event line read back: its time, kind and the bytes it stands for
/// (escapes undone). `None` for a line that is not an asciicast v2 event
/// (the header, or anything else).
pub fn read_event(line: &str) -> Option<(f64, String, Vec<u8>)> {
    let (time, kind, Text(text)): (f64, String, Text) = serde_json::from_str(line).ok()?;
    Some((time, kind, unescape_wtf8(&text)?))
}

/// A JSON string read as its bytes: WTF-8, lone surrogates kept (as
/// `serde_json` gives a string asked for as bytes).
struct Text(Vec<u8>);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Raw;
        impl serde::de::Visitor<'_> for Raw {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Text, E> {
                Ok(Text(v.to_vec()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.as_bytes().to_vec()))
            }
        }
        d.deserialize_byte_buf(Raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(chunks: &[&[u8]]) -> String {
        let mut line = String::new();
        let mut carry = Vec::new();
        for chunk in chunks {
            event(&mut line, 1.5, "o", &mut carry, chunk);
        }
        flush(&mut line, 2.0, "o", &mut carry);
        line
    }

    #[test]
    fn valid_output_is_escaped_exactly_like_serde_json() {
        let samples: [&[u8]; 4] = [
            b"plain text\n",
            b"quote \" backslash \\ tab\t cr\r bell\x07 esc\x1b[31m nul\x00",
            "h\u{e9}llo \u{20ac} \u{1f600}".as_bytes(),
            b"\x08\x0c\x7f",
        ];
        for sample in samples {
            let text = std::str::from_utf8(sample).unwrap();
            let expected = format!("[1.500000, \"o\", {}]\n", serde_json::json!(text));
            assert_eq!(line_of(&[sample]), expected);
        }
        assert_eq!(line_of(&[b""]), "");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_escaped_as_lone_surrogates() {
        assert_eq!(
            line_of(&[b"bad \xff\xfe \xe2\x82 ok"]),
            "[1.500000, \"o\", \"bad \\udcff\\udcfe \\udce2\\udc82 ok\"]\n"
        );
    }

    #[test]
    fn a_character_split_across_chunks_is_kept_whole() {
        let bytes = "h\u{e9}llo \u{20ac}".as_bytes();
        let line = line_of(&[&bytes[..2], &bytes[2..9], &bytes[9..]]);
        assert!(!line.contains("\\udc"), "{line}");
        let decoded: String = line
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[2].to_string())
            .map(|s| serde_json::from_str::<String>(&s).unwrap())
            .collect();
        assert_eq!(decoded, "h\u{e9}llo \u{20ac}");
    }

    #[test]
    fn a_stream_that_ends_inside_a_character_keeps_its_bytes() {
        assert_eq!(
            line_of(&[b"x\xe2\x82"]),
            "[1.500000, \"o\", \"x\"]\n[2.000000, \"o\", \"\\udce2\\udc82\"]\n"
        );
    }

    #[test]
    fn the_reader_gives_back_every_byte() {
        let line = line_of(&[b"ok \xff\xe2\x82\xac \x1b[0m"]);
        let (time, kind, bytes) = read_event(line.trim_end()).unwrap();
        assert_eq!((time, kind.as_str()), (1.5, "o"));
        assert_eq!(bytes, b"ok \xff\xe2\x82\xac \x1b[0m");
        assert_eq!(read_event(r#"{"version": 2}"#), None);
    }

    #[test]
    fn unescaping_gives_back_the_bytes() {
        // WTF-8 of U+DCFF is ED B3 BF.
        assert_eq!(
            unescape_wtf8(b"a\xed\xb3\xbfb").as_deref(),
            Some(&b"a\xffb"[..])
        );
        // U+D800 (a lead surrogate) is not an escape.
        assert_eq!(unescape_wtf8(b"\xed\xa0\x80"), None);
    }
}
