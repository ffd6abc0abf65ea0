//! The commands of a shell session, for `ssh.command` events: pure, `std`
//! only, fed with both directions of the terminal.
//!
//! Two sources:
//! - OSC 133 shell-integration marks in the output (`133;B` where the prompt
//!   ends, `133;C` when the command runs): the command is what the screen
//!   line shows between the two. Once a shell emits them, only they count.
//! - Otherwise the client's keystrokes through a small line editor
//!   (printable text, backspace, ctrl-U, ctrl-W, ctrl-K, ctrl-A/E, left and
//!   right arrows, Home/End, Delete). A typed line becomes a command only
//!   when the terminal echoed it (so a password typed at a prompt with echo
//!   off never does). When history or completion changed the line (up/down,
//!   Tab, ctrl-R, alt-keys), what the screen shows after the prompt is taken
//!   instead.
//!
//! Lines typed into full-screen programs (the alternate screen: vim, less,
//! top) are not commands. Everything is capped (lines, escape sequences,
//! commands) and the text keeps no control characters; invisible and
//! bidirectional format characters are written out as `\u{...}`.

/// Longest command kept, in characters; longer ones are cut and flagged.
pub const MAX_COMMAND: usize = 4096;
/// Longest line the editor or the screen model holds.
const MAX_LINE: usize = 16 * 1024;
/// Longest escape sequence parsed; the rest of a longer one is skipped.
const MAX_ESCAPE: usize = 512;

/// Where a command was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The keystrokes, as the terminal echoed them.
    Typed,
    /// The screen line after the prompt (history or completion was used).
    Screen,
    /// OSC 133 shell-integration marks.
    Osc133,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Typed => "typed",
            Source::Screen => "screen",
            Source::Osc133 => "osc133",
        }
    }
}

/// One command, at `offset` seconds into the recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub text: String,
    pub offset: f64,
    pub source: Source,
    pub truncated: bool,
}

/// The tracker of one shell channel.
#[derive(Debug, Default)]
pub struct Tracker {
    input: Editor,
    screen: Screen,
    /// A typed line waiting for its echo (the output's next newline).
    pending: Option<Pending>,
    /// What the screen showed of the line being typed on rows the output
    /// already left (a long line wraps: readline moves down with `\n`).
    carry: String,
}

#[derive(Debug)]
struct Pending {
    text: String,
    truncated: bool,
    edited: bool,
    prompt_col: usize,
    offset: f64,
}

impl Tracker {
    /// Bytes from the client at `now` seconds into the session.
    pub fn input(&mut self, data: &[u8], now: f64) {
        for &b in data {
            let starting = self.input.prompt_col.is_none();
            match self.input.byte(b) {
                Key::Submit => {
                    let line = std::mem::take(&mut self.input.line);
                    let edited = std::mem::take(&mut self.input.edited);
                    let truncated = std::mem::take(&mut self.input.truncated);
                    self.input.cursor = 0;
                    let text: String = line.into_iter().collect();
                    let prompt_col = self.input.prompt_col.take().unwrap_or(0);
                    if self.screen.alt || (text.trim().is_empty() && !edited) {
                        continue;
                    }
                    self.pending = Some(Pending {
                        text: text.trim().to_owned(),
                        truncated,
                        edited,
                        prompt_col,
                        offset: now,
                    });
                }
                Key::Abandon => self.carry.clear(),
                Key::Changed if starting => {
                    // The first key of a line: what the screen holds to its
                    // left is the prompt.
                    self.input.prompt_col = Some(self.screen.col);
                }
                _ => {}
            }
        }
    }

