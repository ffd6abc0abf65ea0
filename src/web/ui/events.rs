//! The event pages (logins, AWS credentials, policy decisions, every
//! event) and the export of what they show.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::layout::{
    details, filter_form, html_response, is_breakglass, layout, message_page, pager, text_of,
    time_cell,
};
use super::{enter, error_page};
use crate::domain::audit::EventRecord;
use crate::domain::policy::Action;
use crate::web::Deps;
use crate::web::browser::WebUser;
use crate::web::error::Error;
use crate::web::trail::{self, Filters, PAGE, View};

/// One page of an event list, after the gate and the `audit.view` record;
/// a refusal or failure is the page to show instead.
async fn visible_events(
    deps: &Deps,
    user: &WebUser,
    view: View,
    f: &Filters,
) -> Result<Vec<EventRecord>, Response> {
    enter(deps, user, view.as_str(), f.summary()).await?;
    let filter = view
        .event_filter(f, PAGE)
        .map_err(|e| error_page(&Error::BadRequest(e)))?;
    deps.audit
        .list(&filter)
        .await
        .map_err(|e| error_page(&Error::Internal(e.into())))
}

fn next_cursor(events: &[EventRecord]) -> Option<String> {
    (events.len() == PAGE as usize)
        .then(|| events.last().map(|e| e.seq.to_string()))
        .flatten()
}

/// `GET /ui/logins`: the login history.
pub async fn logins(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Query(f): Query<Filters>,
) -> Response {
    let events = match visible_events(&deps, &user, View::Logins, &f).await {
        Ok(events) => events,
        Err(refused) => return refused,
    };
    let body = html! {
        (filter_form(View::Logins, &f, &[
            ("user", "User", "alice@example.com"),
            ("outcome", "Outcome", "success / failure"),
            ("ip", "Source IP", "10.0.0.1"),
            ("since", "Since", "7d or 2026-11-01"),
            ("until", "Until", "2026-11-30T00:00:00Z"),
        ]))
        table.events #logins {
            thead { tr { th { "Time" } th { "User" } th { "Outcome" } th { "Reason" } th { "Source IP" } th { "MFA" } th { "Client" } } }
            tbody {
                @for e in &events {
                    @let d = details(e);
                    @let bg = is_breakglass(e, &d);
                    tr class={ "outcome-" (e.outcome) @if bg { " breakglass" } } {
                        td { (time_cell(e.time_us)) }
                        td { (e.actor.as_deref().or(d["user"].as_str()).unwrap_or("—")) }
                        td { span.badge { (e.outcome) } @if e.kind == "login.lockout" { " " span.badge.warn { "lockout" } } }
                        td { (text_of(&d["reason"])) }
                        td { (e.source_ip.as_deref().unwrap_or("—")) }
                        td { (text_of(&d["amr"])) @if d["mfa"] == true { " ✓" } }
                        td {
                            (text_of(&d["method"]))
                            @if bg { " " span.badge.danger { "BREAK-GLASS" } }
                            @if d["client"] == "web" { " (web)" }
                            br; small { (text_of(&d["user_agent"])) }
                        }
                    }
                }
                @if events.is_empty() { tr { td colspan="7" { "No logins match." } } }
            }
        }
        (pager("/ui/logins", &f, next_cursor(&events)))
    };
    html_response(
        StatusCode::OK,
        layout(&user, "Login history", "logins", body),
    )
}

/// `GET /ui/credentials`: AWS credentials and console links issued.
pub async fn credentials(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Query(f): Query<Filters>,
) -> Response {
    let events = match visible_events(&deps, &user, View::Credentials, &f).await {
        Ok(events) => events,
        Err(refused) => return refused,
    };
    let body = html! {
        (filter_form(View::Credentials, &f, &[
            ("user", "User", "alice@example.com"),
            ("target", "Role target", "prod-readonly"),
            ("outcome", "Outcome", "success / failure / denied"),
            ("since", "Since", "7d"),
            ("until", "Until", ""),
        ]))
        table.events #credentials {
            thead { tr { th { "Time" } th { "User" } th { "Target" } th { "Kind" } th { "Outcome" } th { "Role" } th { "Access key" } th { "Expires" } th { "Reason" } } }
            tbody {
                @for e in &events {
                    @let d = details(e);
                    tr class={ "outcome-" (e.outcome) } {
                        td { (time_cell(e.time_us)) }
                        td { (e.actor.as_deref().unwrap_or("—")) }
                        td { (e.target.as_deref().unwrap_or("—")) }
                        td { @if e.kind == "aws.console.issued" { "console" } @else { "credentials" } }
                        td { span.badge { (e.outcome) } }
                        td { code { (text_of(&d["role_arn"])) } }
                        td { code { (text_of(&d["access_key_id"])) } }
                        td { (text_of(&d["expiration"])) }
                        td { (text_of(&d["reason"])) (text_of(&d["error"])) }
                    }
                }
                @if events.is_empty() { tr { td colspan="9" { "No credentials match." } } }
            }
        }
        (pager("/ui/credentials", &f, next_cursor(&events)))
    };
    html_response(
        StatusCode::OK,
        layout(&user, "AWS credentials issued", "credentials", body),
    )
}

