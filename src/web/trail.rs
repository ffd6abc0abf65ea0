//! Reading the audit trail over HTTP: the filters every view shares, the
//! JSON API (`/api/v1/audit/...`), recordings, and streamed CSV / JSON
//! lines exports. Every read is itself audited (`audit.view`,
//! `audit.export`; PCI DSS 10.2.1.3) and passes the policy gate first.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Deps;
use super::auth::Authenticated;
use super::error::Error;
use crate::audit::Audit;
use crate::domain::audit::{AuditEvent, EventFilter, EventKind, EventRecord, Outcome, format_us};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::principal::Principal;
use crate::domain::session::{SessionFilter, SessionRecord};
use crate::identity::Client;
use crate::sessions::Sessions;

/// Rows per page of every list.
pub const PAGE: u32 = 50;
/// Rows fetched per round trip while streaming an export.
const EXPORT_CHUNK: u32 = 1000;

/// The login history: successes, failures and lockouts.
pub const LOGIN_KINDS: [&str; 3] = ["login.success", "login.failure", "login.lockout"];
/// Credentials the broker handed out for AWS.
pub const CREDENTIAL_KINDS: [&str; 2] = ["aws.credentials.issued", "aws.console.issued"];

/// The filters of every list, from the query string. Empty values mean
/// "any" (HTML forms send empty fields).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filters {
    pub user: Option<String>,
    pub outcome: Option<String>,
    pub ip: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub session: Option<String>,
    pub status: Option<String>,
    /// RFC 3339, `YYYY-MM-DD` or an age such as `7d`.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Keyset cursor: the `seq` (events) or `started_at_us:id` (sessions)
    /// of the last row of the previous page.
    pub before: Option<String>,
    pub limit: Option<u32>,
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(256).collect())
}

impl Filters {
    pub fn user(&self) -> Option<String> {
        nonempty(&self.user)
    }
    pub fn outcome(&self) -> Option<String> {
        nonempty(&self.outcome)
    }
    pub fn kind(&self) -> Option<String> {
        nonempty(&self.kind)
    }
    pub fn status(&self) -> Option<String> {
        nonempty(&self.status)
    }

    fn time(field: &str, value: &Option<String>) -> Result<Option<i64>, String> {
        nonempty(value)
            .map(|t| crate::domain::audit::parse_time(&t).map_err(|e| format!("{field}: {e}")))
            .transpose()
    }

    /// The non-empty filters, for the audit record of a view or export.
    pub fn summary(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (k, v) in [
            ("user", &self.user),
            ("outcome", &self.outcome),
            ("ip", &self.ip),
            ("kind", &self.kind),
            ("target", &self.target),
            ("session", &self.session),
            ("status", &self.status),
            ("since", &self.since),
            ("until", &self.until),
            ("before", &self.before),
        ] {
            if let Some(v) = nonempty(v) {
                map.insert(k.into(), Value::String(v));
            }
        }
        Value::Object(map)
    }

    /// The page after the one that ended with `last`.
    pub fn with_before(&self, before: String) -> Self {
        Self {
            before: Some(before),
            ..self.clone()
        }
    }

    /// The query string of these filters (for links and export URLs).
    pub fn query(&self) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        if let Value::Object(map) = self.summary() {
            for (k, v) in map {
                out.append_pair(&k, v.as_str().unwrap_or_default());
            }
        }
        out.finish()
    }
}

/// The event lists of the web view and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    Logins,
    Events,
    Decisions,
    Credentials,
    Sessions,
}