    /// Bytes from the target at `now` seconds; returns the commands they
    /// completed.
    pub fn output(&mut self, data: &[u8], now: f64) -> Vec<Command> {
        let mut done = Vec::new();
        for &b in data {
            match self.screen.byte(b) {
                Some(Mark::Newline(line)) => {
                    let carry = std::mem::take(&mut self.carry);
                    if let Some(pending) = self.pending.take() {
                        if !self.screen.marks
                            && let Some(command) = resolve(pending, &carry, &line)
                        {
                            done.push(command);
                        }
                    } else if let Some(col) = self.input.prompt_col {
                        // Still typing: the line wrapped.
                        let mut carry = carry;
                        if carry.len() < MAX_LINE * 4 {
                            carry.extend(&line[col.min(line.len())..]);
                        }
                        self.carry = carry;
                        self.input.prompt_col = Some(0);
                    }
                }
                Some(Mark::Executed(text)) => {
                    self.pending = None;
                    if !text.trim().is_empty() {
                        let (text, truncated) = clean(text.trim(), false);
                        done.push(Command {
                            text,
                            offset: now,
                            source: Source::Osc133,
                            truncated,
                        });
                    }
                }
                None => {}
            }
        }
        done
    }
}

/// A typed line once its echo is known.
fn resolve(pending: Pending, carry: &str, line: &[char]) -> Option<Command> {
    let start = if carry.is_empty() {
        pending.prompt_col
    } else {
        0
    };
    let mut shown = carry.to_owned();
    shown.extend(&line[start.min(line.len())..]);
    let shown = shown.trim();
    let (text, source) = if pending.edited {
        (shown, Source::Screen)
    } else if !pending.text.is_empty() && echoed(&pending, shown) {
        (pending.text.as_str(), Source::Typed)
    } else {
        // Not echoed: not a command (a password, a `read -s`).
        return None;
    };
    if text.is_empty() {
        return None;
    }
    let (text, truncated) = clean(text, pending.truncated);
    Some(Command {
        text,
        offset: pending.offset,
        source,
        truncated,
    })
}

/// Whether the screen line shows the typed text. Past the caps only their
/// beginnings can be compared.
fn echoed(pending: &Pending, shown: &str) -> bool {
    // Wrapping may add or drop blanks where the terminal's rows meet.
    let dense = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let (shown, text) = (dense(shown), dense(&pending.text));
    if shown.contains(text.as_str()) {
        return true;
    }
    let head: String = shown.chars().take(1024).collect();
    pending.truncated && !head.is_empty() && text.starts_with(&head)
}

/// Caps the text and writes invisible format characters out.
fn clean(text: &str, truncated: bool) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(MAX_COMMAND * 4));
    let mut count = 0;
    for c in text.chars() {
        if count == MAX_COMMAND {
            return (out, true);
        }
        if c.is_control() {
            continue;
        }
        if is_format(c) {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
        count += 1;
    }
    (out, truncated)
}

