//! ECS Exec and SSM port routes as a service: an ECS target becomes a shell
//! the SSH room can drive like a host, and an SSM target becomes a TCP route
//! for the PostgreSQL room.
//!
//! [`open`] picks a running task of the target's service (or the configured
//! task), checks the container and its ECS Exec agent, calls
//! `ecs:ExecuteCommand` and connects the data channel with ResumeSession
//! and KMS wired in; [`select`] and [`execute`] are its two halves, for
//! callers that must not run the command before their records are durable. The returned [`Shell`] carries [`Meta`] (task ARN,
//! container, session id, …) for the caller's audit records:
//!
//! ```no_run
//! # async fn example(target: &pam::config::EcsTarget, aws: &pam::aws::Aws) -> Result<(), pam::ecs::Error> {
//! use pam::ssm::Event;
//! let mut shell = pam::ecs::open(target, aws, None, (120, 40)).await?;
//! let input = shell.input().clone(); // for the task that reads the user
//! input.send_input(b"id\r").await?;
//! loop {
//!     match shell.recv().await {
//!         Some(Event::Output(bytes)) | Some(Event::StdErr(bytes)) => { /* to the user + recording */ }
//!         Some(Event::ExitCode(code)) => { /* exit-status for the SSH channel */ }
//!         Some(Event::Flag(_)) => {}
//!         Some(Event::Closed(_)) | Some(Event::Failed(_)) | None => break,
//!     }
//! }
//! shell.close().await?; // ssm:TerminateSession
//! # Ok(()) }
//! ```
//!
//! [`open_port`] starts `AWS-StartPortForwardingSessionToRemoteHost` on an
//! SSM target (instance or `ecs:CLUSTER_TASKID_RUNTIMEID`) and returns a
//! [`Port`] whose [`Port::connect`] yields a stream to `host:port`.
//!
//! Policy, recording and audit stay with the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use secrecy::SecretString;

use crate::aws::Aws;
use crate::aws::ecs::{ContainerInfo, TaskInfo};
use crate::aws::error::ApiError;
use crate::config::EcsTarget;
use crate::ssm::crypto::{DataKey, DataKeyRequest, DataKeys};
use crate::ssm::port::{Mode, Stream, Tunnel};
use crate::ssm::{self, Event, Input, Options, Resume, Session};

/// The command of an ECS Exec session when the target names none.
pub const DEFAULT_COMMAND: &str = "/bin/sh";
/// The SSM document for port routes.
pub const PORT_DOCUMENT: &str = "AWS-StartPortForwardingSessionToRemoteHost";

/// Why an ECS shell or SSM port route could not be opened. Messages are
/// one line and safe to show to the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ECS service {service} in cluster {cluster} has no running task")]
    NoRunningTask { cluster: String, service: String },
    #[error("task {task}: {reason}")]
    Unusable { task: String, reason: String },
    #[error("the agent opened a {actual} session, expected {expected}")]
    SessionType {
        actual: &'static str,
        expected: &'static str,
    },
    #[error(transparent)]
    Aws(#[from] ApiError),
    #[error("data channel: {0}")]
    Channel(#[from] ssm::Error),
}

/// What an ECS Exec session is, for audit records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Meta {
    pub cluster: String,
    pub task_arn: String,
    pub container: String,
    pub container_runtime_id: String,
    /// `ecs:CLUSTER_TASKID_RUNTIMEID`, the SSM target of the session.
    pub ssm_target: String,
    pub command: String,
    pub session_id: String,
    pub agent_version: Option<String>,
    pub session_type: &'static str,
    /// The KMS key when the session is encrypted end to end.
    pub kms_key_id: Option<String>,
}

/// What an SSM port route is, for audit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMeta {
    pub ssm_target: String,
    pub host: String,
    pub port: u16,
    pub document: &'static str,
    pub session_id: String,
    pub agent_version: Option<String>,
    /// smux (many connections) or basic (one at a time).
    pub mode: Mode,
    pub kms_key_id: Option<String>,
}

