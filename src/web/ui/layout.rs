//! The pieces every page is made of: the HTML response, the layout with
//! its navigation, message pages, cells (times, durations, sizes), the
//! filter form and the pager.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::super::browser::WebUser;
use super::super::trail::{Filters, View};
use crate::domain::audit::{EventRecord, format_us};

pub(super) fn html_response(status: StatusCode, markup: Markup) -> Response {
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

pub(super) fn layout(user: &WebUser, title: &str, active: &str, body: Markup) -> Markup {
    layout_with(user, title, active, html! {}, body)
}

pub(super) fn layout_with(
    user: &WebUser,
    title: &str,
    active: &str,
    head: Markup,
    body: Markup,
) -> Markup {
    let nav = [
        ("logins", "Logins"),
        ("sessions", "Sessions"),
        ("search", "Search"),
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
pub(super) fn time_cell(us: i64) -> Markup {
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

pub(super) fn duration_text(us: i64) -> String {
    let s = (us / 1_000_000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub(super) fn bytes_text(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n < 1024.0 => format!("{n} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n if n < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n => format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0),
    }
}

pub(super) fn details(e: &EventRecord) -> Value {
    serde_json::from_str(&e.details).unwrap_or(Value::Null)
}

pub(super) fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text_of).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

pub(super) fn is_breakglass(e: &EventRecord, d: &Value) -> bool {
    e.kind == "breakglass.used" || d["method"] == "breakglass"
}

pub(super) fn filter_form(view: View, f: &Filters, fields: &[(&str, &str, &str)]) -> Markup {
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

pub(super) fn pager(base: &str, f: &Filters, next: Option<String>) -> Markup {
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

pub(super) fn base_link(base: &str, f: &Filters) -> String {
    let q = f.query();
    if q.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{q}")
    }
}
