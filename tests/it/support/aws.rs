//! AWS peers: moto (started by scripts/test), a recording proxy in front of
//! it (moto accepts but ignores SourceIdentity, tags and durations, so the
//! tests check the request the broker sends), and a stand-in for the console
//! federation endpoint (no emulator has one).
// Test doubles lock with `.lock().unwrap()`: a poisoned lock here means a
// test already failed (the broker's own rule is `pam::sync`).
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;

use super::peers::required_env;

pub fn moto_url() -> String {
    required_env("PAM_TEST_MOTO_URL")
}

/// One request that went through the proxy.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub body: String,
}

impl Captured {
    /// The form fields of a Query-protocol body (`Action=AssumeRole&...`).
    pub fn form(&self) -> std::collections::HashMap<String, String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
}

/// A proxy that records every request and forwards it to `upstream`.
pub struct RecordingProxy {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Captured>>>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    requests: Arc<Mutex<Vec<Captured>>>,
    http: reqwest::Client,
}

impl RecordingProxy {
    pub async fn start(upstream: &str) -> RecordingProxy {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            requests: requests.clone(),
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RecordingProxy {
            url,
            requests,
            _task: task,
        }
    }

    /// Captured requests whose form has `Action=action`.
    pub fn actions(&self, action: &str) -> Vec<Captured> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.form().get("Action").map(String::as_str) == Some(action))
            .cloned()
            .collect()
    }
}