/// A shell in a container.
pub struct Shell {
    meta: Meta,
    session: Session,
    terminator: Terminator,
}

/// An SSM port forwarding route.
pub struct Port {
    meta: PortMeta,
    tunnel: Tunnel,
    terminator: Terminator,
}

/// Ends a session from anywhere (a kill switch, a policy change):
/// `ssm:TerminateSession` and the WebSocket closed. Cheap to clone. When the
/// last clone is dropped without [`Terminator::terminate`] having run (a
/// caller that returned early or panicked), the session is terminated in the
/// background, so no session outlives its broker-side owner.
#[derive(Clone)]
pub struct Terminator {
    inner: Arc<TerminatorInner>,
}

struct TerminatorInner {
    aws: Aws,
    session_id: String,
    input: Input,
    terminated: AtomicBool,
}

/// Opens a shell in `target`'s container running `command` (or the target's
/// `command`, or `/bin/sh`) with a `size` = (cols, rows) terminal.
pub async fn open(
    target: &EcsTarget,
    aws: &Aws,
    command: Option<&str>,
    size: (u32, u32),
) -> Result<Shell, Error> {
    open_with(target, aws, command, size, |_| {}).await
}

/// [`open`] with the data channel's options adjusted by `tune`.
pub async fn open_with(
    target: &EcsTarget,
    aws: &Aws,
    command: Option<&str>,
    size: (u32, u32),
    tune: impl FnOnce(&mut Options),
) -> Result<Shell, Error> {
    let selected = select(target, aws).await?;
    execute_with(selected, target, aws, command, size, tune).await
}

/// The task and container an ECS Exec session runs in, chosen by [`select`].
#[derive(Debug, Clone)]
pub struct Selected {
    task: TaskInfo,
    container: ContainerInfo,
}

impl Selected {
    pub fn task_arn(&self) -> &str {
        &self.task.task_arn
    }

    pub fn container(&self) -> &str {
        &self.container.name
    }
}

/// The first half of [`open`]: picks the task and container (`ListTasks`,
/// `DescribeTasks`). Reads only: nothing reaches the container, so a caller
/// may do this while the session's records are written.
pub async fn select(target: &EcsTarget, aws: &Aws) -> Result<Selected, Error> {
    let (task, container) = select_container(aws, target).await?;
    Ok(Selected { task, container })
}

/// The second half of [`open`]: `ecs:ExecuteCommand` in the selected
/// container and the data channel. The command runs from here on.
pub async fn execute(
    selected: Selected,
    target: &EcsTarget,
    aws: &Aws,
    command: Option<&str>,
    size: (u32, u32),
) -> Result<Shell, Error> {
    execute_with(selected, target, aws, command, size, |_| {}).await
}

async fn execute_with(
    selected: Selected,
    target: &EcsTarget,
    aws: &Aws,
    command: Option<&str>,
    size: (u32, u32),
    tune: impl FnOnce(&mut Options),
) -> Result<Shell, Error> {
    let Selected { task, container } = selected;
    let runtime_id = container.runtime_id.clone().unwrap_or_default();
    let ssm_target = format!(
        "ecs:{}_{}_{}",
        last_segment(&target.cluster),
        last_segment(&task.task_arn),
        runtime_id
    );
    let command = command
        .or(target.command.as_deref())
        .unwrap_or(DEFAULT_COMMAND)
        .to_owned();
    let started = crate::aws::ecs::execute_command(
        aws,
        &target.cluster,
        &task.task_arn,
        &container.name,
        &command,
    )
    .await?;
    let mut options = channel_options(aws, &started.session_id, &ssm_target);
    options.initial_size = Some(size);
    tune(&mut options);
    let session = connect(aws, &started, options).await?;
    let info = session.info().clone();
    let terminator = Terminator::new(aws, &started.session_id, session.input());
    if !info.session_type.is_shell() {
        terminator.terminate().await;
        return Err(Error::SessionType {
            actual: info.session_type.as_str(),
            expected: "shell",
        });
    }
    Ok(Shell {
        meta: Meta {
            cluster: target.cluster.clone(),
            task_arn: task.task_arn,
            container: container.name,
            container_runtime_id: runtime_id,
            ssm_target,
            command,
            session_id: started.session_id,
            agent_version: info.agent_version,
            session_type: info.session_type.as_str(),
            kms_key_id: info.kms_key_id,
        },
        session,
        terminator,
    })
}