/// Zero-width and bidirectional formatting characters, which could make a
/// command read differently from what ran.
fn is_format(c: char) -> bool {
    matches!(c as u32,
        0x00ad | 0x061c | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

/// The escape-sequence parser shared by both directions.
#[derive(Debug, Default)]
enum Seq {
    #[default]
    Ground,
    Escape,
    Csi(Vec<u8>),
    Ss3,
    Osc(Vec<u8>),
    OscEnd(Vec<u8>),
}

/// Collects UTF-8 sequences into characters (invalid ones as U+FFFD).
#[derive(Debug, Default)]
struct Utf8 {
    buf: Vec<u8>,
}

impl Utf8 {
    fn push(&mut self, b: u8) -> Option<char> {
        self.buf.push(b);
        match std::str::from_utf8(&self.buf) {
            Ok(s) => {
                let c = s.chars().next();
                self.buf.clear();
                c
            }
            Err(e) if e.error_len().is_none() && self.buf.len() < 4 => None,
            Err(_) => {
                self.buf.clear();
                Some('\u{FFFD}')
            }
        }
    }
}

enum Key {
    Submit,
    Abandon,
    Changed,
    Other,
}

#[derive(Debug, Default)]
struct Editor {
    esc: Seq,
    utf8: Utf8,
    line: Vec<char>,
    cursor: usize,
    /// History, completion or a word motion changed the line: the typed
    /// characters are not the whole story.
    edited: bool,
    truncated: bool,
    prompt_col: Option<usize>,
}

impl Editor {
    fn byte(&mut self, b: u8) -> Key {
        match std::mem::take(&mut self.esc) {
            Seq::Ground => self.ground(b),
            Seq::Escape => {
                match b {
                    b'[' => self.esc = Seq::Csi(Vec::new()),
                    b'O' => self.esc = Seq::Ss3,
                    b']' => self.esc = Seq::Osc(Vec::new()),
                    // Alt-keys: word motions, yank-last-arg, ...
                    _ => self.edited = true,
                }
                Key::Changed
            }
            Seq::Csi(mut params) => {
                if (0x40..=0x7e).contains(&b) {
                    self.csi(&params, b);
                    return Key::Changed;
                }
                if params.len() < MAX_ESCAPE {
                    params.push(b);
                }
                self.esc = Seq::Csi(params);
                Key::Other
            }
            Seq::Ss3 => {
                self.csi(&[], b);
                Key::Changed
            }
            Seq::Osc(mut body) | Seq::OscEnd(mut body) => {
                // Nothing a client sends as OSC edits the line.
                if b != 0x07 && b != b'\\' {
                    if body.len() < MAX_ESCAPE {
                        body.push(b);
                    }
                    self.esc = Seq::Osc(body);
                }
                Key::Other
            }
        }
    }

    fn ground(&mut self, b: u8) -> Key {
        match b {
            0x1b => self.esc = Seq::Escape,
            b'\r' | b'\n' => return Key::Submit,
            0x7f | 0x08 => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.line.remove(self.cursor);
                }
            }
            // ctrl-U: the line up to the cursor.
            0x15 => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
            }
            // ctrl-W: the word before the cursor.
            0x17 => {
                let mut start = self.cursor;
                while start > 0 && self.line[start - 1] == ' ' {
                    start -= 1;
                }
                while start > 0 && self.line[start - 1] != ' ' {
                    start -= 1;
                }
                self.line.drain(start..self.cursor);
                self.cursor = start;
            }
            // ctrl-K: from the cursor on.
            0x0b => self.line.truncate(self.cursor),
            0x01 => self.cursor = 0,
            0x05 => self.cursor = self.line.len(),
            0x02 => self.cursor = self.cursor.saturating_sub(1),
            0x06 => self.cursor = (self.cursor + 1).min(self.line.len()),
            0x04 if self.cursor < self.line.len() => {
                self.line.remove(self.cursor);
            }
            // ctrl-C abandons the line.
            0x03 => {
                self.line.clear();
                self.cursor = 0;
                self.edited = false;
                self.truncated = false;
                self.prompt_col = None;
                return Key::Abandon;
            }
            // Tab, ctrl-R/S, ctrl-P/N, ctrl-Y: the shell changes the line.
            0x09 | 0x12 | 0x13 | 0x10 | 0x0e | 0x19 => self.edited = true,
            0x00..=0x1f => return Key::Other,
            _ => {
                if let Some(c) = self.utf8.push(b) {
                    if self.line.len() >= MAX_LINE {
                        self.truncated = true;
                    } else {
                        self.line.insert(self.cursor, c);
                        self.cursor += 1;
                    }
                }
            }
        }
        Key::Changed
    }

    fn csi(&mut self, params: &[u8], fin: u8) {
        let first = params
            .split(|&p| p == b';')
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse::<u32>().ok());
        match (fin, first) {
            (b'C', _) => self.cursor = (self.cursor + 1).min(self.line.len()),
            (b'D', _) => self.cursor = self.cursor.saturating_sub(1),
            (b'H', _) | (b'~', Some(1 | 7)) => self.cursor = 0,
            (b'F', _) | (b'~', Some(4 | 8)) => self.cursor = self.line.len(),
            (b'~', Some(3)) if self.cursor < self.line.len() => {
                self.line.remove(self.cursor);
            }
            // Bracketed paste brackets carry no text.
            (b'~', Some(200 | 201)) => {}
            // Up and down recall history; what other keys do (function
            // keys, unknown sequences) is the shell's to say.
            _ => self.edited = true,
        }
    }
}

