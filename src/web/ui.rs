//! The audit web view: server-rendered pages under `/ui/` (maud, so every
//! value is escaped; terminal output and SQL are text, never markup).
//! Each page passes the gate (`view_audit`; terminating needs `admin`) and
//! is itself audited. Scripts and styles come from `/ui/static/`, embedded
//! in the binary; the Content-Security-Policy allows nothing inline.

use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Deps;
use super::browser::WebUser;
use super::error::Error;
use super::trail::{self, Filters, PAGE, View};
use crate::domain::audit::{AuditEvent, EventKind, EventRecord, Outcome, format_us, now_us};
use crate::domain::policy::Action;
use crate::domain::session::{SessionFilter, SessionRecord};

/// The Content-Security-Policy of every response: our own scripts and
/// styles only (the player needs `wasm-unsafe-eval` for its terminal).
pub const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Recordings larger than this are not hashed on page load.
const HASH_LIMIT: u64 = 64 << 20;

// ---- chain verification state -------------------------------------------------

/// The last full verification this broker ran from the web view.
#[derive(Clone, Default)]
pub struct Verification(Arc<Mutex<VerifyState>>);

#[derive(Clone, Default)]
enum VerifyState {
    #[default]
    Never,
    Running {
        checked: i64,
        by: String,
        started_us: i64,
    },
    Done {
        report: Value,
        by: String,
        at_us: i64,
    },
}

impl Verification {
    fn get(&self) -> VerifyState {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
    fn set(&self, state: VerifyState) {
        if let Ok(mut s) = self.0.lock() {
            *s = state;
        }
    }
}

// ---- shared pieces ------------------------------------------------------------

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A page with a title and one message (errors, logged out).
pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    html_response(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "pam: " (title) } link rel="stylesheet" href="/ui/static/app.css"; }
                body.message {
                    main { h1 { (title) } p { (message) } p { a href="/ui/" { "Back to the audit view" } } }
                }
            }
        },
    )
}

/// A browser login that failed (the IdP's redirect, or the start of a
/// login): the reason, and what to do next.
pub fn login_failed_page(status: StatusCode, reason: &str) -> Response {
    html_response(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "pam: login failed" } link rel="stylesheet" href="/ui/static/app.css"; }
                body.message {
                    main { h1 { "Login failed" } p #login-error { (reason) } p { "Run " code { "pam login" } " again." } }
                }
            }
        },
    )
}

/// The break-glass login form (no session yet, so no layout).
pub fn breakglass_page(
    next: &str,
    csrf: &str,
    error: Option<&str>,
    sso: bool,
    status: StatusCode,
) -> Response {
    html_response(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "pam: break-glass login" }
                    link rel="stylesheet" href="/ui/static/app.css";
                }
                body.message {
                    main {
                        h1 { "Break-glass login" }
                        p { "For when the identity provider is unavailable. Every use is recorded as "
                            code { "breakglass.used" } " and shown to auditors." }
                        @if let Some(error) = error { p.broken #login-error { (error) } }
                        form.breakglass method="post" action="/ui/login/breakglass" {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="next" value=(next);
                            p { label { "Account " input name="username" autocomplete="username" required; } }
                            p { label { "Password " input type="password" name="password" autocomplete="current-password" required; } }
                            p { label { "TOTP code " input name="totp" inputmode="numeric" autocomplete="one-time-code" required; } }
                            button type="submit" { "Log in" }
                        }
                        @if sso { p { a href={ "/ui/login?next=" (next) } { "Log in with SSO instead" } } }
                    }
                }
            }
        },
    )
}

fn layout(user: &WebUser, title: &str, active: &str, body: Markup) -> Markup {
    layout_with(user, title, active, html! {}, body)
}

