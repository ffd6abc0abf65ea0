//! A test-owned HTTPS receiver for the webhook export sink: TLS with a
//! certificate from a test CA (the broker is told to trust it with
//! `ca_file`), and the receiving side of the signature contract: it checks
//! `X-Pam-Signature` (HMAC-SHA256 over `<timestamp>.<body>`) and refuses a
//! stale `X-Pam-Timestamp`, as docs tell receivers to do.
//!
//! It runs on a runtime of its own, so that `stop` closes the listener and
//! every open connection at once (the sink sees a receiver that is down:
//! connection refused), and `start_again` listens on the same port.
// Test doubles lock with `.lock().unwrap()`: a poisoned lock here means a
// test already failed (the broker's own rule is `pam::sync`).
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 after recording the lines.
    Accept,
    /// Records the lines and never answers (the sender never learns).
    Hang,
}

pub struct Receiver {
    pub url: String,
    /// PEM of the test CA that signed the receiver's certificate.
    pub ca_file: PathBuf,
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    tls: Arc<rustls::ServerConfig>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

struct ReceiverState {
    secret: Vec<u8>,
    lines: Mutex<Vec<serde_json::Value>>,
    requests: AtomicUsize,
    rejected: AtomicUsize,
    mode: Mutex<Mode>,
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pam test webhook CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut receiver = Receiver {
            url: format!("https://127.0.0.1:{}/ingest", addr.port()),
            ca_file,
            addr,
            state: Arc::new(ReceiverState {
                secret: secret.as_bytes().to_vec(),
                lines: Mutex::new(Vec::new()),
                requests: AtomicUsize::new(0),
                rejected: AtomicUsize::new(0),
                mode: Mutex::new(Mode::Accept),
            }),
            tls: Arc::new(tls),
            runtime: None,
            _dir: dir,
        };
        receiver.start_again();
        receiver
    }

    /// Listens (again) on the receiver's port.
    pub fn start_again(&mut self) {
        assert!(self.runtime.is_none(), "already running");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind(self.addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener).unwrap()
        };
        let app = axum::Router::new()
            .route("/ingest", axum::routing::post(ingest))
            .with_state(self.state.clone());
        let tls = TlsListener {
            tcp: listener,
            acceptor: TlsAcceptor::from(self.tls.clone()),
        };
        runtime.spawn(async move {
            let _ = axum::serve(tls, app).await;
        });
        self.runtime = Some(runtime);
    }

    /// Closes the listener and every connection: the sink is down.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Every line received and accepted, in arrival order.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.state.lines.lock().unwrap().clone()
    }

    /// Requests refused for a bad or missing signature or a stale timestamp.
    pub fn rejected(&self) -> usize {
        self.state.rejected.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn ingest(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp = header("x-pam-timestamp");
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (time::OffsetDateTime::now_utc().unix_timestamp() - t).abs() <= 300);
    let signature = header("x-pam-signature");
    let valid = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|mac| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &state.secret);
            let mut signed = timestamp.as_bytes().to_vec();
            signed.push(b'.');
            signed.extend_from_slice(&body);
            ring::hmac::verify(&key, &signed, &mac).is_ok()
        });
    if !(fresh && valid) || header("content-type") != "application/x-ndjson" {
        state.rejected.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let text = String::from_utf8(body.to_vec()).unwrap();
    let parsed: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    state.lines.lock().unwrap().extend(parsed);
    let mode = *state.mode.lock().unwrap();
    if mode == Mode::Hang {
        std::future::pending::<()>().await;
    }
    StatusCode::OK
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
