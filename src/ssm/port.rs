//! Port forwarding over a data channel (docs/aws-protocols.md 1.10): each forwarded
//! connection is a [`Stream`] (`AsyncRead + AsyncWrite`), so a room can use
//! it wherever it would use a `TcpStream` to the destination.
//!
//! Agents newer than 3.0.196.0 multiplex connections with an smux v1
//! client (streams 3, 5, 7, …; NOP keepalives every 10 s unless the agent
//! is newer than 3.1.1511.0). Older agents get the basic mode: one
//! connection at a time as raw bytes, a `DisconnectToPort` flag when it
//! closes, and no end-of-stream from the destination side (the agent
//! reconnects silently), so [`Tunnel::open`] waits for the previous stream
//! to be dropped.
//!
//! One task per tunnel reads the session and routes data to the streams
//! through bounded queues; streams write straight to the data channel. A
//! stream whose reader stalls stalls the whole tunnel (smux v1 has no
//! per-stream window), exactly as with the plugin.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::PollSender;

use crate::ssm::channel::Command;
use crate::ssm::codec::{self, Flag};
use crate::ssm::smux::{self, Piece};
use crate::ssm::{Error, Event, Info, Input, Output, Session, SessionType};

/// How connections are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// smux v1: many concurrent connections.
    Mux,
    /// Raw bytes, one connection at a time.
    Basic,
}

/// A port forwarding session.
pub struct Tunnel {
    mode: Mode,
    input: Input,
    requests: mpsc::Sender<Request>,
    ended: watch::Receiver<Option<String>>,
    /// Basic mode: the one connection slot.
    slot: Arc<Semaphore>,
}

/// One forwarded connection.
pub struct Stream {
    mode: Mode,
    id: u32,
    inbound: mpsc::Receiver<Inbound>,
    chunk: Bytes,
    read_state: ReadState,
    input: Input,
    writer: PollSender<Command>,
    write_closed: bool,
    slot: Option<OwnedSemaphorePermit>,
}

