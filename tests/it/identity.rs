//! Identity against a real OIDC provider (npm `oidc-provider`): browser and
//! device logins, the real `pam login` binary, groups, MFA, forged tokens,
//! replays, revocation, proof of possession, lockout, break-glass. Every
//! attempt must land in the login history.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use pam::web::browser::PRE_LOGIN_COOKIE;

use crate::support::peers::{browse, browse_for_cookie, peers_dir};
use crate::support::{LoginFailure, Options, TestApp, free_port, pam_command};

async fn app_with_idp(extra: &str) -> TestApp {
    TestApp::spawn_with(Options {
        idp: true,
        toml: extra.to_owned(),
        ..Options::default()
    })
    .await
}

fn reason_of(details: &serde_json::Value) -> String {
    details["reason"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_issues_a_token_a_certificate_and_a_history_entry() {
    let app = app_with_idp("").await;
    let login = app.sso_login("alice").await.expect("login");
    let r = &login.response;
    assert_eq!(r.user, "alice@example.test");
    assert_eq!(r.groups, ["pam-admins", "engineers"]);
    assert!(r.mfa, "alice signs in with a second factor");
    assert_eq!(r.amr, ["pwd", "otp"]);

    // The certificate is for our key, names the user, and ends with the session.
    let cert = russh::keys::ssh_key::Certificate::from_openssh(&r.certificate).unwrap();
    assert_eq!(cert.key_id(), "alice@example.test");
    assert_eq!(cert.public_key(), login.key.public_key().key_data());
    let expires = time::OffsetDateTime::parse(
        &r.expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(cert.valid_before() as i64 <= expires.unix_timestamp());
    assert!(!cert.extensions().contains_key("permit-port-forwarding"));
    let ca = app
        .client
        .get(app.url("/api/v1/ca/ssh_user.pub"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ca = russh::keys::ssh_key::PublicKey::from_openssh(ca.trim()).unwrap();
    assert!(
        cert.validate([&ca.fingerprint(russh::keys::ssh_key::HashAlg::Sha256)])
            .is_ok()
    );
    assert!(
        r.known_hosts
            .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", app.ssh.port()))
    );

    // The token works against the API.
    let whoami: serde_json::Value = app
        .client
        .get(app.url("/api/v1/auth/whoami"))
        .bearer_auth(&r.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["user"], "alice@example.test");

    let success = app.events("login.success").await;
    assert_eq!(success.len(), 1);
    assert_eq!(success[0].actor.as_deref(), Some("alice@example.test"));
    assert_eq!(success[0].source_ip.as_deref(), Some("127.0.0.1"));
    let details: serde_json::Value = serde_json::from_str(&success[0].details).unwrap();
    assert_eq!(details["idp_subject"], "alice");
    assert_eq!(details["amr"], serde_json::json!(["pwd", "otp"]));
    assert_eq!(details["method"], "sso");
    assert_eq!(app.events("token.issued").await.len(), 1);
    assert_eq!(app.events("ssh_cert.issued").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_come_from_the_groups_claim() {
    let app = app_with_idp("").await;
    let carol = app.sso_login("carol").await.expect("login").response;
    assert_eq!(carol.groups, ["sre", "engineers"]);
    let dave = app.sso_login("dave").await.expect("login").response;
    assert_eq!(dave.groups, ["analysts"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_is_required_when_configured() {
    let app = app_with_idp("[oidc]\nrequire_mfa = true\n").await;
    let refused = app
        .sso_login("bob")
        .await
        .err()
        .expect("bob has no second factor");
    assert!(
        matches!(&refused, LoginFailure::Redirected(m) if m.contains("mfa required")),
        "{refused:?}"
    );
    assert!(app.sso_login("alice").await.is_ok());
    assert!(
        app.sso_login("carol").await.is_ok(),
        "hwk counts as a second factor"
    );
    let failures = app.event_details("login.failure").await;
    assert_eq!(failures.len(), 1);
    assert_eq!(reason_of(&failures[0]), "mfa required");
    assert_eq!(
        app.events("login.failure").await[0].actor.as_deref(),
        Some("bob@example.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_email_the_idp_says_is_verified_names_a_user() {
    let app = app_with_idp("").await;
    for user in ["unverified", "silent"] {
        let refused = app
            .sso_login(user)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user}'s email is not verified"));
        assert!(
            matches!(&refused, LoginFailure::Redirected(m) if m.contains("verified")),
            "{user}: {refused:?}"
        );
    }
    app.sso_login("alice")
        .await
        .expect("a verified email logs in");
    let reasons: Vec<String> = app
        .event_details("login.failure")
        .await
        .iter()
        .map(reason_of)
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("not verified"), "{reasons:?}");
    assert!(reasons[1].contains("email_verified"), "{reasons:?}");
    assert!(app.events("login.success").await.len() == 1);

    // An IdP that never sends the claim: the operator opts out; an explicit
    // `false` is still refused.
    let lenient = app_with_idp("[oidc]\nrequire_email_verified = false\n").await;
    let silent = lenient.sso_login("silent").await.expect("opted out");
    assert_eq!(silent.response.user, "silent@example.test");
    assert!(lenient.sso_login("unverified").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_invalid_id_tokens_are_refused_and_audited() {
    let app = app_with_idp("").await;
    let idp = app.idp.as_ref().unwrap();
    let cases = [
        ("bad-signature", "bad signature"),
        ("alg-none", "alg"),
        ("hs256-pubkey", "HS256"),
        ("expired", "expired"),
        ("future-iat", "issued in the future"),
        ("wrong-aud", "wrong audience"),
        ("wrong-iss", "wrong issuer"),
        ("unknown-kid", "unknown signing key"),
        ("wrong-nonce", "wrong nonce"),
    ];
    for (mode, _) in cases {
        idp.forge(mode).await;
        let refused = app.sso_login("alice").await;
        assert!(
            matches!(&refused, Err(LoginFailure::Redirected(_))),
            "{mode}: expected a refusal, got {:?}",
            refused.as_ref().map(|l| &l.response.user)
        );
    }
    let failures = app.event_details("login.failure").await;
    assert_eq!(failures.len(), cases.len(), "{failures:#?}");
    for ((mode, needle), details) in cases.iter().zip(&failures) {
        let reason = reason_of(details);
        assert!(reason.starts_with("invalid_id_token"), "{mode}: {reason}");
        assert!(
            reason.to_lowercase().contains(&needle.to_lowercase()),
            "{mode}: {reason}"
        );
    }
    assert!(app.events("login.success").await.is_empty());
    assert!(app.events("token.issued").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_key_is_fetched_from_the_jwks() {
    let app = app_with_idp("").await;
    app.sso_login("alice")
        .await
        .expect("first login caches the JWKS");
    app.idp.as_ref().unwrap().forge("rotate-key").await;
    app.sso_login("alice")
        .await
        .expect("a token signed with a key published after discovery is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_finishes_only_in_the_browser_that_started_it() {
    let app = app_with_idp("").await;
    let no_redirects = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    // The attacker logs in as themselves up to the IdP's redirect back,
    // and makes the victim's browser follow it (a link, an image, a form).
    for start in [
        "/ui/login?next=/ui/logins",
        "/auth/login?cli_port=4242&cli_challenge=CHALLENGE",
    ] {
        let start = app.url(&start.replace("CHALLENGE", &pam::identity::oidc::pkce().challenge));
        let prefix = app.url("/auth/callback");
        let (attackers_callback, _) = tokio::task::spawn_blocking(move || {
            browse_for_cookie(&start, &prefix, PRE_LOGIN_COOKIE)
        })
        .await
        .unwrap();
        assert!(attackers_callback.contains("code="), "{attackers_callback}");
        // The victim's browser: one with a pre-login cookie of its own, and
        // one with none.
        let victim = no_redirects();
        let own = victim
            .get(app.url("/ui/login?next=/ui/"))
            .send()
            .await
            .unwrap();
        let victims_cookie = own
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{PRE_LOGIN_COOKIE}=")))
            .and_then(|v| v.split(';').next())
            .expect("a login start sets the pre-login cookie")
            .to_owned();
        for cookie in [Some(victims_cookie.as_str()), None] {
            let mut request = victim.get(&attackers_callback);
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{attackers_callback}");
            assert!(
                response
                    .headers()
                    .get_all("set-cookie")
                    .iter()
                    .all(|v| !v.to_str().unwrap().starts_with("pam_web=")),
                "no web session for the victim"
            );
            let page = response.text().await.unwrap();
            assert!(page.contains("another browser"), "{page}");
        }
    }
    let failures = app.event_details("login.failure").await;
    assert_eq!(failures.len(), 4, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| reason_of(f) == "login state from another browser"),
        "{failures:?}"
    );
    assert!(app.events("login.success").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_state_is_refused() {
    let app = app_with_idp("").await;
    let pkce = pam::identity::oidc::pkce();
    let start = app.url(&format!(
        "/auth/login?cli_port={}&cli_challenge={}",
        free_port(),
        pkce.challenge
    ));
    let callback_prefix = app.url("/auth/callback");
    let (callback, browser) = tokio::task::spawn_blocking(move || {
        browse_for_cookie(&start, &callback_prefix, PRE_LOGIN_COOKIE)
    })
    .await
    .unwrap();
    assert!(callback.contains("state="), "{callback}");
    let same_browser = format!("{PRE_LOGIN_COOKIE}={browser}");
    let first = app
        .client
        .get(&callback)
        .header("cookie", &same_browser)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 303, "the first use redirects to the CLI");
    let second = app
        .client
        .get(&callback)
        .header("cookie", &same_browser)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 401);
    let page = second.text().await.unwrap();
    assert!(page.contains("replayed state"), "{page}");
    let failures = app.event_details("login.failure").await;
    assert_eq!(reason_of(failures.last().unwrap()), "replayed state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_failed_page_is_a_page_like_every_other_and_shows_hostile_text_as_text() {
    let app = app_with_idp("").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = http
        .get(app.url("/ui/login?next=/ui/logins"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 303);
    let location = start.headers()["location"].to_str().unwrap();
    let state = url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    // Whatever cookies the start set go back with the callback.
    let cookies: Vec<String> = start
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect();
    let hostile = "<script>alert(1)</script>\"'&";
    let mut callback = url::Url::parse(&app.url("/auth/callback")).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("state", &state)
        .append_pair("error", hostile);
    let response = http
        .get(callback.as_str())
        .header("cookie", cookies.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let page = response.text().await.unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html><html lang=\"en\">"),
        "{page}"
    );
    assert!(page.contains("/ui/static/app.css"), "{page}");
    assert!(!page.contains("<script>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_authorization_code_is_refused_by_the_idp_and_audited() {
    let app = app_with_idp("").await;
    let callback_of = |app: &TestApp| {
        let pkce = pam::identity::oidc::pkce();
        let start = app.url(&format!(
            "/auth/login?cli_port={}&cli_challenge={}",
            free_port(),
            pkce.challenge
        ));
        let prefix = app.url("/auth/callback");
        move || browse_for_cookie(&start, &prefix, PRE_LOGIN_COOKIE)
    };
    let (first, browser) = tokio::task::spawn_blocking(callback_of(&app))
        .await
        .unwrap();
    let same_browser = format!("{PRE_LOGIN_COOKIE}={browser}");
    let first_response = app
        .client
        .get(&first)
        .header("cookie", &same_browser)
        .send()
        .await
        .unwrap();
    assert_eq!(first_response.status(), 303);
    let first_code = url::Url::parse(&first)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    // A second login presents the first login's (spent) code with its own state.
    let (second, browser) = tokio::task::spawn_blocking(callback_of(&app))
        .await
        .unwrap();
    let same_browser = format!("{PRE_LOGIN_COOKIE}={browser}");
    let mut replay = url::Url::parse(&second).unwrap();
    let state = replay
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    replay
        .query_pairs_mut()
        .clear()
        .append_pair("state", &state)
        .append_pair("code", &first_code);
    let response = app
        .client
        .get(replay.as_str())
        .header("cookie", &same_browser)
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("error=access_denied"), "{location}");
    let failures = app.event_details("login.failure").await;
    assert!(
        reason_of(failures.last().unwrap()).contains("invalid_grant"),
        "{failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_time_code_needs_the_right_pkce_verifier_and_is_spent_once() {
    let app = app_with_idp("").await;
    // Walk the browser leg by hand to keep the code.
    let key = pam::identity::new_client_key();
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

    let wrong = pam::identity::oidc::pkce();
    let refused = app
        .exchange(&key, &code, &wrong.verifier)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&refused, LoginFailure::Exchange(401, m) if m.contains("wrong PKCE verifier")),
        "{refused:?}"
    );
    // The wrong verifier burnt the code: even the right one fails now.
    let refused = app
        .exchange(&key, &code, &pkce.verifier)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&refused, LoginFailure::Exchange(401, m) if m.contains("reused login code")),
        "{refused:?}"
    );
    let reasons: Vec<String> = app
        .event_details("login.failure")
        .await
        .iter()
        .map(reason_of)
        .collect();
    assert_eq!(reasons, ["wrong PKCE verifier", "reused login code"]);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_login_is_loud_and_single_use_per_code() {
    let app = TestApp::spawn().await;
    let out = app
        .pam()
        .args(["admin", "breakglass", "add", "ops"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let password = field("password:");
    let secret = field("TOTP secret:");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let code = pam::identity::breakglass::current_code(&secret, now).unwrap();

    let home = tempfile::tempdir().unwrap();
    let login = |password: &str, code: &str| {
        pam_command()
            .args(["login", "--broker", &app.base_url, "--break-glass", "ops"])
            .env("PAM_HOME", home.path())
            .env("PAM_BREAKGLASS_PASSWORD", password)
            .env("PAM_BREAKGLASS_TOTP", code)
            .output()
            .unwrap()
    };
    let wrong = login("not-the-password", &code);
    assert!(!wrong.status.success());
    let ok = login(&password, &code);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stderr).contains("BREAK-GLASS"));
    let replay = login(&password, &code);
    assert!(!replay.status.success(), "a TOTP code is accepted once");

    let used = app.events("breakglass.used").await;
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].actor.as_deref(), Some("ops@breakglass"));
    let reasons: Vec<String> = app
        .event_details("login.failure")
        .await
        .iter()
        .map(reason_of)
        .collect();
    assert_eq!(reasons, ["wrong password", "TOTP code already used"]);
    let success = app.event_details("login.success").await;
    assert_eq!(success[0]["method"], "breakglass");
    assert_eq!(
        success[0]["groups"],
        serde_json::json!(["pam-admins", "breakglass"])
    );
    let change = app.event_details("admin.change").await;
    assert_eq!(change[0]["change"], "breakglass.add");
}

/// Adds break-glass account `name`; returns its password and TOTP secret.
fn add_breakglass(app: &TestApp, name: &str) -> (String, String) {
    let out = app
        .pam()
        .args(["admin", "breakglass", "add", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap()
            .trim()
            .to_owned()
    };
    (field("password:"), field("TOTP secret:"))
}

fn totp_now(secret: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    pam::identity::breakglass::current_code(secret, now).unwrap()
}

/// A JSON break-glass login from `source` (a loopback address of the
/// machine): the HTTP status and the whole body.
async fn breakglass_from(
    app: &TestApp,
    source: [u8; 4],
    username: &str,
    password: &str,
    totp: &str,
) -> (u16, String) {
    let key = pam::identity::new_client_key();
    let proof = pam::identity::cert::sign_proof(&key, &format!("breakglass:{username}")).unwrap();
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .build()
        .unwrap();
    let response = client
        .post(app.url("/api/v1/auth/breakglass"))
        .json(&serde_json::json!({
            "username": username,
            "password": password,
            "totp": totp,
            "public_key": key.public_key().to_openssh().unwrap(),
            "proof": proof,
        }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_answers_never_tell_which_part_was_wrong() {
    let app = TestApp::spawn().await;
    let (password, secret) = add_breakglass(&app, "ops");
    let (_, other_secret) = add_breakglass(&app, "spare");
    let code = totp_now(&secret);
    let wrong_code = totp_now(&other_secret);
    let wrong_code = if wrong_code == code {
        format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
    } else {
        wrong_code
    };
    let source = [127, 0, 0, 1];
    let unknown = breakglass_from(&app, source, "nobody", &password, &code).await;
    let wrong_password = breakglass_from(&app, source, "ops", "not-the-password", &code).await;
    let wrong_totp = breakglass_from(&app, source, "ops", &password, &wrong_code).await;
    let ok = breakglass_from(&app, source, "ops", &password, &code).await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    let reused = breakglass_from(&app, source, "ops", &password, &code).await;
    assert_eq!(unknown.0, 401, "{}", unknown.1);
    for (what, answer) in [
        ("a wrong password", &wrong_password),
        ("a wrong TOTP code", &wrong_totp),
        ("a reused TOTP code", &reused),
    ] {
        assert_eq!(
            answer, &unknown,
            "{what} is answered exactly like an unknown account"
        );
    }
    // The web view's form says no more.
    let form = app
        .client
        .get(app.url("/ui/login?breakglass=1"))
        .send()
        .await
        .unwrap();
    let csrf_cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("pam_login_csrf="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let mut pages = Vec::new();
    for (username, password) in [("nobody", password.as_str()), ("ops", "not-the-password")] {
        let page = app
            .client
            .post(app.url("/ui/login/breakglass"))
            .header("cookie", format!("pam_login_csrf={csrf_cookie}"))
            .form(&[
                ("csrf", csrf_cookie.as_str()),
                ("username", username),
                ("password", password),
                ("totp", code.as_str()),
                ("next", "/ui/"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 401);
        let text = page.text().await.unwrap();
        pages.push(text.replace(&csrf_cookie, ""));
    }
    // The form carries a fresh CSRF token each time; the rest is the same.
    let strip = |page: &str| {
        let mut out = String::new();
        for part in page.split("value=\"") {
            out.push_str(part.split_once('"').map(|(_, rest)| rest).unwrap_or(part));
        }
        out
    };
    assert_eq!(strip(&pages[0]), strip(&pages[1]));

    // The detail is in the audit trail, for the people investigating.
    let reasons: Vec<String> = app
        .event_details("login.failure")
        .await
        .iter()
        .map(reason_of)
        .collect();
    assert_eq!(
        reasons,
        [
            "unknown break-glass account",
            "wrong password",
            "wrong TOTP code",
            "TOTP code already used",
            "unknown break-glass account",
            "wrong password",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_elsewhere_cannot_lock_the_responder_out_of_break_glass() {
    let app = TestApp::spawn_with(Options {
        toml: "[login]\nmax_failures = 3\n".into(),
        ..Options::default()
    })
    .await;
    let (password, secret) = add_breakglass(&app, "ops");
    // An attacker at another address guesses until locked out.
    let attacker = [127, 0, 0, 2];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            breakglass_from(&app, attacker, "ops", "guess", "000000")
                .await
                .0,
        );
    }
    assert_eq!(statuses, [401, 401, 429], "the third failure locks");
    let (status, body) =
        breakglass_from(&app, attacker, "ops", &password, &totp_now(&secret)).await;
    assert_eq!(status, 429, "the attacker's source is locked: {body}");
    // The responder, elsewhere, still gets in.
    let (status, body) =
        breakglass_from(&app, [127, 0, 0, 3], "ops", &password, &totp_now(&secret)).await;
    assert_eq!(status, 200, "{body}");
    let lockouts = app.event_details("login.lockout").await;
    assert!(!lockouts.is_empty());
    assert!(
        lockouts
            .iter()
            .all(|l| l["key"].as_str().unwrap_or_default().contains("127.0.0.2")),
        "{lockouts:?}"
    );
}
