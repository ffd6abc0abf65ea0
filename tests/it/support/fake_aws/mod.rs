//! A fake AWS for ECS Exec and SSM sessions, since no emulator implements
//! them: one HTTP server that answers the control plane (ECS `ListTasks`,
//! `DescribeTasks`, `ExecuteCommand`; SSM `StartSession`, `ResumeSession`,
//! `TerminateSession`; JSON 1.1 by `X-Amz-Target`), forwards anything else
//! (KMS) to moto, and serves the data channel at `/v1/data-channel/{id}`
//! as a protocol-faithful agent ([`agent`]) with fault injection.
//!
//! Self-contained (no `super::` outside this directory) so the benchmark
//! can include it with `#[path]`.
// Test doubles lock with `.lock().unwrap()`: a poisoned lock here means a
// test already failed (the broker's own rule is `pam::sync`).
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

pub mod agent;
pub mod apps;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use apps::App;

/// How the agent of the next session behaves.
#[derive(Clone)]
pub struct Plan {
    pub agent_version: String,
    /// `None`: InteractiveCommands for ECS Exec, Port for StartSession.
    pub session_type: Option<String>,
    pub properties: Value,
    /// `None`: the command for ECS Exec, the document's host:port for StartSession.
    pub app: Option<App>,
    pub kms: Option<Kms>,
    pub faults: Faults,
    /// Drop duplicates without re-acking them, as the real agent does.
    pub strict_duplicates: bool,
    /// `false`: an agent older than the handshake.
    pub handshake: bool,
    pub customer_message: String,
    pub send_exit_code: bool,
    pub closed_output: Option<String>,
}

/// Faults on the first transmission of output messages (every Nth; 0 = off).
#[derive(Clone, Default, Debug)]
pub struct Faults {
    pub drop_every: u32,
    pub duplicate_every: u32,
    pub reorder_every: u32,
    pub bad_digest_every: u32,
    /// Leave every Nth in-order client message unacknowledged.
    pub drop_acks_every: u32,
    pub ack_delay: Duration,
    /// Kill the WebSocket after every Nth output, `kill_socket_times` times.
    pub kill_socket_after: u32,
    pub kill_socket_times: u32,
}

/// The agent's KMS access (moto).
#[derive(Clone)]
pub struct Kms {
    pub key_id: String,
    pub client: aws_sdk_kms::Client,
}

/// What the agent saw, for assertions.
#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub connections: u32,
    pub rejected_tokens: u32,
    pub open_inputs: Vec<Value>,
    pub pings: u32,
    pub acks: u32,
    pub bad_acks: u32,
    pub duplicates: u32,
    pub retransmits: u32,
    pub dropped: u32,
    pub duplicated: u32,
    pub reordered: u32,
    pub corrupted: u32,
    pub kills: u32,
    pub acks_dropped: u32,
    pub bad_digests: u32,
    pub malformed: u32,
    pub unexpected_text: u32,
    pub unexpected_types: Vec<String>,
    pub unexpected_payload_types: Vec<u32>,
    pub handshake_response: Option<Value>,
    pub encrypted: bool,
    pub encrypted_inputs: u32,
    pub kms_error: Option<String>,
    /// Every input byte the app got (decrypted).
    pub input: Recorded,
    pub sizes: Vec<(u32, u32)>,
    pub flags: Vec<u32>,
    /// smux NOP frames from the client.
    pub nops: u32,
    pub exit_status: Option<i32>,
    pub terminated: bool,
    pub closed: bool,
}

/// Bytes that print as their length.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Recorded(pub Vec<u8>);

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// An ECS task the control plane knows.
#[derive(Clone, Debug)]
pub struct Task {
    pub cluster: String,
    pub service: String,
    pub task_arn: String,
    pub last_status: String,
    pub enable_execute_command: bool,
    pub started_at: f64,
    /// (name, lastStatus, runtimeId, ExecuteCommandAgent lastStatus)
    pub containers: Vec<(String, String, String, String)>,
}

/// One control-plane request.
#[derive(Clone, Debug)]
pub struct Call {
    pub target: String,
    pub body: Value,
}

/// A session the control plane created.
pub struct Session {
    pub id: String,
    pub target: String,
    token: Mutex<String>,
    attach: mpsc::Sender<WebSocket>,
    pub stats: Arc<Mutex<Stats>>,
    pub terminate: CancellationToken,
}

