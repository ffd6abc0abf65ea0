//! Login routes: the browser leg of `pam login` (`/auth/login`,
//! `/auth/callback`), the CLI's JSON calls (exchange, device grant,
//! break-glass), and the bearer-token extractor every API route uses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::Deps;
use super::error::Error;
use crate::api::{
    BreakglassLoginRequest, CertRequest, CertResponse, DevicePollRequest, DeviceStartResponse,
    ExchangeRequest, LoginResponse, PollPending, WhoAmI,
};
use crate::domain::audit::{AuditEvent, EventKind, Outcome, format_us};
use crate::domain::principal::Principal;
use crate::identity::{AuthError, Callback, Client, DeviceOutcome, DeviceStart, Login, LoginError};

/// The caller's address and client, for the audit trail.
pub fn client(addr: SocketAddr, headers: &HeaderMap) -> Client {
    Client {
        ip: Some(addr.ip().to_canonical()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(200).collect()),
    }
}

impl From<LoginError> for Error {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::BadRequest(m) => Error::BadRequest(m),
            LoginError::Refused(m) => Error::Unauthorized(m),
            e @ LoginError::Locked(_) => Error::TooManyRequests(e.to_string()),
            LoginError::Unavailable(cause) => Error::Unavailable(cause.to_string()),
        }
    }
}

#[derive(Deserialize)]
pub struct LoginStart {
    cli_port: u16,
    cli_challenge: String,
    login_hint: Option<String>,
}