impl View {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "logins" => View::Logins,
            "events" => View::Events,
            "decisions" => View::Decisions,
            "credentials" => View::Credentials,
            "sessions" => View::Sessions,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            View::Logins => "logins",
            View::Events => "events",
            View::Decisions => "decisions",
            View::Credentials => "credentials",
            View::Sessions => "sessions",
        }
    }

    /// The store filter for an event view (not `Sessions`).
    pub fn event_filter(self, f: &Filters, limit: u32) -> Result<EventFilter, String> {
        let kinds: Vec<String> = match self {
            View::Logins => LOGIN_KINDS.map(String::from).to_vec(),
            View::Decisions => vec!["policy.decision".into()],
            View::Credentials => CREDENTIAL_KINDS.map(String::from).to_vec(),
            View::Events | View::Sessions => f
                .kind()
                .map(|k| {
                    k.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        };
        let before_seq = nonempty(&f.before)
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| "before must be an event sequence number".to_owned())
            })
            .transpose()?;
        Ok(EventFilter {
            kinds,
            actor: f.user(),
            target: nonempty(&f.target),
            session_id: nonempty(&f.session),
            outcome: f.outcome(),
            source_ip: nonempty(&f.ip),
            since_us: Filters::time("since", &f.since)?,
            until_us: Filters::time("until", &f.until)?,
            before_seq,
            after_seq: None,
            ascending: false,
            limit,
        })
    }

    /// The session filter (`Sessions` only); live sessions are listed
    /// separately unless a status is asked for.
    pub fn session_filter(f: &Filters, limit: u32) -> Result<SessionFilter, String> {
        let before = nonempty(&f.before)
            .map(|b| {
                b.split_once(':')
                    .and_then(|(ts, id)| Some((ts.parse::<i64>().ok()?, id.to_owned())))
                    .ok_or_else(|| "before must be STARTED_AT_US:SESSION_ID".to_owned())
            })
            .transpose()?;
        Ok(SessionFilter {
            user: f.user(),
            target: nonempty(&f.target),
            kind: f.kind(),
            status: f.status(),
            since_us: Filters::time("since", &f.since)?,
            until_us: Filters::time("until", &f.until)?,
            exclude_live: f.status().is_none(),
            by_start: true,
            before,
            limit,
        })
    }
}

/// The keyset cursor after a session row.
pub fn session_cursor(s: &SessionRecord) -> String {
    format!("{}:{}", s.started_at, s.id)
}

/// The resource and context of an audit (or, for `admin`, broker) action.
fn subject(action: Action, client: &Client) -> (Resource, RequestContext) {
    let resource = match action {
        Action::Admin => Resource::Broker,
        _ => Resource::Audit,
    };
    let context = RequestContext {
        source_ip: client.ip,
        ..RequestContext::default()
    };
    (resource, context)
}

/// Passes the gate for `action` on the audit trail (or the broker, for
/// `admin`): the decision is audited as `policy.decision`.
pub async fn authorize(
    deps: &Deps,
    principal: &Principal,
    client: &Client,
    action: Action,
) -> Result<(), String> {
    let (resource, context) = subject(action, client);
    deps.gate
        .check(
            &principal.identity,
            Some(&principal.session_id),
            action,
            &resource,
            &context,
        )
        .await
        .map(|_| ())
        .map_err(|denied| denied.to_string())
}

/// Whether the caller could take `action` (no audit record; for showing
/// buttons, never for deciding).
pub fn may(deps: &Deps, principal: &Principal, client: &Client, action: Action) -> bool {
    let (resource, context) = subject(action, client);
    deps.gate
        .peek(&principal.identity, action, &resource, &context)
        .is_ok()
}

/// Records that `principal` read `what` (fail closed: no record, no data).
pub async fn record_view(
    audit: &Audit,
    principal: &Principal,
    client: &Client,
    what: &str,
    details: Value,
) -> Result<(), Error> {
    audit
        .gate(
            AuditEvent::new(EventKind::AuditView, Outcome::Success)
                .actor(principal.email())
                .source_ip(client.ip)
                .details(json!({"view": what, "filters": details})),
        )
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))
}

// ---- JSON API ---------------------------------------------------------------

async fn api_gate(deps: &Deps, auth: &Authenticated, what: &str, f: &Value) -> Result<(), Error> {
    authorize(deps, &auth.principal, &auth.client, Action::ViewAudit)
        .await
        .map_err(Error::Forbidden)?;
    record_view(&deps.audit, &auth.principal, &auth.client, what, f.clone()).await
}