struct State {
    ws_base: String,
    moto_url: Option<String>,
    http: reqwest::Client,
    tasks: Mutex<Vec<Task>>,
    /// SSM managed instances (id, PingStatus): moto has no
    /// DescribeInstanceInformation, so the fake answers it.
    managed: Mutex<Vec<(String, String)>>,
    /// Services whose DescribeServices answer says enableExecuteCommand
    /// (moto drops the flag).
    exec_services: Mutex<Vec<String>>,
    calls: Mutex<Vec<Call>>,
    plan: Mutex<Plan>,
    expire_on_resume: AtomicBool,
    fail_resumes: AtomicU32,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    order: Mutex<Vec<String>>,
}

/// The running fake; stops when dropped.
pub struct FakeAws {
    pub url: String,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            agent_version: "3.3.987.0".into(),
            session_type: None,
            properties: Value::Null,
            app: None,
            kms: None,
            faults: Faults::default(),
            strict_duplicates: false,
            handshake: true,
            customer_message: String::new(),
            send_exit_code: true,
            closed_output: None,
        }
    }
}

impl Task {
    /// A running task with one running container `container`.
    pub fn running(cluster: &str, service: &str, id: &str, container: &str) -> Task {
        Task {
            cluster: cluster.into(),
            service: service.into(),
            task_arn: format!("arn:aws:ecs:us-east-1:123456789012:task/{cluster}/{id}"),
            last_status: "RUNNING".into(),
            enable_execute_command: true,
            started_at: 1_700_000_000.0,
            containers: vec![(
                container.into(),
                "RUNNING".into(),
                format!("{id}-1234567890"),
                "RUNNING".into(),
            )],
        }
    }
}

impl Kms {
    /// A fresh symmetric key in moto.
    pub async fn moto(moto_url: &str) -> Kms {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .endpoint_url(moto_url)
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .build();
        let client = aws_sdk_kms::Client::from_conf(config);
        let key = client
            .create_key()
            .send()
            .await
            .expect("creating a moto KMS key");
        let key_id = key.key_metadata().unwrap().arn().unwrap().to_owned();
        Kms { key_id, client }
    }
}

impl FakeAws {
    /// Starts on a free loopback port; `moto_url` serves what the fake
    /// does not (KMS).
    pub async fn start(moto_url: Option<String>) -> FakeAws {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(State {
            ws_base: format!("ws://{address}"),
            moto_url,
            http: reqwest::Client::new(),
            tasks: Mutex::new(Vec::new()),
            managed: Mutex::new(Vec::new()),
            exec_services: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            plan: Mutex::new(Plan::default()),
            expire_on_resume: AtomicBool::new(false),
            fail_resumes: AtomicU32::new(0),
            sessions: Mutex::new(HashMap::new()),
            order: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/", axum::routing::post(control))
            .route("/v1/data-channel/{id}", axum::routing::get(data_channel))
            .with_state(state.clone());
        // No Nagle: a small frame must not wait for the peer's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeAws {
            url: format!("http://{address}"),
            state,
            server,
        }
    }

    /// A `pam::aws::Aws` whose every service goes to this fake.
    pub fn aws(&self) -> pam::aws::Aws {
        let credentials =
            aws_credential_types::Credentials::new("testing", "testing", None, None, "fake-aws");
        pam::aws::Aws::from_sdk(
            aws_config::SdkConfig::builder()
                .endpoint_url(&self.url)
                .region(aws_config::Region::new("us-east-1"))
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
                )
                .build(),
        )
    }

    /// An instance SSM manages, with its agent's PingStatus (`Online`, ...).
    pub fn add_managed_instance(&self, id: &str, ping: &str) {
        self.state
            .managed
            .lock()
            .unwrap()
            .push((id.to_owned(), ping.to_owned()));
    }

    /// DescribeServices (forwarded to moto) reports `enableExecuteCommand`
    /// true for `service`.
    pub fn enable_execute_command(&self, service: &str) {
        self.state
            .exec_services
            .lock()
            .unwrap()
            .push(service.to_owned());
    }

    pub fn add_task(&self, task: Task) {
        self.state.tasks.lock().unwrap().push(task);
    }

    /// How the next sessions' agents behave.
    pub fn set_plan(&self, plan: Plan) {
        *self.state.plan.lock().unwrap() = plan;
    }

