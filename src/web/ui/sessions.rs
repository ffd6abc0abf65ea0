//! The session pages: live and past sessions, one session with its
//! recording player and query log, the recording itself, and terminating.

use std::sync::Arc;

use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::layout::{
    bytes_text, details, duration_text, filter_form, html_response, layout, layout_with,
    message_page, pager, text_of, time_cell,
};
use super::{csrf_refused, enter, error_page};
use crate::domain::audit::now_us;
use crate::domain::policy::Action;
use crate::domain::session::{SessionFilter, SessionKind, SessionRecord};
use crate::web::Deps;
use crate::web::browser::WebUser;
use crate::web::error::Error;
use crate::web::trail::{self, Filters, PAGE, View};

/// Recordings larger than this are not hashed on page load.
const HASH_LIMIT: u64 = 64 << 20;

fn terminate_form(user: &WebUser, s: &SessionRecord) -> Markup {
    html! {
        form.terminate method="post" action={ "/ui/sessions/" (s.id) "/terminate" } data-confirm={ "Terminate " (s.user_email) "'s session on " (s.target) "?" } {
            input type="hidden" name="csrf" value=(user.csrf);
            input name="reason" required placeholder="reason (audited)" maxlength="500";
            label.confirm { input type="checkbox" name="confirm" value="yes" required; " confirm" }
            button.danger type="submit" { "Terminate" }
        }
    }
}

fn sessions_table(user: &WebUser, rows: &[SessionRecord], admin: bool, id: &str) -> Markup {
    let now = now_us();
    html! {
        table.sessions id=(id) {
            thead { tr { th { "Kind" } th { "User" } th { "Target" } th { "Start" } th { "End" } th { "Duration" } th { "In / out" } th { "Status" } @if admin { th {} } } }
            tbody {
                @for s in rows {
                    tr class={ "status-" (s.status) } {
                        td { (s.kind) }
                        td { (s.user_email) }
                        td { a href={ "/ui/sessions/" (s.id) } { (s.target) } @if let Some(login) = &s.login { small { " as " (login) } } }
                        td { (time_cell(s.started_at)) }
                        td { @if let Some(end) = s.ended_at { (time_cell(end)) } @else { "—" } }
                        td { (duration_text(s.ended_at.unwrap_or(now) - s.started_at)) }
                        td { (bytes_text(s.bytes_in)) " / " (bytes_text(s.bytes_out)) }
                        td {
                            span.badge { (s.status) }
                            @if let Some(r) = &s.end_reason { " " small { (r) } }
                        }
                        @if admin {
                            td { @if s.status == "live" { (terminate_form(user, s)) } }
                        }
                    }
                }
                @if rows.is_empty() { tr { td colspan="9" { "None." } } }
            }
        }
    }
}

/// `GET /ui/sessions`: live sessions first (with Terminate), then the rest.
pub async fn sessions(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Query(f): Query<Filters>,
) -> Response {
    if let Err(r) = enter(&deps, &user, "sessions", f.summary()).await {
        return r;
    }
    let admin = trail::may(&deps, &user.principal, &user.client, Action::Admin);
    let filter = match View::session_filter(&f, PAGE) {
        Ok(filter) => filter,
        Err(e) => return error_page(&Error::BadRequest(e)),
    };
    let first_page = f.before.as_deref().is_none_or(str::is_empty);
    let live = if filter.status.is_none() && first_page {
        let live = SessionFilter {
            status: Some("live".into()),
            exclude_live: false,
            before: None,
            limit: 500,
            ..filter.clone()
        };
        match deps.sessions.list(&live).await {
            Ok(rows) => Some(rows),
            Err(e) => return error_page(&Error::Internal(e.into())),
        }
    } else {
        None
    };
    let rows = match deps.sessions.list(&filter).await {
        Ok(rows) => rows,
        Err(e) => return error_page(&Error::Internal(e.into())),
    };
    let next = (rows.len() == PAGE as usize)
        .then(|| rows.last().map(trail::session_cursor))
        .flatten();
    let body = html! {
        (filter_form(View::Sessions, &f, &[
            ("user", "User", "alice@example.com"),
            ("target", "Target", "web-prod"),
            ("kind", "Kind", "ssh / ecs / postgres"),
            ("status", "Status", "live / ended"),
            ("since", "Since", "7d"),
            ("until", "Until", ""),
        ]))
        @if let Some(live) = &live {
            h2 { "Live now (" (live.len()) ")" }
            (sessions_table(&user, live, admin, "live-sessions"))
            h2 { "Earlier" }
        }
        (sessions_table(&user, &rows, admin, "sessions"))
        (pager("/ui/sessions", &f, next))
    };
    html_response(StatusCode::OK, layout(&user, "Sessions", "sessions", body))
}

