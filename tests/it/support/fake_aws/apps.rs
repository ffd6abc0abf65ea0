//! What runs behind the fake agent: a real `/bin/sh` in a PTY, an echo
//! service, and port forwarding (basic and smux v1) to a real TCP service.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{Stats, wire};

/// Agent → app.
#[derive(Debug)]
pub enum AppIn {
    Data(Vec<u8>),
    Resize(u32, u32),
    Flag(u32),
}

/// App → agent.
#[derive(Debug)]
pub enum AppOut {
    /// Payload type and payload.
    Data(u32, Vec<u8>),
    /// The command ended with this status.
    Exit(i32),
}

/// What the session runs.
#[derive(Debug, Clone)]
pub enum App {
    /// argv in a PTY (tests/peers/pty-shell.py).
    Shell(Vec<String>),
    /// Echoes input; `\0bulk:N` answers with N bytes of a pattern.
    Echo,
    /// Forwards to a TCP address; smux when `mux`.
    Port { target: String, mux: bool },
}

pub fn spawn(
    app: App,
    input: mpsc::Receiver<AppIn>,
    output: mpsc::Sender<AppOut>,
    stats: Arc<Mutex<Stats>>,
) {
    match app {
        App::Shell(argv) => {
            tokio::spawn(shell(argv, input, output));
        }
        App::Echo => {
            tokio::spawn(echo(input, output));
        }
        App::Port { target, mux: false } => {
            tokio::spawn(basic_port(target, input, output));
        }
        App::Port { target, mux: true } => {
            tokio::spawn(mux_port(target, input, output, stats));
        }
    }
}

/// The byte pattern of a bulk answer (the i-th byte).
pub fn bulk_byte(i: usize) -> u8 {
    (i % 251) as u8
}

