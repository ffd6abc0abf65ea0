//! Test support: a broker started in-process on port 0 ([`TestApp`]) against
//! a temp SQLite file, or a fresh PostgreSQL database per test when
//! `PAM_TEST_DATABASE_URL` is set; and helpers for the real peers.

#![allow(dead_code)]

pub mod aws;
pub mod fake_aws;
pub mod faults;
pub mod gate;
pub mod peers;
pub mod proxy;
pub mod throttle;
pub mod webhook;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pam::app::{self, Listeners, Running};
use pam::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A broker running inside the test process.
pub struct TestApp {
    pub running: Running,
    pub http: SocketAddr,
    pub ssh: SocketAddr,
    pub postgres: SocketAddr,
    pub base_url: String,
    pub dir: tempfile::TempDir,
    /// The config file the broker was started from (for CLI tools).
    pub config_path: PathBuf,
    pub config: Config,
    pub database: TestDatabase,
    pub client: reqwest::Client,
    pub idp: Option<peers::Idp>,
    /// The fault proxy in front of the IdP (`Options::idp_behind_proxy`).
    pub idp_proxy: Option<proxy::FaultProxy>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The per-test database: a SQLite file in the test's temp dir, or a
/// PostgreSQL database created for this test (and dropped after).
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub url: String,
    guard: Option<std::sync::Arc<PgGuard>>,
}

/// Drops the test's PostgreSQL database when the last handle goes.
#[derive(Debug)]
struct PgGuard {
    admin_url: String,
    name: String,
}

/// Builder for a [`TestApp`]: extra TOML merged into the generated config.
#[derive(Default)]
pub struct Options {
    pub toml: String,
    pub env: HashMap<String, String>,
    /// Start a real OIDC provider for this broker and configure `[oidc]`.
    pub idp: bool,
    /// With `idp`: the broker and the browser reach the IdP through a
    /// fault proxy (`TestApp::idp_proxy`), which is its issuer URL.
    pub idp_behind_proxy: bool,
    /// Share another broker's key material (a fleet).
    pub keys_dir: Option<PathBuf>,
    /// `server.data_dir` somewhere else than the test's temp dir (a small
    /// tmpfs to fill, for the fault tests).
    pub data_dir: Option<PathBuf>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> TestApp {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let database = TestDatabase::create(dir.path()).await;
        Self::start(dir, database, options).await
    }

    /// Starts a broker on an existing directory and database (restarts, fleets).
    pub async fn start(
        dir: tempfile::TempDir,
        database: TestDatabase,
        mut options: Options,
    ) -> TestApp {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ssh = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let postgres = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let base_url = format!("http://{http_addr}");
        let mut idp_proxy = None;
        let idp = if options.idp {
            let redirect = format!("{base_url}/auth/callback");
            let idp = if options.idp_behind_proxy {
                let port = free_port();
                let proxy =
                    proxy::FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
                let issuer = format!("http://{}", proxy.addr);
                idp_proxy = Some(proxy);
                peers::Idp::start_at(&redirect, port, Some(&issuer)).await
            } else {
                peers::Idp::start(&redirect).await
            };
            options
                .env
                .insert("PAM_OIDC__ISSUER".into(), idp.issuer.clone());
            options
                .env
                .insert("PAM_OIDC__CLIENT_ID".into(), peers::IDP_CLIENT_ID.into());
            options.env.insert(
                "PAM_OIDC__CLIENT_SECRET_ENV".into(),
                "PAM_TEST_OIDC_SECRET".into(),
            );
            options.env.insert(
                "PAM_TEST_OIDC_SECRET".into(),
                peers::IDP_CLIENT_SECRET.into(),
            );
            Some(idp)
        } else {
            None
        };
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let text = format!(
            r#"
[server]
public_url = "{base_url}"
http_listen = "{http_addr}"
ssh_listen = "{ssh}"
postgres_listen = "{pg}"
data_dir = "{data}"
database_url = "{db}"
shutdown_grace = "5s"
node_name = "test-broker-{node}"
{keys_dir}

[policy]
dir = "{policies}"

{extra}
"#,
            ssh = ssh.local_addr().unwrap(),
            pg = postgres.local_addr().unwrap(),
            data = options
                .data_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("data"))
                .display(),
            db = database.url,
            policies = policies.display(),
            extra = options.toml,
            node = http_addr.port(),
            keys_dir = options
                .keys_dir
                .as_ref()
                .map(|d| format!("keys_dir = \"{}\"", d.display()))
                .unwrap_or_default(),
        );
        let config_path = dir.path().join("pam.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::load(&config_path, &options.env).expect("test config is valid");
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let listeners = Listeners {
            http,
            ssh,
            postgres,
        };
        let handle = tokio::spawn(app::run_with(
            config.clone(),
            listeners,
            options.env.clone(),
            shutdown.clone(),
            Some(ready_tx),
        ));
        let running = match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
            Ok(Ok(running)) => running,
            _ => {
                let result = handle.await;
                panic!("broker did not start: {result:?}");
            }
        };
        TestApp {
            http: running.http,
            ssh: running.ssh,
            postgres: running.postgres,
            running,
            base_url,
            dir,
            config_path,
            config,
            database,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            idp,
            idp_proxy,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Starts a graceful shutdown, as SIGTERM does in `pam serve`
    /// (`TestApp::stop` then waits for its end).
    pub fn sigterm(&self) {
        self.shutdown.cancel();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Stops the broker gracefully and returns its temp dir and database
    /// (to restart on them, or to inspect them).
    pub async fn stop(mut self) -> (tempfile::TempDir, TestDatabase) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("broker task")
                .expect("broker stopped cleanly");
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.database.clone())
    }

