//! The audit chain page: the head, the newest checkpoint, and the last full
//! verification this broker ran (in the background, from the button).

use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::layout::{html_response, layout_with, time_cell};
use super::{csrf_refused, enter, error_page};
use crate::audit::verify::Report;
use crate::domain::audit::{format_us, now_us};
use crate::sync::lock;
use crate::web::Deps;
use crate::web::browser::WebUser;
use crate::web::error::Error;

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
        /// `None`: the store could not be read (the broker log says why).
        report: Option<Box<Report>>,
        by: String,
        at_us: i64,
    },
}

impl Verification {
    fn get(&self) -> VerifyState {
        lock(&self.0).clone()
    }
    fn set(&self, state: VerifyState) {
        *lock(&self.0) = state;
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
                VerifyState::Done { report: None, by, at_us } => {
                    p.broken { span.badge.danger { "BROKEN" } " verified by " (by) " at " (time_cell(*at_us)) ":" }
                    ul.problems {
                        li.problem { strong { "error" } ": the store could not be read; see the broker log" }
                    }
                }
                VerifyState::Done { report: Some(report), by, at_us } => {
                    @if report.ok() {
                        p.ok { span.badge.ok { "intact" } " " (report.events) " events and " (report.checkpoints) " checkpoints verified in " (report.elapsed.as_millis()) " ms, by " (by) " at " (time_cell(*at_us)) "." }
                    } @else {
                        p.broken { span.badge.danger { "BROKEN" } " verified by " (by) " at " (time_cell(*at_us)) ":" }
                        ul.problems {
                            @for p in &report.problems {
                                li.problem { strong { (format!("{:?}", p.kind).to_lowercase()) } " at event " (p.seq) ": " (p.message) }
                            }
                        }
                    }
                    @if let Some(cp) = &report.last_checkpoint {
                        p { "Last verified checkpoint: event " (cp.seq) " at " (format_us(cp.time_us)) "." }
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
        let mut state = lock(&deps.verification.0);
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
            .verify(
                &deps.audit_key,
                None,
                Some(deps.recordings_dir.clone()),
                |checked| {
                    progress.set(VerifyState::Running {
                        checked,
                        by: by.clone(),
                        started_us: started,
                    })
                },
            )
            .await;
        let report = match result {
            Ok(report) => Some(Box::new(report)),
            Err(e) => {
                tracing::error!(error = %e, "chain verification failed to run");
                None
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
