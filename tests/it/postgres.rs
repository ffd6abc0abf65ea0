//! The PostgreSQL room against real peers: psql and pgbench through the
//! broker to a SCRAM + TLS PostgreSQL cluster, the database password in
//! moto's Secrets Manager, refusals with their SQLSTATEs, cancel, COPY,
//! idle timeout, termination, and `pam db connect`.

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

// ---- tests ---------------------------------------------------------------

#[tokio::test]
async fn psql_through_the_broker_matches_a_direct_connection_and_every_statement_is_audited() {
    let db = ScramDb::create().await;
    let app = broker(target("orders-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "orders-dev");

    let setup = psql(
        &conn,
        &bob,
        &[
            "-c",
            "create table t (id int primary key, name text)",
            "-c",
            "insert into t values (1, 'one'), (2, 'two'), (3, 'three')",
        ],
    )
    .await;
    stdout(&setup);
    let checks = [
        "select id, name from t order by id",
        "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()",
        "update t set name = upper(name) where id > 1; select count(*) from t where name = upper(name)",
        "select string_agg(name, ',' order by id) from t",
    ];
    for sql in checks {
        let through = stdout(&psql(&conn, &bob, &["-c", sql]).await);
        let direct = stdout(&psql(&db.direct(), &db.password, &["-c", sql]).await);
        assert_eq!(through, direct, "{sql}");
    }
    let whoami = stdout(&psql(&conn, &bob, &["-c", "select current_user"]).await);
    assert_eq!(
        whoami.trim(),
        db.role,
        "the broker logs in as the database user"
    );
    // An error reaches the client as the server sent it.
    let failed = psql(&conn, &bob, &["-c", "select * from missing_table"]).await;
    assert!(!failed.status.success());
    assert!(text(&failed).contains("relation \"missing_table\" does not exist"));
    // A very long statement: bounded in the event, with the hash of the whole.
    let long = format!("select length('{}')", "x".repeat(40_000));
    assert_eq!(
        stdout(&psql(&conn, &bob, &["-c", &long]).await).trim(),
        "40000"
    );

    let events = queries(&app).await;
    let find = |needle: &str| {
        events
            .iter()
            .find(|d| {
                d["statement"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(needle))
            })
            .unwrap_or_else(|| panic!("no db.query for {needle}: {events:#?}"))
            .clone()
    };
    let insert = find("insert into t");
    assert_eq!(insert["rows"], 3);
    assert_eq!(insert["commands"][0], "INSERT 0 3");
    assert_eq!(insert["protocol"], "simple");
    let select = find("select id, name from t");
    assert_eq!(select["rows"], 3);
    assert_eq!(select["rows_sent"], 3);
    let both = find("update t set name");
    assert_eq!(
        both["commands"],
        serde_json::json!(["UPDATE 2", "SELECT 1"])
    );
    let missing = find("select * from missing_table");
    assert_eq!(missing["error"]["sqlstate"], "42P01");
    let long_event = find("select length('xxx");
    assert_eq!(long_event["truncated"], true);
    assert_eq!(long_event["statement_bytes"], long.len());
    assert_eq!(
        long_event["statement_sha256"],
        hex::encode(sha2::Sha256::digest(long.as_bytes()))
    );
    assert!(long_event["statement"].as_str().unwrap().len() <= pam::pg::query::TEXT_MAX);
    assert!(events.iter().all(|d| d["duration_us"].is_u64()));

    // Sessions: one per psql run, with byte counts, all ended.
    let starts = app.events("session.start").await;
    let ends = app.event_details("session.end").await;
    assert_eq!(starts.len(), checks.len() + 4);
    assert_eq!(ends.len(), starts.len());
    for end in &ends {
        assert_eq!(end["kind"], "postgres");
        assert_eq!(end["end_reason"], "closed");
        assert!(end["bytes_in"].as_i64().unwrap() > 0);
        assert!(end["bytes_out"].as_i64().unwrap() > 0);
    }
    // The query log holds the long statement whole; its hash is in session.end.
    let recordings = app.config.recordings_dir();
    let mut logs = String::new();
    for end in &ends {
        let relative = end["recording"].as_str().expect("a query log");
        let bytes = std::fs::read(recordings.join(relative)).unwrap();
        assert_eq!(
            end["recording_sha256"],
            hex::encode(sha2::Sha256::digest(&bytes)),
            "the query log's hash is in session.end"
        );
        for line in String::from_utf8(bytes).unwrap().lines().skip(1) {
            let event: Value = serde_json::from_str(line).unwrap();
            logs.push_str(event[2].as_str().unwrap());
        }
    }
    assert!(
        logs.contains(&format!("{long}\r\n")),
        "the long statement is in a query log"
    );
    assert!(logs.contains("insert into t values (1, 'one'), (2, 'two'), (3, 'three')\r\n"));
    let query_events = app.events("db.query").await;
    assert!(
        query_events
            .iter()
            .all(|e| e.actor.as_deref() == Some("bob@example.test")
                && e.target.as_deref() == Some("orders-dev")
                && e.session_id.is_some())
    );
    // Neither the token nor the database password is anywhere in the trail.
    let trail = whole_trail(&app).await;
    assert!(
        !trail.contains(&bob),
        "the broker token leaked into the trail"
    );
    assert!(
        !trail.contains(&db.password),
        "the database password leaked into the trail"
    );
}

#[tokio::test]
async fn pgbench_simple_and_prepared_modes_run_through_the_broker() {
    let db = ScramDb::create().await;
    let toml = format!(
        "[audit]\ndb_params = true\n{}",
        target("bench-dev", &db, r#"env = "dev""#).await
    );
    let app = broker(toml).await;
    let bob = token(&app, "bob").await;
    let mut init = Command::new("pgbench");
    init.args(["-i", "-q", "-s", "1"])
        .arg(db.direct())
        .env("PGPASSWORD", &db.password);
    let init = run(init, None).await;
    assert!(init.status.success(), "{}", text(&init));
    let conn = via_broker(&app, "bob@example.test", "bench-dev");
    for mode in ["simple", "extended", "prepared"] {
        let mut bench = Command::new("pgbench");
        bench
            .args(["-n", "-S", "-M", mode, "-c", "2", "-j", "1", "-t", "25"])
            .arg(&conn)
            .env("PGPASSWORD", &bob);
        let out = run(bench, None).await;
        let out_text = text(&out);
        assert!(out.status.success(), "{mode}: {out_text}");
        assert!(
            out_text.contains("number of transactions actually processed: 50/50"),
            "{mode}: {out_text}"
        );
    }
    let events = queries(&app).await;
    let selects: Vec<&Value> = events
        .iter()
        .filter(|d| {
            d["statement"]
                .as_str()
                .is_some_and(|s| s.contains("FROM pgbench_accounts"))
        })
        .collect();
    let by = |protocol: &str, prepared: bool| {
        selects
            .iter()
            .filter(|d| d["protocol"] == protocol && d.get("prepared").is_some() == prepared)
            .count()
    };
    assert_eq!(by("simple", false), 50, "{selects:#?}");
    assert_eq!(by("extended", false), 50);
    assert_eq!(
        by("extended", true),
        50,
        "prepared mode: one event per Execute"
    );
    let prepared = selects
        .iter()
        .find(|d| d.get("prepared").is_some())
        .unwrap();
    assert_eq!(prepared["params"], 1);
    assert!(
        prepared["param_values"][0]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok()
    );
    assert_eq!(prepared["rows"], 1);
    assert!(selects.iter().all(|d| d.get("error").is_none()));
}

#[tokio::test]
async fn copy_in_and_out_are_relayed_and_recorded() {
    let db = ScramDb::create().await;
    let app = broker(target("copy-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "copy-dev");
    stdout(&psql(&conn, &bob, &["-c", "create table c (n int, s text)"]).await);
    let rows: String = (1..=500).map(|n| format!("{n}\trow {n}\n")).collect();
    let mut copy_in = Command::new("psql");
    copy_in
        .arg(&conn)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", "\\copy c from stdin"])
        .env("PGPASSWORD", &bob);
    let copy_in = run(copy_in, Some(rows.clone())).await;
    assert!(copy_in.status.success(), "{}", text(&copy_in));
    let out = stdout(
        &psql(
            &conn,
            &bob,
            &["-c", "\\copy (select * from c order by n) to stdout"],
        )
        .await,
    );
    assert_eq!(out, rows);
    let events = queries(&app).await;
    let copy = |direction: &str| {
        events
            .iter()
            .find(|d| d["copy"]["direction"] == direction)
            .unwrap_or_else(|| panic!("no COPY {direction}: {events:#?}"))
            .clone()
    };
    let copied_in = copy("in");
    assert_eq!(copied_in["rows"], 500);
    assert_eq!(copied_in["copy"]["bytes"], rows.len());
    assert!(
        copied_in["statement"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("from stdin")
    );
    let copied_out = copy("out");
    assert_eq!(copied_out["rows"], 500);
    assert_eq!(copied_out["copy"]["bytes"], rows.len());
}

#[tokio::test]
async fn a_long_query_is_cancelled_through_the_broker() {
    let db = ScramDb::create().await;
    let app = broker(target("cancel-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "cancel-dev");
    let child = Command::new("psql")
        .arg(&conn)
        .args(["-X", "-c", "select pg_sleep(30)"])
        .env("PGPASSWORD", &bob)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the statement runs, then Ctrl-C: psql sends a CancelRequest.
    let running = eventually(Duration::from_secs(10), || async {
        let direct = psql(
            &db.direct(),
            &db.password,
            &["-c", "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'"],
        ).await;
        String::from_utf8_lossy(&direct.stdout).trim() == "1"
    })
    .await;
    assert!(running, "the query never started");
    let started = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
    assert!(
        text(&output).contains("canceling statement due to user request"),
        "{}",
        text(&output)
    );
    let ok = eventually(Duration::from_secs(5), || async {
        let events = queries(&app).await;
        events
            .iter()
            .any(|d| d["cancel_request"] == true && d["error"].is_null())
            && events.iter().any(|d| {
                d["statement"] == "select pg_sleep(30)" && d["error"]["sqlstate"] == "57014"
            })
    })
    .await;
    assert!(ok, "{:#?}", queries(&app).await);
    let cancel = app
        .events("db.query")
        .await
        .into_iter()
        .find(|e| e.details.contains("cancel_request"))
        .unwrap();
    assert_eq!(cancel.actor.as_deref(), Some("bob@example.test"));
    assert!(cancel.session_id.is_some());
}

#[tokio::test]
async fn refusals_are_clear_postgres_errors_and_audited() {
    let db = ScramDb::create().await;
    let wrong =
        put_secret(&serde_json::json!({"username": db.role, "password": "not-it"}).to_string())
            .await;
    let closed_port = free_port();
    // An RDS IAM target: the broker signs a token with its (moto) keys; the
    // SCRAM cluster is no RDS, so it refuses the token as a password.
    let iam = format!(
        r#"
[[target]]
name = "iam-dev"
kind = "postgres"
address = "{}"
database = "{}"
credential = {{ from = "rds-iam", db_user = "{}" }}
tls = "verify-full"
ca_file = "{}"
tags = {{ env = "dev" }}
"#,
        db.address(),
        db.database,
        db.role,
        required_env("PAM_TEST_PG_SCRAM_CA")
    );
    let toml = format!(
        "{iam}{}{}{}",
        target("good-dev", &db, r#"env = "dev""#).await,
        target_with(
            "wrongpw-dev",
            &db.address(),
            &db.database,
            &wrong,
            r#"env = "dev""#
        ),
        target_with(
            "down-dev",
            &format!("127.0.0.1:{closed_port}"),
            &db.database,
            &wrong,
            r#"env = "dev""#
        ),
    );
    let app = broker(toml).await;
    let bob = token(&app, "bob").await;
    let dave = token(&app, "dave").await;
    let refused = |result: Result<Wire, Fatal>| match result {
        Ok(_) => panic!("connected"),
        Err(fatal) => fatal,
    };

    let bad = refused(Wire::connect(&app, "bob@example.test", "good-dev", "not-a-token").await);
    assert_eq!(bad.code, "28P01", "{bad:?}");
    assert!(bad.message.contains("invalid broker token"), "{bad:?}");

    let other = refused(Wire::connect(&app, "alice@example.test", "good-dev", &bob).await);
    assert_eq!(other.code, "28000", "{other:?}");

    let denied = refused(Wire::connect(&app, "dave@example.test", "good-dev", &dave).await);
    assert_eq!(denied.code, "42501", "{denied:?}");
    assert!(denied.message.contains("denied"), "{denied:?}");

    let unknown = refused(Wire::connect(&app, "bob@example.test", "nope", &bob).await);
    assert_eq!(unknown.code, "3D000", "{unknown:?}");

    let down = refused(Wire::connect(&app, "bob@example.test", "down-dev", &bob).await);
    assert_eq!(down.code, "08006", "{down:?}");
    assert!(down.message.contains("cannot reach"), "{down:?}");

    let wrong_password =
        refused(Wire::connect(&app, "bob@example.test", "wrongpw-dev", &bob).await);
    assert_eq!(wrong_password.code, "08006", "{wrong_password:?}");
    assert!(
        wrong_password
            .message
            .contains("refused the broker's login"),
        "{wrong_password:?}"
    );
    assert!(
        wrong_password.message.contains("28P01"),
        "{wrong_password:?}"
    );
    assert!(!wrong_password.message.contains("not-it"));

    let iam_refused = refused(Wire::connect(&app, "bob@example.test", "iam-dev", &bob).await);
    assert_eq!(iam_refused.code, "08006", "{iam_refused:?}");
    assert!(
        iam_refused.message.contains("28P01") && iam_refused.message.contains(&db.role),
        "the database saw an RDS IAM login for the role: {iam_refused:?}"
    );
    assert!(
        !iam_refused.message.contains("X-Amz"),
        "the token is never shown"
    );

    // psql says the same, and cleartext is refused outside --dev.
    let out = psql(
        &via_broker(&app, "bob@example.test", "good-dev"),
        "wrong",
        &["-c", "select 1"],
    )
    .await;
    assert!(
        text(&out).contains("invalid broker token"),
        "{}",
        text(&out)
    );
    let plain = psql(
        &format!(
            "host=127.0.0.1 port={} user=bob@example.test dbname=good-dev sslmode=disable",
            app.postgres.port()
        ),
        &bob,
        &["-c", "select 1"],
    )
    .await;
    assert!(
        text(&plain).contains("the broker requires TLS"),
        "{}",
        text(&plain)
    );
    // And the good one works.
    let good = Wire::connect(&app, "bob@example.test", "good-dev/postgres", &bob).await;
    assert!(good.is_ok(), "{:?}", good.err());

    // Audited: rejected tokens, the denial, the failed upstream logins.
    let rejected = app.event_details("token.rejected").await;
    assert!(
        rejected
            .iter()
            .any(|d| d["room"] == "postgres" && d["reason"] == "invalid token")
    );
    assert!(rejected.iter().any(|d| {
        d["room"] == "postgres"
            && d["reason"]
                .as_str()
                .unwrap()
                .contains("not to the user named")
    }));
    let decisions = app.events("policy.decision").await;
    assert!(
        decisions
            .iter()
            .any(|e| e.actor.as_deref() == Some("dave@example.test")
                && e.outcome == "denied"
                && e.target.as_deref() == Some("good-dev"))
    );
    let failed_starts: Vec<_> = app
        .events("session.start")
        .await
        .into_iter()
        .filter(|e| e.outcome == "failure")
        .collect();
    assert!(
        failed_starts
            .iter()
            .any(|e| e.target.as_deref() == Some("nope")),
        "{failed_starts:#?}"
    );
    // The broker's login reaches a database only once the session is on
    // record: a database that is down or refuses it ends that session in
    // error.
    let failed_ends = || async {
        app.events("session.end")
            .await
            .into_iter()
            .filter(|e| e.outcome == "failure")
            .filter_map(|e| e.target)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            let ended = failed_ends().await;
            ["down-dev", "wrongpw-dev", "iam-dev"]
                .iter()
                .all(|t| ended.iter().any(|e| e == t))
        })
        .await,
        "{:#?}",
        failed_ends().await
    );
    let trail = whole_trail(&app).await;
    assert!(!trail.contains(&bob) && !trail.contains(&db.password));
    assert!(
        !trail.contains("X-Amz-Signature"),
        "no RDS token in the trail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_or_query_reaches_the_database_before_the_session_is_on_record() {
    let db = ScramDb::create().await;
    let app = broker(target("order-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let logged_in = || async {
        let mut admin = admin_conn(&required_env("PAM_TEST_PG_SCRAM_URL")).await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
            .bind(&db.role)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        n
    };
    // While nothing can be appended to the trail, the policy decision and
    // session.start cannot be durable.
    let block = app.block_trail().await;
    let client = {
        let conninfo = via_broker(&app, "bob@example.test", "order-dev");
        let bob = bob.clone();
        tokio::spawn(async move { psql(&conninfo, &bob, &["-c", "select 'ran-' || 6*7"]).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        logged_in().await,
        0,
        "the broker logged in to the database before session.start was durable"
    );
    assert!(app.events("session.start").await.is_empty());
    block.release().await;
    let out = client.await.unwrap();
    assert_eq!(stdout(&out).trim(), "ran-42", "{}", text(&out));
    assert_eq!(app.events("session.start").await.len(), 1);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let db = ScramDb::create().await;
    let app = broker(target("exp-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    // The same session's token, signed by the broker, an hour past its end.
    let keys = pam::keys::KeyMaterial::load(&app.config.keys_dir()).unwrap();
    let signer = pam::identity::token::TokenKeys::new(
        &keys.token_signing,
        app.config.server.public_url.as_str(),
    );
    let mut claims = signer.verify(&bob).unwrap();
    claims.exp -= 9 * 3600;
    claims.iat -= 9 * 3600;
    claims.nbf -= 9 * 3600;
    let expired = signer.sign(&claims).unwrap();
    let fatal = match Wire::connect(&app, "bob@example.test", "exp-dev", &expired).await {
        Ok(_) => panic!("an expired token was accepted"),
        Err(fatal) => fatal,
    };
    assert_eq!(fatal.code, "28P01", "{fatal:?}");
    assert!(fatal.message.contains("expired"), "{fatal:?}");
    let rejected = app.event_details("token.rejected").await;
    assert!(
        rejected
            .iter()
            .any(|d| d["room"] == "postgres" && d["reason"].as_str().unwrap().contains("expired"))
    );
}

#[tokio::test]
async fn idle_sessions_are_warned_then_ended_with_57p05() {
    let db = ScramDb::create().await;
    let toml = format!(
        "[session]\nidle_timeout = \"4s\"\nwarn_before = \"2s\"\n{}",
        target("idle-dev", &db, r#"env = "dev""#).await
    );
    let app = broker(toml).await;
    let bob = token(&app, "bob").await;
    let mut wire = Wire::connect(&app, "bob@example.test", "idle-dev", &bob)
        .await
        .unwrap();
    let rows = wire.query("select 1").await;
    assert!(rows.iter().any(|(tag, _)| *tag == b'D'));
    let mut warned = false;
    let fatal = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some((tag, body)) = wire.next().await {
            match protocol::parse_backend(tag, &body).unwrap() {
                Backend::Notice(fields) => {
                    assert_eq!(fields.severity, b"WARNING");
                    warned = true;
                }
                Backend::Error(fields) => return Some(fatal(&fields)),
                _ => {}
            }
        }
        None
    })
    .await
    .expect("the session did not end")
    .expect("no FATAL before close");
    assert!(warned, "no warning before the end");
    assert_eq!(fatal.code, "57P05");
    assert!(fatal.message.contains("idle"), "{fatal:?}");
    assert!(wire.next().await.is_none(), "closed after the FATAL");
    let ended = eventually(Duration::from_secs(5), || async {
        app.event_details("session.end")
            .await
            .iter()
            .any(|d| d["end_reason"] == "idle_timeout")
    })
    .await;
    assert!(ended);
}

#[tokio::test]
async fn an_administrator_terminates_a_session_by_id() {
    let db = ScramDb::create().await;
    let app = broker(target("term-dev", &db, r#"env = "dev""#).await).await;
    let bob = token(&app, "bob").await;
    let alice = token(&app, "alice").await;
    let mut wire = Wire::connect(&app, "bob@example.test", "term-dev", &bob)
        .await
        .unwrap();
    wire.query("select 1").await;
    let start = app
        .events("session.start")
        .await
        .into_iter()
        .find(|e| e.outcome == "success")
        .unwrap();
    let id = start.session_id.unwrap();
    let response = app
        .client
        .post(app.url(&format!("/api/v1/sessions/{id}/terminate")))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"reason": "suspicious queries"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let fatal = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((tag, body)) = wire.next().await {
            if let Backend::Error(fields) = protocol::parse_backend(tag, &body).unwrap() {
                return Some(fatal(&fields));
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("a FATAL");
    assert_eq!(fatal.code, "57P01");
    assert!(fatal.message.contains("suspicious queries"), "{fatal:?}");
    let ended = eventually(Duration::from_secs(5), || async {
        app.event_details("session.end")
            .await
            .iter()
            .any(|d| d["end_reason"] == "terminated")
    })
    .await;
    assert!(ended);
}

#[tokio::test]
async fn pam_db_connect_tunnels_with_the_saved_login() {
    let db = ScramDb::create().await;
    let app = broker(target("tunnel-dev", &db, r#"env = "dev""#).await).await;
    let login = app.sso_login("bob").await.expect("login").response;
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), &login.token).unwrap();
    std::fs::write(
        home.path().join("session.json"),
        serde_json::json!({
            "broker": app.base_url,
            "user": login.user,
            "groups": login.groups,
            "mfa": login.mfa,
            "postgres_addr": login.postgres_addr,
        })
        .to_string(),
    )
    .unwrap();
    let port = free_port();
    let mut tunnel = crate::support::pam_command()
        .args(["db", "connect", "tunnel-dev", "--port", &port.to_string()])
        .env("PAM_HOME", home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = tunnel.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while !text.contains('\n') {
            let n = std::io::Read::read(&mut out, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    })
    .await
    .unwrap();
    if !printed.contains(&format!("port={port}")) {
        let _ = tunnel.kill();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut tunnel.stderr.take().unwrap(), &mut err).unwrap();
        panic!("pam db connect printed {printed:?}; stderr: {err}");
    }
    assert!(printed.starts_with("psql "), "{printed}");
    let local = format!(
        "host=127.0.0.1 port={port} user=bob@example.test dbname=tunnel-dev sslmode=disable"
    );
    let who = psql(&local, "", &["-c", "select current_user"]).await;
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert_eq!(stdout(&who).trim(), db.role);
    let starts = app.events("session.start").await;
    assert!(starts.iter().any(|e| e.outcome == "success"
        && e.actor.as_deref() == Some("bob@example.test")
        && e.target.as_deref() == Some("tunnel-dev")));
}

#[tokio::test]
async fn gssapi_is_declined_tls_is_offered_and_unknown_cancel_keys_are_dropped() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn_with(Options {
        env: aws_env(),
        ..Options::default()
    })
    .await;
    // The generated certificate's key is private to the broker.
    let key = app.config.keys_dir().join("postgres-tls.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut tcp = tokio::net::TcpStream::connect(app.postgres).await.unwrap();
    let mut gss = 8i32.to_be_bytes().to_vec();
    gss.extend_from_slice(&protocol::GSSENC_REQUEST.to_be_bytes());
    tcp.write_all(&gss).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N', "GSSAPI encryption is declined");
    tcp.write_all(&protocol::ssl_request()).await.unwrap();
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S', "then TLS is offered");

    let mut cancel = tokio::net::TcpStream::connect(app.postgres).await.unwrap();
    cancel
        .write_all(&protocol::cancel_request(12345, &[1, 2, 3, 4]))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), cancel.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "no answer, just closed");
    let dropped = eventually(Duration::from_secs(5), || async {
        app.events("db.query")
            .await
            .iter()
            .any(|e| e.outcome == "denied" && e.details.contains("unknown cancel key"))
    })
    .await;
    assert!(dropped, "the unknown cancel key is audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_behind_an_ssm_port_route_works_like_a_direct_one() {
    // The broker runs outside the VPC: it reaches the database through an
    // SSM port-forwarding session (the fake control plane and agent in
    // tests/, bridging to the real SCRAM PostgreSQL), TLS end to end.
    let db = ScramDb::create().await;
    let fake = crate::support::fake_aws::FakeAws::start(None).await;
    let toml = format!(
        "{}via = {{ ssm_target = \"i-0123456789abcdef0\" }}\n",
        target("orders-routed", &db, r#"env = "dev""#).await
    );
    let mut env = aws_env();
    env.insert("AWS_ENDPOINT_URL_SSM".into(), fake.url.clone());
    let app = TestApp::spawn_with(Options {
        toml,
        env,
        idp: true,
        ..Options::default()
    })
    .await;
    let bob = token(&app, "bob").await;
    let conn = via_broker(&app, "bob@example.test", "orders-routed");
    let sql = "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let through = stdout(&psql(&conn, &bob, &["-c", sql]).await);
    assert_eq!(
        through.trim(),
        format!("{}|t", db.role),
        "TLS to the database over the route"
    );
    // Cancelling goes over a route of its own.
    let slow = psql(
        &conn,
        &bob,
        &[
            "-c",
            "set statement_timeout = '20s'",
            "-c",
            "select pg_sleep(0.2)",
        ],
    )
    .await;
    stdout(&slow);

    let starts = fake.calls("StartSession");
    assert!(!starts.is_empty());
    assert_eq!(starts[0]["Target"], "i-0123456789abcdef0");
    assert_eq!(
        starts[0]["DocumentName"],
        "AWS-StartPortForwardingSessionToRemoteHost"
    );
    assert_eq!(starts[0]["Parameters"]["host"][0], "127.0.0.1");
    assert_eq!(
        starts[0]["Parameters"]["portNumber"][0],
        db.port.to_string()
    );
    let sessions = app.event_details("session.start").await;
    assert_eq!(
        sessions[0]["details"]["via_ssm_target"], "i-0123456789abcdef0",
        "{sessions:?}"
    );
    // Every route is closed once its session ends (TerminateSession).
    let _ = queries(&app).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            fake.calls("TerminateSession").len() >= starts.len()
        })
        .await,
        "routes left open: {} started, {} terminated",
        fake.calls("StartSession").len(),
        fake.calls("TerminateSession").len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_never_goes_in_cleartext_or_as_md5_unless_the_target_allows_it() {
    for (group, sent) in [
        ("pam_weak_md5", "as MD5"),
        ("pam_weak_password", "in cleartext"),
    ] {
        let db = ScramDb::create_in(Some(group)).await;
        // The cluster really logs this role in that way.
        stdout(&psql(&db.direct(), &db.password, &["-c", "select 1"]).await);
        let strict = target("strict", &db, r#"env = "dev""#).await;
        let lenient = target("lenient", &db, r#"env = "dev""#).await.replace(
            "connect_timeout = \"5s\"",
            "connect_timeout = \"5s\"\nallow_weak_auth = true",
        );
        assert!(lenient.contains("allow_weak_auth"));
        let app = broker(format!("{strict}{lenient}")).await;
        let bob = token(&app, "bob").await;

        let refused = psql(
            &via_broker(&app, "bob@example.test", "strict"),
            &bob,
            &["-c", "select 1"],
        )
        .await;
        assert!(!refused.status.success(), "{group}");
        let message = text(&refused);
        assert!(
            message.contains(&format!("asked for the password {sent}"))
                && message.contains("allow_weak_auth"),
            "{group}: {message}"
        );
        assert!(app.events("db.weak_auth").await.is_empty());

        let allowed = psql(
            &via_broker(&app, "bob@example.test", "lenient"),
            &bob,
            &["-c", "select current_user"],
        )
        .await;
        assert_eq!(stdout(&allowed).trim(), db.role, "{group}");
        let weak = app.events("db.weak_auth").await;
        assert_eq!(weak.len(), 1, "{group}: audited at use");
        assert_eq!(weak[0].target.as_deref(), Some("lenient"));
        assert_eq!(weak[0].actor.as_deref(), Some("bob@example.test"));
        let details = &app.event_details("db.weak_auth").await[0];
        assert_eq!(details["password_sent"], sent);
        assert_eq!(details["db_user"], db.role.as_str());
        assert!(!whole_trail(&app).await.contains(&db.password));
    }
}