async fn event_page(deps: &Deps, view: View, f: &Filters) -> Result<Json<Value>, Error> {
    let limit = f.limit.unwrap_or(PAGE).clamp(1, 1000);
    let filter = view.event_filter(f, limit).map_err(Error::BadRequest)?;
    let events = deps
        .audit
        .list(&filter)
        .await
        .map_err(|e| Error::Internal(e.into()))?;
    let next = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Json(json!({
        "events": events.iter().map(EventRecord::to_json).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

/// `GET /api/v1/audit/events` (view_audit): newest first, keyset paged.
pub async fn api_events(
    auth: Authenticated,
    State(deps): State<Arc<Deps>>,
    Query(f): Query<Filters>,
) -> Result<Json<Value>, Error> {
    api_gate(&deps, &auth, "api:events", &f.summary()).await?;
    event_page(&deps, View::Events, &f).await
}

/// `GET /api/v1/audit/logins` (view_audit): the login history.
pub async fn api_logins(
    auth: Authenticated,
    State(deps): State<Arc<Deps>>,
    Query(f): Query<Filters>,
) -> Result<Json<Value>, Error> {
    api_gate(&deps, &auth, "api:logins", &f.summary()).await?;
    event_page(&deps, View::Logins, &f).await
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    view: Option<String>,
    format: Option<String>,
    #[serde(flatten)]
    filters: Filters,
}

/// `GET /api/v1/audit/export?view=..&format=csv|jsonl` (view_audit).
pub async fn api_export(
    auth: Authenticated,
    State(deps): State<Arc<Deps>>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, Error> {
    authorize(&deps, &auth.principal, &auth.client, Action::ViewAudit)
        .await
        .map_err(Error::Forbidden)?;
    export(&deps, &auth.principal, &auth.client, q).await
}

#[derive(Deserialize)]
pub struct VerifyQuery {
    /// A head saved earlier (`pam audit head`): `SEQ:HASH`.
    expect: Option<String>,
}

/// `GET /api/v1/audit/verify[?expect=SEQ:HASH]` (view_audit): walks the
/// whole chain.
pub async fn api_verify(
    auth: Authenticated,
    State(deps): State<Arc<Deps>>,
    Query(q): Query<VerifyQuery>,
) -> Result<Json<Value>, Error> {
    let expect = match q.expect.as_deref() {
        None | Some("") => None,
        Some(token) => Some(crate::audit::verify::Expected::parse(token).ok_or_else(|| {
            Error::BadRequest("expect: SEQ:HASH (64 hex digits), as `pam audit head` prints".into())
        })?),
    };
    api_gate(&deps, &auth, "api:verify", &json!({"expect": q.expect})).await?;
    let report = deps
        .audit
        .verify(
            &deps.audit_key,
            expect,
            Some(deps.recordings_dir.clone()),
            |_| {},
        )
        .await
        .map_err(|e| Error::Internal(e.into()))?;
    Ok(Json(report_json(&report)))
}

/// `GET /api/v1/audit/head` (view_audit): the end of the chain, as the
/// token `pam audit verify --expect` takes.
pub async fn api_head(
    auth: Authenticated,
    State(deps): State<Arc<Deps>>,
) -> Result<Json<Value>, Error> {
    api_gate(&deps, &auth, "api:head", &json!({})).await?;
    let head = deps
        .audit
        .head_point()
        .await
        .map_err(|e| Error::Internal(e.into()))?;
    Ok(Json(
        json!({"seq": head.seq, "hash": hex::encode(&head.hash), "head": head.to_string()}),
    ))
}

/// A verification report as JSON (the API and `pam audit verify --json`).
pub fn report_json(report: &crate::audit::verify::Report) -> Value {
    json!({
        "ok": report.ok(),
        "events": report.events,
        "head_seq": report.head_seq,
        "checkpoints": report.checkpoints,
        "last_checkpoint": report.last_checkpoint.as_ref().map(|c| json!({
            "seq": c.seq,
            "time": format_us(c.time_us),
            "key_id": c.key_id,
        })),
        "newest_checkpoint": report.newest_checkpoint.as_ref().map(|(c, age)| json!({
            "seq": c.seq,
            "time": format_us(c.time_us),
            "age_secs": age.as_secs(),
        })),
        "recordings_checked": report.recordings_checked,
        "recordings_missing": report.recordings_missing,
        "problems": report.problems.iter().map(|p| json!({
            "kind": format!("{:?}", p.kind).to_lowercase(),
            "seq": p.seq,
            "event_id": p.event_id,
            "message": p.message,
        })).collect::<Vec<_>>(),
        "elapsed_ms": report.elapsed.as_millis() as u64,
    })
}

/// `GET /api/v1/sessions/{id}/recording` (view_audit): the asciicast file.
pub async fn api_recording(
    auth: Authenticated,
    State(deps): State<Arc<Deps>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, Error> {
    authorize(&deps, &auth.principal, &auth.client, Action::ViewAudit)
        .await
        .map_err(Error::Forbidden)?;
    recording(&deps, &auth.principal, &auth.client, &id).await
}

// ---- recordings ---------------------------------------------------------------

/// The recording file of session `id`, or why there is none. The path
/// comes from the session row and must stay inside the recordings dir.
pub async fn recording_path(
    sessions: &Sessions,
    recordings_dir: &Path,
    id: &str,
) -> Result<(SessionRecord, PathBuf), Error> {
    if !crate::audit::recording::valid_session_id(id) {
        return Err(Error::NotFound("no such session".into()));
    }
    let session = sessions
        .get(id)
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .ok_or_else(|| Error::NotFound(format!("no session {id}")))?;
    let relative = session
        .recording
        .clone()
        .ok_or_else(|| Error::NotFound("this session has no terminal recording".into()))?;
    let relative = Path::new(&relative);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Error::NotFound(
            "this session has no terminal recording".into(),
        ));
    }
    let path = recordings_dir.join(relative);
    Ok((session, path))
}

/// Streams a recording after auditing the view.
pub async fn recording(
    deps: &Deps,
    principal: &Principal,
    client: &Client,
    id: &str,
) -> Result<Response, Error> {
    let (_, path) = recording_path(&deps.sessions, &deps.recordings_dir, id).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| Error::NotFound("the recording file is missing".into()))?;
    record_view(
        &deps.audit,
        principal,
        client,
        "recording",
        json!({"session": id}),
    )
    .await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "application/x-asciicast")], body).into_response())
}