/// `?t=SECONDS` on a session page: where the player starts (a search hit).
#[derive(Debug, Deserialize)]
pub struct SessionView {
    t: Option<f64>,
}

/// `GET /ui/sessions/{id}[?t=SECONDS]`: metadata, the recording player
/// (started at `t`), the query log.
pub async fn session(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    UrlPath(id): UrlPath<String>,
    Query(view): Query<SessionView>,
) -> Response {
    if !crate::audit::recording::valid_session_id(&id) {
        return message_page(
            StatusCode::NOT_FOUND,
            "No such session",
            "That is not a session id.",
        );
    }
    if let Err(r) = enter(&deps, &user, "session", json!({"session": id})).await {
        return r;
    }
    let s = match deps.sessions.get(&id).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return message_page(
                StatusCode::NOT_FOUND,
                "No such session",
                &format!("There is no session {id}."),
            );
        }
        Err(e) => return error_page(&Error::Internal(e.into())),
    };
    let admin = trail::may(&deps, &user.principal, &user.client, Action::Admin);
    let events = match deps
        .audit
        .list(&crate::domain::audit::EventFilter {
            session_id: Some(id.clone()),
            ascending: true,
            limit: 1000,
            ..Default::default()
        })
        .await
    {
        Ok(events) => events,
        Err(e) => return error_page(&Error::Internal(e.into())),
    };
    let (queries, other): (Vec<_>, Vec<_>) = events.iter().partition(|e| e.kind == "db.query");
    let integrity = recording_integrity(&deps, &s).await;
    let has_recording = s.recording.is_some();
    let head = if has_recording {
        html! {
            link rel="stylesheet" href="/ui/static/asciinema-player.css";
            script src="/ui/static/asciinema-player.min.js" defer {}
        }
    } else {
        html! {}
    };
    let meta: Value = serde_json::from_str(&s.details).unwrap_or(Value::Null);
    let start_at = view
        .t
        .filter(|t| t.is_finite() && *t > 0.0)
        .map(|t| format!("{t:.3}"));
    let now = now_us();
    let body = html! {
        dl.meta {
            dt { "Kind" } dd { (s.kind) }
            dt { "User" } dd { (s.user_email) }
            dt { "Target" } dd { (s.target) @if let Some(l) = &s.login { " as " (l) } }
            dt { "Status" } dd #status { span.badge { (s.status) } @if let Some(r) = &s.end_reason { " " (r) } }
            dt { "Started" } dd { (time_cell(s.started_at)) }
            dt { "Ended" } dd { @if let Some(e) = s.ended_at { (time_cell(e)) } @else { "—" } }
            dt { "Duration" } dd { (duration_text(s.ended_at.unwrap_or(now) - s.started_at)) }
            dt { "Bytes in / out" } dd { (bytes_text(s.bytes_in)) " / " (bytes_text(s.bytes_out)) }
            dt { "Source IP" } dd { (s.source_ip.as_deref().unwrap_or("—")) }
            dt { "Client" } dd { (s.client.as_deref().unwrap_or("—")) }
            dt { "Exit status" } dd { (s.exit_status.map(|x| x.to_string()).unwrap_or_else(|| "—".into())) }
            dt { "Broker node" } dd { (s.node) }
            @if !text_of(&meta["reason"]).is_empty() { dt { "Reason" } dd { (text_of(&meta["reason"])) } }
            @if let Some(by) = &s.terminate_by { dt { "Terminated by" } dd { (by) ": " (s.terminate_reason.as_deref().unwrap_or("")) } }
            dt { "Session id" } dd { code { (s.id) } }
        }
        @if admin && s.status == "live" { (terminate_form(&user, &s)) }
        @if has_recording {
            h2 { "Recording" }
            p.integrity { (integrity) }
            div #player data-cast={ "/ui/sessions/" (s.id) "/recording" } data-start-at=[start_at] {}
            p { a href={ "/ui/sessions/" (s.id) "/recording" } download { "Download asciicast" } " · replay in a terminal: " code { "pam audit play " (s.id) } }
        }
        @if s.kind == SessionKind::Postgres {
            h2 { "Query log (" (queries.len()) ")" }
            table #queries {
                thead { tr { th { "Time" } th { "Duration" } th { "Rows" } th { "Statement" } th { "Error" } } }
                tbody {
                    @for q in &queries {
                        @let d = details(q);
                        tr class={ "outcome-" (q.outcome) } {
                            td { (time_cell(q.time_us)) }
                            td { @if let Some(us) = d["duration_us"].as_i64() { (format!("{:.2} ms", us as f64 / 1000.0)) } }
                            td { (text_of(&d["rows"])) }
                            td { pre.sql { (text_of(&d["statement"])) } }
                            td { @if !d["error"].is_null() { (text_of(&d["error"]["sqlstate"])) " " (text_of(&d["error"]["message"])) } }
                        }
                    }
                    @if queries.is_empty() { tr { td colspan="5" { "No statements." } } }
                }
            }
        }
        h2 { "Events" }
        table.events #session-events {
            thead { tr { th { "#" } th { "Time" } th { "Kind" } th { "Outcome" } th { "Details" } } }
            tbody {
                @for e in &other {
                    tr class={ "outcome-" (e.outcome) } {
                        td { (e.seq) } td { (time_cell(e.time_us)) } td { (e.kind) }
                        td { span.badge { (e.outcome) } } td { code.details { (e.details) } }
                    }
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout_with(
            &user,
            &format!("Session on {}", s.target),
            "sessions",
            head,
            body,
        ),
    )
}

