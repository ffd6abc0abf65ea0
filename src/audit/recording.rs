//! Terminal recordings in asciicast v2, written as the session runs.
//!
//! The session encodes each event into its asciicast line as it sends it
//! (cheap), and a writer task writes the lines, so the relay never waits on
//! the disk unless the queue is full. The file is flushed at least every
//! second (a crash loses at most one second) and fsynced at the end, when
//! its SHA-256 (over exactly the bytes written) goes into `session.end`.
//!
//! Fail closed: past `session.max_recording` the recorder refuses the event
//! that would cross it (so what is relayed was recorded), and a write error
//! (a full disk) stops it; either way it tells the session once
//! ([`Options::on_fault`]), which ends. At most one second and 64 KiB of
//! output that was taken but not yet written can be lost to a write error;
//! `session.end` then says so (`recording_error`).
//!
//! Lossless: what the client received is what the file says, byte for byte
//! (`audit/asciicast.rs` encodes; bytes that are not UTF-8 are escaped, a
//! character cut between reads is kept whole, and [`Writer::finish`] writes
//! an unfinished one the session ended on).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::asciicast;

/// The header line of a recording.
#[derive(Debug, Clone)]
pub struct Header {
    pub width: u16,
    pub height: u16,
    /// Unix seconds when the session started.
    pub timestamp: i64,
    pub title: String,
    pub term: Option<String>,
    pub session_id: String,
    pub user: String,
    pub target: String,
}

/// What a finished recording is.
#[derive(Debug, Clone)]
pub struct Finished {
    pub sha256: String,
    pub bytes: u64,
    pub path: PathBuf,
}

/// Why a recording stopped taking events before the session ended; the
/// session must end with it (nothing goes on unrecorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Writing failed (a full disk, an I/O error): the error as text.
    Write(String),
    /// The recording reached `session.max_recording` (bytes).
    Limit(u64),
}

/// Told once when a recording stops before its session ended.
pub type OnFault = Box<dyn FnOnce(Fault) + Send>;

/// What a recording may grow to, and whom it tells when it has to stop.
pub struct Options {
    /// `session.max_recording`: the recording never grows past this many bytes.
    pub max_bytes: Option<u64>,
    /// Called once, before anything is refused, when the recording stops.
    pub on_fault: OnFault,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_bytes: None,
            on_fault: Box::new(|_| {}),
        }
    }
}

/// Free space the filesystem of the data_dir must keep for recordings (and,
/// on SQLite, the store): below it, new sessions are refused and readiness
/// fails.
pub const RESERVE: u64 = 4 << 20;

/// Why the filesystem holding `dir` cannot take recordings now (less than
/// [`RESERVE`] free, or no answer), or `None` when it can.
pub fn storage_problem(dir: &Path) -> Option<String> {
    // The directory may not exist yet: ask its nearest existing ancestor.
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent()?;
    }
    match rustix::fs::statvfs(probe) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            (free < RESERVE).then(|| {
                format!(
                    "the broker's data_dir is full ({} KiB free, {} KiB needed)",
                    free / 1024,
                    RESERVE / 1024
                )
            })
        }
        Err(e) => Some(format!("the broker's data_dir cannot be examined: {e}")),
    }
}

/// True for an error that means "no space left" (or over quota).
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Handle the session writes through. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<String>,
    state: Arc<tokio::sync::Mutex<State>>,
    shared: Arc<Shared>,
    started: Instant,
}

/// The encoder's state, shared by the clones of a [`Recorder`]; held while
/// a line is queued so lines keep their order.
struct State {
    carry_out: Vec<u8>,
    carry_in: Vec<u8>,
    /// Bytes of the file taken so far (header included).
    taken: u64,
    max_bytes: Option<u64>,
}

/// What the recorder and its writer share: the one-time fault report.
struct Shared {
    stopped: std::sync::atomic::AtomicBool,
    on_fault: std::sync::Mutex<Option<OnFault>>,
}

impl Shared {
    /// Stops the recording and tells the session, once.
    fn fault(&self, fault: Fault) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let tell = crate::sync::lock(&self.on_fault).take();
        if let Some(tell) = tell {
            tell(fault);
        }
    }

    fn stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The recording's writer has stopped: nothing more can be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the recording is closed")]
