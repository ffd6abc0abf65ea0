//! The HTTP room: health, metrics, public keys, the JSON API and the web UI.
//!
//! One entry point, [`serve`]; the caller binds the listener. Handlers turn
//! errors into safe responses through [`error::Error`].

pub mod api;
pub mod auth;
pub mod browser;
pub mod error;
pub mod openapi;
pub mod search;
pub mod trail;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::policy::Gate;
use crate::sessions::Sessions;

/// What the HTTP room needs from the rest of the broker.
#[derive(Clone)]
pub struct Deps {
    pub audit: Audit,
    pub identity: Identity,
    pub gate: Gate,
    pub aws: crate::aws::credentials::AwsAccess,
    pub sessions: Sessions,
    /// Full-text search over ended sessions.
    pub search: crate::search::Search,
    pub targets: crate::discovery::Targets,
    /// Discovery's per-source status (`/readyz` detail).
    pub discovery: Option<crate::discovery::Discovery>,
    pub metrics: Arc<Metrics>,
    /// OpenSSH public key lines of the CAs.
    pub ssh_user_ca: String,
    pub ssh_target_ca: String,
    /// The broker's token-signing keys as a JWKS document.
    pub jwks: serde_json::Value,
    /// Where terminal recordings live (the web view replays them).
    pub recordings_dir: std::path::PathBuf,
    /// The audit checkpoint public key, for chain verification.
    pub audit_key: Arc<Vec<u8>>,
    /// `Secure` on the web session cookie (off only in `--dev`, plain HTTP).
    pub secure_cookies: bool,
    /// The web view's last chain verification.
    pub verification: ui::Verification,
    /// Load balancers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<crate::config::Cidr>>,
}

/// Serves HTTP on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(deps);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    Ok(())
}

pub fn router(deps: Deps) -> Router {
    let deps = Arc::new(deps);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/favicon.ico", get(favicon))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/api/v1/ca/ssh_user.pub", get(ssh_user_ca))
        .route("/api/v1/ca/ssh_target.pub", get(ssh_target_ca))
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/api/v1/auth/exchange", post(auth::exchange))
        .route("/api/v1/auth/device", post(auth::device_start))
        .route("/api/v1/auth/device/poll", post(auth::device_poll))
        .route("/api/v1/auth/breakglass", post(auth::breakglass))
        .route("/api/v1/auth/whoami", get(auth::whoami))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/cert", post(auth::certify))
        .route("/api/v1/targets", get(api::targets))
        .route("/api/v1/targets/check", post(api::targets_check))
        .route("/api/v1/targets/{name}/explain", get(api::explain))
        .route("/api/v1/aws/credentials", post(api::aws_credentials))
        .route("/api/v1/aws/console", post(api::aws_console))
        .route("/api/v1/sessions", get(api::sessions))
        .route("/api/v1/sessions/{id}", get(api::session))
        .route("/api/v1/sessions/{id}/terminate", post(api::terminate))
        .route("/api/v1/sessions/{id}/recording", get(trail::api_recording))
        .route("/api/v1/audit/events", get(trail::api_events))
        .route("/api/v1/audit/logins", get(trail::api_logins))
        .route("/api/v1/audit/export", get(trail::api_export))
        .route("/api/v1/audit/verify", get(trail::api_verify))
        .route("/api/v1/audit/head", get(trail::api_head))
        .route("/api/v1/audit/search", get(search::api_search))
        .route("/openapi.json", get(openapi::document))
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::root))
        .route("/ui/login", get(browser::login))
        .route("/ui/login/breakglass", post(browser::breakglass_login))
        .route("/ui/logout", post(browser::logout))
        .route("/ui/logged-out", get(ui::logged_out))
        .route("/ui/static/{name}", get(ui::asset))
        .route("/ui/logins", get(ui::logins))
        .route("/ui/search", get(ui::search))
        .route("/ui/sessions", get(ui::sessions))
        .route("/ui/sessions/{id}", get(ui::session))
        .route("/ui/sessions/{id}/recording", get(ui::recording))
        .route("/ui/sessions/{id}/terminate", post(ui::terminate))
        .route("/ui/credentials", get(ui::credentials))
        .route("/ui/decisions", get(ui::decisions))
        .route("/ui/events", get(ui::events))
        .route("/ui/export", get(ui::export))
        .route("/ui/verify", get(ui::verify).post(ui::verify_start))
        .layer(axum::middleware::from_fn_with_state(
            deps.clone(),
            forwarded_for,
        ))
        .layer(axum::middleware::from_fn(refuse_nul))
        .layer(axum::middleware::from_fn_with_state(
            deps.clone(),
            count_requests,
        ))
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(ui::CSP),
        ))
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .with_state(deps)
}

