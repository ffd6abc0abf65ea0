//! smux protocol version 1 framing (xtaci/smux, as vendored by the
//! session-manager-plugin): an 8-byte little-endian header, then data.
//!
//! Frames do not line up with data-channel messages (one message may carry
//! `SYN+PSH`, a large `PSH` may span several), so [`Parser`] works on the
//! byte stream and hands out data as zero-copy slices of the messages it
//! was fed, possibly in several pieces per frame.

use bytes::Bytes;

pub const VERSION: u8 = 1;
pub const HEADER_SIZE: usize = 8;

/// smux commands (v1 has no UPD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Syn,
    Fin,
    Psh,
    Nop,
}

/// What the parser found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Syn(u32),
    Fin(u32),
    Nop,
    /// Data of a PSH frame for a stream (a frame may arrive in pieces).
    Data(u32, Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("smux frame with version {0}, expected 1")]
    Version(u8),
    #[error("smux frame with unknown command {0}")]
    Command(u8),
}

/// Incremental frame parser for one direction of a session.
#[derive(Debug, Default)]
pub struct Parser {
    header: [u8; HEADER_SIZE],
    filled: usize,
    /// Data bytes still to come for the current frame.
    remaining: usize,
    /// The stream the current data belongs to (`None`: skip the data).
    current: Option<u32>,
}

impl Command {
    fn code(self) -> u8 {
        match self {
            Command::Syn => 0,
            Command::Fin => 1,
            Command::Psh => 2,
            Command::Nop => 3,
        }
    }

    fn from_code(code: u8) -> Result<Command, Error> {
        match code {
            0 => Ok(Command::Syn),
            1 => Ok(Command::Fin),
            2 => Ok(Command::Psh),
            3 => Ok(Command::Nop),
            other => Err(Error::Command(other)),
        }
    }
}

/// The header of a frame carrying `length` data bytes for `stream`.
pub fn header(command: Command, stream: u32, length: u16) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    header[0] = VERSION;
    header[1] = command.code();
    header[2..4].copy_from_slice(&length.to_le_bytes());
    header[4..8].copy_from_slice(&stream.to_le_bytes());
    header
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Takes bytes from the front of `input` until it has a piece to return
    /// or `input` is empty (`Ok(None)`: feed more).
    pub fn next(&mut self, input: &mut Bytes) -> Result<Option<Piece>, Error> {
        loop {
            if self.remaining > 0 {
                if input.is_empty() {
                    return Ok(None);
                }
                let take = self.remaining.min(input.len());
                let data = input.split_to(take);
                self.remaining -= take;
                if let Some(stream) = self.current {
                    return Ok(Some(Piece::Data(stream, data)));
                }
                continue;
            }
            if input.is_empty() {
                return Ok(None);
            }
            let take = (HEADER_SIZE - self.filled).min(input.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&input[..take]);
            self.filled += take;
            let _ = input.split_to(take);
            if self.filled < HEADER_SIZE {
                return Ok(None);
            }
            self.filled = 0;
            let version = self.header[0];
            if version != VERSION {
                return Err(Error::Version(version));
            }
            let command = Command::from_code(self.header[1])?;
            let length = usize::from(u16::from_le_bytes([self.header[2], self.header[3]]));
            let stream = u32::from_le_bytes([
                self.header[4],
                self.header[5],
                self.header[6],
                self.header[7],
            ]);
            self.remaining = length;
            self.current = None;
            match command {
                Command::Psh => {
                    self.current = Some(stream);
                    continue;
                }
                // Only PSH carries data; anything else's bytes are skipped.
                Command::Syn => return Ok(Some(Piece::Syn(stream))),
                Command::Fin => return Ok(Some(Piece::Fin(stream))),
                Command::Nop => return Ok(Some(Piece::Nop)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(command: Command, stream: u32, data: &[u8]) -> Vec<u8> {
        let mut out = header(command, stream, data.len() as u16).to_vec();
        out.extend_from_slice(data);
        out
    }

    /// Parses `stream` fed in the given chunk sizes and merges adjacent
    /// data pieces of one stream, so the result does not depend on chunking.
    fn parse(stream: &[u8], chunks: &[usize]) -> Vec<Piece> {
        let mut parser = Parser::new();
        let mut pieces: Vec<Piece> = Vec::new();
        let mut rest = stream;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).clamp(1, rest.len());
            let mut input = Bytes::copy_from_slice(&rest[..size]);
            rest = &rest[size..];
            while let Some(piece) = parser.next(&mut input).unwrap() {
                match (pieces.last_mut(), piece) {
                    (Some(Piece::Data(a, data)), Piece::Data(b, more)) if *a == b => {
                        let mut joined = data.to_vec();
                        joined.extend_from_slice(&more);
                        *data = Bytes::from(joined);
                    }
                    (_, piece) => pieces.push(piece),
                }
            }
            assert!(input.is_empty());
        }
        pieces
    }

    #[test]
    fn headers_are_little_endian() {
        assert_eq!(
            header(Command::Psh, 3, 0x0102),
            [1, 2, 0x02, 0x01, 3, 0, 0, 0]
        );
        assert_eq!(
            header(Command::Syn, 0x0a0b0c0d, 0)[4..],
            [0x0d, 0x0c, 0x0b, 0x0a]
        );
    }

    #[test]
    fn frames_split_anywhere_parse_the_same() {
        let big: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut stream = Vec::new();
        stream.extend(frame(Command::Syn, 3, b""));
        stream.extend(frame(Command::Psh, 3, b"hello"));
        stream.extend(frame(Command::Nop, 0, b""));
        stream.extend(frame(Command::Psh, 5, &big));
        stream.extend(frame(Command::Psh, 3, b""));
        stream.extend(frame(Command::Fin, 3, b""));
        let expect = vec![
            Piece::Syn(3),
            Piece::Data(3, Bytes::from_static(b"hello")),
            Piece::Nop,
            Piece::Data(5, Bytes::from(big.clone())),
            Piece::Fin(3),
        ];
        for chunks in [
            vec![stream.len()],
            vec![1],
            vec![7],
            vec![8],
            vec![9],
            vec![1024],
            vec![3, 1, 1000],
        ] {
            assert_eq!(parse(&stream, &chunks), expect, "chunks {chunks:?}");
        }
        // Every single split point of the stream.
        for split in 1..stream.len() {
            assert_eq!(
                parse(&stream, &[split, stream.len()]),
                expect,
                "split {split}"
            );
        }
    }

    #[test]
    fn bad_versions_and_commands_are_errors() {
        let mut parser = Parser::new();
        let mut input = Bytes::from_static(&[2, 2, 0, 0, 3, 0, 0, 0]);
        assert_eq!(parser.next(&mut input), Err(Error::Version(2)));
        let mut parser = Parser::new();
        let mut input = Bytes::from_static(&[1, 4, 0, 0, 3, 0, 0, 0]);
        assert_eq!(parser.next(&mut input), Err(Error::Command(4)));
    }

    #[test]
    fn data_on_control_frames_is_skipped() {
        let mut stream = header(Command::Syn, 3, 4).to_vec();
        stream.extend_from_slice(b"junk");
        stream.extend(frame(Command::Psh, 3, b"ok"));
        assert_eq!(
            parse(&stream, &[3]),
            vec![Piece::Syn(3), Piece::Data(3, Bytes::from_static(b"ok"))]
        );
    }
}