    /// Runs the `pam` binary against this broker's config.
    pub fn pam(&self) -> std::process::Command {
        let mut cmd = pam_command();
        cmd.env("PAM_CONFIG", &self.config_path);
        cmd
    }

    /// A connection to the broker's database.
    pub async fn db(&self) -> pam::store::Db {
        pam::store::Db::connect(&self.database.url, Duration::from_secs(10))
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestDatabase {
    pub async fn create(dir: &Path) -> TestDatabase {
        match std::env::var("PAM_TEST_DATABASE_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let name = format!("pam_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = connect_pg(&admin_url).await;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let mut url = url::Url::parse(&admin_url).unwrap();
                url.set_path(&format!("/{name}"));
                TestDatabase {
                    url: url.to_string(),
                    guard: Some(std::sync::Arc::new(PgGuard { admin_url, name })),
                }
            }
            _ => TestDatabase {
                url: format!("sqlite://{}", dir.join("pam.db").display()),
                guard: None,
            },
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.guard.is_some()
    }

    /// Audit events of `kind` in this database, oldest first (also after
    /// the broker stopped).
    pub async fn events(&self, kind: &str) -> Vec<pam::domain::audit::EventRecord> {
        let db = pam::store::Db::connect(&self.url, Duration::from_secs(10))
            .await
            .unwrap();
        let filter = pam::domain::audit::EventFilter {
            kinds: vec![kind.to_owned()],
            ascending: true,
            limit: 10_000,
            ..Default::default()
        };
        let events = pam::store::audit::list(&db, &filter).await.unwrap();
        db.close().await;
        events
    }
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = connect_pg(&admin_url).await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            });
        })
        .join()
        .ok();
    }
}

async fn connect_pg(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("PAM_TEST_DATABASE_URL does not answer: {e}"))
}

/// The `pam` binary built from this checkout's sources.
///
/// With a `CARGO_TARGET_DIR` shared by several checkouts (worktrees),
/// `target/debug/pam` is whichever checkout linked last. Each binary says
/// which checkout it was built from (`PAM_TEST_PRINT_CHECKOUT`); when the
/// uplifted one is not ours, the newest hashed binary in `deps/` that is
/// ours is used.
pub fn pam_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let uplifted = PathBuf::from(env!("CARGO_BIN_EXE_pam"));
        if built_here(&uplifted) {
            return uplifted;
        }
        let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = uplifted
            .parent()
            .map(|dir| dir.join("deps"))
            .and_then(|deps| std::fs::read_dir(deps).ok())
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("pam-") && path.extension().is_none()
            })
            .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        candidates
            .into_iter()
            .map(|(_, path)| path)
            .find(|path| built_here(path))
            .unwrap_or(uplifted)
    })
}

fn built_here(binary: &Path) -> bool {
    std::process::Command::new(binary)
        .arg("--version")
        .env("PAM_TEST_PRINT_CHECKOUT", "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == env!("CARGO_MANIFEST_DIR"))
}

/// The `pam` binary built for these tests.
pub fn pam_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(pam_bin());
    cmd.env_remove("PAM_CONFIG");
    cmd.env("PAM_LOG", "warn");
    cmd
}

/// Silent unless `TEST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on loopback (for peers that cannot bind port 0 themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A login as `pam login` performs it, driven by the test browser.
pub struct Login {
    pub key: russh::keys::ssh_key::PrivateKey,
    pub response: pam::api::LoginResponse,
}

