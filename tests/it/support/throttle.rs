//! A test-owned stand-in for AWS throttling, since moto never throttles:
//! an HTTP server in front of moto that answers requests of one operation
//! with AWS's own throttling error, on the real wire format, as many times
//! as told, and forwards everything else (and that operation once the
//! throttling is spent) to moto.
//!
//! The wire formats (docs/aws-protocols.md): the Query protocol (STS, IAM)
//! answers HTTP 400 with `<ErrorResponse><Error><Code>Throttling</Code>`;
//! JSON 1.1 (Secrets Manager, ECS, SSM) HTTP 400 with
//! `{"__type": "ThrottlingException", "message": ...}`. The operation is
//! the form's `Action` or the `X-Amz-Target` header's suffix.
// Test doubles lock with `.lock().unwrap()`: a poisoned lock here means a
// test already failed (the broker's own rule is `pam::sync`).
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// The stand-in; stops on drop.
pub struct Throttle {
    pub url: String,
    state: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: String,
    operation: String,
    /// Requests of the operation still to fail.
    remaining: AtomicU32,
    /// How they fail: HTTP status and error code (0: throttling).
    failure: Mutex<(u16, &'static str)>,
    /// Requests of the operation seen (throttled or forwarded).
    seen: AtomicU32,
    /// Of those, throttled.
    throttled: AtomicU32,
    http: reqwest::Client,
    log: Mutex<Vec<std::time::Instant>>,
}

impl Throttle {
    /// A stand-in throttling `operation` (`AssumeRole`, `GetSecretValue`,
    /// `ExecuteCommand`, ...) in front of `upstream`; passes until told.
    pub async fn start(upstream: &str, operation: &str) -> Throttle {
        let state = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            operation: operation.to_owned(),
            remaining: AtomicU32::new(0),
            failure: Mutex::new((0, "")),
            seen: AtomicU32::new(0),
            throttled: AtomicU32::new(0),
            http: reqwest::Client::new(),
            log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Throttle { url, state, task }
    }

    /// Throttles the next `n` requests of the operation (`u32::MAX`: until
    /// [`Throttle::heal`]).
    pub fn throttle_next(&self, n: u32) {
        *self.state.failure.lock().unwrap() = (0, "");
        self.state.remaining.store(n, Ordering::SeqCst);
    }

    /// Fails the next `n` requests of the operation with `status` and the
    /// JSON error `code` (`ServerException`, ...) instead.
    pub fn fail_next(&self, n: u32, status: u16, code: &'static str) {
        *self.state.failure.lock().unwrap() = (status, code);
        self.state.remaining.store(n, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.state.remaining.store(0, Ordering::SeqCst);
    }

    /// Requests of the operation seen so far.
    pub fn seen(&self) -> u32 {
        self.state.seen.load(Ordering::SeqCst)
    }

    /// Of those, answered with throttling (or the failure of `fail_next`).
    pub fn throttled(&self) -> u32 {
        self.state.throttled.load(Ordering::SeqCst)
    }

    /// Gaps between the operation's requests (the backoff, as seen from here).
    pub fn gaps(&self) -> Vec<std::time::Duration> {
        let log = self.state.log.lock().unwrap();
        log.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.rsplit('.').next().unwrap_or_default().to_owned());
    let operation = target.clone().or_else(|| {
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.into_owned())
    });
    if operation.as_deref() == Some(state.operation.as_str()) {
        state.seen.fetch_add(1, Ordering::SeqCst);
        state.log.lock().unwrap().push(std::time::Instant::now());
        let throttle = state
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u32::MAX => Some(u32::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if throttle {
            state.throttled.fetch_add(1, Ordering::SeqCst);
            let (status, code) = *state.failure.lock().unwrap();
            if status != 0 {
                let body = format!(r#"{{"__type":"{code}","message":"{code} (test stand-in)"}}"#);
                let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
                response.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("application/x-amz-json-1.1"),
                );
                return response;
            }
            return throttled(target.is_some());
        }
    }
    let mut request = state
        .http
        .request(method, format!("{}{}", state.upstream, uri))
        .body(body.to_vec());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let Ok(response) = request.send().await else {
        return (StatusCode::BAD_GATEWAY, "moto did not answer").into_response();
    };
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let bytes = response.bytes().await.unwrap_or_default();
    let mut out = (status, bytes).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert("content-type", ct);
    }
    out
}

/// AWS's throttling answer: JSON 1.1 or the Query protocol's XML.
fn throttled(json: bool) -> Response {
    let (content_type, body) = if json {
        (
            "application/x-amz-json-1.1",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_owned(),
        )
    } else {
        (
            "text/xml",
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
             <Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>\
             </Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
                .to_owned(),
        )
    };
    let mut response = (StatusCode::BAD_REQUEST, body).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}