const INBOUND_QUEUE: usize = 64;
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Output that arrives before the first basic-mode stream opens (a server
/// that speaks first), in messages.
const EARLY_LIMIT: usize = 256;

enum Request {
    Open(oneshot::Sender<Result<(u32, mpsc::Receiver<Inbound>), Error>>),
}

enum Inbound {
    Data(Bytes),
    Fin,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    Eof,
    Refused,
    Aborted,
}

struct Entry {
    tx: mpsc::Sender<Inbound>,
    got_data: bool,
}

impl Tunnel {
    /// Takes over a connected session whose agent chose the Port type.
    pub fn new(session: Session) -> Result<Tunnel, Error> {
        Self::with_keepalive(session, KEEPALIVE)
    }

    /// [`Tunnel::new`] with another smux keepalive interval (the plugin's is
    /// 10 s; agents newer than 3.1.1511.0 get none).
    pub fn with_keepalive(session: Session, keepalive_interval: Duration) -> Result<Tunnel, Error> {
        if session.info().session_type != SessionType::Port {
            return Err(Error::SessionType(
                session.info().session_type.as_str().to_owned(),
            ));
        }
        let mode = if session.info().agent_newer_than("3.0.196.0") {
            Mode::Mux
        } else {
            Mode::Basic
        };
        let keepalive = mode == Mode::Mux && !session.info().agent_newer_than("3.1.1511.0");
        let (input, output) = session.split();
        let (requests_tx, requests_rx) = mpsc::channel(8);
        let (ended_tx, ended_rx) = watch::channel(None);
        let task = Task {
            mode,
            output,
            input: input.clone(),
            requests: requests_rx,
            requests_open: true,
            ended: ended_tx,
            streams: HashMap::new(),
            next_id: 1,
            parser: smux::Parser::new(),
            early: VecDeque::new(),
            opened_once: false,
        };
        tokio::spawn(task.run(keepalive.then_some(keepalive_interval)));
        Ok(Tunnel {
            mode,
            input,
            requests: requests_tx,
            ended: ended_rx,
            slot: Arc::new(Semaphore::new(1)),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn info(&self) -> &Info {
        self.input.info()
    }

    /// Opens a connection to the destination. In basic mode this waits
    /// until the previous stream is dropped.
    pub async fn open(&self) -> Result<Stream, Error> {
        let slot = match self.mode {
            Mode::Basic => Some(
                self.slot
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Closed)?,
            ),
            Mode::Mux => None,
        };
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Open(reply))
            .await
            .map_err(|_| Error::Closed)?;
        let (id, inbound) = answer.await.map_err(|_| Error::Closed)??;
        Ok(Stream {
            mode: self.mode,
            id,
            inbound,
            chunk: Bytes::new(),
            read_state: ReadState::Open,
            input: self.input.clone(),
            writer: PollSender::new(self.input.sender()),
            write_closed: false,
            slot,
        })
    }

    /// Ends the session from our side: the TerminateSession flag (agents
    /// newer than 2.3.722.0 honour it), then the WebSocket is closed. The
    /// caller should also call `ssm:TerminateSession`.
    pub async fn close(&self) {
        if self.input.info().agent_newer_than("2.3.722.0") {
            // Bounded: a stalled agent must not keep the tunnel open.
            let flag = self.input.send_flag(Flag::TerminateSession);
            let _ = tokio::time::timeout(Duration::from_secs(1), flag).await;
        }
        self.input.close().await;
    }

    /// Why the tunnel ended, if it has.
    pub fn ended(&self) -> Option<String> {
        self.ended.borrow().clone()
    }

    /// Waits until the tunnel ends and says why.
    pub async fn closed(&self) -> String {
        let mut ended = self.ended.clone();
        match ended.wait_for(|reason| reason.is_some()).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the tunnel ended".to_owned(),
        }
    }
}

impl Stream {
    /// The smux stream id (0 in basic mode).
    pub fn id(&self) -> u32 {
        self.id
    }

    fn close_frame(&self) -> Option<bytes::BytesMut> {
        match self.mode {
            Mode::Mux => self
                .input
                .output_frame(&[&smux::header(smux::Command::Fin, self.id, 0)])
                .ok(),
            Mode::Basic => Some(Input::flag_frame(Flag::DisconnectToPort)),
        }
    }

    fn max_chunk(&self) -> usize {
        match self.mode {
            Mode::Mux => codec::MAX_STREAM_PAYLOAD - smux::HEADER_SIZE,
            Mode::Basic => codec::MAX_STREAM_PAYLOAD,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = buf.remaining().min(self.chunk.len());
                buf.put_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            match self.read_state {
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Refused => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "the agent could not connect to the destination port",
                    )));
                }
                ReadState::Aborted => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the port forwarding session ended",
                    )));
                }
                ReadState::Open => {}
            }
            self.read_state = match ready!(self.inbound.poll_recv(cx)) {
                Some(Inbound::Data(data)) => {
                    self.chunk = data;
                    ReadState::Open
                }
                Some(Inbound::Fin) => ReadState::Eof,
                Some(Inbound::Refused) => ReadState::Refused,
                None => ReadState::Aborted,
            };
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.writer.poll_reserve(cx)).map_err(|_| aborted())?;
        let n = buf.len().min(self.max_chunk());
        let frame = match self.mode {
            Mode::Mux => {
                let length = u16::try_from(n).expect("chunks are at most 1 KiB");
                let header = smux::header(smux::Command::Psh, self.id, length);
                self.input.output_frame(&[&header, &buf[..n]])
            }
            Mode::Basic => self.input.output_frame(&[&buf[..n]]),
        }
        .map_err(io::Error::other)?;
        self.writer
            .send_item(Command::Stream(frame))
            .map_err(|_| aborted())?;
        Poll::Ready(Ok(n))
    }

    /// Written bytes are queued to the data channel, which delivers them
    /// reliably; there is nothing more to flush.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Mux: sends FIN (half-close; reading continues). Basic: sends
    /// DisconnectToPort, which closes the agent's connection entirely.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_closed {
            return Poll::Ready(Ok(()));
        }
        ready!(self.writer.poll_reserve(cx)).map_err(|_| aborted())?;
        if let Some(frame) = self.close_frame() {
            self.writer
                .send_item(Command::Stream(frame))
                .map_err(|_| aborted())?;
        }
        self.write_closed = true;
        if self.mode == Mode::Basic && self.read_state == ReadState::Open {
            self.read_state = ReadState::Eof;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let slot = self.slot.take();
        if self.write_closed {
            return;
        }
        let Some(frame) = self.close_frame() else {
            return;
        };
        let sender = self.input.sender();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // The basic-mode slot is released only after the flag is queued,
            // so the next stream's bytes cannot overtake it.
            runtime.spawn(async move {
                let _ = sender.send(Command::Stream(frame)).await;
                drop(slot);
            });
        }
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the port forwarding session ended",
    )
}

/// Routes the session's output to the streams.
struct Task {
    mode: Mode,
    output: Output,
    input: Input,
    requests: mpsc::Receiver<Request>,
    requests_open: bool,
    ended: watch::Sender<Option<String>>,
    streams: HashMap<u32, Entry>,
    next_id: u32,
    parser: smux::Parser,
    /// Basic mode: output before the first stream opened.
    early: VecDeque<Bytes>,
    opened_once: bool,
}

