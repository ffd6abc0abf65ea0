//! Login CSRF, replayed state, the login-failed page, reused authorization codes and PKCE.

use super::*;

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
