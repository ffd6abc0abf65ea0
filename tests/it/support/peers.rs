//! The real peers the tests talk to. Shared ones (moto, the SCRAM
//! PostgreSQL cluster) are started by `scripts/test` and found through the
//! environment; per-test ones (sshd, the IdP) are started here.

/// Reads a variable `scripts/test` exports, with a clear message when the
/// suite was started some other way.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite through ./scripts/test, which installs and starts the real peers")
    })
}

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const IDP_CLIENT_ID: &str = "pam";
pub const IDP_CLIENT_SECRET: &str = "pam-test-secret";

/// The project's test peers directory (tests/peers).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("peers")
}

/// A real OpenID Connect provider (npm `oidc-provider`) for one test, on its
/// own port, with the broker's callback as the confidential client's
/// redirect URI. Killed on drop.
pub struct Idp {
    pub issuer: String,
    child: Child,
    http: reqwest::Client,
}

impl Idp {
    pub async fn start(redirect_uri: &str) -> Idp {
        Self::start_at(redirect_uri, super::free_port(), None).await
    }

    /// An IdP listening on `port` whose issuer is `issuer` (default: its
    /// own address): how it sits behind the fault suite's proxy.
    pub async fn start_at(redirect_uri: &str, port: u16, issuer: Option<&str>) -> Idp {
        let node_dir = Path::new(&required_env("PAM_TEST_PEERS_DIR")).join("node");
        let issuer = issuer
            .map(str::to_owned)
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        let log = std::fs::File::create(std::env::temp_dir().join(format!("pam-idp-{port}.log")))
            .unwrap();
        let child = Command::new("node")
            .arg(peers_dir().join("idp-server.mjs"))
            .env("IDP_DIR", &node_dir)
            .env("IDP_PORT", port.to_string())
            .env("IDP_CLIENT_ID", IDP_CLIENT_ID)
            .env("IDP_CLIENT_SECRET", IDP_CLIENT_SECRET)
            .env("IDP_REDIRECT_URIS", redirect_uri)
            .env("IDP_ISSUER", &issuer)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting node (the test IdP)");
        let mut idp = Idp {
            issuer,
            child,
            http: reqwest::Client::new(),
        };
        let discovery = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
        for _ in 0..200 {
            if let Some(status) = idp.child.try_wait().unwrap() {
                panic!(
                    "the test IdP exited with {status}; see {}",
                    std::env::temp_dir()
                        .join(format!("pam-idp-{port}.log"))
                        .display()
                );
            }
            if let Ok(response) = idp.http.get(&discovery).send().await
                && response.status().is_success()
            {
                return idp;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the test IdP did not become ready");
    }

    /// Arms a forged ID token for the next token response.
    pub async fn forge(&self, mode: &str) {
        let response = self
            .http
            .post(format!("{}/test/forge", self.issuer))
            .body(format!("{{\"mode\":\"{mode}\"}}"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    /// Rotates the signing key: every ID token from now on is signed by a
    /// new key, the only one the JWKS publishes.
    pub async fn rotate(&self) {
        let response = self
            .http
            .post(format!("{}/test/rotate", self.issuer))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    /// How many times the JWKS was fetched.
    pub async fn jwks_fetches(&self) -> u64 {
        let stats: serde_json::Value = self
            .http
            .get(format!("{}/test/stats", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["jwks"].as_u64().unwrap()
    }

    /// Changes how `user` authenticates (the `amr` the IdP reports).
    pub async fn set_amr(&self, user: &str, amr: &[&str]) {
        let body = serde_json::json!({"user": user, "amr": amr});
        let response = self
            .http
            .post(format!("{}/test/amr", self.issuer))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the test browser (tests/peers/browser.py) on `url`; with
/// `stop_prefix` it stops before requesting a URL with that prefix. Returns
/// the last URL.
pub fn browse(url: &str, stop_prefix: Option<&str>) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(peers_dir().join("browser.py")).arg(url);
    if let Some(prefix) = stop_prefix {
        cmd.arg("--stop-prefix").arg(prefix);
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .expect("running the test browser");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Like [`browse`], and also returns the value of cookie `name` the
/// browser held at the end (empty if none).
pub fn browse_for_cookie(url: &str, stop_prefix: &str, name: &str) -> (String, String) {
    let out = Command::new("python3")
        .arg(peers_dir().join("browser.py"))
        .arg(url)
        .args(["--stop-prefix", stop_prefix, "--print-cookie", name])
        .stderr(Stdio::piped())
        .output()
        .expect("running the test browser");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let last = lines.next().unwrap_or_default().to_owned();
    let cookie = lines.next().unwrap_or_default().to_owned();
    (last, cookie)
}

/// A real OpenSSH server (the machine's /usr/sbin/sshd) as an SSH target,
/// on its own port, for the `pamtest` account. It trusts the CAs written
/// to its TrustedUserCAKeys file (read on every authentication, so a
/// broker's target CA can be added after the broker started). Killed on
/// drop, with its per-connection children.
pub struct Sshd {
    pub port: u16,
    /// `ssh-ed25519 AAAA...` of its host key.
    pub host_key: String,
    pub dir: tempfile::TempDir,
    /// A CA of the test's own, trusted too, for direct connections.
    pub direct_ca: PathBuf,
    child: Child,
}

pub const SSH_LOGIN: &str = "pamtest";

impl Sshd {
    pub async fn start() -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("pam-sshd")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let keygen = |path: &Path| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ssh-keygen");
        };
        keygen(&d.join("hostkey"));
        keygen(&d.join("direct_ca"));
        std::fs::copy(d.join("direct_ca.pub"), d.join("trusted_cas")).unwrap();
        std::fs::create_dir_all(d.join("authorized_keys")).unwrap();
        let port = super::free_port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys/%u\nTrustedUserCAKeys {d}/trusted_cas\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin no\nAllowUsers {SSH_LOGIN}\nAllowTcpForwarding yes\n\
                 X11Forwarding no\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\nUseDNS no\n\
                 MaxStartups 200:30:400\nMaxSessions 100\nSubsystem sftp /usr/lib/openssh/sftp-server\n",
                d = d.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").ok();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting /usr/sbin/sshd (scripts/test installs openssh-server)");
        let host_key = std::fs::read_to_string(d.join("hostkey.pub"))
            .unwrap()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let mut sshd = Sshd {
            port,
            host_key,
            direct_ca: d.join("direct_ca"),
            dir,
            child,
        };
        for _ in 0..200 {
            if let Some(status) = sshd.child.try_wait().unwrap() {
                panic!("sshd exited with {status}: {}", sshd.log());
            }
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                use tokio::io::AsyncReadExt;
                let mut banner = [0u8; 4];
                if tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut banner))
                    .await
                    .is_ok()
                    && &banner == b"SSH-"
                {
                    return sshd;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sshd did not become ready: {}", sshd.log());
    }

    /// Trusts another user CA (OpenSSH public key line).
    pub fn trust_ca(&self, line: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("trusted_cas"))
            .unwrap();
        writeln!(file, "{}", line.trim()).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A key and a certificate for a direct connection (signed by the test's CA).
    pub fn direct_identity(&self) -> PathBuf {
        let key = self.dir.path().join("direct_user");
        if !key.exists() {
            assert!(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&key)
                    .status()
                    .unwrap()
                    .success()
            );
            assert!(
                Command::new("ssh-keygen")
                    .args(["-q", "-s"])
                    .arg(&self.direct_ca)
                    .args(["-I", "direct-test", "-n", SSH_LOGIN, "-V", "-5m:+1h"])
                    .arg(key.with_extension("pub"))
                    .status()
                    .unwrap()
                    .success()
            );
        }
        key
    }

    /// The `[127.0.0.1]:port key` known_hosts line.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_key)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Per-connection sshd processes call setsid(): kill them by parent.
        let children = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &self.child.id().to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in children.split_whitespace() {
            let _ = Command::new("kill").arg(pid).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
