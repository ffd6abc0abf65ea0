//! The JSON API the CLI uses (besides login): targets, and later sessions,
//! credentials and audit queries.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::Deps;
use super::auth::Authenticated;
use super::error::Error;
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
    for target in deps.targets.snapshot().iter() {
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

/// Passes the policy gate for an audit or admin action, or answers 403.
async fn authorize(
    deps: &Deps,
    principal: &crate::domain::principal::Principal,
    client: &crate::identity::Client,
    action: crate::domain::policy::Action,
) -> Result<(), Error> {
    super::trail::authorize(deps, principal, client, action)
        .await
        .map_err(Error::Forbidden)
}

#[derive(Deserialize)]
pub struct SessionsQuery {
    user: Option<String>,
    target: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/sessions` (view_audit): live sessions first, then newest.
pub async fn sessions(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Vec<crate::domain::session::SessionRecord>>, Error> {
    authorize(
        &deps,
        &principal,
        &client,
        crate::domain::policy::Action::ViewAudit,
    )
    .await?;
    super::trail::record_view(
        &deps.audit,
        &principal,
        &client,
        "api:sessions",
        serde_json::json!({
            "user": q.user, "target": q.target, "kind": q.kind,
            "status": q.status, "limit": q.limit,
        }),
    )
    .await?;
    let filter = crate::domain::session::SessionFilter {
        user: q.user,
        target: q.target,
        kind: q.kind,
        status: q.status,
        limit: q.limit.unwrap_or(100),
        ..Default::default()
    };
    deps.sessions
        .list(&filter)
        .await
        .map(Json)
        .map_err(|e| Error::Internal(e.into()))
}

/// `GET /api/v1/sessions/{id}` (view_audit).
pub async fn session(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<crate::domain::session::SessionRecord>, Error> {
    authorize(
        &deps,
        &principal,
        &client,
        crate::domain::policy::Action::ViewAudit,
    )
    .await?;
    super::trail::record_view(
        &deps.audit,
        &principal,
        &client,
        "api:session",
        serde_json::json!({"session": id}),
    )
    .await?;
    deps.sessions
        .get(&id)
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("no session {id}")))
}

#[derive(Deserialize)]
pub struct TerminateRequest {
    reason: String,
}

/// `POST /api/v1/sessions/{id}/terminate` (admin): ends a live session on
/// whichever broker holds it.
pub async fn terminate(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Json(request): Json<TerminateRequest>,
) -> Result<axum::http::StatusCode, Error> {
    authorize(
        &deps,
        &principal,
        &client,
        crate::domain::policy::Action::Admin,
    )
    .await?;
    let reason = request.reason.trim();
    if reason.is_empty() {
        return Err(Error::BadRequest("a reason is required".into()));
    }
    if reason.chars().any(char::is_control) || reason.len() > 500 {
        return Err(Error::BadRequest(
            "the reason must be one line of at most 500 bytes".into(),
        ));
    }
    match deps
        .sessions
        .terminate(&id, principal.email(), reason)
        .await
    {
        Ok(true) => Ok(axum::http::StatusCode::ACCEPTED),
        Ok(false) => Err(Error::NotFound(format!("no live session {id}"))),
        Err(e) => Err(Error::Internal(e.into())),
    }
}

fn aws_error(e: crate::aws::credentials::AccessError) -> Error {
    use crate::aws::credentials::AccessError;
    match e {
        AccessError::BadRequest(m) => Error::BadRequest(m),
        AccessError::NotFound(m) => Error::NotFound(m),
        AccessError::Denied(denied) => Error::Forbidden(denied.to_string()),
        e @ (AccessError::Sts(_) | AccessError::Federation(_)) => Error::BadGateway(e.to_string()),
        AccessError::Unavailable(e) => Error::Unavailable(e.to_string()),
    }
}

/// `POST /api/v1/aws/credentials`: STS credentials for an `aws` target.
pub async fn aws_credentials(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    Json(request): Json<crate::api::AwsRequest>,
) -> Result<Json<crate::api::AwsCredentials>, Error> {
    use secrecy::ExposeSecret;
    let issued = deps
        .aws
        .credentials(&crate::aws::credentials::Request {
            principal: &principal,
            source_ip: client.ip,
            role: &request.role,
            duration_secs: request.duration_secs,
            reason: request.reason.clone(),
        })
        .await
        .map_err(aws_error)?;
    let c = &issued.credentials;
    Ok(Json(crate::api::AwsCredentials {
        version: 1,
        access_key_id: c.access_key_id.clone(),
        secret_access_key: crate::api::Sensitive::new(c.secret_access_key.expose_secret()),
        session_token: crate::api::Sensitive::new(c.session_token.expose_secret()),
        expiration: rfc3339(c.expiration),
    }))
}

/// `POST /api/v1/aws/console`: a console sign-in URL for an `aws` target.
pub async fn aws_console(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    Json(request): Json<crate::api::AwsRequest>,
) -> Result<Json<crate::api::AwsConsole>, Error> {
    use secrecy::ExposeSecret;
    let (url, issued) = deps
        .aws
        .console(&crate::aws::credentials::Request {
            principal: &principal,
            source_ip: client.ip,
            role: &request.role,
            duration_secs: request.duration_secs,
            reason: request.reason.clone(),
        })
        .await
        .map_err(aws_error)?;
    Ok(Json(crate::api::AwsConsole {
        url: crate::api::Sensitive::new(url.expose_secret()),
        expires_at: rfc3339(issued.credentials.expiration),
    }))
}

/// `2026-11-26T12:00:00Z` for Unix seconds (the form the AWS CLI expects).
fn rfc3339(secs: i64) -> String {
    let t = crate::domain::audit::from_us(secs.saturating_mul(1_000_000));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `POST /api/v1/targets/check` (admin): proves with AWS that each target
/// (all, or those named) will work; one report per target.
pub async fn targets_check(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    Json(request): Json<crate::api::TargetsCheckRequest>,
) -> Result<Json<Vec<crate::api::TargetCheck>>, Error> {
    authorize(
        &deps,
        &principal,
        &client,
        crate::domain::policy::Action::Admin,
    )
    .await?;
    let all = deps.targets.snapshot();
    let mut chosen = Vec::new();
    if request.targets.is_empty() {
        chosen.extend(all.iter().cloned());
    } else {
        for name in &request.targets {
            match all.iter().find(|t| &t.name == name) {
                Some(t) => chosen.push(t.clone()),
                None => {
                    return Err(Error::NotFound(format!(
                        "no target {:?}",
                        name.chars().take(64).collect::<String>()
                    )));
                }
            }
        }
    }
    let reports = crate::discovery::check::check_all(deps.aws.aws(), &chosen, true).await;
    Ok(Json(
        reports
            .into_iter()
            .map(|r| crate::api::TargetCheck {
                ok: r.ok(),
                target: r.target,
                kind: r.kind.to_owned(),
                checks: r
                    .lines
                    .into_iter()
                    .map(|l| crate::api::CheckLine {
                        check: l.check.to_owned(),
                        ok: l.ok,
                        detail: l.detail,
                        fix: l.fix,
                    })
                    .collect(),
            })
            .collect(),
    ))
}

/// `GET /api/v1/targets/{name}/explain`: what an aws target's role may do,
/// for users who may assume it (with a reason, if policy wants one).
pub async fn explain(
    Authenticated { principal, client }: Authenticated,
    State(deps): State<Arc<Deps>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<crate::api::RoleExplain>, Error> {
    let not_found = || {
        Error::NotFound(format!(
            "no AWS role {:?} (see `pam ls aws`)",
            name.chars().take(64).collect::<String>()
        ))
    };
    let target = deps.targets.get(&name).ok_or_else(not_found)?;
    let crate::config::TargetKind::Aws(aws_target) = &target.kind else {
        return Err(not_found());
    };
    let resource = Resource::Target(target.to_ref());
    let context = RequestContext {
        source_ip: client.ip,
        reason: Some("stated".into()),
        ..RequestContext::default()
    };
    if deps
        .gate
        .peek(&principal.identity, target.action(), &resource, &context)
        .is_err()
    {
        return Err(not_found());
    }
    let role = aws_target.role_arn.rsplit('/').next().unwrap_or_default();
    let policies = crate::aws::iam::role_policies(deps.aws.aws(), role)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    let statements: Vec<_> = policies
        .iter()
        .filter_map(|p| crate::discovery::iam_policy::parse(&p.document).ok())
        .flatten()
        .collect();
    let services = crate::discovery::iam_policy::summarise(&statements)
        .into_iter()
        .map(|(service, (actions, resources))| {
            (
                service,
                crate::api::ExplainedService {
                    actions: actions.into_iter().collect(),
                    resources: resources.into_iter().collect(),
                },
            )
        })
        .collect();
    Ok(Json(crate::api::RoleExplain {
        target: target.name.clone(),
        role_arn: aws_target.role_arn.clone(),
        policies: policies
            .iter()
            .map(|p| crate::api::ExplainedPolicy {
                name: p.name.clone(),
                kind: if p.arn.is_some() {
                    "attached"
                } else {
                    "inline"
                }
                .to_owned(),
                arn: p.arn.clone(),
            })
            .collect(),
        services,
    }))
}