/// `GET /ui/decisions`: policy decisions, denials first (the default tab).
pub async fn decisions(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Query(mut f): Query<Filters>,
) -> Response {
    if f.outcome().is_none() && f.outcome.is_none() {
        f.outcome = Some("denied".into());
    }
    let events = match visible_events(&deps, &user, View::Decisions, &f).await {
        Ok(events) => events,
        Err(refused) => return refused,
    };
    let tab = f.outcome().unwrap_or_default();
    let body = html! {
        nav.tabs {
            a href="/ui/decisions?outcome=denied" class=[(tab == "denied").then_some("active")] { "Denied" }
            a href="/ui/decisions?outcome=success" class=[(tab == "success").then_some("active")] { "Allowed" }
            a href="/ui/decisions?outcome=" class=[(tab.is_empty()).then_some("active")] { "All" }
        }
        (filter_form(View::Decisions, &f, &[
            ("user", "User", "alice@example.com"),
            ("target", "Resource", "orders-prod"),
            ("outcome", "Outcome", "denied / success"),
            ("since", "Since", "7d"),
            ("until", "Until", ""),
        ]))
        table.events #decisions {
            thead { tr { th { "Time" } th { "User" } th { "Action" } th { "Resource" } th { "Decision" } th { "Policies" } th { "Why" } th { "Reason given" } } }
            tbody {
                @for e in &events {
                    @let d = details(e);
                    tr class={ "outcome-" (e.outcome) } {
                        td { (time_cell(e.time_us)) }
                        td { (e.actor.as_deref().unwrap_or("—")) }
                        td { (text_of(&d["action"])) }
                        td { (e.target.as_deref().unwrap_or("—")) }
                        td { span.badge { (text_of(&d["decision"])) } }
                        td { code { (text_of(&d["policies"])) } }
                        td { (text_of(&d["message"])) @if !d["hint"].is_null() { br; small { (text_of(&d["hint"])) } } }
                        td { (text_of(&d["reason"])) }
                    }
                }
                @if events.is_empty() { tr { td colspan="8" { "No decisions match." } } }
            }
        }
        (pager("/ui/decisions", &f, next_cursor(&events)))
    };
    html_response(
        StatusCode::OK,
        layout(&user, "Policy decisions", "decisions", body),
    )
}

/// `GET /ui/events`: every event, any filter.
pub async fn events(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Query(f): Query<Filters>,
) -> Response {
    let events = match visible_events(&deps, &user, View::Events, &f).await {
        Ok(events) => events,
        Err(refused) => return refused,
    };
    let body = html! {
        (filter_form(View::Events, &f, &[
            ("kind", "Kind", "session.start"),
            ("user", "Actor", "alice@example.com"),
            ("target", "Target", "web-prod"),
            ("session", "Session", ""),
            ("outcome", "Outcome", ""),
            ("ip", "Source IP", ""),
            ("since", "Since", "24h"),
            ("until", "Until", ""),
        ]))
        table.events #events {
            thead { tr { th { "#" } th { "Time" } th { "Kind" } th { "Actor" } th { "Target" } th { "Outcome" } th { "Details" } } }
            tbody {
                @for e in &events {
                    @let d = details(e);
                    tr class={ "outcome-" (e.outcome) @if is_breakglass(e, &d) { " breakglass" } } {
                        td { (e.seq) }
                        td { (time_cell(e.time_us)) }
                        td { (e.kind) }
                        td { (e.actor.as_deref().unwrap_or("—")) }
                        td {
                            @if let Some(sid) = e.session_id.as_deref().filter(|_| e.kind.starts_with("session.") || e.kind.starts_with("ssh.") || e.kind == "db.query") {
                                a href={ "/ui/sessions/" (sid) } { (e.target.as_deref().unwrap_or(sid)) }
                            } @else {
                                (e.target.as_deref().unwrap_or("—"))
                            }
                        }
                        td { span.badge { (e.outcome) } }
                        td { code.details { (e.details) } }
                    }
                }
                @if events.is_empty() { tr { td colspan="7" { "No events match." } } }
            }
        }
        (pager("/ui/events", &f, next_cursor(&events)))
    };
    html_response(StatusCode::OK, layout(&user, "All events", "events", body))
}

#[derive(Deserialize)]
pub struct ExportParams {
    #[serde(flatten)]
    query: trail::ExportQuery,
}

/// `GET /ui/export?view=..&format=csv|jsonl&filters`: streamed, audited.
pub async fn export(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Query(params): Query<ExportParams>,
) -> Response {
    if let Err(message) =
        trail::authorize(&deps, &user.principal, &user.client, Action::ViewAudit).await
    {
        return message_page(StatusCode::FORBIDDEN, "Not allowed", &message);
    }
    match trail::export(&deps, &user.principal, &user.client, params.query).await {
        Ok(r) => r,
        Err(e) => error_page(&e),
    }
}
