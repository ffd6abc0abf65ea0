//! The network edge under attack, before anyone authenticated: slow and
//! silent clients (server.auth_timeout), many sockets from one address
//! (server.max_unauthenticated_per_source), floods of failed attempts
//! (aggregated, never lost), OpenSSH's plain-key query (no false failure),
//! and what the SSH listener offers (ssh-audit).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pam::pg::protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ssh::world;
use crate::support::{Options, TestApp, eventually};

fn env(pairs: &[(&str, &str)]) -> Options {
    Options {
        env: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    }
}

/// Reads until the peer closes (or errors); false if it is still open
/// after `bound`.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), bound: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 256 {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `details` of the `login.failure` events of SSH.
async fn ssh_failures(app: &TestApp) -> Vec<serde_json::Value> {
    app.event_details("login.failure")
        .await
        .into_iter()
        .filter(|d| d["method"] == "ssh")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_client_that_sends_only_its_banner_is_cut_off_at_auth_timeout() {
    let app = TestApp::spawn_with(env(&[("PAM_SERVER__AUTH_TIMEOUT", "1s")])).await;
    let mut socket = TcpStream::connect(app.ssh).await.unwrap();
    // (The broker speaks once it saw whether a `pam ssh-proxy` preamble comes.)
    socket.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    // The banner names no version (ssh-audit's advice).
    assert_eq!(read_line(&mut socket).await, "SSH-2.0-pam\r\n");
    assert!(
        closed_within(&mut socket, Duration::from_secs(20)).await,
        "a banner-only client still holds its connection"
    );
    // A client that sends nothing at all, not even a banner.
    let mut silent = TcpStream::connect(app.ssh).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            ssh_failures(&app)
                .await
                .iter()
                .filter(|d| d["timed_out"] == true)
                .count()
                == 2
        })
        .await,
        "{:#?}",
        ssh_failures(&app).await
    );
    assert_eq!(metric(&app, "pam_auth_timeouts_total").await, 2);
}