// ---- exports ------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    JsonLines,
}

/// Streams an export of `q.view` with `q.filters`, after recording it as
/// `audit.export` (fail closed). The caller has passed the gate.
pub async fn export(
    deps: &Deps,
    principal: &Principal,
    client: &Client,
    q: ExportQuery,
) -> Result<Response, Error> {
    let view = q
        .view
        .as_deref()
        .map(|v| View::parse(v).ok_or_else(|| Error::BadRequest(format!("unknown view {v:?}"))))
        .transpose()?
        .unwrap_or(View::Events);
    let format = match q.format.as_deref().unwrap_or("csv") {
        "csv" => Format::Csv,
        "jsonl" | "json" => Format::JsonLines,
        other => {
            return Err(Error::BadRequest(format!(
                "unknown format {other:?}: use csv or jsonl"
            )));
        }
    };
    let f = Filters {
        before: None,
        ..q.filters
    };
    // Validate before recording anything.
    let source = match view {
        View::Sessions => {
            let mut sf = View::session_filter(&f, EXPORT_CHUNK).map_err(Error::BadRequest)?;
            // Every session, live or not, newest first.
            sf.exclude_live = false;
            sf.by_start = true;
            Source::Sessions(sf)
        }
        _ => Source::Events(
            view.event_filter(&f, EXPORT_CHUNK)
                .map_err(Error::BadRequest)?,
        ),
    };
    deps.audit
        .gate(
            AuditEvent::new(EventKind::AuditExport, Outcome::Success)
                .actor(principal.email())
                .source_ip(client.ip)
                .details(json!({
                    "view": view.as_str(),
                    "format": if format == Format::Csv { "csv" } else { "jsonl" },
                    "filters": f.summary(),
                })),
        )
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::JsonLines => ("application/x-ndjson", "jsonl"),
    };
    let stream = export_stream(deps.audit.clone(), deps.sessions.clone(), source, format);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"pam-{}-{}.{extension}\"",
        view.as_str(),
        crate::domain::audit::now_us() / 1_000_000
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

enum Source {
    Events(EventFilter),
    Sessions(SessionFilter),
}

struct ExportState {
    audit: Audit,
    sessions: Sessions,
    source: Source,
    format: Format,
    header_sent: bool,
    done: bool,
}

const EVENT_COLUMNS: [&str; 10] = [
    "seq",
    "id",
    "time",
    "kind",
    "actor",
    "source_ip",
    "target",
    "session_id",
    "outcome",
    "details",
];
const SESSION_COLUMNS: [&str; 14] = [
    "id",
    "kind",
    "user",
    "target",
    "login",
    "source_ip",
    "started_at",
    "ended_at",
    "status",
    "end_reason",
    "bytes_in",
    "bytes_out",
    "exit_status",
    "recording_sha256",
];

