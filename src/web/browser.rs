//! The web view's browser session: the `pam_web` cookie (a broker token of
//! the web audience, `HttpOnly`, `SameSite=Lax`, `Secure` outside `--dev`),
//! the CSRF token derived from it, and the login/logout routes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Deps;
use super::auth::client;
use crate::domain::audit::{AuditEvent, EventKind, Outcome, now_us};
use crate::domain::principal::Principal;
use crate::identity::{AuthError, Client, WebLogin, safe_return_path};

/// The cookie holding the web session token.
pub const COOKIE: &str = "pam_web";

/// A request from a browser with a live web session.
pub struct WebUser {
    pub principal: Principal,
    pub client: Client,
    /// The CSRF token every form of this session must carry.
    pub csrf: String,
}

/// Why a browser request was not let in: pages send the browser to log in,
/// anything else gets a plain status.
pub enum NotLoggedIn {
    Login { next: String },
    Status(StatusCode, &'static str),
}

impl IntoResponse for NotLoggedIn {
    fn into_response(self) -> Response {
        match self {
            NotLoggedIn::Login { next } => {
                let mut url = url::form_urlencoded::Serializer::new(String::new());
                url.append_pair("next", &next);
                Redirect::to(&format!("/ui/login?{}", url.finish())).into_response()
            }
            NotLoggedIn::Status(status, message) => (status, message).into_response(),
        }
    }
}

impl FromRequestParts<Arc<Deps>> for WebUser {
    type Rejection = NotLoggedIn;

    async fn from_request_parts(parts: &mut Parts, deps: &Arc<Deps>) -> Result<Self, NotLoggedIn> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let client = client(addr, &parts.headers);
        let login = || {
            if parts.method == axum::http::Method::GET {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .filter(|p| safe_return_path(p))
                    .unwrap_or_else(|| "/ui/".into());
                NotLoggedIn::Login { next }
            } else {
                NotLoggedIn::Status(StatusCode::UNAUTHORIZED, "log in at /ui/login first\n")
            }
        };
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(login());
        };
        match deps.identity.authenticate_web(&token).await {
            Ok(principal) => Ok(WebUser {
                principal,
                client,
                csrf: csrf_token(&token),
            }),
            Err(AuthError::Unavailable) => Err(NotLoggedIn::Status(
                StatusCode::SERVICE_UNAVAILABLE,
                "the session store is unavailable\n",
            )),
            Err(e) => {
                deps.audit
                    .note(
                        AuditEvent::new(EventKind::TokenRejected, Outcome::Denied)
                            .source_ip(client.ip)
                            .details(json!({
                                "reason": e.to_string(),
                                "path": parts.uri.path(),
                                "client": "web",
                                "user_agent": client.user_agent,
                            })),
                    )
                    .await;
                Err(login())
            }
        }
    }
}

impl WebUser {
    /// Checks a submitted form's CSRF token (constant time).
    pub fn check_csrf(&self, submitted: &str) -> bool {
        same_secret(&self.csrf, submitted)
    }
}

/// Constant-time equality of two tokens (the length is not secret).
fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The CSRF token of a web session: a one-way function of its cookie, so
/// every broker in a fleet derives the same one and nothing is stored.
fn csrf_token(token: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"pam web csrf v1\0");
    hash.update(token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash.finalize()[..24])
}

/// The cookie that binds a browser login to the browser that started it
/// (login CSRF): set when `/auth/login` or `/ui/login` sends the browser to
/// the IdP, required on `/auth/callback`.
pub const PRE_LOGIN_COOKIE: &str = "pam_login";

/// The browser's pre-login cookie, or a new one; with the `Set-Cookie`
/// to send when it is new or about to expire. A browser keeps one for
/// every login it starts, so logins in two tabs both finish.
pub fn pre_login(headers: &HeaderMap, secure: bool) -> (String, Option<HeaderValue>) {
    let value = cookie(headers, PRE_LOGIN_COOKIE)
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(|| crate::identity::oidc::random_token(32));
    let secure = if secure { "; Secure" } else { "" };
    // Lax: the IdP's redirect back is a top-level cross-site GET.
    let header = HeaderValue::from_str(&format!(
        "{PRE_LOGIN_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age=600{secure}"
    ))
    .ok();
    (value, header)
}

/// The pre-login cookie a callback came with.
pub fn pre_login_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, PRE_LOGIN_COOKIE)
}

/// The value of cookie `name`, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

fn set_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("pam_web=; Max-Age=0"))
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    login_hint: Option<String>,
    /// Show the break-glass form instead of going to the IdP.
    breakglass: Option<String>,
}

