//! Proof of possession, revocation, lockout, the real `pam login` binary and device logins.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_only_issued_for_a_key_the_caller_holds() {
    let app = app_with_idp("").await;
    let key = pam::identity::new_client_key();
    let stranger = pam::identity::new_client_key();
    let pkce = pam::identity::oidc::pkce();
    let port = free_port();
    let start = app.url(&format!(
        "/auth/login?cli_port={port}&cli_challenge={}",
        pkce.challenge
    ));
    let prefix = format!("http://127.0.0.1:{port}/callback");
    let last = tokio::task::spawn_blocking(move || browse(&start, Some(&prefix)))
        .await
        .unwrap();
    let code = url::Url::parse(&last)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    // Ask for a certificate on the stranger's public key, proving with our own.
    let body = serde_json::json!({
        "code": code,
        "code_verifier": pkce.verifier,
        "public_key": stranger.public_key().to_openssh().unwrap(),
        "proof": pam::identity::cert::sign_proof(&key, &code).unwrap(),
    });
    let response = app
        .client
        .post(app.url("/api/v1/auth/exchange"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("proof of possession failed")
    );
    assert!(app.events("ssh_cert.issued").await.is_empty());
    assert!(
        reason_of(&app.event_details("login.failure").await[0])
            .starts_with("proof of possession failed")
    );

    // And a certificate renewal for someone else's key is refused the same way.
    let login = app.sso_login("alice").await.unwrap();
    let renewal = serde_json::json!({
        "public_key": stranger.public_key().to_openssh().unwrap(),
        "proof": pam::identity::cert::sign_proof(&key, &login.response.session_id).unwrap(),
    });
    let response = app
        .client
        .post(app.url("/api/v1/auth/cert"))
        .bearer_auth(&login.response.token)
        .json(&renewal)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let denied = app.events("ssh_cert.issued").await;
    assert_eq!(denied.last().unwrap().outcome, "denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_everywhere_at_once() {
    let app = app_with_idp("").await;
    let login = app.sso_login("bob").await.unwrap().response;
    let whoami = |token: String| {
        let client = app.client.clone();
        let url = app.url("/api/v1/auth/whoami");
        async move { client.get(url).bearer_auth(token).send().await.unwrap() }
    };
    assert_eq!(whoami(login.token.clone()).await.status(), 200);
    let logout = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&login.token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let refused = whoami(login.token.clone()).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("revoked"));
    let rejected = app.event_details("token.rejected").await;
    assert!(rejected[0]["reason"].as_str().unwrap().contains("revoked"));
    assert_eq!(app.events("token.revoked").await.len(), 1);
    assert_eq!(app.events("logout").await.len(), 1);
    // A token signed by someone else is refused too.
    let forged = whoami("eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.".into()).await;
    assert_eq!(forged.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_source_out_and_are_audited() {
    let app =
        app_with_idp("[login]\nmax_failures = 3\nfailure_window = \"15m\"\nlockout = \"30m\"\n")
            .await;
    let idp = app.idp.as_ref().unwrap();
    for _ in 0..3 {
        idp.forge("bad-signature").await;
        assert!(app.sso_login("alice").await.is_err());
    }
    // Locked now: even a good login from this address is refused before the IdP.
    let locked = app.sso_login("alice").await.err().unwrap();
    assert!(matches!(&locked, LoginFailure::Elsewhere(_)), "{locked:?}");
    let start = app
        .client
        .get(app.url(&format!(
            "/auth/login?cli_port=1234&cli_challenge={}",
            pam::identity::oidc::pkce().challenge
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 429);
    let lockouts = app.event_details("login.lockout").await;
    assert_eq!(lockouts.len(), 1);
    assert_eq!(lockouts[0]["scope"], "ip");
    assert_eq!(lockouts[0]["failures"], 3);
}

/// The real `pam login` binary, with the test browser as `$BROWSER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_login_leaves_a_working_certificate_and_status_shows_it() {
    use std::os::unix::fs::PermissionsExt;
    let app = app_with_idp("").await;
    let home = tempfile::tempdir().unwrap();
    let browser = format!("python3 {}", peers_dir().join("browser.py").display());
    let out = pam_command()
        .args(["login", "--broker", &app.base_url, "--login-hint", "carol"])
        .env("PAM_HOME", home.path())
        .env("BROWSER", &browser)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("/auth/login?cli_port="),
        "the URL is always printed: {stderr}"
    );
    assert!(stderr.contains("Logged in to"), "{stderr}");
    for (file, mode) in [
        ("id_ed25519", 0o600),
        ("id_ed25519-cert.pub", 0o600),
        ("token", 0o600),
    ] {
        let meta = std::fs::metadata(home.path().join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    // OpenSSH reads the key and certificate.
    let keygen = std::process::Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(home.path().join("id_ed25519-cert.pub"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&keygen.stdout);
    assert!(
        listing.contains("Key ID: \"carol@example.test\""),
        "{listing}"
    );
    let known_hosts = std::fs::read_to_string(home.path().join("known_hosts")).unwrap();
    assert!(known_hosts.contains("ssh-ed25519"));

    let status = pam_command()
        .args(["status", "--json"])
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["user"], "carol@example.test");
    assert_eq!(status["valid"], true);
    assert_eq!(status["mfa"], true);
    assert_eq!(status["groups"], serde_json::json!(["sre", "engineers"]));
    assert!(
        status["certificate_expires_at"]
            .as_str()
            .unwrap()
            .starts_with("20")
    );

    // The broker URL is remembered; logout revokes and removes the key.
    let logout = pam_command()
        .arg("logout")
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        logout.status.success(),
        "{}",
        String::from_utf8_lossy(&logout.stderr)
    );
    assert!(!home.path().join("id_ed25519").exists());
    let status = pam_command()
        .arg("status")
        .env("PAM_HOME", home.path())
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert_eq!(app.events("token.revoked").await.len(), 1);
}

/// `pam login --device`: the CLI prints a URL and code, a person approves
/// them in a browser elsewhere, and the CLI polls until the login completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_through_the_broker() {
    let app = app_with_idp("").await;
    let home = tempfile::tempdir().unwrap();
    let mut child = pam_command()
        .args(["login", "--device", "--broker", &app.base_url])
        .env("PAM_HOME", home.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line
                .trim()
                .strip_prefix("(or open ")
                .and_then(|l| l.split(' ').next())
            {
                let _ = tx.send(url.to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let complete = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the CLI prints the verification URL");
    tokio::task::spawn_blocking(move || browse(&complete, None))
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let output = reader.join().unwrap();
    assert!(status.success(), "{output}");
    assert!(output.contains("enter the code:"), "{output}");
    assert!(home.path().join("id_ed25519-cert.pub").exists());
    let success = app.event_details("login.success").await;
    assert_eq!(success[0]["method"], "device");
}