/// Whether the recording still has the SHA-256 that the chained
/// `session.end` holds (never the `sessions` row's copy, which an insider
/// with the database can rewrite along with the file).
async fn recording_integrity(deps: &Deps, s: &SessionRecord) -> Markup {
    let Ok((_, path)) = trail::recording_path(&deps.sessions, &deps.recordings_dir, &s.id).await
    else {
        return html! {};
    };
    let sealed = match deps.audit.sealed_recording(&s.id).await {
        Ok(sealed) => sealed,
        Err(e) => {
            tracing::error!(error = %e, "reading session.end");
            return html! { span.badge.danger { "session.end unreadable" } };
        }
    };
    let Some(sealed) = sealed else {
        return if s.ended_at.is_none() {
            html! { span.badge { "recording in progress" } }
        } else {
            html! { span.badge.danger { "NOT SEALED" } " the chain holds no SHA-256 for this recording" }
        };
    };
    let expected = &sealed.sha256;
    if s.recording_sha256.as_deref() != Some(expected.as_str())
        || s.recording.as_deref() != Some(sealed.recording.as_str())
    {
        return html! { span.badge.danger { "CHANGED" } " the sessions table no longer matches the chained session.end (SHA-256 " code { (expected) } ")" };
    }
    match tokio::fs::metadata(&path).await {
        Err(_) => html! { span.badge.danger { "recording file missing" } },
        Ok(m) if m.len() > HASH_LIMIT => {
            html! { "SHA-256 " code { (expected) } " (too large to check here; use pam audit play)" }
        }
        Ok(_) => match tokio::fs::read(&path).await {
            Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == *expected => {
                html! { span.badge.ok { "intact" } " SHA-256 " code { (expected) } " matches session.end" }
            }
            Ok(_) => {
                html! { span.badge.danger { "CHANGED" } " the file no longer matches the SHA-256 in session.end (" code { (expected) } ")" }
            }
            Err(_) => html! { span.badge.danger { "recording unreadable" } },
        },
    }
}

/// `GET /ui/sessions/{id}/recording`: the asciicast, for the player.
pub async fn recording(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(message) =
        trail::authorize(&deps, &user.principal, &user.client, Action::ViewAudit).await
    {
        return (StatusCode::FORBIDDEN, message).into_response();
    }
    match trail::recording(&deps, &user.principal, &user.client, &id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct TerminateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /ui/sessions/{id}/terminate` (admin, CSRF, a reason, confirmed).
pub async fn terminate(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<TerminateForm>,
) -> Response {
    let path = format!("/ui/sessions/{id}/terminate");
    if !user.check_csrf(&form.csrf) {
        return csrf_refused(&deps, &user, &path).await;
    }
    if let Err(message) =
        trail::authorize(&deps, &user.principal, &user.client, Action::Admin).await
    {
        return message_page(StatusCode::FORBIDDEN, "Not allowed", &message);
    }
    let reason = form.reason.trim();
    if reason.is_empty() || form.confirm != "yes" {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Not terminated",
            "Give a reason and tick confirm to terminate a session.",
        );
    }
    if !crate::audit::recording::valid_session_id(&id) {
        return message_page(
            StatusCode::NOT_FOUND,
            "No such session",
            "That is not a session id.",
        );
    }
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    match deps
        .sessions
        .terminate(&id, user.principal.email(), &reason)
        .await
    {
        Ok(true) => Redirect::to(&format!("/ui/sessions/{id}")).into_response(),
        Ok(false) => message_page(
            StatusCode::NOT_FOUND,
            "Not terminated",
            "That session is not live (it may have just ended).",
        ),
        Err(e) => error_page(&Error::Internal(e.into())),
    }
}
