//! The PostgreSQL room against real peers: psql and pgbench through the
//! broker to a SCRAM + TLS PostgreSQL cluster, the database password in
//! moto's Secrets Manager, refusals with their SQLSTATEs, cancel, COPY,
//! idle timeout, termination, and `pam db connect`.

mod lifecycle;
mod refusals;
mod relay;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pam::pg::protocol::{self, Backend};
use serde_json::Value;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::peers::required_env;
use crate::support::{Options, TestApp, eventually, free_port};

/// A role and a database of their own in the SCRAM cluster, dropped after.
pub(crate) struct ScramDb {
    role: String,
    password: String,
    database: String,
    port: u16,
}

impl ScramDb {
    pub(crate) async fn create() -> ScramDb {
        Self::create_in(None).await
    }

    /// A role in `group`, which the cluster's pg_hba.conf gives weak
    /// password authentication (`pam_weak_md5`: md5, with the password
    /// stored as MD5 so the server really asks for it; `pam_weak_password`:
    /// cleartext).
    async fn create_in(group: Option<&str>) -> ScramDb {
        let admin = required_env("PAM_TEST_PG_SCRAM_URL");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let role = format!("pamt_{}", &id[..12]);
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let database = format!("pamdb_{}", &id[..12]);
        let mut conn = admin_conn(&admin).await;
        let (encryption, membership) = match group {
            Some("pam_weak_md5") => ("md5", " IN ROLE pam_weak_md5"),
            Some("pam_weak_password") => ("scram-sha-256", " IN ROLE pam_weak_password"),
            _ => ("scram-sha-256", ""),
        };
        for sql in [
            format!("SET password_encryption = '{encryption}'"),
            format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'{membership}"),
            format!("CREATE DATABASE {database} OWNER {role}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let port = url::Url::parse(&admin).unwrap().port().unwrap();
        ScramDb {
            role,
            password,
            database,
            port,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A libpq connection string straight to the database (verify-full).
    fn direct(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={} sslmode=verify-full sslrootcert={}",
            self.port,
            self.role,
            self.database,
            required_env("PAM_TEST_PG_SCRAM_CA")
        )
    }
}

impl Drop for ScramDb {
    fn drop(&mut self) {
        let admin = required_env("PAM_TEST_PG_SCRAM_URL");
        let (role, database) = (self.role.clone(), self.database.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = admin_conn(&admin).await;
                for sql in [
                    format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
                    format!("DROP ROLE IF EXISTS {role}"),
                ] {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}

async fn admin_conn(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap()
}

/// The broker's AWS environment: moto with static test keys.
fn aws_env() -> HashMap<String, String> {
    [
        ("AWS_ENDPOINT_URL", required_env("PAM_TEST_MOTO_URL")),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Stores `value` under a fresh secret name in moto; returns the name.
pub(crate) async fn put_secret(value: &str) -> String {
    let aws = pam::aws::Aws::load_with_env(&Default::default(), &aws_env()).await;
    let client = aws_sdk_secretsmanager::Client::new(aws.sdk());
    let name = format!("pam/test/{}", uuid::Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
    name
}

/// A `[[target]]` for `db` whose password is in a new secret.
pub(crate) async fn target(name: &str, db: &ScramDb, tags: &str) -> String {
    let secret = put_secret(
        &serde_json::json!({"username": db.role, "password": db.password, "engine": "postgres"})
            .to_string(),
    )
    .await;
    target_with(name, &db.address(), &db.database, &secret, tags)
}

fn target_with(name: &str, address: &str, database: &str, secret: &str, tags: &str) -> String {
    format!(
        r#"
[[target]]
name = "{name}"
kind = "postgres"
address = "{address}"
database = "{database}"
credential = {{ from = "secretsmanager", secret_id = "{secret}" }}
tls = "verify-full"
ca_file = "{ca}"
connect_timeout = "5s"
tags = {{ {tags} }}
"#,
        ca = required_env("PAM_TEST_PG_SCRAM_CA"),
    )
}

pub(crate) async fn broker(toml: String) -> TestApp {
    TestApp::spawn_with(Options {
        toml,
        env: aws_env(),
        idp: true,
        ..Options::default()
    })
    .await
}

pub(crate) async fn token(app: &TestApp, user: &str) -> String {
    app.sso_login(user).await.expect("login").response.token
}

/// libpq connection string to the broker.
pub(crate) fn via_broker(app: &TestApp, user: &str, database: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname={database} sslmode=require connect_timeout=10",
        app.postgres.port()
    )
}

pub(crate) async fn psql(conninfo: &str, password: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGPASSWORD", password);
    run(cmd, None).await
}

/// Runs a client program off the runtime's thread (the broker runs on it).
async fn run(mut cmd: Command, stdin: Option<String>) -> Output {
    tokio::task::spawn_blocking(move || run_blocking(&mut cmd, stdin.as_deref()))
        .await
        .unwrap()
}

fn run_blocking(cmd: &mut Command, stdin: Option<&str>) -> Output {
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSSLMODE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running psql");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", text(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `db.query` details, oldest first, once every session has ended (a
/// client may exit before its last events are committed; all are by
/// `session.end`).
async fn queries(app: &TestApp) -> Vec<Value> {
    let settled = eventually(Duration::from_secs(10), || async {
        let started = app
            .events("session.start")
            .await
            .iter()
            .filter(|e| e.outcome == "success")
            .count();
        app.events("session.end").await.len() >= started
    })
    .await;
    assert!(settled, "sessions did not end");
    app.event_details("db.query").await
}

/// Every stored event, as text (to look for secrets).
async fn whole_trail(app: &TestApp) -> String {
    let db = app.db().await;
    let filter = pam::domain::audit::EventFilter {
        ascending: true,
        limit: 100_000,
        ..Default::default()
    };
    let events = pam::store::audit::list(&db, &filter).await.unwrap();
    db.close().await;
    events
        .iter()
        .map(|e| format!("{} {:?} {:?} {}\n", e.kind, e.actor, e.target, e.details))
        .collect()
}

// ---- a minimal wire client, to see SQLSTATEs and broker messages ------------

struct Wire {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

/// A FATAL error from the broker: SQLSTATE and message.
#[derive(Debug)]
struct Fatal {
    code: String,
    message: String,
}

impl Wire {
    async fn connect(
        app: &TestApp,
        user: &str,
        database: &str,
        password: &str,
    ) -> Result<Wire, Fatal> {
        let mut tcp = tokio::net::TcpStream::connect(app.postgres).await.unwrap();
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
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("the broker's certificate verifies for 127.0.0.1");
        let mut wire = Wire { stream };
        wire.send(&protocol::startup_message(&[
            ("user", user),
            ("database", database),
            ("application_name", "wire-test"),
        ]))
        .await;
        loop {
            let (tag, body) = wire.next().await.expect("an answer");
            match protocol::parse_backend(tag, &body).unwrap() {
                Backend::Authentication(protocol::Auth::Cleartext) => {
                    wire.send(&protocol::password_message(password.as_bytes()))
                        .await
                }
                Backend::Error(fields) => return Err(fatal(&fields)),
                Backend::ReadyForQuery(_) => return Ok(wire),
                _ => {}
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next message, or `None` when the broker closed.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head).await.ok()?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body).await.ok()?;
        Some((head[0], body))
    }

    /// Runs a simple query; the messages up to ReadyForQuery.
    async fn query(&mut self, sql: &str) -> Vec<(u8, Vec<u8>)> {
        self.send(&protocol::query(sql)).await;
        let mut out = Vec::new();
        while let Some((tag, body)) = self.next().await {
            out.push((tag, body));
            if tag == b'Z' {
                break;
            }
        }
        out
    }
}

fn fatal(fields: &protocol::Fields<'_>) -> Fatal {
    Fatal {
        code: String::from_utf8_lossy(fields.code).into_owned(),
        message: String::from_utf8_lossy(fields.message).into_owned(),
    }
}