/// TLS to the broker's PostgreSQL listener, trusting its generated certificate.
async fn pg_tls(app: &TestApp) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(app.postgres).await.unwrap();
    tcp.write_all(&protocol::ssl_request()).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    let cert = std::fs::read(app.config.keys_dir().join("postgres-tls.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            &cert,
        )
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_client_that_sends_a_startup_and_nothing_else_is_cut_off_at_auth_timeout() {
    let app = TestApp::spawn_with(env(&[("PAM_SERVER__AUTH_TIMEOUT", "1s")])).await;
    let mut tls = pg_tls(&app).await;
    tls.write_all(&protocol::startup_message(&[
        ("user", "mallory@example.test"),
        ("database", "orders"),
    ]))
    .await
    .unwrap();
    tls.flush().await.unwrap();
    // The broker asks for the password (the token), and gets nothing.
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "a silent client still holds its connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("server.auth_timeout"), "{answer:?}");
    // A client that never finishes the TLS handshake is cut off too.
    let mut tcp = TcpStream::connect(app.postgres).await.unwrap();
    tcp.write_all(&protocol::ssl_request()).await.unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(20)).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.event_details("token.rejected")
                .await
                .iter()
                .filter(|d| d["reason"] == "no broker token within server.auth_timeout")
                .count()
                == 2
        })
        .await,
        "{:#?}",
        app.event_details("token.rejected").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_unauthenticated_connections() {
    let w = world("bob").await;
    let app = &w.app;
    let limit = app.config.server.max_unauthenticated_per_source;
    assert_eq!(limit, 16, "the default");
    let mut held = Vec::new();
    for _ in 0..limit {
        let mut socket = TcpStream::connect(app.ssh).await.unwrap();
        socket.write_all(b"SSH-2.0-idle\r\n").await.unwrap();
        assert_eq!(read_line(&mut socket).await, "SSH-2.0-pam\r\n");
        held.push(socket);
    }
    // OpenSSH is told why (an SSH disconnect message), not just reset.
    let refused = tokio::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-p",
            &app.ssh.port().to_string(),
            "web-dev@127.0.0.1",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("too many unauthenticated connections from this address"),
        "{stderr}"
    );
    // The PostgreSQL listener counts against the same allowance, and says so.
    let mut pg = TcpStream::connect(app.postgres).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), pg.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with('E'), "{answer:?}");
    assert!(answer.contains("53300"), "{answer:?}");
    assert!(
        answer.contains("too many unauthenticated connections"),
        "{answer:?}"
    );
    // An authenticated user is not held back: slots are for unauthenticated ones.
    drop(held.pop());
    let mut login = tokio::process::Command::new("ssh");
    login
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            w.files.path().join("known_hosts").display()
        ))
        .arg("-i")
        .arg(w.files.path().join("id"))
        .args([
            "-p",
            &app.ssh.port().to_string(),
            "web-dev@127.0.0.1",
            "sleep 3; echo ok",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // The dropped socket's slot is freed when the broker sees it close, which
    // can come after the next connection under load: a login refused for the
    // allowance meanwhile is tried again (and counted with the refusals).
    let mut retried = 0;
    let first = 'login: loop {
        let mut child = login.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if !app.events("session.start").await.is_empty() {
                break 'login child;
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(255), "the login failed otherwise");
                retried += 1;
                assert!(retried < 20, "the freed slot never became free");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'login;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the login neither started a session nor ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Once it has authenticated, its slot is free for the next client.
    let mut socket = TcpStream::connect(app.ssh).await.unwrap();
    socket.write_all(b"SSH-2.0-idle\r\n").await.unwrap();
    assert_eq!(read_line(&mut socket).await, "SSH-2.0-pam\r\n");
    let out = first.wait_with_output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    drop(held);
    // Every refusal is on record.
    let refusals = app
        .event_details("login.failure")
        .await
        .into_iter()
        .filter(|d| {
            d["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("too many unauthenticated connections"))
        })
        .count();
    assert_eq!(refusals, 2 + retried);
    assert_eq!(
        metric(app, "pam_unauthenticated_refused_total").await,
        2 + retried as u64
    );
}

/// An SSH client that offers a plain key and gives up.
struct Refused;

impl russh::client::Handler for Refused {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_logins_costs_a_bounded_number_of_events_and_loses_none() {
    const ATTEMPTS: usize = 300;
    let app = TestApp::spawn().await;
    let key = Arc::new(pam::identity::new_client_key());
    let config = Arc::new(russh::client::Config::default());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (key, config, next, addr) = (key.clone(), config.clone(), next.clone(), app.ssh);
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < ATTEMPTS {
                let mut session = russh::client::connect(config.clone(), addr, Refused)
                    .await
                    .unwrap();
                let user = format!(
                    "root@target-{}",
                    next.load(std::sync::atomic::Ordering::SeqCst) % 3
                );
                let result = session
                    .authenticate_publickey(
                        user,
                        russh::keys::PrivateKeyWithHashAlg::new(key.clone(), None),
                    )
                    .await
                    .unwrap();
                assert!(!result.success());
                let _ = session
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    // Stopping the broker records the summary of the minute still open.
    let (_dir, database) = app.stop().await;
    let db = pam::store::Db::connect(&database.url, Duration::from_secs(10))
        .await
        .unwrap();
    let filter = pam::domain::audit::EventFilter {
        kinds: vec!["login.failure".into()],
        ascending: true,
        limit: 10_000,
        ..Default::default()
    };
    let events = pam::store::audit::list(&db, &filter).await.unwrap();
    db.close().await;
    let per_minute = 10;
    assert!(
        events.len() <= 2 * (per_minute + 1),
        "{} events for {ATTEMPTS} attempts",
        events.len()
    );
    let counted: u64 = events
        .iter()
        .map(|e| {
            assert_eq!(e.source_ip.as_deref(), Some("127.0.0.1"));
            let details: serde_json::Value = serde_json::from_str(&e.details).unwrap();
            details["count"].as_u64().unwrap_or(1)
        })
        .sum();
    assert_eq!(counted, ATTEMPTS as u64, "every attempt is counted once");
    let summary: serde_json::Value = events
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.details).unwrap())
        .find(|d| d["aggregated"] == true)
        .expect("a summary event");
    let tried = summary["tried"].as_object().unwrap();
    assert!(
        tried.keys().any(|k| k.contains("root@target-")),
        "the summary says what was tried: {summary:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_ssh_i_login_leaves_no_failure_and_no_delay() {
    let w = world("bob").await;
    // As the README shows: the key file with its .pub and -cert.pub beside
    // it, so OpenSSH offers the plain key before the certificate.
    let key = w.files.path().join("id_ed25519");
    std::fs::copy(w.files.path().join("id"), &key).unwrap();
    std::fs::copy(
        w.files.path().join("id-cert.pub"),
        w.files.path().join("id_ed25519-cert.pub"),
    )
    .unwrap();
    std::fs::write(
        w.files.path().join("id_ed25519.pub"),
        w.login.key.public_key().to_openssh().unwrap(),
    )
    .unwrap();
    let ssh = |target: &str, key: &std::path::Path| {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-v",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            w.files.path().join("known_hosts").display()
        ))
        .arg("-i")
        .arg(key)
        .args(["-p", &w.app.ssh.port().to_string()])
        .arg(format!("{target}@127.0.0.1"))
        .arg("echo in")
        .stdin(Stdio::null());
        cmd
    };
    let out = ssh("web-dev", &key).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n");
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(
        verbose.contains("Offering public key") && verbose.contains("ED25519-CERT"),
        "OpenSSH tried the plain key and the certificate: {verbose}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            !w.app.events("session.end").await.is_empty()
        })
        .await
    );
    assert!(
        ssh_failures(&w.app).await.is_empty(),
        "{:#?}",
        ssh_failures(&w.app).await
    );
    assert_eq!(metric(&w.app, "pam_ssh_auth_delays_total").await, 0);

    // A connection that never authenticates (a key the broker did not
    // sign) is exactly one failure, with what it tried.
    let stranger = w.files.path().join("stranger");
    assert!(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&stranger)
            .status()
            .unwrap()
            .success()
    );
    let out = ssh("web-dev", &stranger).output().await.unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        eventually(Duration::from_secs(10), || async {
            ssh_failures(&w.app).await.len() == 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = ssh_failures(&w.app).await;
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert_eq!(failures[0]["ssh_user"], "web-dev");
    assert!(
        failures[0]["tried"][0]
            .as_str()
            .unwrap()
            .starts_with("publickey ssh-ed25519 SHA256:"),
        "{failures:#?}"
    );
    // A plain key is refused at once: the delay is for refused certificates.
    assert_eq!(metric(&w.app, "pam_ssh_auth_delays_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audit_finds_nothing_to_fix_in_what_the_listener_offers() {
    let audit = |app: &TestApp| {
        let tool = std::path::Path::new(&crate::support::peers::required_env("PAM_TEST_PEERS_DIR"))
            .join("venv/bin/ssh-audit");
        let port = app.ssh.port().to_string();
        async move {
            let out = tokio::process::Command::new(tool)
                .args(["-j", "-p", &port, "127.0.0.1"])
                .output()
                .await
                .expect("ssh-audit (scripts/peers.sh installs it)");
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
        }
    };
    // Notes ssh-audit attaches to the algorithms offered, as `level: algorithm: note`.
    let notes = |report: &serde_json::Value, level: &str| -> Vec<String> {
        let mut out = Vec::new();
        for section in ["kex", "key", "enc", "mac"] {
            for entry in report[section].as_array().into_iter().flatten() {
                let (name, notes) = match entry {
                    serde_json::Value::String(name) => (name.clone(), &serde_json::Value::Null),
                    _ => (
                        entry["algorithm"].as_str().unwrap().to_owned(),
                        &entry["notes"],
                    ),
                };
                for note in notes[level].as_array().into_iter().flatten() {
                    out.push(format!("{level}: {name}: {}", note.as_str().unwrap()));
                }
            }
        }
        out
    };

    let app = TestApp::spawn().await;
    let report = audit(&app).await;
    assert_eq!(report["banner"]["raw"], "SSH-2.0-pam", "{report:#}");
    assert_eq!(report["kex"][0]["algorithm"], "mlkem768x25519-sha256");
    assert!(
        report["recommendations"]
            .as_object()
            .is_none_or(|r| r.is_empty()),
        "{report:#}"
    );
    assert!(
        report["cves"].as_array().is_none_or(|c| c.is_empty()),
        "{report:#}"
    );
    assert!(
        report["additional_notes"]
            .as_array()
            .is_none_or(|n| n.iter().all(|n| n.as_str() == Some(""))),
        "{report:#}"
    );
    assert_eq!(notes(&report, "fail"), Vec::<String>::new(), "{report:#}");
    // What is left by default: the classical key exchanges kept for
    // clients older than OpenSSH 9.9, which ssh-audit notes are not
    // post-quantum. Nothing else.
    for warning in notes(&report, "warn") {
        assert!(
            warning.ends_with("does not provide protection against post-quantum attacks"),
            "{warning}\n{report:#}"
        );
    }
    app.stop().await;

    // An operator who can require OpenSSH 9.9 leaves nothing at all.
    let app = TestApp::spawn_with(Options {
        toml: "[ssh]\nkex = [\"mlkem768x25519-sha256\"]\n".into(),
        ..Options::default()
    })
    .await;
    let report = audit(&app).await;
    assert_eq!(notes(&report, "warn"), Vec::<String>::new(), "{report:#}");
    assert_eq!(notes(&report, "fail"), Vec::<String>::new(), "{report:#}");
}