fn layout_with(user: &WebUser, title: &str, active: &str, head: Markup, body: Markup) -> Markup {
    let nav = [
        ("logins", "Logins"),
        ("sessions", "Sessions"),
        ("credentials", "AWS credentials"),
        ("decisions", "Policy decisions"),
        ("events", "All events"),
        ("verify", "Chain"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "pam: " (title) }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
                (head)
            }
            body {
                header.top {
                    a.brand href="/ui/" { "pam audit" }
                    nav {
                        @for (id, label) in nav {
                            a href={ "/ui/" (id) } class=[(id == active).then_some("active")] { (label) }
                        }
                    }
                    form.logout method="post" action="/ui/logout" {
                        span.who { (user.principal.email()) }
                        input type="hidden" name="csrf" value=(user.csrf);
                        button type="submit" { "Log out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// UTC text that the page script adds local time to.
fn time_cell(us: i64) -> Markup {
    let t = crate::domain::audit::from_us(us);
    let text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    html! { time datetime=(format_us(us)) { (text) } }
}

fn duration_text(us: i64) -> String {
    let s = (us / 1_000_000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes_text(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n < 1024.0 => format!("{n} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n if n < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n => format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0),
    }
}

fn details(e: &EventRecord) -> Value {
    serde_json::from_str(&e.details).unwrap_or(Value::Null)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text_of).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn is_breakglass(e: &EventRecord, d: &Value) -> bool {
    e.kind == "breakglass.used" || d["method"] == "breakglass"
}

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

fn filter_form(view: View, f: &Filters, fields: &[(&str, &str, &str)]) -> Markup {
    let value = |name: &str| -> String {
        match name {
            "user" => f.user.clone(),
            "outcome" => f.outcome.clone(),
            "ip" => f.ip.clone(),
            "kind" => f.kind.clone(),
            "target" => f.target.clone(),
            "session" => f.session.clone(),
            "status" => f.status.clone(),
            "since" => f.since.clone(),
            "until" => f.until.clone(),
            _ => None,
        }
        .unwrap_or_default()
    };
    let export = |format: &str| {
        let query = Filters {
            before: None,
            ..f.clone()
        }
        .query();
        format!(
            "/ui/export?view={}&format={format}{}{query}",
            view.as_str(),
            if query.is_empty() { "" } else { "&" }
        )
    };
    html! {
        form.filters method="get" {
            @for (name, label, placeholder) in fields {
                label { (label) input name=(name) value=(value(name)) placeholder=(placeholder); }
            }
            button type="submit" { "Filter" }
            a.clear href={ "/ui/" (view.as_str()) } { "Clear" }
            span.export {
                "Export: "
                a #export-csv href=(export("csv")) { "CSV" }
                " · "
                a #export-jsonl href=(export("jsonl")) { "JSON lines" }
            }
        }
    }
}

fn pager(base: &str, f: &Filters, next: Option<String>) -> Markup {
    html! {
        nav.pager {
            @if f.before.as_deref().is_some_and(|b| !b.is_empty()) {
                a href=(base_link(base, &Filters { before: None, ..f.clone() })) { "⇤ Newest" }
            }
            @if let Some(next) = next {
                a.older href=(base_link(base, &f.with_before(next))) { "Older →" }
            }
        }
    }
}

fn base_link(base: &str, f: &Filters) -> String {
    let q = f.query();
    if q.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{q}")
    }
}

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

/// `GET /ui/sessions/{id}`: metadata, the recording player, the query log.
pub async fn session(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    UrlPath(id): UrlPath<String>,
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
            div #player data-cast={ "/ui/sessions/" (s.id) "/recording" } {}
            p { a href={ "/ui/sessions/" (s.id) "/recording" } download { "Download asciicast" } " · replay in a terminal: " code { "pam audit play " (s.id) } }
        }
        @if s.kind == "postgres" {
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

/// Whether the recording still has the SHA-256 that `session.end` recorded.
async fn recording_integrity(deps: &Deps, s: &SessionRecord) -> Markup {
    let Ok((_, path)) = trail::recording_path(&deps.sessions, &deps.recordings_dir, &s.id).await
    else {
        return html! {};
    };
    let Some(expected) = &s.recording_sha256 else {
        return html! { span.badge { "recording in progress" } };
    };
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

/// `GET /ui/verify`: the chain's state: head, newest checkpoint, and the
/// last full verification (run with the button; it takes a while).
pub async fn verify(user: WebUser, State(deps): State<Arc<Deps>>) -> Response {
    if let Err(r) = enter(&deps, &user, "verify", json!({})).await {
        return r;
    }
    let head = match deps.audit.head(&deps.audit_key).await {
        Ok(h) => h,
        Err(e) => return error_page(&Error::Internal(e.into())),
    };
    let state = deps.verification.get();
    let running = matches!(state, VerifyState::Running { .. });
    let head_markup = if running {
        html! { meta http-equiv="refresh" content="2"; }
    } else {
        html! {}
    };
    let body = html! {
        dl.meta {
            dt { "Events in the chain" } dd #head-seq { (head.seq) }
            dt { "Newest checkpoint" }
            dd #checkpoint {
                @match &head.checkpoint {
                    None => { "none yet" }
                    Some((cp, true)) => { span.badge.ok { "valid" } " event " (cp.seq) " sealed at " (time_cell(cp.time_us)) ", key " code { (cp.key_id) } }
                    Some((cp, false)) => { span.badge.danger { "BROKEN" } " the checkpoint at event " (cp.seq) " does not verify" }
                }
            }
        }
        h2 { "Full verification" }
        div #verification {
            @match &state {
                VerifyState::Never => { p { "Not run from this broker since it started." } }
                VerifyState::Running { checked, by, started_us } => {
                    p { "Running (started by " (by) " at " (time_cell(*started_us)) "): " (checked) " events checked…" }
                }
                VerifyState::Done { report, by, at_us } => {
                    @if report["ok"] == true {
                        p.ok { span.badge.ok { "intact" } " " (report["events"]) " events and " (report["checkpoints"]) " checkpoints verified in " (report["elapsed_ms"]) " ms, by " (by) " at " (time_cell(*at_us)) "." }
                    } @else {
                        p.broken { span.badge.danger { "BROKEN" } " verified by " (by) " at " (time_cell(*at_us)) ":" }
                        ul.problems {
                            @for p in report["problems"].as_array().into_iter().flatten() {
                                li.problem { strong { (text_of(&p["kind"])) } " at event " (text_of(&p["seq"])) ": " (text_of(&p["message"])) }
                            }
                        }
                    }
                    @if let Some(cp) = report["last_checkpoint"].as_object() {
                        p { "Last verified checkpoint: event " (text_of(&cp["seq"])) " at " (text_of(&cp["time"])) "." }
                    }
                }
            }
        }
        @if !running {
            form method="post" action="/ui/verify" {
                input type="hidden" name="csrf" value=(user.csrf);
                button type="submit" { "Verify the whole chain now" }
            }
        }
        p { "The same check offline: " code { "pam audit verify --config pam.toml" } }
    };
    html_response(
        StatusCode::OK,
        layout_with(&user, "Audit chain", "verify", head_markup, body),
    )
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/verify`: starts a full verification in the background.
pub async fn verify_start(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if !user.check_csrf(&form.csrf) {
        return csrf_refused(&deps, &user, "/ui/verify").await;
    }
    if let Err(r) = enter(&deps, &user, "verify:run", json!({})).await {
        return r;
    }
    let by = user.principal.email().to_owned();
    {
        let Ok(mut state) = deps.verification.0.lock() else {
            return Redirect::to("/ui/verify").into_response();
        };
        if matches!(*state, VerifyState::Running { .. }) {
            return Redirect::to("/ui/verify").into_response();
        }
        *state = VerifyState::Running {
            checked: 0,
            by: by.clone(),
            started_us: now_us(),
        };
    }
    let deps = deps.clone();
    tokio::spawn(async move {
        let progress = deps.verification.clone();
        let started = now_us();
        let result = deps
            .audit
            .verify(&deps.audit_key, |checked| {
                progress.set(VerifyState::Running {
                    checked,
                    by: by.clone(),
                    started_us: started,
                })
            })
            .await;
        let report = match result {
            Ok(report) => trail::report_json(&report),
            Err(e) => {
                tracing::error!(error = %e, "chain verification failed to run");
                json!({"ok": false, "problems": [{"kind": "error", "seq": null, "message": "the store could not be read; see the broker log"}]})
            }
        };
        deps.verification.set(VerifyState::Done {
            report,
            by,
            at_us: now_us(),
        });
    });
    Redirect::to("/ui/verify").into_response()
}

// ---- static assets ----------------------------------------------------------------

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");
const PLAYER_JS: &str = include_str!("assets/vendor/asciinema-player.min.js");
const PLAYER_CSS: &str = include_str!("assets/vendor/asciinema-player.css");

/// `GET /ui/static/{name}`: the embedded scripts and styles.
pub async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    let (content_type, body) = match name.as_str() {
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "asciinema-player.min.js" => ("text/javascript; charset=utf-8", PLAYER_JS),
        "asciinema-player.css" => ("text/css; charset=utf-8", PLAYER_CSS),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