/// Behind trusted load balancers, the client is the right-most address in
/// `X-Forwarded-For` that is not itself a trusted proxy; every handler then
/// sees (and audits) that address.
async fn forwarded_for(
    State(deps): State<Arc<Deps>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !deps.trusted_proxies.is_empty()
        && let Some(axum::extract::ConnectInfo(peer)) = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .copied()
    {
        let header = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let client = client_address(peer.ip(), &header, &deps.trusted_proxies);
        if client != peer.ip() {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(
                    client, 0,
                )));
        }
    }
    next.run(request).await
}

/// The client address behind `peer` given an `X-Forwarded-For` value.
pub fn client_address(
    peer: std::net::IpAddr,
    forwarded_for: &str,
    trusted: &[crate::config::Cidr],
) -> std::net::IpAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.rsplit(',') {
        let hop = hop.trim();
        if hop.is_empty() {
            continue;
        }
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else {
            // Garbage (or a port, which load balancers do not add): stop
            // at the last address we could vouch for.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// Refuses NUL bytes anywhere in the path or query: no store can hold
/// them in text, and no honest client sends them.
async fn refuse_nul(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = request.uri().to_string();
    if uri.contains('\0') || uri.to_ascii_lowercase().contains("%00") {
        return error::Error::BadRequest("NUL bytes are not allowed in URLs".into())
            .into_response();
    }
    next.run(request).await
}

async fn count_requests(
    State(deps): State<Arc<Deps>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    Metrics::inc(&deps.metrics.http_requests);
    next.run(request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store answers and the data_dir has room for recordings
/// (keys are loaded before the room starts).
async fn readyz(State(deps): State<Arc<Deps>>) -> Response {
    if !deps.audit.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response();
    }
    if let Some(problem) = deps.sessions.storage_problem() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response();
    }
    let mut body = "ready\n".to_owned();
    for source in deps.discovery.iter().flat_map(|d| d.status()) {
        body.push_str(&discovery_line(&source));
    }
    (StatusCode::OK, body).into_response()
}

/// One `/readyz` detail line per discovery source: how many targets it
/// gives, or why its last refresh failed and what is kept meanwhile.
fn discovery_line(source: &crate::discovery::SourceStatus) -> String {
    let since = source.last_ok.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    match (&source.error, since) {
        (None, Some(since)) => format!(
            "discovery {}: ok, {} targets, {} refused (at {since})\n",
            source.label, source.targets, source.refused
        ),
        (None, None) => format!("discovery {}: not read yet\n", source.label),
        (Some(error), Some(since)) => format!(
            "discovery {}: failing: {error}; keeping {} targets from {since}\n",
            source.label, source.targets
        ),
        (Some(error), None) => format!(
            "discovery {}: failing: {error}; no targets from it yet\n",
            source.label
        ),
    }
}

async fn metrics(State(deps): State<Arc<Deps>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        deps.metrics.render(),
    )
        .into_response()
}

/// Browsers ask for `/favicon.ico` on every page of the web view.
const FAVICON: &[u8] = include_bytes!("assets/favicon.ico");

async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/x-icon"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
}

async fn jwks(State(deps): State<Arc<Deps>>) -> Response {
    axum::Json(deps.jwks.clone()).into_response()
}

async fn ssh_user_ca(State(deps): State<Arc<Deps>>) -> Response {
    public_key(&deps.ssh_user_ca)
}

async fn ssh_target_ca(State(deps): State<Arc<Deps>>) -> Response {
    public_key(&deps.ssh_target_ca)
}

fn public_key(line: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{line}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::client_address;
    use crate::config::Cidr;

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = [Cidr::parse("10.0.0.0/16").unwrap()];
        let alb = "10.0.3.4".parse().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            client_address(alb, "198.51.100.7", &trusted),
            ip("198.51.100.7")
        );
        // A client cannot forge its way past the proxy: the left part is theirs.
        assert_eq!(
            client_address(alb, "1.2.3.4, 198.51.100.7", &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(alb, "198.51.100.7, 10.0.9.9", &trusted),
            ip("198.51.100.7")
        );
        // Untrusted peers are never overridden.
        assert_eq!(
            client_address(ip("203.0.113.1"), "198.51.100.7", &trusted),
            ip("203.0.113.1")
        );
        // Garbage stops the walk at the last good address.
        assert_eq!(client_address(alb, "nonsense", &trusted), alb);
        assert_eq!(client_address(alb, "", &trusted), alb);
    }
}
