//! A fault-injecting TCP proxy for the fault suite: put it between the
//! broker and a peer (sshd, PostgreSQL, a fake AWS endpoint) and switch
//! it, at any moment, between passing bytes, a black hole (connections stay
//! open, nothing passes either way: what a dead host or a dropped route
//! looks like, not a clean close), refusing (nothing listens: connection
//! refused), delaying every chunk, resetting every live connection, or
//! answering every new connection itself with fixed bytes (garbage, an
//! HTTP 500), as a broken server in front of the peer would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, watch};

/// What the proxy does with bytes and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Connections are accepted and kept, bytes are held (nothing passes).
    BlackHole,
    /// Nothing listens: new connections are refused; live ones stay.
    Refuse,
    /// Every chunk (and every new connection) waits this long.
    Delay(Duration),
    /// New connections never reach the peer: the first request (up to the
    /// end of its head) is read and answered with these bytes, then the
    /// connection is closed. Live ones pass.
    Answer(&'static [u8]),
}

/// The proxy; stopped (every connection cut) on drop.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    reset: broadcast::Sender<()>,
    live: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, modes) = watch::channel(Mode::Pass);
        let (reset, _) = broadcast::channel(4);
        let live = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            upstream,
            modes,
            reset.clone(),
            live.clone(),
        ));
        FaultProxy {
            addr,
            mode,
            reset,
            live,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Cuts every live connection with a TCP reset (both sides).
    pub fn reset_all(&self) {
        let _ = self.reset.send(());
    }

    /// Connections currently open through the proxy.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.reset.send(());
        self.task.abort();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut modes: watch::Receiver<Mode>,
    reset: broadcast::Sender<()>,
    live: Arc<AtomicUsize>,
) {
    let mut listener = Some(listener);
    loop {
        let mode = *modes.borrow_and_update();
        match (mode, &listener) {
            (Mode::Refuse, Some(_)) => listener = None,
            (Mode::Refuse, None) => {}
            (_, None) => {
                // Listening again on the same port.
                for _ in 0..100 {
                    if let Ok(l) = bind(addr) {
                        listener = Some(l);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            _ => {}
        }
        let Some(l) = &listener else {
            if modes.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            changed = modes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = l.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if let Mode::Answer(bytes) = *modes.borrow() {
                    tokio::spawn(answer(client, bytes));
                    continue;
                }
                let modes = modes.clone();
                let resets = reset.subscribe();
                let live = live.clone();
                live.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    connection(client, upstream, modes, resets).await;
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
}

/// Reads one request head (or whatever arrives within a second) and
/// answers `bytes`, then closes.
async fn answer(mut client: TcpStream, bytes: &'static [u8]) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read_head).await;
    let _ = client.write_all(bytes).await;
    let _ = client.shutdown().await;
    // Drain what the client still sends (a request body) until it closes:
    // closing with unread bytes would reset the connection before the
    // client read the answer.
    let drain = async { while let Ok(1..) = client.read(&mut buf).await {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    modes: watch::Receiver<Mode>,
    mut resets: broadcast::Receiver<()>,
) {
    // Connected at once whatever the mode: the pumps hold or delay the bytes.
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        // One side closing ends both (a half-open relay would hold fds).
        tokio::select! {
            _ = pump(cr, sw, modes.clone()) => return,
            _ = pump(sr, cw, modes.clone()) => return,
            _ = resets.recv() => {}
        }
    }
    // Reset: RST on both sides, not a clean close.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
}

/// Copies `from` to `to` as the mode says: in a black hole the bytes are
/// held (and the source still watched, so a close is seen), a delay
/// sleeps before each write. Ends when `from` closes or `to` fails.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut modes: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut held: Vec<u8> = Vec::new();
    let mut eof = false;
    loop {
        let mode = *modes.borrow_and_update();
        if mode != Mode::BlackHole && !held.is_empty() {
            if let Mode::Delay(d) = mode {
                tokio::time::sleep(d).await;
            }
            if to.write_all(&held).await.is_err() {
                break;
            }
            held.clear();
            continue;
        }
        if eof {
            break;
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => held.extend_from_slice(&buf[..n]),
            },
            changed = modes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