enum Mark {
    /// The output moved to a new line; the line it left.
    Newline(Vec<char>),
    /// OSC 133;C: the command on the screen line is running.
    Executed(String),
}

/// One screen line, enough to read back what a line editor displayed.
#[derive(Debug, Default)]
struct Screen {
    esc: Seq,
    utf8: Utf8,
    line: Vec<char>,
    col: usize,
    /// The alternate screen (a full-screen program) is showing.
    alt: bool,
    /// The shell emits OSC 133 marks.
    marks: bool,
    prompt_end: Option<usize>,
    /// The command line the output just left (bash prints PS0, zsh and
    /// fish run their preexec hooks, after the newline).
    entered: Option<String>,
}

impl Screen {
    fn byte(&mut self, b: u8) -> Option<Mark> {
        match std::mem::take(&mut self.esc) {
            Seq::Ground => self.ground(b),
            Seq::Escape => {
                match b {
                    b'[' => self.esc = Seq::Csi(Vec::new()),
                    b']' => self.esc = Seq::Osc(Vec::new()),
                    _ => {}
                }
                None
            }
            Seq::Csi(mut params) => {
                if (0x40..=0x7e).contains(&b) {
                    self.csi(&params, b);
                } else {
                    if params.len() < MAX_ESCAPE {
                        params.push(b);
                    }
                    self.esc = Seq::Csi(params);
                }
                None
            }
            Seq::Ss3 => None,
            Seq::Osc(mut body) => match b {
                0x07 => self.osc(&body),
                0x1b => {
                    self.esc = Seq::OscEnd(body);
                    None
                }
                _ => {
                    if body.len() < MAX_ESCAPE {
                        body.push(b);
                    }
                    self.esc = Seq::Osc(body);
                    None
                }
            },
            Seq::OscEnd(body) => {
                if b == b'\\' {
                    self.osc(&body)
                } else {
                    // Not a string terminator: a new escape sequence.
                    self.esc = Seq::Escape;
                    self.byte(b)
                }
            }
        }
    }

    fn ground(&mut self, b: u8) -> Option<Mark> {
        match b {
            0x1b => self.esc = Seq::Escape,
            b'\r' => self.col = 0,
            b'\n' => {
                self.col = 0;
                let line = std::mem::take(&mut self.line);
                if let Some(start) = self.prompt_end.take() {
                    self.entered = Some(line[start.min(line.len())..].iter().collect());
                }
                return Some(Mark::Newline(line));
            }
            0x08 => self.col = self.col.saturating_sub(1),
            b'\t' => {
                let to = (self.col / 8 + 1) * 8;
                while self.col < to {
                    self.put(' ');
                }
            }
            0x00..=0x1f | 0x7f => {}
            _ => {
                if let Some(c) = self.utf8.push(b) {
                    self.put(c);
                }
            }
        }
        None
    }

    fn put(&mut self, c: char) {
        if self.col >= MAX_LINE {
            return;
        }
        while self.line.len() < self.col {
            self.line.push(' ');
        }
        if self.col < self.line.len() {
            self.line[self.col] = c;
        } else {
            self.line.push(c);
        }
        self.col += 1;
    }

    fn csi(&mut self, params: &[u8], fin: u8) {
        let private = params.first() == Some(&b'?');
        let body = if private { &params[1..] } else { params };
        let numbers: Vec<u32> = body
            .split(|&p| p == b';')
            .filter_map(|p| std::str::from_utf8(p).ok()?.parse().ok())
            .collect();
        let n = numbers.first().copied().unwrap_or(0);
        let count = n.max(1) as usize;
        match fin {
            b'h' | b'l' if private && numbers.iter().any(|m| matches!(m, 47 | 1047 | 1049)) => {
                self.alt = fin == b'h';
            }
            b'K' => match n {
                0 => self.line.truncate(self.col),
                1 => {
                    for c in self.line.iter_mut().take(self.col + 1) {
                        *c = ' ';
                    }
                }
                _ => self.line.clear(),
            },
            b'C' => self.col = (self.col + count).min(MAX_LINE),
            b'D' => self.col = self.col.saturating_sub(count),
            b'G' => self.col = (count - 1).min(MAX_LINE),
            b'P' => {
                let end = (self.col + count).min(self.line.len());
                if self.col < end {
                    self.line.drain(self.col..end);
                }
            }
            b'@' if self.col <= self.line.len() => {
                for _ in 0..count.min(MAX_LINE.saturating_sub(self.line.len())) {
                    self.line.insert(self.col, ' ');
                }
            }
            _ => {}
        }
    }

