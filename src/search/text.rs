//! Terminal output as text to search (pure): escape sequences stripped
//! (CSI, OSC, DCS and the like, also when split across writes), control
//! characters dropped, backspace applied, and the text cut into chunks
//! that each remember where they start in the recording.

/// A chunk of text and its offset (seconds into the recording).
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub offset: f64,
    pub text: String,
}

/// A chunk is closed at the first line end past this many characters...
const CHUNK_SOFT: usize = 256;
/// ...or anywhere at this many.
const CHUNK_HARD: usize = 1024;
/// A chunk also closes at a line end once it spans this many seconds, so
/// that a hit seeks close to its text.
const CHUNK_SECONDS: f64 = 2.0;
/// A new line written this long after its chunk started begins a chunk of
/// its own (what a command printed after a pause is found at its time).
const CHUNK_GAP: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Ground,
    /// After ESC.
    Escape,
    /// Inside `ESC [` ... final byte.
    Csi,
    /// Inside a string (OSC, DCS, SOS, PM, APC) until BEL or ST.
    Text,
    /// ESC inside a string (the start of ST).
    TextEscape,
}

/// Turns terminal output into chunks of plain text, at most `max_chars`
/// characters in all (the rest is counted, not kept).
#[derive(Debug)]
pub struct Chunker {
    state: State,
    current: String,
    current_chars: usize,
    current_offset: f64,
    chunks: Vec<Chunk>,
    kept: usize,
    max_chars: usize,
    /// Characters past `max_chars`, not indexed.
    pub dropped: u64,
}

impl Chunker {
    pub fn new(max_chars: usize) -> Chunker {
        Chunker {
            state: State::Ground,
            current: String::new(),
            current_chars: 0,
            current_offset: 0.0,
            chunks: Vec::new(),
            kept: 0,
            max_chars,
            dropped: 0,
        }
    }

    /// Output written at `offset` seconds.
    pub fn feed(&mut self, offset: f64, data: &str) {
        for c in data.chars() {
            self.state = match (self.state, c) {
                (State::Ground, '\u{1b}') => State::Escape,
                (State::Ground, '\u{9b}') => State::Csi,
                (State::Ground, '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}') => {
                    State::Text
                }
                (State::Ground, c) => {
                    self.ground(offset, c);
                    State::Ground
                }
                (State::Escape, '[') => State::Csi,
                (State::Escape, ']' | 'P' | 'X' | '^' | '_') => State::Text,
                // Intermediate bytes (`ESC ( B`) keep the sequence going.
                (State::Escape, ' '..='/') => State::Escape,
                (State::Escape, _) => State::Ground,
                (State::Csi, '@'..='~') => State::Ground,
                (State::Csi, '\u{1b}') => State::Escape,
                (State::Csi, _) => State::Csi,
                (State::Text, '\u{7}' | '\u{9c}') => State::Ground,
                (State::Text, '\u{1b}') => State::TextEscape,
                (State::Text, _) => State::Text,
                (State::TextEscape, '\\') => State::Ground,
                (State::TextEscape, _) => State::Text,
            };
        }
    }

    /// The chunks, the last one closed.
    pub fn finish(mut self) -> Vec<Chunk> {
        self.close();
        self.chunks
    }

    fn ground(&mut self, offset: f64, c: char) {
        match c {
            '\n' => {
                self.push(offset, '\n');
                let long = self.current_chars >= CHUNK_SOFT
                    || offset - self.current_offset >= CHUNK_SECONDS;
                if long {
                    self.close();
                }
            }
            '\t' => self.push(offset, ' '),
            '\u{8}' => {
                if self.current.ends_with(|c| c != '\n') {
                    self.current.pop();
                    self.current_chars -= 1;
                    self.kept -= 1;
                }
            }
            c if c.is_control() => {}
            c => {
                if self.current.ends_with('\n') && offset - self.current_offset >= CHUNK_GAP {
                    self.close();
                }
                self.push(offset, c)
            }
        }
    }

    fn push(&mut self, offset: f64, c: char) {
        if self.kept >= self.max_chars {
            self.dropped += 1;
            return;
        }
        if self.current_chars == 0 {
            if c == '\n' {
                return;
            }
            self.current_offset = offset;
        }
        self.current.push(c);
        self.current_chars += 1;
        self.kept += 1;
        if self.current_chars >= CHUNK_HARD {
            self.close();
        }
    }

    fn close(&mut self) {
        let text = std::mem::take(&mut self.current);
        self.current_chars = 0;
        if !text.trim().is_empty() {
            self.chunks.push(Chunk {
                offset: self.current_offset,
                text: text.trim_end().to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chunks: &[Chunk]) -> String {
        chunks
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join("|")
    }

    #[test]
    fn escapes_are_stripped_even_when_split() {
        let mut c = Chunker::new(10_000);
        c.feed(0.0, "\u{1b}]0;user@host: ~\u{7}\u{1b}[01;32mgreen\u{1b}[0");
        c.feed(0.5, "m and \u{1b}]133;A\u{1b}\\pla\u{8}\u{8}lain\r\n");
        c.feed(1.0, "\u{1b}(Bx\ty\u{0}z\u{1b}P1$r\u{1b}\\!");
        let chunks = c.finish();
        // What came a second later starts a chunk of its own.
        assert_eq!(text(&chunks), "green and plain|x yz!");
        assert_eq!(chunks[0].offset, 0.0);
        assert_eq!(chunks[1].offset, 1.0);
    }

    #[test]
    fn chunks_close_at_lines_and_bounds() {
        let mut c = Chunker::new(5000);
        for i in 0..100 {
            c.feed(f64::from(i), &format!("line {i:03} {}\r\n", "x".repeat(40)));
        }
        let chunks = c.finish();
        assert!(chunks.len() > 10);
        assert!(chunks.iter().all(|c| c.text.chars().count() <= CHUNK_HARD));
        let second = &chunks[1];
        assert!(second.text.starts_with("line "));
        let n: f64 = second.text[5..8].parse().unwrap();
        assert_eq!(
            second.offset, n,
            "a chunk starts where its first line was written"
        );

        let mut c = Chunker::new(100);
        c.feed(0.0, &"y".repeat(150));
        assert_eq!(c.dropped, 50);
        assert_eq!(c.finish()[0].text.len(), 100);
    }
}
