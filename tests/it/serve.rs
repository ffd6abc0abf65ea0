//! `pam serve` as a real process: it starts, serves health, metrics and
//! public keys, stops cleanly on SIGTERM; bad input gets one clear line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{TestApp, TestDatabase, pam_command};

/// Writes a config with every listener on port 0.
fn write_config(dir: &std::path::Path, database_url: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("pam.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
http_listen = "127.0.0.1:0"
ssh_listen = "127.0.0.1:0"
postgres_listen = "127.0.0.1:0"
data_dir = "{}"
database_url = "{database_url}"
shutdown_grace = "5s"
[policy]
dir = "{}"
{extra}
"#,
            dir.join("data").display(),
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .display()
        ),
    )
    .unwrap();
    path
}

/// Starts `pam serve` and waits for its `listening` log line (JSON logs).
fn start(cmd: &mut Command) -> (std::process::Child, serde_json::Value) {
    let mut child = cmd
        .args(["--log-format", "json"])
        .env("PAM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && value["message"] == "listening"
            {
                let _ = tx.send(value);
            }
        }
    });
    let listening = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("broker logs `listening`");
    (child, listening)
}

fn sigterm(child: &std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

#[tokio::test]
async fn serves_health_metrics_and_public_keys_then_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(dir.path()).await;
    let config = write_config(dir.path(), &database.url, "");
    let (mut child, listening) = start(pam_command().arg("serve").arg("--config").arg(&config));
    let http = listening["http"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{http}{path}")).send();

    let health = get("/healthz").await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("pam_audit_appends_total 1"), "{metrics}");
    assert!(metrics.contains("# TYPE pam_sessions_active gauge"));

    let served = get("/api/v1/ca/ssh_user.pub")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown = pam_command()
        .args(["ca", "show", "user", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(shown.status.success());
    assert_eq!(served, String::from_utf8(shown.stdout).unwrap());
    assert!(served.starts_with("ssh-ed25519 "));
    let target = get("/api/v1/ca/ssh_target.pub")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_ne!(target, served);

    let jwks: serde_json::Value = get("/.well-known/jwks.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");

    let events = pam_command()
        .args([
            "audit",
            "events",
            "--json",
            "--kind",
            "server.stop",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8(events.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let verify = pam_command()
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(verify.status.success());
}

#[tokio::test]
async fn keys_are_generated_once_and_kept_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    let keys_dir = app.config.keys_dir();
    let first = std::fs::read(keys_dir.join("ssh_user_ca")).unwrap();
    for entry in std::fs::read_dir(&keys_dir).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (dir, database) = app.stop().await;
    let app = TestApp::start(dir, database, Default::default()).await;
    assert_eq!(
        std::fs::read(app.config.keys_dir().join("ssh_user_ca")).unwrap(),
        first
    );
}

#[tokio::test]
async fn dev_mode_needs_no_config_and_prints_its_urls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pam-data");
    let mut cmd = pam_command();
    cmd.args(["serve", "--dev", "--data-dir"])
        .arg(&data)
        .env("PAM_SERVER__HTTP_LISTEN", "127.0.0.1:0")
        .env("PAM_SERVER__SSH_LISTEN", "127.0.0.1:0")
        .env("PAM_SERVER__POSTGRES_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("stop with Ctrl-C"))
            .collect()
    })
    .await
    .unwrap();
    let text = lines.join("\n");
    assert!(
        text.contains("web UI and API:  http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("ssh -p "), "{text}");
    assert!(text.contains("break-glass admin (shown once"), "{text}");
    let password = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .expect("the one-time break-glass password is printed")
        .trim();
    assert!(password.len() >= 20, "{password}");
    assert!(data.join("pam.db").exists());
    assert!(data.join("keys").join("ssh_host_ed25519").exists());
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn dev_mode_without_aws_asks_no_imds_and_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = pam_command();
    for var in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(["serve", "--dev", "--data-dir"])
        .arg(dir.path().join("pam-data"))
        .env("HOME", dir.path())
        .env("PAM_LOG", "info")
        .env("NO_COLOR", "1")
        .env("PAM_SERVER__HTTP_LISTEN", "127.0.0.1:0")
        .env("PAM_SERVER__SSH_LISTEN", "127.0.0.1:0")
        .env("PAM_SERVER__POSTGRES_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("stop with Ctrl-C"))
            .count()
    })
    .await
    .unwrap();
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.to_lowercase().contains("imds::"), "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("AWS not configured"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].contains("no region"), "{stderr}");
}

fn run_fail(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("pam: error: "), "{stderr}");
    stderr
}

#[test]
fn a_malformed_config_is_reported_with_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pam.toml");
    std::fs::write(
        &config,
        "[server]\nhttp_listen = \"nope\"\ncolour = 1\n[session]\nidle_timeout = \"soon\"\n",
    )
    .unwrap();
    let stderr = run_fail(pam_command().arg("serve").arg("--config").arg(&config));
    assert!(stderr.contains("server.http_listen"), "{stderr}");
    assert!(
        stderr.contains("server.colour (config file): unknown key"),
        "{stderr}"
    );
    assert!(stderr.contains("session.idle_timeout"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing may be written");

    std::fs::write(&config, "[server\nbroken").unwrap();
    let stderr = run_fail(pam_command().arg("serve").arg("--config").arg(&config));
    assert!(stderr.contains("parsing config file"), "{stderr}");
}

#[test]
fn an_unwritable_data_dir_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let config = write_config(
        dir.path(),
        &format!("sqlite://{}/pam.db", file.join("data").display()),
        "",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &dir.path().join("data").display().to_string(),
        &file.join("data").display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let stderr = run_fail(pam_command().arg("serve").arg("--config").arg(&config));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.data_dir"), "{stderr}");
}

#[test]
fn a_database_that_does_not_answer_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let config = write_config(
        dir.path(),
        &format!("postgres://pam:secret-password@127.0.0.1:{port}/pam"),
        "",
    );
    let stderr = run_fail(pam_command().arg("serve").arg("--config").arg(&config));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("connecting to database postgres://pam:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-password"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing may be written");
}

#[test]
fn a_port_in_use_is_one_clear_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = write_config(
        dir.path(),
        &format!("sqlite://{}/data/pam.db", dir.path().display()),
        "",
    );
    let stderr = run_fail(
        pam_command()
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("PAM_SERVER__SSH_LISTEN", format!("127.0.0.1:{port}")),
    );
    assert_eq!(
        stderr.trim(),
        format!("pam: error: server.ssh_listen 127.0.0.1:{port}: address already in use")
    );
    assert!(!dir.path().join("data").exists(), "nothing may be written");
}