fn export_stream(
    audit: Audit,
    sessions: Sessions,
    source: Source,
    format: Format,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let state = ExportState {
        audit,
        sessions,
        source,
        format,
        header_sent: false,
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out = String::new();
        if !st.header_sent {
            st.header_sent = true;
            if st.format == Format::Csv {
                let columns: &[&str] = match st.source {
                    Source::Events(_) => &EVENT_COLUMNS,
                    Source::Sessions(_) => &SESSION_COLUMNS,
                };
                out.push_str(&columns.join(","));
                out.push_str("\r\n");
            }
        }
        let fetched = match &mut st.source {
            Source::Events(filter) => match st.audit.list(filter).await {
                Ok(events) => {
                    if events.len() < filter.limit as usize {
                        st.done = true;
                    }
                    filter.before_seq = events.last().map(|e| e.seq);
                    for e in &events {
                        write_event(&mut out, e, st.format);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Source::Sessions(filter) => match st.sessions.list(filter).await {
                Ok(rows) => {
                    if rows.len() < filter.limit as usize {
                        st.done = true;
                    }
                    filter.before = rows.last().map(|s| (s.started_at, s.id.clone()));
                    for s in &rows {
                        write_session(&mut out, s, st.format);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        match fetched {
            Ok(()) => Some((Ok(Bytes::from(out)), st)),
            Err(e) => {
                // The client sees a truncated file and an error; the log says why.
                tracing::error!(error = %e, "export failed midway");
                st.done = true;
                Some((Err(std::io::Error::other("export failed")), st))
            }
        }
    })
}

fn write_event(out: &mut String, e: &EventRecord, format: Format) {
    match format {
        Format::JsonLines => {
            out.push_str(&e.to_json().to_string());
            out.push('\n');
        }
        Format::Csv => {
            let seq = e.seq.to_string();
            let time = format_us(e.time_us);
            let fields = [
                seq.as_str(),
                e.id.as_str(),
                time.as_str(),
                e.kind.as_str(),
                e.actor.as_deref().unwrap_or(""),
                e.source_ip.as_deref().unwrap_or(""),
                e.target.as_deref().unwrap_or(""),
                e.session_id.as_deref().unwrap_or(""),
                e.outcome.as_str(),
                e.details.as_str(),
            ];
            csv_row(out, &fields);
        }
    }
}

fn write_session(out: &mut String, s: &SessionRecord, format: Format) {
    match format {
        Format::JsonLines => {
            out.push_str(&serde_json::to_string(s).unwrap_or_default());
            out.push('\n');
        }
        Format::Csv => {
            let started = format_us(s.started_at);
            let ended = s.ended_at.map(format_us).unwrap_or_default();
            let (bytes_in, bytes_out) = (s.bytes_in.to_string(), s.bytes_out.to_string());
            let exit = s.exit_status.map(|x| x.to_string()).unwrap_or_default();
            let fields = [
                s.id.as_str(),
                s.kind.as_str(),
                s.user_email.as_str(),
                s.target.as_str(),
                s.login.as_deref().unwrap_or(""),
                s.source_ip.as_deref().unwrap_or(""),
                started.as_str(),
                ended.as_str(),
                s.status.as_str(),
                s.end_reason.as_deref().unwrap_or(""),
                bytes_in.as_str(),
                bytes_out.as_str(),
                exit.as_str(),
                s.recording_sha256.as_deref().unwrap_or(""),
            ];
            csv_row(out, &fields);
        }
    }
}

/// One RFC 4180 row. Cells that a spreadsheet would run as a formula get
/// a leading `'` (CSV injection).
/// Control characters are escaped ([`crate::domain::audit::shown`]): a
/// CSV is read in terminals and spreadsheets.
fn csv_row(out: &mut String, fields: &[&str]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let shown = crate::domain::audit::shown(field);
        let field = shown.as_ref();
        let guarded;
        let field = if field.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            guarded = format!("'{field}");
            guarded.as_str()
        } else {
            field
        };
        if field.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(field);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests;