/// Opens a port route to `host:port` through the SSM target `ssm_target`.
pub async fn open_port(aws: &Aws, ssm_target: &str, host: &str, port: u16) -> Result<Port, Error> {
    open_port_with(aws, ssm_target, host, port, |_| {}).await
}

/// [`open_port`] with the data channel's options adjusted by `tune`.
pub async fn open_port_with(
    aws: &Aws,
    ssm_target: &str,
    host: &str,
    port: u16,
    tune: impl FnOnce(&mut Options),
) -> Result<Port, Error> {
    let port_text = port.to_string();
    let started = crate::aws::ssm::start_session(
        aws,
        ssm_target,
        PORT_DOCUMENT,
        &[("host", host), ("portNumber", &port_text)],
    )
    .await?;
    let mut options = channel_options(aws, &started.session_id, ssm_target);
    tune(&mut options);
    let session = connect(aws, &started, options).await?;
    let info = session.info().clone();
    let terminator = Terminator::new(aws, &started.session_id, session.input());
    let tunnel = match Tunnel::new(session) {
        Ok(tunnel) => tunnel,
        Err(_) => {
            terminator.terminate().await;
            return Err(Error::SessionType {
                actual: info.session_type.as_str(),
                expected: "Port",
            });
        }
    };
    Ok(Port {
        meta: PortMeta {
            ssm_target: ssm_target.to_owned(),
            host: host.to_owned(),
            port,
            document: PORT_DOCUMENT,
            session_id: started.session_id,
            agent_version: info.agent_version,
            mode: tunnel.mode(),
            kms_key_id: info.kms_key_id,
        },
        tunnel,
        terminator,
    })
}

impl Shell {
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The writing half (clone it into the task that reads the user).
    pub fn input(&self) -> &Input {
        self.session.input()
    }

    /// What the agent said in the handshake (e.g. a customer message to show).
    pub fn info(&self) -> &ssm::Info {
        self.session.info()
    }

    pub async fn send_input(&self, data: &[u8]) -> Result<(), ssm::Error> {
        self.session.send_input(data).await
    }

    pub async fn resize(&self, cols: u32, rows: u32) -> Result<(), ssm::Error> {
        self.session.resize(cols, rows).await
    }

    /// The next output, exit code or end of the session. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Event> {
        self.session.recv().await
    }

    pub fn terminator(&self) -> Terminator {
        self.terminator.clone()
    }

    /// Ends the session: `ssm:TerminateSession`, then the data channel.
    pub async fn close(self) -> Result<(), Error> {
        self.terminator.terminate_checked().await
    }

    /// The session itself, for callers that want its halves.
    pub fn into_session(self) -> (Session, Terminator) {
        (self.session, self.terminator)
    }
}

impl Port {
    pub fn meta(&self) -> &PortMeta {
        &self.meta
    }

    /// A new connection to the destination (in basic mode, after the
    /// previous one is dropped).
    pub async fn connect(&self) -> Result<Stream, Error> {
        Ok(self.tunnel.open().await?)
    }

    pub fn tunnel(&self) -> &Tunnel {
        &self.tunnel
    }

    pub fn terminator(&self) -> Terminator {
        self.terminator.clone()
    }

    /// Ends the route: the TerminateSession flag, `ssm:TerminateSession`,
    /// the data channel.
    pub async fn close(self) -> Result<(), Error> {
        self.tunnel.close().await;
        self.terminator.terminate_checked().await
    }
}