pub struct Closed;

/// The writer's join handle; `finish` waits for it.
pub struct Writer {
    task: tokio::task::JoinHandle<std::io::Result<Finished>>,
    close: tokio::sync::oneshot::Sender<()>,
    /// To write what is still waiting in the carries at the end.
    tx: mpsc::Sender<String>,
    state: Arc<tokio::sync::Mutex<State>>,
    shared: Arc<Shared>,
    started: Instant,
}

/// The size recorded when the client's PTY has none: `ssh -tt` from a pipe
/// (as Ansible runs it) asks for a 0x0 terminal, which a player cannot show.
pub const DEFAULT_WIDTH: u16 = 80;
pub const DEFAULT_HEIGHT: u16 = 24;

fn usable(n: u16, default: u16) -> u16 {
    if n == 0 { default } else { n }
}

/// Lines queued before the session has to wait for the writer.
const QUEUE: usize = 4096;

impl Recorder {
    /// Creates `root/relative` (and its directories), writes the header
    /// through to the disk (a full disk refuses the session here, not
    /// later), and starts the writer.
    pub async fn create(
        root: &Path,
        relative: &Path,
        header: &Header,
        options: Options,
    ) -> std::io::Result<(Recorder, Writer)> {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await?;
        let mut env = serde_json::Map::new();
        if let Some(term) = &header.term {
            env.insert("TERM".into(), json!(term));
        }
        let line = json!({
            "version": 2,
            "width": usable(header.width, DEFAULT_WIDTH),
            "height": usable(header.height, DEFAULT_HEIGHT),
            "timestamp": header.timestamp,
            "title": header.title,
            "env": env,
            "pam": {"session_id": header.session_id, "user": header.user, "target": header.target},
        });
        let header = format!("{line}\n");
        let written = async {
            file.write_all(header.as_bytes()).await?;
            file.flush().await
        }
        .await;
        if let Err(e) = written {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let (close, closed) = tokio::sync::oneshot::channel();
        let shared = Arc::new(Shared {
            stopped: std::sync::atomic::AtomicBool::new(false),
            on_fault: std::sync::Mutex::new(Some(options.on_fault)),
        });
        let state = State {
            carry_out: Vec::new(),
            carry_in: Vec::new(),
            taken: header.len() as u64,
            max_bytes: options.max_bytes,
        };
        let task = tokio::spawn(write_loop(file, path, header, rx, closed, shared.clone()));
        let recorder = Recorder {
            tx,
            state: Arc::new(tokio::sync::Mutex::new(state)),
            shared,
            started: Instant::now(),
        };
        let writer = Writer {
            task,
            close,
            tx: recorder.tx.clone(),
            state: recorder.state.clone(),
            shared: recorder.shared.clone(),
            started: recorder.started,
        };
        Ok((recorder, writer))
    }

    /// Seconds since the recording started: the offset of what happens now.
    pub fn offset(&self) -> f64 {
        self.now()
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Encodes and queues one event; refuses it when the recording has
    /// stopped or the line would take it past its limit.
    async fn send(&self, make: impl FnOnce(&mut State, f64, &mut String)) -> Result<(), Closed> {
        if self.shared.stopped() {
            return Err(Closed);
        }
        let mut state = self.state.lock().await;
        let mut line = String::new();
        make(&mut state, self.now(), &mut line);
        if line.is_empty() {
            return Ok(());
        }
        let taken = state.taken + line.len() as u64;
        if let Some(max) = state.max_bytes
            && taken > max
        {
            self.shared.fault(Fault::Limit(max));
            return Err(Closed);
        }
        self.tx.send(line).await.map_err(|_| Closed)?;
        state.taken = taken;
        Ok(())
    }

    /// Terminal output (what the user saw). `Err`: it was not recorded, and
    /// must not be relayed either.
    pub async fn output(&self, data: Bytes) -> Result<(), Closed> {
        self.send(|s, t, line| asciicast::event(line, t, "o", &mut s.carry_out, &data))
            .await
    }

    /// Terminal input (keystrokes or an exec command), when recorded.
    pub async fn input(&self, data: Bytes) -> Result<(), Closed> {
        self.send(|s, t, line| asciicast::event(line, t, "i", &mut s.carry_in, &data))
            .await
    }

    /// A window change. A size of zero says "unknown" (a client whose
    /// terminal is not a tty): it is not recorded, the player keeps the
    /// size it has.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), Closed> {
        if cols == 0 || rows == 0 {
            return Ok(());
        }
        self.send(|_, t, line| line.push_str(&format!("[{t:.6}, \"r\", \"{cols}x{rows}\"]\n")))
            .await
    }

    /// A marker (asciicast "m"): broker notices such as a warning or a kill.
    pub async fn marker(&self, text: impl Into<String>) -> Result<(), Closed> {
        let text = text.into();
        self.send(|_, t, line| line.push_str(&format!("[{t:.6}, \"m\", {}]\n", json!(text))))
            .await
    }
}

impl Writer {
    /// Closes the recording: what was queued before is written, then the
    /// bytes of a character the stream ended inside of (escaped; they were
    /// relayed, so they are written even past the limit: at most 3 bytes a
    /// stream), later events are refused (clones of the [`Recorder`] still
    /// held by relay tasks do not keep it open), and the file is synced.
    pub async fn finish(self) -> std::io::Result<Finished> {
        {
            let mut state = self.state.lock().await;
            let now = self.started.elapsed().as_secs_f64();
            let mut line = String::new();
            let State {
                carry_out,
                carry_in,
                taken,
                ..
            } = &mut *state;
            asciicast::flush(&mut line, now, "o", carry_out);
            asciicast::flush(&mut line, now, "i", carry_in);
            if !line.is_empty() && !self.shared.stopped() {
                *taken += line.len() as u64;
                let _ = self.tx.send(line).await;
            }
        }
        drop(self.tx);
        let _ = self.close.send(());
        self.task
            .await
            .map_err(|e| std::io::Error::other(format!("recording writer: {e}")))?
    }
}

/// The writer: writes lines until closed or a write error, which stops the
/// recording (the session is told first) before anything more is refused.
async fn write_loop(
    file: tokio::fs::File,
    path: PathBuf,
    header: String,
    mut rx: mpsc::Receiver<String>,
    close: tokio::sync::oneshot::Receiver<()>,
    shared: Arc<Shared>,
) -> std::io::Result<Finished> {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut hasher = Sha256::new();
    hasher.update(header.as_bytes());
    let mut written = header.len() as u64;
    let result = async {
        write_lines(&mut out, &mut hasher, &mut written, &mut rx, close).await?;
        out.flush().await?;
        out.get_ref().sync_all().await
    }
    .await;
    if let Err(e) = result {
        shared.fault(Fault::Write(e.to_string()));
        rx.close();
        // Queued lines are refused too: senders waiting on a full queue go on.
        while rx.try_recv().is_ok() {}
        return Err(e);
    }
    Ok(Finished {
        sha256: hex::encode(hasher.finalize()),
        bytes: written,
        path,
    })
}

async fn write_lines(
    out: &mut tokio::io::BufWriter<tokio::fs::File>,
    hasher: &mut Sha256,
    written: &mut u64,
    rx: &mut mpsc::Receiver<String>,
    mut close: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    let mut closing = false;
    loop {
        tokio::select! {
            _ = &mut close, if !closing => {
                // Drain what is queued, refuse the rest.
                closing = true;
                rx.close();
            }
            line = rx.recv() => {
                let Some(line) = line else { return Ok(()) };
                out.write_all(line.as_bytes()).await?;
                hasher.update(line.as_bytes());
                *written += line.len() as u64;
                dirty = true;
            }
            _ = ticker.tick() => {
                if dirty {
                    out.flush().await?;
                    dirty = false;
                }
            }
        }
    }
}

/// Where a session's recording goes under the recordings directory.
pub fn relative_path(session_id: &str, started_us: i64) -> PathBuf {
    let t = crate::domain::audit::from_us(started_us);
    PathBuf::from(format!(
        "{:04}/{:02}/{:02}/{session_id}.cast",
        t.year(),
        u8::from(t.month()),
        t.day()
    ))
}

/// True for ids that may name a recording file (no path tricks).
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recording_is_valid_asciicast_v2_with_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            width: 80,
            height: 24,
            timestamp: 1_700_000_000,
            title: "t".into(),
            term: Some("xterm".into()),
            session_id: "s".into(),
            user: "u".into(),
            target: "t".into(),
        };
        let (recorder, writer) = Recorder::create(
            dir.path(),
            Path::new("a/b.cast"),
            &header,
            Options::default(),
        )
        .await
        .unwrap();
        recorder
            .output(Bytes::from_static(b"hello \x1b[1mworld\x1b[0m\r\n<script>"))
            .await
            .unwrap();
        recorder.resize(100, 30).await.unwrap();
        recorder.input(Bytes::from_static(b"ls\r")).await.unwrap();
        // The session ends inside a character: its bytes are written at the end.
        recorder
            .output(Bytes::from_static(b"\xe2\x82"))
            .await
            .unwrap();
        // A clone still held elsewhere does not keep the recording open.
        let late = recorder.clone();
        let finished = writer.finish().await.unwrap();
        assert_eq!(late.output(Bytes::from_static(b"late")).await, Err(Closed));
        let text = std::fs::read_to_string(dir.path().join("a/b.cast")).unwrap();
        assert_eq!(
            finished.sha256,
            hex::encode(Sha256::digest(text.as_bytes()))
        );
        let lines: Vec<serde_json::Value> = text
            .lines()
            // The last line escapes bytes that are not UTF-8 as lone
            // surrogates, which serde_json refuses as a String.
            .take(4)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[1][2], "hello \u{1b}[1mworld\u{1b}[0m\r\n<script>");
        assert_eq!(lines[2][2], "100x30");
        assert_eq!(lines[3][1], "i");
        assert!(text.ends_with(", \"o\", \"\\udce2\\udc82\"]\n"), "{text}");
    }

    #[tokio::test]
    async fn a_terminal_without_a_size_is_recorded_at_80x24() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            width: 0,
            height: 0,
            timestamp: 1_700_000_000,
            title: "t".into(),
            term: Some("xterm".into()),
            session_id: "s".into(),
            user: "u".into(),
            target: "t".into(),
        };
        let (recorder, writer) =
            Recorder::create(dir.path(), Path::new("z.cast"), &header, Options::default())
                .await
                .unwrap();
        recorder.resize(0, 0).await.unwrap();
        recorder.resize(132, 0).await.unwrap();
        recorder.resize(132, 43).await.unwrap();
        writer.finish().await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("z.cast")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["width"], 80);
        assert_eq!(lines[0]["height"], 24);
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[1][2], "132x43");
    }

    #[tokio::test]
    async fn the_event_that_would_cross_the_limit_is_refused_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            width: 80,
            height: 24,
            timestamp: 1_700_000_000,
            title: "t".into(),
            term: None,
            session_id: "s".into(),
            user: "u".into(),
            target: "t".into(),
        };
        let (tx, mut faults) = tokio::sync::mpsc::unbounded_channel();
        let options = Options {
            max_bytes: Some(4096),
            on_fault: Box::new(move |f| {
                let _ = tx.send(f);
            }),
        };
        let (recorder, writer) =
            Recorder::create(dir.path(), Path::new("l.cast"), &header, options)
                .await
                .unwrap();
        let chunk = Bytes::from(vec![b'x'; 1000]);
        let mut taken = 0;
        while recorder.output(chunk.clone()).await.is_ok() {
            taken += 1;
        }
        assert_eq!(faults.recv().await, Some(Fault::Limit(4096)));
        // Refused from then on, and reported once.
        assert_eq!(recorder.marker("late").await, Err(Closed));
        let finished = writer.finish().await.unwrap();
        assert!(finished.bytes <= 4096, "{}", finished.bytes);
        let text = std::fs::read_to_string(dir.path().join("l.cast")).unwrap();
        assert_eq!(text.len() as u64, finished.bytes);
        assert_eq!(text.lines().count(), 1 + taken);
        assert!(faults.try_recv().is_err());
    }

    #[test]
    fn ids_with_path_tricks_are_refused() {
        assert!(valid_session_id("01a2180c-4b00-7531-b4c8-e0b9d49299d2"));
        for bad in ["", "../x", "a/b", "..", "x.cast", "%2e%2e"] {
            assert!(!valid_session_id(bad), "{bad}");
        }
    }
}