async fn forward(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    state.requests.lock().unwrap().push(Captured {
        method: method.to_string(),
        path: uri.to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let mut request = state
        .http
        .request(method, format!("{}{}", state.upstream, uri))
        .body(body.to_vec());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let bytes = response.bytes().await.unwrap();
    let mut out = (status, bytes).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert("content-type", ct);
    }
    out
}

/// A stand-in for https://signin.aws.amazon.com/federation: answers
/// `getSigninToken` when the session JSON is complete.
pub struct Federation {
    pub url: String,
    pub calls: Arc<Mutex<Vec<std::collections::HashMap<String, String>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Federation {
    pub async fn start() -> Federation {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let app = axum::Router::new().route(
            "/federation",
            axum::routing::get(move |uri: Uri| {
                let recorded = recorded.clone();
                async move {
                    let query: std::collections::HashMap<String, String> =
                        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                            .into_owned()
                            .collect();
                    recorded.lock().unwrap().push(query.clone());
                    let session: serde_json::Value = serde_json::from_str(
                        query.get("Session").map(String::as_str).unwrap_or("{}"),
                    )
                    .unwrap_or_default();
                    let complete = ["sessionId", "sessionKey", "sessionToken"]
                        .iter()
                        .all(|k| session[k].as_str().is_some_and(|v| !v.is_empty()));
                    if query.get("Action").map(String::as_str) == Some("getSigninToken") && complete
                    {
                        axum::Json(serde_json::json!({"SigninToken": "stand-in-signin-token"}))
                            .into_response()
                    } else {
                        (axum::http::StatusCode::BAD_REQUEST, "bad request").into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/federation", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Federation {
            url,
            calls,
            _task: task,
        }
    }
}

/// A proxy in front of `upstream` that answers requests of one JSON-protocol
/// operation (its `X-Amz-Target`) from a script first, then forwards them:
/// how answers moto never gives (throttling, stale sequence tokens) reach
/// the broker. Records the bodies of that operation's requests.
pub struct ScriptedProxy {
    pub url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ScriptState {
    forward: ProxyState,
    target: String,
    script: Arc<Mutex<std::collections::VecDeque<(u16, String)>>>,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl ScriptedProxy {
    pub async fn start(upstream: &str, target: &str, script: Vec<(u16, String)>) -> ScriptedProxy {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let state = ScriptState {
            forward: ProxyState {
                upstream: upstream.trim_end_matches('/').to_owned(),
                requests: Arc::new(Mutex::new(Vec::new())),
                http: reqwest::Client::new(),
            },
            target: target.to_owned(),
            script: Arc::new(Mutex::new(script.into())),
            bodies: bodies.clone(),
        };
        let app = axum::Router::new().fallback(scripted).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ScriptedProxy {
            url,
            bodies,
            _task: task,
        }
    }

    /// Bodies of the scripted operation's requests, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

async fn scripted(
    State(state): State<ScriptState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if target == state.target {
        state
            .bodies
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&body).into_owned());
        let next = state.script.lock().unwrap().pop_front();
        if let Some((status, answer)) = next {
            let mut response =
                (axum::http::StatusCode::from_u16(status).unwrap(), answer).into_response();
            response.headers_mut().insert(
                "content-type",
                axum::http::HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            return response;
        }
    }
    forward(State(state.forward), method, uri, headers, body)
        .await
        .into_response()
}

/// The real AWS CLI against moto (`args` without endpoint or region); its
/// JSON output, `Null` when it printed nothing. Panics when it fails.
pub fn aws_cli(args: &[&str]) -> serde_json::Value {
    let out = aws_cli_raw(args);
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// [`aws_cli`] without the success check.
pub fn aws_cli_raw(args: &[&str]) -> std::process::Output {
    let aws = std::path::Path::new(&required_env("PAM_TEST_PEERS_DIR")).join("venv/bin/aws");
    std::process::Command::new(aws)
        .args(args)
        .args([
            "--endpoint-url",
            &moto_url(),
            "--region",
            "us-east-1",
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap()
}

/// A proxy in front of `upstream` that forwards until told to fail, then
/// answers every request with a Query-protocol error (`Throttling`,
/// `AccessDenied`, ...) as IAM, RDS and EC2 do.
pub struct FailingProxy {
    pub url: String,
    failure: Arc<Mutex<Option<(u16, String)>>>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct FailState {
    forward: ProxyState,
    failure: Arc<Mutex<Option<(u16, String)>>>,
}

impl FailingProxy {
    pub async fn start(upstream: &str) -> FailingProxy {
        let failure = Arc::new(Mutex::new(None));
        let state = FailState {
            forward: ProxyState {
                upstream: upstream.trim_end_matches('/').to_owned(),
                requests: Arc::new(Mutex::new(Vec::new())),
                http: reqwest::Client::new(),
            },
            failure: failure.clone(),
        };
        let app = axum::Router::new().fallback(failing).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FailingProxy {
            url,
            failure,
            _task: task,
        }
    }

    /// From now on every request fails with `status` and error `code`.
    pub fn fail(&self, status: u16, code: &str) {
        *self.failure.lock().unwrap() = Some((status, code.to_owned()));
    }

    /// Forward again.
    pub fn heal(&self) {
        *self.failure.lock().unwrap() = None;
    }
}

async fn failing(
    State(state): State<FailState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let failure = state.failure.lock().unwrap().clone();
    if let Some((status, code)) = failure {
        let xml = format!(
            "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{code} (from the test proxy)</Message></Error><RequestId>1</RequestId></ErrorResponse>"
        );
        let mut response = (axum::http::StatusCode::from_u16(status).unwrap(), xml).into_response();
        response.headers_mut().insert(
            "content-type",
            axum::http::HeaderValue::from_static("text/xml"),
        );
        return response;
    }
    forward(State(state.forward), method, uri, headers, body)
        .await
        .into_response()
}

/// A proxy in front of moto that answers IAM `SimulatePrincipalPolicy`
/// (which moto lacks) from the fixtures in tests/fixtures/iam: `allowed`
/// when the requested resource ARN ends with one of `allowed_suffixes`,
/// `implicitDeny` otherwise; everything else goes to moto.
pub struct SimulateFixture {
    pub url: String,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct SimulateState {
    forward: ProxyState,
    allowed: Arc<Vec<String>>,
}

impl SimulateFixture {
    pub async fn start(upstream: &str, allowed_suffixes: &[&str]) -> SimulateFixture {
        let state = SimulateState {
            forward: ProxyState {
                upstream: upstream.trim_end_matches('/').to_owned(),
                requests: Arc::new(Mutex::new(Vec::new())),
                http: reqwest::Client::new(),
            },
            allowed: Arc::new(allowed_suffixes.iter().map(|s| (*s).to_owned()).collect()),
        };
        let app = axum::Router::new().fallback(simulate).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SimulateFixture { url, _task: task }
    }
}

async fn simulate(
    State(state): State<SimulateState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("Action").map(String::as_str) == Some("SimulatePrincipalPolicy") {
        let resource = form
            .get("ResourceArns.member.1")
            .cloned()
            .unwrap_or_default();
        let decision = if state.allowed.iter().any(|s| resource.ends_with(s.as_str())) {
            "allowed"
        } else {
            "implicitDeny"
        };
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "tests/fixtures/iam/simulate-principal-policy-{decision}.xml"
        ));
        let xml = std::fs::read_to_string(path)
            .unwrap()
            .replace("RESOURCE", &resource);
        let mut response = (axum::http::StatusCode::OK, xml).into_response();
        response.headers_mut().insert(
            "content-type",
            axum::http::HeaderValue::from_static("text/xml"),
        );
        return response;
    }
    forward(State(state.forward), method, uri, headers, body)
        .await
        .into_response()
}
