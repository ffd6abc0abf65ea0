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
        let node_dir = Path::new(&required_env("PAM_TEST_PEERS_DIR")).join("node");
        let port = super::free_port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("pam-idp-{port}.log")))
            .unwrap();
        let child = Command::new("node")
            .arg(peers_dir().join("idp-server.mjs"))
            .env("IDP_DIR", &node_dir)
            .env("IDP_PORT", port.to_string())
            .env("IDP_CLIENT_ID", IDP_CLIENT_ID)
            .env("IDP_CLIENT_SECRET", IDP_CLIENT_SECRET)
            .env("IDP_REDIRECT_URIS", redirect_uri)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting node (the test IdP)");
        let mut idp = Idp {
            issuer: format!("http://127.0.0.1:{port}"),
            child,
            http: reqwest::Client::new(),
        };
        let discovery = format!("{}/.well-known/openid-configuration", idp.issuer);
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