/// Where a browser login stopped when it did not produce a token.
#[derive(Debug)]
pub enum LoginFailure {
    /// The broker sent the browser back to the CLI with an error.
    Redirected(String),
    /// The exchange was refused: status and message.
    Exchange(u16, String),
    /// The browser ended somewhere else (an error page).
    Elsewhere(String),
}

impl TestApp {
    /// A browser SSO login as `user` (an IdP test user), exactly the way
    /// `pam login` does it: loopback port, PKCE, one-time code, proof.
    pub async fn sso_login(&self, user: &str) -> Result<Login, LoginFailure> {
        let key = pam::identity::new_client_key();
        let pkce = pam::identity::oidc::pkce();
        let port = free_port();
        let start = self.url(&format!(
            "/auth/login?cli_port={port}&cli_challenge={}&login_hint={user}",
            pkce.challenge
        ));
        let prefix = format!("http://127.0.0.1:{port}/callback");
        let last = {
            let prefix = prefix.clone();
            tokio::task::spawn_blocking(move || peers::browse(&start, Some(&prefix)))
                .await
                .unwrap()
        };
        if !last.starts_with(&prefix) {
            return Err(LoginFailure::Elsewhere(last));
        }
        let query: HashMap<String, String> = url::Url::parse(&last)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        let Some(code) = query.get("code") else {
            return Err(LoginFailure::Redirected(
                query.get("error_description").cloned().unwrap_or_default(),
            ));
        };
        self.exchange(&key, code, &pkce.verifier)
            .await
            .map(|response| Login { key, response })
    }

    /// Redeems a one-time login code.
    pub async fn exchange(
        &self,
        key: &russh::keys::ssh_key::PrivateKey,
        code: &str,
        verifier: &str,
    ) -> Result<pam::api::LoginResponse, LoginFailure> {
        let public_key = key.public_key().to_openssh().unwrap();
        let proof = pam::identity::cert::sign_proof(key, code).unwrap();
        let body = serde_json::json!({
            "code": code,
            "code_verifier": verifier,
            "public_key": public_key,
            "proof": proof,
        });
        let response = self
            .client
            .post(self.url("/api/v1/auth/exchange"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status != 200 {
            return Err(LoginFailure::Exchange(status, text));
        }
        Ok(serde_json::from_str(&text).unwrap())
    }

    /// Audit events of `kind`, oldest first.
    pub async fn events(&self, kind: &str) -> Vec<pam::domain::audit::EventRecord> {
        self.database.events(kind).await
    }

    /// `details` of every event of `kind`, parsed.
    pub async fn event_details(&self, kind: &str) -> Vec<serde_json::Value> {
        self.events(kind)
            .await
            .iter()
            .map(|e| serde_json::from_str(&e.details).unwrap())
            .collect()
    }
}

/// Holds the audit trail's write lock until [`TrailBlock::release`]: nothing
/// can be appended meanwhile, which makes "not before its records are
/// durable" observable. SQLite: a write transaction on the database file
/// (the broker waits on its busy timeout, 10 s: release well before);
/// PostgreSQL: the lock on the chain's head row.
pub struct TrailBlock {
    conn: TrailConn,
}

enum TrailConn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl TestApp {
    pub async fn block_trail(&self) -> TrailBlock {
        use sqlx::Connection;
        let conn = if self.database.is_postgres() {
            let mut conn = sqlx::PgConnection::connect(&self.database.url)
                .await
                .unwrap();
            sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
            sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
                .execute(&mut conn)
                .await
                .unwrap();
            TrailConn::Postgres(conn)
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.database.url)
                .await
                .unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
            TrailConn::Sqlite(conn)
        };
        TrailBlock { conn }
    }
}

impl TrailBlock {
    pub async fn release(self) {
        match self.conn {
            TrailConn::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
            TrailConn::Postgres(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// `pam login --broker URL --login-hint USER` with `PAM_HOME=home`, the test
/// browser clicking through the real IdP; panics unless it succeeds.
pub async fn cli_login(app: &TestApp, home: &std::path::Path, user: &str) {
    let browser = format!(
        "python3 {}",
        peers::peers_dir().join("browser.py").display()
    );
    let login = tokio::process::Command::new(pam_bin())
        .args(["login", "--broker", &app.base_url, "--login-hint", user])
        .env("PAM_HOME", home)
        .env_remove("PAM_CONFIG")
        .env("BROWSER", &browser)
        .output()
        .await
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
}
