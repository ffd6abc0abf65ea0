//! Full-text search, shared by the page (`/ui/search`) and the API
//! (`GET /api/v1/audit/search?q=&limit=`): the gate (`view_audit`, a
//! refusal recorded as its `policy.decision`), then the query (literal
//! words; an empty or overlong one is refused and recorded as a failed
//! `audit.view`), then the record of the search with its text, then the
//! hits.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Deps;
use super::auth::Authenticated;
use super::error::Error;
use super::trail;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::domain::policy::Action;
use crate::domain::principal::Principal;
use crate::domain::search::{self, Hit};
use crate::identity::Client;

#[derive(Debug, Deserialize, Default)]
pub struct SearchParams {
    pub q: Option<String>,
    pub limit: Option<u32>,
}

/// `GET /api/v1/audit/search?q=TEXT[&limit=N]` (view_audit): hits, newest first.
pub async fn api_search(
    auth: Authenticated,
    State(deps): State<Arc<Deps>>,
    Query(params): Query<SearchParams>,
) -> Result<Json<Value>, Error> {
    let hits = run(&deps, &auth.principal, &auth.client, "api:search", &params).await?;
    Ok(Json(json!({ "hits": hits })))
}

/// Gates, checks, records and runs one search.
pub async fn run(
    deps: &Deps,
    principal: &Principal,
    client: &Client,
    view: &str,
    params: &SearchParams,
) -> Result<Vec<Hit>, Error> {
    trail::authorize(deps, principal, client, Action::ViewAudit)
        .await
        .map_err(Error::Forbidden)?;
    let text = params.q.as_deref().unwrap_or_default();
    let query = match search::Query::parse(text, params.limit) {
        Ok(query) => query,
        Err(refused) => {
            deps.audit
                .note(
                    AuditEvent::new(EventKind::AuditView, Outcome::Failure)
                        .actor(principal.email())
                        .source_ip(client.ip)
                        .details(json!({
                            "view": view,
                            "filters": {"q": text},
                            "refused": refused.to_string(),
                        })),
                )
                .await;
            return Err(Error::BadRequest(refused.to_string()));
        }
    };
    trail::record_view(
        &deps.audit,
        principal,
        client,
        view,
        json!({"q": query.text, "limit": query.limit}),
    )
    .await?;
    deps.search
        .find(&query)
        .await
        .map_err(|e| Error::Internal(e.into()))
}