/// The cookie that pairs the break-glass form with its POST (login CSRF).
const LOGIN_CSRF: &str = "pam_login_csrf";

/// `GET /ui/login`: off to the IdP (authorization code + PKCE, server side);
/// the break-glass form when SSO is not configured or `?breakglass=1`.
pub async fn login(
    State(deps): State<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let client = client(addr, &headers);
    let next = q
        .next
        .filter(|n| safe_return_path(n))
        .unwrap_or_else(|| "/ui/".into());
    if q.breakglass.is_some() || !deps.identity.sso_enabled() {
        return breakglass_form(&deps, &next, None, StatusCode::OK);
    }
    let (browser, set_cookie) = pre_login(&headers, deps.secure_cookies);
    match deps
        .identity
        .start_web_login(&next, q.login_hint.as_deref(), &browser, &client)
        .await
    {
        Ok(url) => with_cookie(Redirect::to(&url).into_response(), set_cookie),
        Err(e) => super::ui::message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Login unavailable",
            &e.to_string(),
        ),
    }
}

/// `response` with `cookie` set, if any.
pub fn with_cookie(mut response: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

fn breakglass_form(deps: &Deps, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let csrf = crate::identity::oidc::random_token(24);
    let mut response =
        super::ui::breakglass_page(next, &csrf, error, deps.identity.sso_enabled(), status);
    let secure = if deps.secure_cookies { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LOGIN_CSRF}={csrf}; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=600{secure}"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
pub struct BreakglassForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    totp: String,
    #[serde(default)]
    next: String,
}

/// `POST /ui/login/breakglass`: a break-glass account logs in to the web
/// view (password + TOTP; audited as `breakglass.used`).
pub async fn breakglass_login(
    State(deps): State<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<BreakglassForm>,
) -> Response {
    let client = client(addr, &headers);
    let next = Some(form.next.as_str())
        .filter(|n| safe_return_path(n))
        .unwrap_or("/ui/")
        .to_owned();
    let paired = cookie(&headers, LOGIN_CSRF).is_some_and(|c| same_secret(&c, &form.csrf));
    if !paired {
        deps.audit
            .note(
                AuditEvent::new(EventKind::TokenRejected, Outcome::Denied)
                    .source_ip(client.ip)
                    .details(json!({"reason": "missing or wrong CSRF token", "path": "/ui/login/breakglass"})),
            )
            .await;
        return breakglass_form(
            &deps,
            &next,
            Some("The form expired; try again."),
            StatusCode::FORBIDDEN,
        );
    }
    let password = secrecy::SecretString::from(form.password);
    let totp = secrecy::SecretString::from(form.totp);
    match deps
        .identity
        .breakglass_web_login(form.username.trim(), &password, &totp, &next, &client)
        .await
    {
        Ok(login) => logged_in(&deps, login),
        Err(e) => {
            let status = match e {
                crate::identity::LoginError::Locked(_) => StatusCode::TOO_MANY_REQUESTS,
                crate::identity::LoginError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            breakglass_form(&deps, &next, Some(&e.to_string()), status)
        }
    }
}

/// Finishes a web login from `/auth/callback`: sets the cookie.
pub fn logged_in(deps: &Deps, login: WebLogin) -> Response {
    let max_age = ((login.expires_at_us - now_us()) / 1_000_000).max(0);
    let mut response = Redirect::to(&login.return_to).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(login.token.expose_secret(), max_age, deps.secure_cookies),
    );
    response
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/logout`: revokes the web session and clears the cookie.
pub async fn logout(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !user.check_csrf(&form.csrf) {
        return super::ui::csrf_refused(&deps, &user, "/ui/logout").await;
    }
    if let Err(e) = deps.identity.logout(&user.principal, &user.client).await {
        tracing::warn!(error = %e, "web logout failed");
    }
    let mut response = Redirect::to("/ui/logged-out").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0, deps.secure_cookies));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; pam_web=tok.en; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("tok.en"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_compare_exactly() {
        let a = csrf_token("token-a");
        assert_ne!(a, csrf_token("token-b"));
        let user = WebUser {
            principal: Principal {
                identity: crate::domain::principal::UserIdentity {
                    email: "a@example.test".into(),
                    subject: "a".into(),
                    name: None,
                    groups: vec![],
                    amr: vec![],
                    mfa: false,
                    method: crate::domain::principal::LoginMethod::Sso,
                },
                session_id: "s".into(),
                expires_at_us: 0,
            },
            client: Client::default(),
            csrf: a.clone(),
        };
        assert!(user.check_csrf(&a));
        assert!(!user.check_csrf(""));
        assert!(!user.check_csrf(&a[1..]));
    }
}