impl Terminator {
    fn new(aws: &Aws, session_id: &str, input: &Input) -> Terminator {
        Terminator {
            inner: Arc::new(TerminatorInner {
                aws: aws.clone(),
                session_id: session_id.to_owned(),
                input: input.clone(),
                terminated: AtomicBool::new(false),
            }),
        }
    }

    pub fn session_id(&self) -> &str {
        &self.inner.session_id
    }

    /// Best effort: a failure is logged, the socket is closed regardless.
    pub async fn terminate(&self) {
        if let Err(e) = self.terminate_checked().await {
            tracing::warn!(session_id = %self.inner.session_id, error = %e, "terminating an SSM session");
        }
    }

    async fn terminate_checked(&self) -> Result<(), Error> {
        if self.inner.terminated.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let result =
            crate::aws::ssm::terminate_session(&self.inner.aws, &self.inner.session_id).await;
        self.inner.input.close().await;
        Ok(result?)
    }
}

impl Drop for TerminatorInner {
    fn drop(&mut self) {
        if self.terminated.load(Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let aws = self.aws.clone();
        let session_id = std::mem::take(&mut self.session_id);
        runtime.spawn(async move {
            if let Err(e) = crate::aws::ssm::terminate_session(&aws, &session_id).await {
                tracing::warn!(%session_id, error = %e, "terminating an abandoned SSM session");
            }
        });
    }
}

/// Data channel options with ResumeSession and KMS wired to `aws`.
fn channel_options(aws: &Aws, session_id: &str, ssm_target: &str) -> Options {
    let mut options = Options::new(session_id, ssm_target);
    options.resume = Some(Arc::new(AwsResume(aws.clone())));
    options.data_keys = Some(Arc::new(AwsDataKeys(aws.clone())));
    options
}

/// Connects the data channel; a session that cannot be used is terminated
/// rather than left to time out.
async fn connect(
    aws: &Aws,
    started: &crate::aws::ssm::Started,
    options: Options,
) -> Result<Session, Error> {
    match Session::connect(&started.stream_url, &started.token, options).await {
        Ok(session) => Ok(session),
        Err(e) => {
            if let Err(terminate) =
                crate::aws::ssm::terminate_session(aws, &started.session_id).await
            {
                tracing::debug!(error = %terminate, "terminating a session that failed to connect");
            }
            Err(e.into())
        }
    }
}

/// The newest running task whose container can take an ECS Exec session.
async fn select_container(
    aws: &Aws,
    target: &EcsTarget,
) -> Result<(TaskInfo, ContainerInfo), Error> {
    let service = target.service.clone().unwrap_or_default();
    let candidates = match &target.task {
        Some(task) => vec![task.clone()],
        None => crate::aws::ecs::list_running_tasks(aws, &target.cluster, &service).await?,
    };
    let no_task = || Error::NoRunningTask {
        cluster: target.cluster.clone(),
        service: target
            .service
            .clone()
            .or_else(|| target.task.clone())
            .unwrap_or_default(),
    };
    if candidates.is_empty() {
        return Err(no_task());
    }
    let mut tasks = crate::aws::ecs::describe_tasks(aws, &target.cluster, &candidates).await?;
    tasks.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then(a.task_arn.cmp(&b.task_arn))
    });
    let mut first_problem = None;
    for task in tasks {
        match usable_container(&task, &target.container) {
            Ok(container) => return Ok((task, container)),
            Err(reason) => {
                first_problem.get_or_insert(Error::Unusable {
                    task: task.task_arn.clone(),
                    reason,
                });
            }
        }
    }
    Err(first_problem.unwrap_or_else(no_task))
}

