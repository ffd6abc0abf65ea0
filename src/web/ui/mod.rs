//! The audit web view: server-rendered pages under `/ui/` (maud, so every
//! value is escaped; terminal output and SQL are text, never markup).
//! Each page passes the gate (`view_audit`; terminating needs `admin`) and
//! is itself audited. Scripts and styles come from `/ui/static/`, embedded
//! in the binary; the Content-Security-Policy allows nothing inline.

mod assets;
mod events;
mod layout;
mod search;
mod sessions;
mod verify;

use axum::http::StatusCode;
use axum::response::{Redirect, Response};
use serde_json::{Value, json};

pub use assets::asset;
pub use events::{ExportParams, credentials, decisions, events, export, logins};
pub use layout::{breakglass_page, login_failed_page, message_page};
pub use search::search;
pub use sessions::{TerminateForm, recording, session, sessions, terminate};
pub use verify::{CsrfOnly, Verification, verify, verify_start};

use super::Deps;
use super::browser::WebUser;
use super::error::Error;
use super::trail;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::domain::policy::Action;

/// The Content-Security-Policy of every response: our own scripts and
/// styles only (the player needs `wasm-unsafe-eval` for its terminal).
pub const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Passes the gate for viewing and records the view; a refusal is a page.
async fn enter(deps: &Deps, user: &WebUser, what: &str, filters: Value) -> Result<(), Response> {
    if let Err(message) =
        trail::authorize(deps, &user.principal, &user.client, Action::ViewAudit).await
    {
        return Err(message_page(StatusCode::FORBIDDEN, "Not allowed", &message));
    }
    trail::record_view(&deps.audit, &user.principal, &user.client, what, filters)
        .await
        .map_err(|e| error_page(&e))
}

fn error_page(e: &Error) -> Response {
    let status = e.status();
    if let Error::Internal(cause) = e {
        tracing::error!(error = format!("{cause:#}"), "web view request failed");
    }
    message_page(status, "Something went wrong", &e.to_string())
}

/// A form whose CSRF token did not match: refused, audited, nothing done.
pub async fn csrf_refused(deps: &Deps, user: &WebUser, path: &str) -> Response {
    deps.audit
        .note(
            AuditEvent::new(EventKind::TokenRejected, Outcome::Denied)
                .actor(user.principal.email())
                .source_ip(user.client.ip)
                .details(json!({"reason": "missing or wrong CSRF token", "path": path})),
        )
        .await;
    message_page(
        StatusCode::FORBIDDEN,
        "Form refused",
        "The form's security token is missing or wrong. Reload the page and try again.",
    )
}

// ---- pages --------------------------------------------------------------------

pub async fn root() -> Redirect {
    Redirect::to("/ui/logins")
}

pub async fn logged_out() -> Response {
    message_page(
        StatusCode::OK,
        "Logged out",
        "Your web session has ended. Log in again from the audit view.",
    )
}