    /// ResumeSession answers with an empty token (the session timed out).
    pub fn expire_on_resume(&self, expire: bool) {
        self.state.expire_on_resume.store(expire, Ordering::SeqCst);
    }

    /// The next `n` ResumeSession calls fail with a throttling error.
    pub fn fail_resumes(&self, n: u32) {
        self.state.fail_resumes.store(n, Ordering::SeqCst);
    }

    pub fn calls(&self, operation: &str) -> Vec<Value> {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.target.ends_with(&format!(".{operation}")))
            .map(|c| c.body.clone())
            .collect()
    }

    pub fn session(&self, id: &str) -> Arc<Session> {
        self.state.sessions.lock().unwrap()[id].clone()
    }

    pub fn last_session(&self) -> Arc<Session> {
        let id = self.state.order.lock().unwrap().last().cloned().unwrap();
        self.session(&id)
    }

    pub fn stats(&self, id: &str) -> Stats {
        self.session(id).stats.lock().unwrap().clone()
    }

    /// The current token of a session (for tests that dial by hand).
    pub fn token(&self, id: &str) -> String {
        self.session(id).token.lock().unwrap().clone()
    }

    /// A session created directly (no control-plane call), for tests and
    /// benchmarks of the data channel alone. Returns (stream URL, token).
    pub fn create_session(
        &self,
        id: &str,
        target: &str,
        app: App,
        session_type: &str,
    ) -> (String, String) {
        let mut plan = self.state.plan.lock().unwrap().clone();
        plan.session_type
            .get_or_insert_with(|| session_type.to_owned());
        self.state.create(id, target, plan, app)
    }
}

impl Drop for FakeAws {
    fn drop(&mut self) {
        self.server.abort();
        for session in self.state.sessions.lock().unwrap().values() {
            session.terminate.cancel();
        }
    }
}

impl State {
    fn create(&self, id: &str, target: &str, plan: Plan, app: App) -> (String, String) {
        let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
        let (attach_tx, attach_rx) = mpsc::channel(4);
        let session = Arc::new(Session {
            id: id.to_owned(),
            target: target.to_owned(),
            token: Mutex::new(token.clone()),
            attach: attach_tx,
            stats: Arc::new(Mutex::new(Stats::default())),
            terminate: CancellationToken::new(),
        });
        let mut plan = plan;
        plan.session_type
            .get_or_insert_with(|| "InteractiveCommands".into());
        let setup = agent::Setup {
            plan: Plan {
                session_type: plan.session_type.clone(),
                ..plan
            },
            app,
            session_id: id.to_owned(),
            target: target.to_owned(),
        };
        tokio::spawn(agent::run(
            setup,
            attach_rx,
            session.stats.clone(),
            session.terminate.clone(),
        ));
        self.sessions.lock().unwrap().insert(id.to_owned(), session);
        self.order.lock().unwrap().push(id.to_owned());
        (self.stream_url(id), token)
    }

    fn stream_url(&self, id: &str) -> String {
        format!(
            "{}/v1/data-channel/{id}?role=publish_subscribe",
            self.ws_base
        )
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

fn error(kind: &str, message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"__type": kind, "message": message}),
    )
}