    fn osc(&mut self, body: &[u8]) -> Option<Mark> {
        let rest = body.strip_prefix(b"133;")?;
        match rest.first() {
            Some(b'A') => {
                self.marks = true;
                self.prompt_end = None;
                self.entered = None;
                None
            }
            Some(b'B') => {
                self.marks = true;
                self.prompt_end = Some(self.col);
                self.entered = None;
                None
            }
            Some(b'C') => {
                if let Some(start) = self.prompt_end.take() {
                    let text = self.line[start.min(self.line.len())..].iter().collect();
                    return Some(Mark::Executed(text));
                }
                self.entered.take().map(Mark::Executed)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Types `keys`, then the target echoes `echo` and a newline.
    fn run(steps: &[(&[u8], &[u8])]) -> Vec<Command> {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        for (i, (keys, echo)) in steps.iter().enumerate() {
            t.input(keys, i as f64);
            out.extend(t.output(echo, i as f64 + 0.5));
        }
        out
    }

    fn texts(commands: &[Command]) -> Vec<&str> {
        commands.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn typed_lines_with_editing_keys() {
        let prompt: &[u8] = b"$ ";
        let commands = run(&[
            (b"", prompt),
            (b"lsx\x7f -la\r", b"lsx\x08 \x08 -la\r\n"),
            (b"", prompt),
            (b"rm -rf /\x15echo hi\r", b"rm -rf /\r$ \x1b[Kecho hi\r\n"),
            (b"", prompt),
            (
                b"git commit\x17status\r",
                b"git commit\x08\x08\x08\x08\x08\x08      \x08\x08\x08\x08\x08\x08status\r\n",
            ),
            (b"", prompt),
            (
                b"cat fle\x1b[D\x1b[Di\x1b[C\x1b[C\r",
                b"cat fle\x08\x08ile\x08\x08\x1b[C\x1b[C\r\n",
            ),
        ]);
        assert_eq!(
            texts(&commands),
            ["ls -la", "echo hi", "git status", "cat file"]
        );
        assert_eq!(commands[0].offset, 1.0);
        assert!(commands.iter().all(|c| c.source == Source::Typed));
    }

    #[test]
    fn a_line_that_was_not_echoed_is_no_command() {
        let commands = run(&[
            (b"", b"[sudo] password for me: "),
            (b"hunter2\r", b"\r\n"),
            (b"", b"$ "),
            (b"id\r", b"id\r\n"),
        ]);
        assert_eq!(texts(&commands), ["id"]);
    }

    #[test]
    fn history_and_completion_read_the_screen() {
        let commands = run(&[
            (b"", b"$ "),
            (b"\x1b[A", b"make test"),
            (b"\r", b"\r\n"),
            (b"", b"me@host:~$ "),
            (b"cd /ve\t", b"cd /var/"),
            (b"\r", b"\r\n"),
        ]);
        assert_eq!(texts(&commands), ["make test", "cd /var/"]);
        assert!(commands.iter().all(|c| c.source == Source::Screen));
    }

    #[test]
    fn osc_133_marks_give_the_command_when_the_shell_emits_them() {
        let prompt: &[u8] = b"\x1b]133;A\x07me$ \x1b]133;B\x07";
        let mut t = Tracker::default();
        assert!(t.output(prompt, 0.0).is_empty());
        t.input(b"\x1b[Auptime\r", 1.0);
        // bash prints PS0 after the newline: the line it names is the one
        // the command was typed on (history recall included).
        let got = t.output(b"uptime\r\n\x1b]133;C\x1b\\ 10:00 up\r\n", 1.2);
        assert_eq!(texts(&got), ["uptime"]);
        assert_eq!(got[0].source, Source::Osc133);
        // A mark before the newline works too.
        let mut t = Tracker::default();
        t.output(prompt, 0.0);
        t.input(b"uptime\r", 1.0);
        let got = t.output(b"uptime\x1b]133;C\x07\r\n", 1.2);
        assert_eq!(texts(&got), ["uptime"]);
        assert_eq!(got[0].source, Source::Osc133);
        assert_eq!(got[0].offset, 1.2);
    }

    #[test]
    fn full_screen_programs_are_not_read() {
        let commands = run(&[
            (b"", b"$ "),
            (b"vi x\r", b"vi x\r\n\x1b[?1049h"),
            (b"ihello\r", b"hello\r\n"),
            (b"\x1b:wq\r", b"\x1b[?1049l$ "),
            (b"id\r", b"id\r\n"),
        ]);
        assert_eq!(texts(&commands), ["vi x", "id"]);
    }

    #[test]
    fn hostile_input_is_capped_and_cleaned() {
        let mut t = Tracker::default();
        t.output(b"$ ", 0.0);
        let huge = vec![b'a'; 100_000];
        t.input(&huge, 1.0);
        let mut echo = huge.clone();
        echo.extend_from_slice(b"\r\n");
        t.input(b"\r", 1.0);
        let got = t.output(&echo, 1.5);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text.chars().count(), MAX_COMMAND);
        assert!(got[0].truncated);

        // Escape sequences never reach the text; bidi overrides are shown.
        let mut t = Tracker::default();
        t.output(b"$ ", 0.0);
        let keys = "echo \u{202e}gnp.exe\x1b]0;title\x07\r".as_bytes();
        t.input(keys, 1.0);
        let got = t.output("echo \u{202e}gnp.exe\r\n".as_bytes(), 1.5);
        assert_eq!(texts(&got), ["echo \\u{202e}gnp.exe"]);
        // A key sequence the editor does not know: the screen says what it did.
        let mut t = Tracker::default();
        t.output(b"$ ", 0.0);
        t.input(b"echo a\x1b[31mb\r", 1.0);
        let got = t.output(b"echo a1mb\r\n", 1.5);
        assert_eq!(texts(&got), ["echo a1mb"]);
        assert_eq!(got[0].source, Source::Screen);
        // An endless escape sequence is bounded and ends.
        let mut t = Tracker::default();
        let mut noise = b"\x1b[".to_vec();
        noise.extend(std::iter::repeat_n(b'1', 1_000_000));
        t.output(&noise, 0.0);
        t.output(b"m\r\n$ ", 0.0);
        t.input(&noise, 0.0);
        t.input(b"m", 0.0);
        t.input(b"id\r", 1.0);
        assert_eq!(texts(&t.output(b"id\r\n", 1.0)), ["id"]);
    }

    #[test]
    fn a_line_that_wrapped_is_read_whole() {
        let mut t = Tracker::default();
        t.output(b"$ ", 0.0);
        let text = format!("echo {}", "y".repeat(300));
        t.input(text.as_bytes(), 1.0);
        // An 80-column terminal: readline moves down with a newline.
        let mut echo = Vec::new();
        for (i, chunk) in text.as_bytes().chunks(78).enumerate() {
            if i > 0 {
                echo.extend_from_slice(b"\n\r");
            }
            echo.extend_from_slice(chunk);
        }
        assert!(t.output(&echo, 1.1).is_empty());
        t.input(b"\r", 2.0);
        let got = t.output(b"\r\n", 2.1);
        assert_eq!(texts(&got), [text.as_str()]);
        assert_eq!(got[0].source, Source::Typed);
    }

    #[test]
    fn enter_alone_and_ctrl_c_give_nothing() {
        let commands = run(&[
            (b"", b"$ "),
            (b"\r", b"\r\n$ "),
            (b"oops\x03", b"oops^C\r\n$ "),
            (b"\r", b"\r\n"),
        ]);
        assert!(commands.is_empty(), "{commands:?}");
    }
}