fn usable_container(task: &TaskInfo, name: &str) -> Result<ContainerInfo, String> {
    if task.last_status.as_deref() != Some("RUNNING") {
        return Err(format!(
            "the task is {}",
            task.last_status.as_deref().unwrap_or("in an unknown state")
        ));
    }
    if !task.enable_execute_command {
        return Err("ECS Exec is not enabled on the task (enableExecuteCommand)".to_owned());
    }
    let Some(container) = task.containers.iter().find(|c| c.name == name) else {
        let names: Vec<&str> = task.containers.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "no container named {name} (it has {})",
            names.join(", ")
        ));
    };
    if container.last_status.as_deref() != Some("RUNNING") {
        return Err(format!(
            "container {name} is {}",
            container
                .last_status
                .as_deref()
                .unwrap_or("in an unknown state")
        ));
    }
    if let Some(status) = &container.exec_agent_status
        && status != "RUNNING"
    {
        return Err(format!(
            "the ECS Exec agent in container {name} is {status}"
        ));
    }
    if container
        .runtime_id
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(format!("container {name} has no runtime id yet"));
    }
    Ok(container.clone())
}

/// `arn:aws:ecs:…:task/cluster/abc` → `abc`; a bare name stays as it is.
fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

struct AwsResume(Aws);

impl Resume for AwsResume {
    fn resume<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretString>, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            crate::aws::ssm::resume_session(&self.0, session_id)
                .await
                .map_err(Into::into)
        })
    }
}

struct AwsDataKeys(Aws);

impl DataKeys for AwsDataKeys {
    fn generate<'a>(
        &'a self,
        request: DataKeyRequest<'a>,
    ) -> BoxFuture<'a, Result<DataKey, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            let key = crate::aws::kms::generate_data_key(
                &self.0,
                request.key_id,
                crate::ssm::crypto::DATA_KEY_BYTES as i32,
                &[
                    ("aws:ssm:SessionId", request.session_id),
                    ("aws:ssm:TargetId", request.target_id),
                ],
            )
            .await?;
            Ok(DataKey {
                plaintext: key.plaintext,
                ciphertext_blob: key.ciphertext_blob,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: &str, exec: bool, containers: Vec<ContainerInfo>) -> TaskInfo {
        TaskInfo {
            task_arn: "arn:aws:ecs:us-east-1:1:task/prod/abc".into(),
            last_status: Some(status.into()),
            desired_status: Some("RUNNING".into()),
            enable_execute_command: exec,
            started_at: Some(1),
            containers,
        }
    }

    fn container(name: &str, status: &str, agent: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            name: name.into(),
            runtime_id: Some("abc-123".into()),
            last_status: Some(status.into()),
            exec_agent_status: agent.map(Into::into),
        }
    }

    #[test]
    fn containers_are_checked_before_exec() {
        let check = |task: TaskInfo, expect: Result<&str, &str>| {
            let result = usable_container(&task, "app");
            match expect {
                Ok(name) => assert_eq!(result.unwrap().name, name),
                Err(text) => {
                    let reason = result.unwrap_err();
                    assert!(reason.contains(text), "{reason}");
                }
            }
        };
        let good = || container("app", "RUNNING", Some("RUNNING"));
        check(task("RUNNING", true, vec![good()]), Ok("app"));
        check(
            task("RUNNING", true, vec![container("app", "RUNNING", None)]),
            Ok("app"),
        );
        check(
            task("PROVISIONING", true, vec![good()]),
            Err("PROVISIONING"),
        );
        check(
            task("RUNNING", false, vec![good()]),
            Err("enableExecuteCommand"),
        );
        check(
            task("RUNNING", true, vec![container("web", "RUNNING", None)]),
            Err("no container named app (it has web)"),
        );
        check(
            task("RUNNING", true, vec![container("app", "STOPPED", None)]),
            Err("container app is STOPPED"),
        );
        check(
            task(
                "RUNNING",
                true,
                vec![container("app", "RUNNING", Some("STOPPED"))],
            ),
            Err("agent in container app is STOPPED"),
        );
    }

    #[test]
    fn ssm_targets_use_bare_names() {
        assert_eq!(last_segment("arn:aws:ecs:us-east-1:1:cluster/prod"), "prod");
        assert_eq!(last_segment("arn:aws:ecs:us-east-1:1:task/prod/abc"), "abc");
        assert_eq!(last_segment("prod"), "prod");
    }
}