async fn shell(argv: Vec<String>, mut input: mpsc::Receiver<AppIn>, output: mpsc::Sender<AppOut>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pty-shell.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the PTY helper (python3)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = output.clone();
    let reader = tokio::spawn(async move {
        let mut buffer = vec![0u8; 1024];
        loop {
            match stdout.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out
                        .send(AppOut::Data(1, buffer[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(message) = input.recv().await {
            let (kind, payload) = match message {
                AppIn::Data(data) => (0u8, data),
                AppIn::Resize(cols, rows) => {
                    let mut p = (rows as u16).to_be_bytes().to_vec();
                    p.extend((cols as u16).to_be_bytes());
                    (1u8, p)
                }
                AppIn::Flag(_) => continue,
            };
            let mut frame = vec![kind];
            frame.extend((payload.len() as u32).to_be_bytes());
            frame.extend(payload);
            if stdin.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let status = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
    let _ = reader.await;
    writer.abort();
    let _ = output.send(AppOut::Exit(status)).await;
}

async fn echo(mut input: mpsc::Receiver<AppIn>, output: mpsc::Sender<AppOut>) {
    while let Some(message) = input.recv().await {
        let AppIn::Data(data) = message else { continue };
        if let Some(n) = data.strip_prefix(b"\0bulk:") {
            let total: usize = std::str::from_utf8(n).unwrap().trim().parse().unwrap();
            let mut sent = 0;
            while sent < total {
                let len = (total - sent).min(1024);
                let chunk: Vec<u8> = (sent..sent + len).map(bulk_byte).collect();
                if output.send(AppOut::Data(1, chunk)).await.is_err() {
                    return;
                }
                sent += len;
            }
            continue;
        }
        if output.send(AppOut::Data(1, data)).await.is_err() {
            return;
        }
    }
}

/// Basic port forwarding as the agent does it: connect at start, raw
/// bytes, DisconnectToPort closes the connection, the next data reconnects.
async fn basic_port(
    target: String,
    mut input: mpsc::Receiver<AppIn>,
    output: mpsc::Sender<AppOut>,
) {
    let mut writer: Option<(
        tokio::net::tcp::OwnedWriteHalf,
        Arc<AtomicBool>,
        tokio::task::JoinHandle<()>,
    )> = connect_basic(&target, &output).await;
    while let Some(message) = input.recv().await {
        match message {
            AppIn::Data(data) => {
                let closed = writer
                    .as_ref()
                    .is_none_or(|(_, eof, _)| eof.load(Ordering::SeqCst));
                if closed {
                    if let Some((_, _, reader)) = writer.take() {
                        reader.abort();
                    }
                    writer = connect_basic(&target, &output).await;
                }
                if let Some((w, _, _)) = &mut writer {
                    let _ = w.write_all(&data).await;
                }
            }
            AppIn::Flag(1) => {
                if let Some((_, _, reader)) = writer.take() {
                    reader.abort();
                }
            }
            AppIn::Flag(2) => break,
            _ => {}
        }
    }
}

async fn connect_basic(
    target: &str,
    output: &mpsc::Sender<AppOut>,
) -> Option<(
    tokio::net::tcp::OwnedWriteHalf,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<()>,
)> {
    let Ok(stream) = TcpStream::connect(target).await else {
        let _ = output
            .send(AppOut::Data(10, 3u32.to_be_bytes().to_vec()))
            .await;
        return None;
    };
    let (mut r, w) = stream.into_split();
    let eof = Arc::new(AtomicBool::new(false));
    let flag = eof.clone();
    let out = output.clone();
    let reader = tokio::spawn(async move {
        let mut buffer = vec![0u8; 1024];
        loop {
            match r.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out
                        .send(AppOut::Data(1, buffer[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    Some((w, eof, reader))
}

/// The agent's smux v1 server: each SYN dials the target.
async fn mux_port(
    target: String,
    mut input: mpsc::Receiver<AppIn>,
    output: mpsc::Sender<AppOut>,
    stats: Arc<Mutex<Stats>>,
) {
    // Frames from every stream go into one byte stream, cut into 1 KiB
    // messages without regard for frame boundaries, as the agent does.
    let (frames_tx, mut frames_rx) = mpsc::channel::<Vec<u8>>(256);
    let out = output.clone();
    tokio::spawn(async move {
        let mut buffer: Vec<u8> = Vec::new();
        while let Some(frame) = frames_rx.recv().await {
            buffer.extend(frame);
            while let Ok(frame) = frames_rx.try_recv() {
                buffer.extend(frame);
            }
            for chunk in buffer.chunks(1024) {
                if out.send(AppOut::Data(1, chunk.to_vec())).await.is_err() {
                    return;
                }
            }
            buffer.clear();
        }
    });
    let mut reader = wire::SmuxReader::default();
    let mut streams: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    while let Some(message) = input.recv().await {
        match message {
            AppIn::Data(data) => {
                for (command, stream, data) in reader.push(&data) {
                    match command {
                        0 => {
                            let (tx, rx) = mpsc::channel(1024);
                            streams.insert(stream, tx);
                            tokio::spawn(mux_stream(
                                target.clone(),
                                stream,
                                rx,
                                frames_tx.clone(),
                                output.clone(),
                            ));
                        }
                        1 => {
                            if let Some(tx) = streams.remove(&stream) {
                                let _ = tx.send(None).await;
                            }
                        }
                        2 => {
                            if let Some(tx) = streams.get(&stream) {
                                let _ = tx.send(Some(data)).await;
                            }
                        }
                        3 => stats.lock().unwrap().nops += 1,
                        _ => {}
                    }
                }
            }
            AppIn::Flag(2) => break,
            _ => {}
        }
    }
}

async fn mux_stream(
    target: String,
    id: u32,
    mut rx: mpsc::Receiver<Option<Vec<u8>>>,
    frames: mpsc::Sender<Vec<u8>>,
    output: mpsc::Sender<AppOut>,
) {
    let Ok(stream) = TcpStream::connect(&target).await else {
        let _ = output
            .send(AppOut::Data(10, 3u32.to_be_bytes().to_vec()))
            .await;
        let _ = frames.send(wire::smux(1, id, b"")).await;
        return;
    };
    let (mut r, mut w) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            match r.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if frames.send(wire::smux(2, id, &buffer[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = frames.send(wire::smux(1, id, b"")).await;
    });
    while let Some(message) = rx.recv().await {
        match message {
            Some(data) => {
                if w.write_all(&data).await.is_err() {
                    break;
                }
            }
            None => {
                let _ = w.shutdown().await;
                break;
            }
        }
    }
    let _ = reader.await;
}
