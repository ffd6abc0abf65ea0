//! The JSON API the CLI uses (besides login): targets, and later sessions,
//! credentials and audit queries.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::Deps;
use super::auth::Authenticated;
use crate::api::TargetInfo;
use crate::domain::policy::{RequestContext, Resource};

#[derive(Deserialize)]
pub struct TargetsQuery {
    kind: Option<String>,
}

/// `GET /api/v1/targets`: the targets the caller may use, after policy.
/// Targets that need a stated reason are listed with `requires: ["reason"]`.
pub async fn targets(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    Query(query): Query<TargetsQuery>,
) -> Json<Vec<TargetInfo>> {
    let kind = query.kind.map(|k| match k.as_str() {
        "db" => "postgres".to_owned(),
        _ => k,
    });
    let context = RequestContext {
        source_ip: client.ip,
        ..RequestContext::default()
    };
    let with_reason = RequestContext {
        reason: Some("stated".into()),
        ..context.clone()
    };
    let mut out = Vec::new();
    for target in deps.targets.iter() {
        if kind.as_deref().is_some_and(|k| k != target.kind_name()) {
            continue;
        }
        let resource = Resource::Target(target.to_ref());
        let action = target.action();
        let requires = if deps
            .gate
            .peek(&principal.identity, action, &resource, &context)
            .is_ok()
        {
            Vec::new()
        } else if deps
            .gate
            .peek(&principal.identity, action, &resource, &with_reason)
            .is_ok()
        {
            vec!["reason".to_owned()]
        } else {
            continue;
        };
        out.push(TargetInfo {
            name: target.name.clone(),
            kind: target.kind_name().to_owned(),
            tags: target.tags.clone(),
            requires,
        });
    }
    Json(out)
}