impl Task {
    async fn run(mut self, keepalive: Option<Duration>) {
        let mut ticker = tokio::time::interval(keepalive.unwrap_or(KEEPALIVE));
        ticker.reset();
        let reason = loop {
            if !self.requests_open {
                self.streams.retain(|_, entry| !entry.tx.is_closed());
                if self.streams.is_empty() {
                    // Nobody can open or use a stream any more.
                    self.input.close().await;
                    break "the tunnel was dropped".to_owned();
                }
            }
            tokio::select! {
                event = self.output.recv(), if self.early.len() < EARLY_LIMIT => {
                    match event {
                        Some(Event::Output(data)) => {
                            if let Err(reason) = self.on_output(data).await {
                                self.input.close().await;
                                break reason;
                            }
                        }
                        Some(Event::Flag(Flag::ConnectToPortError)) => self.refuse_waiting(),
                        Some(Event::Closed(output)) => {
                            self.finish_streams();
                            break output.unwrap_or_else(|| "the session was closed".to_owned());
                        }
                        Some(Event::Failed(e)) => break e.to_string(),
                        Some(_) => {}
                        None => break "the session ended".to_owned(),
                    }
                }
                request = self.requests.recv(), if self.requests_open => {
                    match request {
                        Some(Request::Open(reply)) => {
                            let opened = self.open().await;
                            let _ = reply.send(opened);
                        }
                        None => self.requests_open = false,
                    }
                }
                _ = ticker.tick(), if keepalive.is_some() => {
                    if let Ok(frame) = self.input.output_frame(&[&smux::header(smux::Command::Nop, 0, 0)]) {
                        let _ = self.input.send_frame(frame).await;
                    }
                }
                // Notice dropped streams while idle once the tunnel is gone.
                _ = tokio::time::sleep(Duration::from_millis(200)), if !self.requests_open => {}
            }
        };
        tracing::debug!(%reason, "port forwarding tunnel ended");
        self.streams.clear();
        let _ = self.ended.send(Some(reason));
    }

    async fn open(&mut self) -> Result<(u32, mpsc::Receiver<Inbound>), Error> {
        match self.mode {
            Mode::Mux => {
                let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
                self.next_id = self.next_id.wrapping_add(2);
                let id = self.next_id;
                let frame = self
                    .input
                    .output_frame(&[&smux::header(smux::Command::Syn, id, 0)])?;
                self.input.send_frame(frame).await?;
                self.streams.insert(
                    id,
                    Entry {
                        tx,
                        got_data: false,
                    },
                );
                Ok((id, rx))
            }
            Mode::Basic => {
                let (tx, rx) = mpsc::channel(INBOUND_QUEUE + EARLY_LIMIT);
                // Server-first bytes that arrived before anyone asked.
                let mut got_data = false;
                while let Some(data) = self.early.pop_front() {
                    got_data = true;
                    let _ = tx.try_send(Inbound::Data(data));
                }
                self.opened_once = true;
                self.streams.insert(0, Entry { tx, got_data });
                Ok((0, rx))
            }
        }
    }

    async fn on_output(&mut self, mut data: Bytes) -> Result<(), String> {
        if self.mode == Mode::Basic {
            match self.streams.get_mut(&0) {
                Some(entry) => {
                    entry.got_data = true;
                    if entry.tx.send(Inbound::Data(data)).await.is_err() {
                        self.streams.remove(&0);
                    }
                }
                // Before the first stream: keep; after one closed: the old
                // connection's tail, dropped.
                None if !self.opened_once => self.early.push_back(data),
                None => {}
            }
            return Ok(());
        }
        while let Some(piece) = self.parser.next(&mut data).map_err(|e| e.to_string())? {
            match piece {
                Piece::Data(id, bytes) => {
                    if let Some(entry) = self.streams.get_mut(&id) {
                        entry.got_data = true;
                        if entry.tx.send(Inbound::Data(bytes)).await.is_err() {
                            self.streams.remove(&id);
                        }
                    }
                }
                Piece::Fin(id) => {
                    if let Some(entry) = self.streams.remove(&id) {
                        let _ = entry.tx.send(Inbound::Fin).await;
                    }
                }
                // The agent does not open streams towards the client.
                Piece::Syn(id) => {
                    if let Ok(frame) =
                        self.input
                            .output_frame(&[&smux::header(smux::Command::Fin, id, 0)])
                    {
                        let _ = self.input.send_frame(frame).await;
                    }
                }
                Piece::Nop => {}
            }
        }
        Ok(())
    }

    /// ConnectToPortError: the streams that never got a byte were the ones
    /// the agent could not connect.
    fn refuse_waiting(&mut self) {
        self.streams.retain(|_, entry| {
            if entry.got_data {
                return true;
            }
            let _ = entry.tx.try_send(Inbound::Refused);
            false
        });
    }

    /// A clean end: streams see end-of-file (where their queue has room).
    fn finish_streams(&mut self) {
        for (_, entry) in self.streams.drain() {
            let _ = entry.tx.try_send(Inbound::Fin);
        }
    }
}