async fn control(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Some(operation) = target
        .strip_prefix("AmazonEC2ContainerServiceV20141113.")
        .or_else(|| target.strip_prefix("AmazonSSM."))
    else {
        return forward(&state, headers, body).await;
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.calls.lock().unwrap().push(Call {
        target: target.clone(),
        body: request.clone(),
    });
    let tasks = state.tasks.lock().unwrap().clone();
    let cluster_matches = |task: &Task, cluster: &Value| {
        let cluster = cluster.as_str().unwrap_or("default");
        task.cluster == cluster || cluster.ends_with(&format!("/{}", task.cluster))
    };
    match operation {
        "ListTasks" => {
            let arns: Vec<&str> = tasks
                .iter()
                .filter(|t| cluster_matches(t, &request["cluster"]))
                .filter(|t| {
                    request["serviceName"]
                        .as_str()
                        .is_none_or(|s| s == t.service)
                })
                .filter(|t| t.last_status == "RUNNING")
                .map(|t| t.task_arn.as_str())
                .collect();
            json_response(StatusCode::OK, json!({"taskArns": arns}))
        }
        "DescribeTasks" => {
            let wanted: Vec<&str> = request["tasks"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let mut found = Vec::new();
            let mut failures = Vec::new();
            for arn in wanted {
                match tasks.iter().find(|t| {
                    cluster_matches(t, &request["cluster"])
                        && (t.task_arn == arn || t.task_arn.ends_with(&format!("/{arn}")))
                }) {
                    Some(t) => found.push(describe(t)),
                    None => failures.push(json!({"arn": arn, "reason": "MISSING"})),
                }
            }
            json_response(
                StatusCode::OK,
                json!({"tasks": found, "failures": failures}),
            )
        }
        "ExecuteCommand" => {
            let task_id = request["task"].as_str().unwrap_or_default();
            let Some(task) = tasks.iter().find(|t| {
                cluster_matches(t, &request["cluster"])
                    && (t.task_arn == task_id || t.task_arn.ends_with(&format!("/{task_id}")))
            }) else {
                return error(
                    "InvalidParameterException",
                    "The specified task was not found.",
                );
            };
            if request["interactive"] != json!(true) {
                return error(
                    "InvalidParameterException",
                    "Interactive is the only mode supported currently.",
                );
            }
            let container = request["container"].as_str().unwrap_or_default();
            let Some(c) = task.containers.iter().find(|c| c.0 == container) else {
                return error("InvalidParameterException", "The container was not found.");
            };
            let id = format!(
                "ecs-execute-command-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..17]
            );
            let ssm_target = format!(
                "ecs:{}_{}_{}",
                task.cluster,
                task.task_arn.rsplit('/').next().unwrap(),
                c.2
            );
            let plan = state.plan.lock().unwrap().clone();
            let command = request["command"].as_str().unwrap_or("/bin/sh").to_owned();
            // As the real agent (session/shell, Linux): `sh -c COMMAND` in a PTY.
            let app = plan
                .app
                .clone()
                .unwrap_or_else(|| App::Shell(vec!["sh".into(), "-c".into(), command]));
            let (stream_url, token) = state.create(&id, &ssm_target, plan, app);
            json_response(
                StatusCode::OK,
                json!({
                    "clusterArn": format!("arn:aws:ecs:us-east-1:123456789012:cluster/{}", task.cluster),
                    "containerArn": format!("arn:aws:ecs:us-east-1:123456789012:container/{}", c.2),
                    "containerName": container,
                    "interactive": true,
                    "taskArn": task.task_arn,
                    "session": {"sessionId": id, "streamUrl": stream_url, "tokenValue": token},
                }),
            )
        }
        // The shape of the real answer (SSM API reference,
        // DescribeInstanceInformation), filtered by the InstanceIds filter.
        // moto answers, without enableExecuteCommand; the fake adds it.
        "DescribeServices" => {
            let answer = forward(&state, headers, body).await;
            let status = answer.status();
            let bytes = axum::body::to_bytes(answer.into_body(), 16 << 20)
                .await
                .unwrap_or_default();
            let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let enabled = state.exec_services.lock().unwrap().clone();
            if let Some(services) = value["services"].as_array_mut() {
                for service in services {
                    let name = service["serviceName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    service["enableExecuteCommand"] = json!(enabled.contains(&name));
                }
            }
            json_response(status, value)
        }
        "DescribeInstanceInformation" => {
            let wanted: Vec<String> = request["Filters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["Key"] == "InstanceIds")
                .flat_map(|f| f["Values"].as_array().cloned().unwrap_or_default())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let managed = state.managed.lock().unwrap().clone();
            let list: Vec<Value> = managed
                .iter()
                .filter(|(id, _)| wanted.is_empty() || wanted.contains(id))
                .map(|(id, ping)| {
                    json!({
                        "InstanceId": id,
                        "PingStatus": ping,
                        "LastPingDateTime": 1.7e9,
                        "AgentVersion": "3.3.987.0",
                        "IsLatestVersion": true,
                        "PlatformType": "Linux",
                        "PlatformName": "Amazon Linux",
                        "ResourceType": "EC2Instance",
                        "IPAddress": "10.0.0.5",
                        "ComputerName": format!("{id}.ec2.internal"),
                    })
                })
                .collect();
            json_response(StatusCode::OK, json!({"InstanceInformationList": list}))
        }
        "StartSession" => {
            let target = request["Target"].as_str().unwrap_or_default().to_owned();
            let parameter = |name: &str| {
                request["Parameters"][name][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            let id = format!(
                "pam-broker-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..17]
            );
            let mut plan = state.plan.lock().unwrap().clone();
            let port = parameter("portNumber");
            plan.session_type.get_or_insert_with(|| "Port".into());
            if plan.properties.is_null() {
                plan.properties = json!({"portNumber": port, "type": "LocalPortForwarding"});
            }
            let mux = wire::newer(&plan.agent_version, "3.0.196.0");
            let app = plan.app.clone().unwrap_or_else(|| App::Port {
                target: format!("{}:{}", parameter("host"), port),
                mux,
            });
            let (stream_url, token) = state.create(&id, &target, plan, app);
            json_response(
                StatusCode::OK,
                json!({"SessionId": id, "TokenValue": token, "StreamUrl": stream_url}),
            )
        }
        "ResumeSession" => {
            let id = request["SessionId"].as_str().unwrap_or_default();
            if state
                .fail_resumes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return error("ThrottlingException", "Rate exceeded");
            }
            let Some(session) = state.sessions.lock().unwrap().get(id).cloned() else {
                return error("DoesNotExistException", "Session not found");
            };
            let token = if state.expire_on_resume.load(Ordering::SeqCst) {
                String::new()
            } else {
                let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
                *session.token.lock().unwrap() = token.clone();
                token
            };
            json_response(
                StatusCode::OK,
                json!({"SessionId": id, "TokenValue": token, "StreamUrl": state.stream_url(id)}),
            )
        }
        "TerminateSession" => {
            let id = request["SessionId"].as_str().unwrap_or_default();
            if let Some(session) = state.sessions.lock().unwrap().get(id) {
                session.terminate.cancel();
            }
            json_response(StatusCode::OK, json!({"SessionId": id}))
        }
        // Reads moto answers as it is.
        "DescribeTaskDefinition" | "ListServices" => forward(&state, headers, body).await,
        _ => error(
            "UnknownOperationException",
            &format!("{target} is not faked"),
        ),
    }
}

fn describe(task: &Task) -> Value {
    json!({
        "taskArn": task.task_arn,
        "clusterArn": format!("arn:aws:ecs:us-east-1:123456789012:cluster/{}", task.cluster),
        "lastStatus": task.last_status,
        "desiredStatus": "RUNNING",
        "enableExecuteCommand": task.enable_execute_command,
        "startedAt": task.started_at,
        "containers": task.containers.iter().map(|(name, status, runtime, agent)| json!({
            "name": name,
            "runtimeId": runtime,
            "lastStatus": status,
            "managedAgents": [{"name": "ExecuteCommandAgent", "lastStatus": agent}],
        })).collect::<Vec<_>>(),
    })
}

/// Anything not faked (KMS) goes to moto, signature and all.
async fn forward(state: &State, headers: HeaderMap, body: Bytes) -> Response {
    let Some(moto) = &state.moto_url else {
        return error("UnknownOperationException", "no moto behind the fake");
    };
    let mut request = state.http.post(moto).body(body.to_vec());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    match request.send().await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/x-amz-json-1.1")
                .to_owned();
            let body = response.bytes().await.unwrap_or_default();
            (status, [("content-type", content_type)], body.to_vec()).into_response()
        }
        Err(e) => error("ServiceUnavailable", &e.to_string()),
    }
}

/// The data channel: the first text frame must carry the session's current
/// token; then the socket is handed to the session's agent.
async fn data_channel(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(session) = state.sessions.lock().unwrap().get(&id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    upgrade.on_upgrade(move |mut socket| async move {
        let first = tokio::time::timeout(Duration::from_secs(5), socket.recv()).await;
        let Ok(Some(Ok(Message::Text(text)))) = first else {
            session.stats.lock().unwrap().rejected_tokens += 1;
            return;
        };
        let open: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let token = session.token.lock().unwrap().clone();
        let valid = open["TokenValue"] == json!(token)
            && open["MessageSchemaVersion"] == "1.0"
            && open["RequestId"].as_str().is_some_and(|r| r.len() >= 16)
            && open["ClientId"].as_str().is_some_and(|c| !c.is_empty());
        session.stats.lock().unwrap().open_inputs.push(open);
        if !valid || session.terminate.is_cancelled() {
            session.stats.lock().unwrap().rejected_tokens += 1;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        let _ = session.attach.send(socket).await;
    })
}
