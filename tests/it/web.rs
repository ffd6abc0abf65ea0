//! The audit web view: browser logins through the real IdP, the policy gate
//! on every page, CSRF, escaping, exports, chain verification, the JSON API
//! (with schemathesis against `/openapi.json`), and an end-to-end run in
//! headless Chromium (playwright-core) with the real OpenSSH client making
//! the sessions it shows.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION};

use crate::support::peers::{browse_for_cookie, peers_dir, required_env};
use crate::support::{Options, TestApp, eventually};

/// A browser's web view session.
struct Web {
    base: String,
    cookie: String,
    http: reqwest::Client,
}

impl Web {
    /// Logs `user` in through the real IdP, as a browser would.
    async fn login(app: &TestApp, user: &str) -> Web {
        let base = app.base_url.clone();
        let start = format!("{base}/ui/login?login_hint={user}&next=/ui/logins");
        let stop = format!("{base}/ui/logins");
        let (last, cookie) =
            tokio::task::spawn_blocking(move || browse_for_cookie(&start, &stop, "pam_web"))
                .await
                .unwrap();
        assert!(last.starts_with(&format!("{base}/ui/logins")), "{last}");
        assert!(!cookie.is_empty(), "no web session cookie after login");
        Web {
            base,
            cookie,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, format!("pam_web={}", self.cookie))
            .send()
            .await
            .unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.text().await.unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, format!("pam_web={}", self.cookie))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// The CSRF token the pages embed in their forms.
    async fn csrf(&self) -> String {
        let page = self.page("/ui/logins").await;
        let at = page
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &page[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

async fn app() -> TestApp {
    TestApp::spawn_with(Options {
        idp: true,
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_web_login_and_the_view_audit_permission() {
    let app = app().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // No cookie: off to the login page, remembering where we were going.
    let anonymous = http.get(app.url("/ui/sessions")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous.headers()[LOCATION],
        "/ui/login?next=%2Fui%2Fsessions"
    );
    // An open redirect through `next` is refused.
    let evil = http
        .get(app.url("/ui/login?next=//evil.example/ui/"))
        .send()
        .await
        .unwrap();
    let location = evil.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(!location.contains("evil.example"), "{location}");

    // erin (auditors) sees the login history, her own login in it.
    let erin = Web::login(&app, "erin").await;
    let response = erin.get("/ui/logins").await;
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("erin@example.test"), "{page}");
    assert!(page.contains("(web)"), "web logins are marked");
    // Her viewing is audited, with what she looked at.
    let views = app.event_details("audit.view").await;
    assert!(views.iter().any(|v| v["view"] == "logins"), "{views:?}");
    let decisions = app.event_details("policy.decision").await;
    assert!(
        decisions
            .iter()
            .any(|d| d["action"] == "view_audit" && d["decision"] == "allow"),
        "{decisions:?}"
    );

    // The web cookie is no API token, and an API token is no web cookie.
    let as_bearer = http
        .get(app.url("/api/v1/auth/whoami"))
        .bearer_auth(&erin.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(as_bearer.status(), StatusCode::UNAUTHORIZED);
    let cli = app.sso_login("erin").await.expect("CLI login");
    let as_cookie = http
        .get(app.url("/ui/logins"))
        .header(COOKIE, format!("pam_web={}", cli.response.token))
        .send()
        .await
        .unwrap();
    assert_eq!(as_cookie.status(), StatusCode::SEE_OTHER);

    // bob (engineers) may not read the trail: 403, and the denial is audited.
    let bob = Web::login(&app, "bob").await;
    for path in ["/ui/logins", "/ui/sessions", "/ui/events", "/ui/verify"] {
        let response = bob.get(path).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let export = bob.get("/ui/export?view=logins&format=csv").await;
    assert_eq!(export.status(), StatusCode::FORBIDDEN);
    let denials = app.event_details("policy.decision").await;
    assert!(
        denials
            .iter()
            .any(|d| d["action"] == "view_audit" && d["decision"] == "deny"),
        "{denials:?}"
    );
    assert!(app.events("audit.export").await.is_empty());

    // Logging out ends the web session at once.
    let csrf = erin.csrf().await;
    let out = erin.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(erin.get("/ui/logins").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_the_csrf_token_are_refused_and_audited() {
    let app = app().await;
    let alice = Web::login(&app, "alice").await;
    let forged = alice
        .post(
            "/ui/sessions/0194c1a2-0000-7000-8000-000000000000/terminate",
            &[("reason", "forged"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let wrong = alice.post("/ui/logout", &[("csrf", "not-the-token")]).await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    // Still logged in: the forged logout did nothing.
    assert_eq!(alice.get("/ui/logins").await.status(), StatusCode::OK);
    let rejected = app.event_details("token.rejected").await;
    assert_eq!(
        rejected
            .iter()
            .filter(|d| d["reason"] == "missing or wrong CSRF token")
            .count(),
        2,
        "{rejected:?}"
    );
    // With the token but without a reason or confirmation, nothing happens.
    let csrf = alice.csrf().await;
    let unconfirmed = alice
        .post(
            "/ui/sessions/0194c1a2-0000-7000-8000-000000000000/terminate",
            &[("csrf", csrf.as_str()), ("reason", "")],
        )
        .await;
    assert_eq!(unconfirmed.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_filtered_views_and_are_audited() {
    let app = app().await;
    let _ = app.sso_login("bob").await.expect("bob logs in");
    let erin = Web::login(&app, "erin").await;
    let csv = erin.get("/ui/export?view=logins&format=csv").await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert_eq!(csv.headers()[CONTENT_TYPE], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("seq,id,time,kind,actor,source_ip,target,session_id,outcome,details")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(rows.iter().any(|r| r.contains("bob@example.test")));
    assert!(rows.iter().all(|r| r.contains(",login.")), "{rows:?}");
    // Filtered to one user, as JSON lines.
    let jsonl = erin
        .page("/ui/export?view=logins&format=jsonl&user=bob@example.test")
        .await;
    let events: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["actor"] == "bob@example.test"));
    let sessions = erin.page("/ui/export?view=sessions&format=csv").await;
    assert!(sessions.starts_with("id,kind,user,target"));
    // Bad parameters are a clear 400, not a server error, and export nothing.
    let bad = erin.get("/ui/export?view=logins&format=xlsx").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad = erin.get("/ui/export?view=logins&since=last-tuesday").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let exports = app.event_details("audit.export").await;
    assert_eq!(exports.len(), 3, "{exports:?}");
    assert_eq!(exports[1]["filters"]["user"], "bob@example.test");
    assert_eq!(exports[1]["format"], "jsonl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_page_verifies_and_shows_a_break_in_red() {
    let app = app().await;
    let erin = Web::login(&app, "erin").await;
    let csrf = erin.csrf().await;
    let page = run_verification(&erin, &csrf).await;
    assert!(page.contains("intact"), "{page}");
    assert!(!page.contains("BROKEN"), "{page}");

    // Someone edits an event in the database behind the broker's back.
    let db = app.db().await;
    let statement = "UPDATE audit_events SET details = '{\"forged\":true}' WHERE seq = 2";
    match db.pool() {
        pam::store::Pool::Sqlite(pool) => {
            sqlx::query(statement).execute(pool).await.unwrap();
        }
        pam::store::Pool::Postgres(pool) => {
            sqlx::query(statement).execute(pool).await.unwrap();
        }
    }
    db.close().await;
    let page = run_verification(&erin, &csrf).await;
    assert!(page.contains("BROKEN"), "{page}");
    assert!(
        page.contains("class=\"problem\"") && page.contains("at event 2"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_reads_the_trail_for_auditors_only() {
    let app = app().await;
    let erin = app.sso_login("erin").await.expect("erin logs in");
    let bob = app.sso_login("bob").await.expect("bob logs in");
    let http = reqwest::Client::new();
    let get =
        |token: &str, path: &str| http.get(app.url(path)).bearer_auth(token.to_owned()).send();
    let logins: serde_json::Value = get(&erin.response.token, "/api/v1/audit/logins?limit=1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(logins["events"].as_array().unwrap().len(), 1);
    let cursor = logins["next_before"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let older: serde_json::Value = get(
        &erin.response.token,
        &format!("/api/v1/audit/logins?limit=1&before={cursor}"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(
        older["events"][0]["seq"].as_i64().unwrap() < cursor.parse::<i64>().unwrap(),
        "{older}"
    );
    let denied = get(&bob.response.token, "/api/v1/audit/events")
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let verify: serde_json::Value = get(&erin.response.token, "/api/v1/audit/verify")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    // Recording ids cannot walk the file system.
    for path in [
        "/api/v1/sessions/..%2F..%2Fetc%2Fpasswd/recording",
        "/api/v1/sessions/not-a-session/recording",
    ] {
        let r = get(&erin.response.token, path).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let spec: serde_json::Value = http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["paths"]["/api/v1/audit/events"]["get"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() {
    let app = app().await;
    let erin = app.sso_login("erin").await.expect("erin logs in");
    let st = std::path::Path::new(&required_env("PAM_TEST_PEERS_DIR")).join("st-venv/bin/st");
    let out = tokio::process::Command::new(st)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--checks", "not_a_server_error"])
        .args(["--max-examples", "30"])
        .args(["--exclude-path", "/api/v1/auth/logout"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", erin.response.token),
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // It keeps a cache in the working directory: not in the project.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("No operations"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_logs_in_replays_terminates_and_exports() {
    let w = crate::ssh::world("bob").await;
    // A finished session whose output holds markup that must stay text.
    let out = w
        .ssh("web-dev")
        .arg("echo hello-from-pam; echo '<script>window.pwned=1</script><b>bold?</b>'")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let finished = ended_session(&w.app).await;
    // The session page escapes it (server side).
    let alice = Web::login(&w.app, "alice").await;
    let page = alice.page(&format!("/ui/sessions/{finished}")).await;
    assert!(
        page.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>window.pwned"), "{page}");

    // A live session for the browser to terminate.
    let mut live = w
        .ssh("web-dev")
        .arg("sleep 120")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            w.app.events("session.start").await.len() == 2
        })
        .await
    );
    let live_id = w.app.events("session.start").await[1]
        .session_id
        .clone()
        .unwrap();

    let artifacts = artifacts_dir();
    let node_dir = std::path::Path::new(&required_env("PAM_TEST_PEERS_DIR")).join("node");
    let run = tokio::process::Command::new("node")
        .arg(peers_dir().join("web-e2e.mjs"))
        .env("PEERS_NODE_DIR", &node_dir)
        .env("BASE_URL", &w.app.base_url)
        .env("LOGIN_HINT", "alice")
        .env("FINISHED_SESSION", &finished)
        .env("LIVE_SESSION", &live_id)
        .env("ARTIFACTS", &artifacts)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "web-e2e failed:\n{stdout}\n{stderr}");
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a result line"))
            .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["cookie"]["httpOnly"], true, "{result}");
    assert_eq!(result["cookie"]["sameSite"], "Lax", "{result}");
    assert_eq!(result["loginFound"], true, "{result}");
    assert!(
        result["replayText"]
            .as_str()
            .unwrap()
            .contains("hello-from-pam"),
        "{result}"
    );
    assert!(
        result["replayText"]
            .as_str()
            .unwrap()
            .contains("<script>window.pwned=1</script>"),
        "the markup shows as text: {result}"
    );
    assert_eq!(result["pwned"], false, "{result}");
    assert_eq!(result["terminatedStatus"], "ended", "{result}");
    assert!(
        result["csv"]
            .as_str()
            .unwrap()
            .starts_with("seq,id,time,kind"),
        "{result}"
    );
    assert_eq!(result["cspViolations"], serde_json::json!([]), "{result}");
    assert_eq!(result["notFound"], serde_json::json!([]), "{result}");
    for shot in ["logins", "sessions", "session", "terminated", "verify"] {
        assert!(
            artifacts.join(format!("{shot}.png")).exists(),
            "screenshot {shot}"
        );
    }

    // The terminated session really ended, by alice, with her reason.
    let status = tokio::time::timeout(Duration::from_secs(20), live.wait())
        .await
        .expect("the ssh client exits")
        .unwrap();
    assert!(!status.success());
    let ends = w.app.event_details("session.end").await;
    let end = ends
        .iter()
        .find(|d| d["end_reason"] == "terminated")
        .unwrap_or_else(|| panic!("{ends:?}"));
    assert!(
        end["message"]
            .as_str()
            .unwrap()
            .starts_with("session terminated by alice@example.test: "),
        "{end}"
    );
    assert_eq!(w.app.events("audit.export").await.len(), 1);
}

/// The id of the first session that ended (its end is recorded just after
/// the client sees the exit).
async fn ended_session(app: &TestApp) -> String {
    assert!(
        eventually(Duration::from_secs(20), || async {
            !app.events("session.end").await.is_empty()
        })
        .await
    );
    app.events("session.end").await[0]
        .session_id
        .clone()
        .unwrap()
}

/// Starts a full chain verification from the web view and waits for it.
async fn run_verification(web: &Web, csrf: &str) -> String {
    let started = web.post("/ui/verify", &[("csrf", csrf)]).await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let mut page = String::new();
    for _ in 0..100 {
        page = web.page("/ui/verify").await;
        if !page.contains("Running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page
}

/// Where screenshots go: `$PAM_TEST_ARTIFACTS`, else `test-artifacts/web`
/// under the cargo target dir.
pub(crate) fn artifacts_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("PAM_TEST_ARTIFACTS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(|t| std::path::PathBuf::from(t).join("test-artifacts"))
        })
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts")
        })
        .join("web");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_trail_through_the_broker() {
    let w = crate::ssh::world("bob").await;
    let out = w
        .ssh("web-dev")
        .arg("echo cli-replay-42")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let session = ended_session(&w.app).await;
    let home = tempfile::tempdir().unwrap();
    let pam = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(crate::support::pam_bin());
        cmd.args(args)
            .env("PAM_HOME", home.path())
            .env_remove("PAM_CONFIG")
            .current_dir(home.path())
            .stdin(Stdio::null());
        cmd
    };
    // Before logging in: one clear line.
    let out = pam(&["audit", "logins"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pam login"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::support::cli_login(&w.app, home.path(), "erin").await;
    let text = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let logins = text(
        &pam(&["audit", "logins", "--user", "bob@example.test"])
            .output()
            .await
            .unwrap(),
    );
    assert!(
        logins.contains("bob@example.test") && logins.contains("success"),
        "{logins}"
    );
    assert!(!logins.contains("erin@example.test"), "{logins}");
    let sessions = text(
        &pam(&["audit", "sessions", "--json"])
            .output()
            .await
            .unwrap(),
    );
    let first: serde_json::Value = serde_json::from_str(sessions.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], session.as_str());
    let events = text(
        &pam(&["audit", "events", "--kind", "ssh.exec", "--json"])
            .output()
            .await
            .unwrap(),
    );
    assert!(events.contains("cli-replay-42"), "{events}");
    let played = text(
        &pam(&["audit", "play", &session, "--speed", "100"])
            .output()
            .await
            .unwrap(),
    );
    assert!(played.contains("cli-replay-42"), "{played}");
    let verified = text(&pam(&["audit", "verify"]).output().await.unwrap());
    assert!(verified.starts_with("ok:"), "{verified}");
    // Every one of those reads is in the trail.
    let views = w.app.event_details("audit.view").await;
    for view in ["api:logins", "api:events", "recording", "api:verify"] {
        assert!(views.iter().any(|v| v["view"] == view), "{view}: {views:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_accounts_log_in_to_the_web_view_loudly() {
    // No IdP configured: /ui/login shows the break-glass form.
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
    let (password, secret) = (field("password:"), field("TOTP secret:"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(app.url("/ui/login?next=/ui/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let set_cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    let login_cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = form.text().await.unwrap();
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = page[at..at + page[at..].find('"').unwrap()].to_owned();
    let post = |fields: Vec<(&'static str, String)>, cookie: Option<String>| {
        let mut request = http.post(app.url("/ui/login/breakglass")).form(&fields);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send()
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let code = pam::identity::breakglass::current_code(&secret, now).unwrap();
    let fields = |password: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("username", "ops".to_owned()),
            ("password", password.to_owned()),
            ("totp", code.clone()),
            ("next", "/ui/events".to_owned()),
        ]
    };
    // A cross-site POST (no login cookie) is refused.
    let forged = post(fields(&password), None).await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    // A wrong password is a clear 401 and a login.failure.
    let wrong = post(fields("nope"), Some(login_cookie.clone()))
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("login-error"));
    let ok = post(fields(&password), Some(login_cookie)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()[LOCATION], "/ui/events");
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        cookie.contains("Secure"),
        "not --dev: the cookie is Secure: {cookie}"
    );
    let web = Web {
        base: app.base_url.clone(),
        cookie: cookie
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("pam_web=")
            .to_owned(),
        http: http.clone(),
    };
    // Break-glass may do anything; its use is flagged on the pages.
    let page = web.page("/ui/events").await;
    assert!(
        page.contains("class=\"outcome-success breakglass\""),
        "{page}"
    );
    let used = app.event_details("breakglass.used").await;
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["client"], "web");
    let failures = app.event_details("login.failure").await;
    assert!(
        failures.iter().any(|f| f["reason"] == "wrong password"),
        "{failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_audited() {
    let trusted = TestApp::spawn_with(Options {
        env: [(
            "PAM_SERVER__TRUSTED_PROXIES".to_owned(),
            r#"["127.0.0.0/8"]"#.to_owned(),
        )]
        .into_iter()
        .collect(),
        ..Options::default()
    })
    .await;
    let plain = TestApp::spawn().await;
    let http = reqwest::Client::new();
    for app in [&trusted, &plain] {
        let r = http
            .get(app.url("/api/v1/auth/whoami"))
            .bearer_auth("not-a-token")
            .header("x-forwarded-for", "192.0.2.1, 198.51.100.7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let seen = |events: Vec<pam::domain::audit::EventRecord>| {
        events[0].source_ip.clone().unwrap_or_default()
    };
    // From a trusted proxy: the right-most untrusted hop, not the forgeable left part.
    assert_eq!(seen(trusted.events("token.rejected").await), "198.51.100.7");
    // Without trusted proxies the header is ignored.
    assert_eq!(seen(plain.events("token.rejected").await), "127.0.0.1");
}