/// `GET /auth/login`: the URL `pam login` opens in the browser.
pub async fn login(
    State(deps): State<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<LoginStart>,
) -> Response {
    let client = client(addr, &headers);
    let (browser, set_cookie) = super::browser::pre_login(&headers, deps.secure_cookies);
    match deps
        .identity
        .start_browser_login(
            q.cli_port,
            &q.cli_challenge,
            q.login_hint.as_deref(),
            &browser,
            &client,
        )
        .await
    {
        Ok(url) => super::browser::with_cookie(Redirect::to(&url).into_response(), set_cookie),
        Err(e) => error_page(&e),
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

/// `GET /auth/callback`: where the IdP sends the browser back.
pub async fn callback(
    State(deps): State<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let client = client(addr, &headers);
    match deps
        .identity
        .callback(
            q.state.as_deref(),
            q.code.as_deref(),
            q.error.as_deref(),
            super::browser::pre_login_cookie(&headers).as_deref(),
            &client,
        )
        .await
    {
        Ok(Callback::RedirectToCli(url)) => Redirect::to(&url).into_response(),
        Ok(Callback::Web(login)) => super::browser::logged_in(&deps, login),
        Err(e) => error_page(&e),
    }
}

fn error_page(e: &LoginError) -> Response {
    let status = match e {
        LoginError::BadRequest(_) => StatusCode::BAD_REQUEST,
        LoginError::Refused(_) => StatusCode::UNAUTHORIZED,
        LoginError::Locked(_) => StatusCode::TOO_MANY_REQUESTS,
        LoginError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    super::ui::login_failed_page(status, &e.to_string())
}

pub async fn exchange(
    State(deps): State<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<ExchangeRequest>,
) -> Result<Response, Error> {
    let client = client(addr, &headers);
    let response = deps
        .identity
        .exchange(
            &request.code.into_secret(),
            &request.code_verifier.into_secret(),
            &request.public_key,
            &request.proof,
            &client,
        )
        .await?;
    Ok(Json(login_response(response)).into_response())
}

pub async fn device_start(
    State(deps): State<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let client = client(addr, &headers);
    let DeviceStart {
        request_id,
        user_code,
        verification_uri,
        verification_uri_complete,
        interval,
        expires_in,
    } = deps.identity.device_start(&client).await?;
    Ok(Json(DeviceStartResponse {
        request_id,
        user_code,
        verification_uri,
        verification_uri_complete,
        interval,
        expires_in,
    })
    .into_response())
}

pub async fn device_poll(
    State(deps): State<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<DevicePollRequest>,
) -> Result<Response, Error> {
    let client = client(addr, &headers);
    let outcome = deps
        .identity
        .device_poll(
            &request.request_id,
            &request.public_key,
            &request.proof,
            &client,
        )
        .await?;
    Ok(match outcome {
        DeviceOutcome::Done(login) => Json(login_response(*login)).into_response(),
        DeviceOutcome::Pending { interval } => (
            StatusCode::BAD_REQUEST,
            Json(PollPending {
                error: "authorization_pending".into(),
                interval,
            }),
        )
            .into_response(),
        DeviceOutcome::SlowDown { interval } => (
            StatusCode::BAD_REQUEST,
            Json(PollPending {
                error: "slow_down".into(),
                interval,
            }),
        )
            .into_response(),
    })
}

pub async fn breakglass(
    State(deps): State<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<BreakglassLoginRequest>,
) -> Result<Response, Error> {
    let client = client(addr, &headers);
    let response = deps
        .identity
        .breakglass_login(
            &request.username,
            &request.password.into_secret(),
            &request.totp.into_secret(),
            &request.public_key,
            &request.proof,
            &client,
        )
        .await?;
    Ok(Json(login_response(response)).into_response())
}

pub async fn whoami(Authenticated { principal, .. }: Authenticated) -> Response {
    let identity = &principal.identity;
    Json(WhoAmI {
        user: identity.email.clone(),
        groups: identity.groups.clone(),
        mfa: identity.mfa,
        amr: identity.amr.clone(),
        method: identity.method.as_str().into(),
        session_id: principal.session_id.clone(),
        expires_at: format_us(principal.expires_at_us),
    })
    .into_response()
}

/// A finished login as the CLI reads it.
fn login_response(login: Login) -> LoginResponse {
    let Login {
        token,
        expires_at_us,
        session_id,
        identity,
        certificate,
        certificate_expires_at,
        known_hosts,
        ssh_addr,
        postgres_addr,
    } = login;
    LoginResponse {
        token: token.expose_secret().to_owned(),
        expires_at: format_us(expires_at_us),
        session_id,
        user: identity.email,
        groups: identity.groups,
        mfa: identity.mfa,
        amr: identity.amr,
        method: identity.method.as_str().into(),
        certificate,
        certificate_expires_at,
        known_hosts,
        ssh_addr,
        postgres_addr,
    }
}

pub async fn logout(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
) -> Result<Response, Error> {
    deps.identity.logout(&principal, &client).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn certify(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    Json(request): Json<CertRequest>,
) -> Result<Response, Error> {
    let (certificate, certificate_expires_at) = deps
        .identity
        .certify(&principal, &request.public_key, &request.proof, &client)
        .await?;
    Ok(Json(CertResponse {
        certificate,
        certificate_expires_at,
    })
    .into_response())
}

/// A request carrying a valid broker token (`Authorization: Bearer`).
/// Rejected tokens are audited as `token.rejected`.
pub struct Authenticated {
    pub principal: Principal,
    pub client: Client,
}

impl FromRequestParts<Arc<Deps>> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, deps: &Arc<Deps>) -> Result<Self, Error> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let client = client(addr, &parts.headers);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = token else {
            return Err(Error::Unauthorized(AuthError::Missing.to_string()));
        };
        match deps.identity.authenticate(token).await {
            Ok(principal) => Ok(Authenticated { principal, client }),
            Err(AuthError::Unavailable) => {
                Err(Error::Unavailable(AuthError::Unavailable.to_string()))
            }
            Err(e) => {
                deps.audit
                    .note(
                        AuditEvent::new(EventKind::TokenRejected, Outcome::Denied)
                            .source_ip(client.ip)
                            .details(json!({
                                "reason": e.to_string(),
                                "path": parts.uri.path(),
                                "user_agent": client.user_agent,
                            })),
                    )
                    .await;
                Err(Error::Unauthorized(e.to_string()))
            }
        }
    }
}
