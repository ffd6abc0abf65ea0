//! Break-glass logins: loud, single use per code, one answer whatever was wrong, lockout per source.

use super::*;

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
