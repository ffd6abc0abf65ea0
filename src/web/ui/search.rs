//! `GET /ui/search?q=`: full-text search over ended sessions (see
//! `web::search`); each hit links to its session's replay at that moment
//! (`/ui/sessions/{id}?t=SECONDS`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde_json::json;

use super::layout::{html_response, layout, message_page, time_cell};
use super::{enter, error_page};
use crate::domain::search::{Hit, MAX_QUERY_CHARS};
use crate::web::Deps;
use crate::web::browser::WebUser;
use crate::web::error::Error;
use crate::web::search::{SearchParams, run};

pub async fn search(
    user: WebUser,
    State(deps): State<Arc<Deps>>,
    Query(params): Query<SearchParams>,
) -> Response {
    let text = params.q.clone().unwrap_or_default();
    if text.is_empty() {
        if let Err(r) = enter(&deps, &user, "search", json!({})).await {
            return r;
        }
        return page(&user, StatusCode::OK, &text, None, None);
    }
    match run(&deps, &user.principal, &user.client, "search", &params).await {
        Ok(hits) => page(&user, StatusCode::OK, &text, Some(&hits), None),
        Err(Error::BadRequest(message)) => {
            page(&user, StatusCode::BAD_REQUEST, &text, None, Some(&message))
        }
        Err(Error::Forbidden(message)) => {
            message_page(StatusCode::FORBIDDEN, "Not allowed", &message)
        }
        Err(e) => error_page(&e),
    }
}

fn page(
    user: &WebUser,
    status: StatusCode,
    text: &str,
    hits: Option<&[Hit]>,
    refused: Option<&str>,
) -> Response {
    let body = html! {
        form.filters #search-form method="get" action="/ui/search" {
            label { "Words " input type="search" name="q" value=(text) maxlength=(MAX_QUERY_CHARS) autofocus; }
            button type="submit" { "Search" }
        }
        p.hint { "Finds ended sessions whose terminal output, commands or SQL contain these words, in this order. "
            "The text is taken literally: punctuation, quotes and operators are ignored. Every search is recorded." }
        @if let Some(message) = refused { p.broken #search-refused { (message) } }
        @if let Some(hits) = hits { (results(hits)) }
    };
    html_response(status, layout(user, "Search", "search", body))
}

fn results(hits: &[Hit]) -> Markup {
    html! {
        @if hits.is_empty() {
            p #no-hits { "No session showed or ran these words." }
        } @else {
            table #hits {
                thead { tr { th { "Session started" } th { "User" } th { "Target" } th { "Kind" } th { "At" } th { "Source" } th { "Text" } } }
                tbody {
                    @for hit in hits {
                        @let at = format!("{:.1}", hit.offset);
                        tr {
                            td { (time_cell(hit.started_at)) }
                            td { (hit.user) }
                            td { (hit.target) }
                            td { (hit.kind) }
                            td { a.hit href={ "/ui/sessions/" (hit.session_id) "?t=" (at) } { (at) " s" } }
                            td { (hit.source) }
                            td { code.snippet { (hit.snippet) } }
                        }
                    }
                }
            }
        }
    }
}
