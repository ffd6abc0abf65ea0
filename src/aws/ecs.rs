//! ECS calls for ECS Exec: find a running task of a service, check the
//! container, and open an interactive `ExecuteCommand` session.

use secrecy::SecretString;

use crate::aws::Aws;
use crate::aws::error::{ApiError, from_sdk};
use crate::aws::ssm::Started;

/// What `DescribeTasks` says about one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub task_arn: String,
    pub last_status: Option<String>,
    pub desired_status: Option<String>,
    pub enable_execute_command: bool,
    /// Epoch seconds.
    pub started_at: Option<i64>,
    pub containers: Vec<ContainerInfo>,
}

/// One container of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    /// The Docker id ECS Exec needs for the SSM target.
    pub runtime_id: Option<String>,
    pub last_status: Option<String>,
    /// `lastStatus` of the ExecuteCommandAgent managed agent, if reported.
    pub exec_agent_status: Option<String>,
}

const SERVICE: &str = "ecs";

/// Running task ARNs of `service` in `cluster` (`ListTasks`, all pages).
pub async fn list_running_tasks(
    aws: &Aws,
    cluster: &str,
    service: &str,
) -> Result<Vec<String>, ApiError> {
    let client = aws.ecs();
    let mut arns = Vec::new();
    let mut next_token = None;
    loop {
        let page = client
            .list_tasks()
            .cluster(cluster)
            .service_name(service)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|e| from_sdk(SERVICE, "ListTasks", e))?;
        arns.extend(page.task_arns().iter().cloned());
        next_token = page.next_token().map(str::to_owned);
        if next_token.is_none() || arns.len() >= 1000 {
            return Ok(arns);
        }
    }
}

/// Describes up to 100 tasks (`DescribeTasks`). Tasks ECS reports as
/// failures (unknown ARNs) are left out.
pub async fn describe_tasks(
    aws: &Aws,
    cluster: &str,
    tasks: &[String],
) -> Result<Vec<TaskInfo>, ApiError> {
    let client = aws.ecs();
    let output = client
        .describe_tasks()
        .cluster(cluster)
        .set_tasks(Some(tasks.iter().take(100).cloned().collect()))
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "DescribeTasks", e))?;
    Ok(output
        .tasks()
        .iter()
        .filter_map(|task| {
            Some(TaskInfo {
                task_arn: task.task_arn()?.to_owned(),
                last_status: task.last_status().map(str::to_owned),
                desired_status: task.desired_status().map(str::to_owned),
                enable_execute_command: task.enable_execute_command(),
                started_at: task.started_at().map(|t| t.secs()),
                containers: task
                    .containers()
                    .iter()
                    .filter_map(|container| {
                        Some(ContainerInfo {
                            name: container.name()?.to_owned(),
                            runtime_id: container.runtime_id().map(str::to_owned),
                            last_status: container.last_status().map(str::to_owned),
                            exec_agent_status: container
                                .managed_agents()
                                .iter()
                                .find(|agent| {
                                    agent.name()
                                        == Some(
                                            &aws_sdk_ecs::types::ManagedAgentName::ExecuteCommandAgent,
                                        )
                                })
                                .and_then(|agent| agent.last_status())
                                .map(str::to_owned),
                        })
                    })
                    .collect(),
            })
        })
        .collect())
}

/// Opens an interactive ECS Exec session running `command` in `container`.
pub async fn execute_command(
    aws: &Aws,
    cluster: &str,
    task_arn: &str,
    container: &str,
    command: &str,
) -> Result<Started, ApiError> {
    let client = aws.ecs_no_replay();
    let output = client
        .execute_command()
        .cluster(cluster)
        .task(task_arn)
        .container(container)
        .command(command)
        .interactive(true)
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "ExecuteCommand", e))?;
    let session = output
        .session()
        .ok_or_else(|| ApiError::missing(SERVICE, "ExecuteCommand", "session"))?;
    let field = |value: Option<&str>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::missing(SERVICE, "ExecuteCommand", name))
    };
    Ok(Started {
        session_id: field(session.session_id(), "session id")?,
        stream_url: field(session.stream_url(), "stream URL")?,
        token: SecretString::from(field(session.token_value(), "token")?),
    })
}

/// What discovery and `pam targets check` need of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub arn: String,
    pub cluster: String,
    pub task_definition: Option<String>,
    pub enable_execute_command: bool,
    pub tags: std::collections::BTreeMap<String, String>,
}

/// What a task definition says: its containers and its task role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinitionInfo {
    pub containers: Vec<String>,
    pub task_role_arn: Option<String>,
}

/// Every service of `cluster` with its tags (`ListServices`, then
/// `DescribeServices` with `include=TAGS`, ten at a time), at most `limit`.
pub async fn services(
    aws: &Aws,
    cluster: &str,
    limit: usize,
) -> Result<Vec<ServiceInfo>, ApiError> {
    let client = aws.ecs();
    let mut arns = Vec::new();
    let mut next_token = None;
    loop {
        let page = client
            .list_services()
            .cluster(cluster)
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|e| from_sdk(SERVICE, "ListServices", e))?;
        arns.extend(page.service_arns().iter().cloned());
        next_token = page.next_token().map(str::to_owned);
        if next_token.is_none() || arns.len() >= limit {
            break;
        }
    }
    arns.truncate(limit);
    let mut out = Vec::new();
    for chunk in arns.chunks(10) {
        out.extend(describe_services(aws, cluster, chunk).await?);
    }
    Ok(out)
}

/// `DescribeServices` with tags for up to ten names or ARNs.
pub async fn describe_services(
    aws: &Aws,
    cluster: &str,
    services: &[String],
) -> Result<Vec<ServiceInfo>, ApiError> {
    let output = aws
        .ecs()
        .describe_services()
        .cluster(cluster)
        .set_services(Some(services.to_vec()))
        .include(aws_sdk_ecs::types::ServiceField::Tags)
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "DescribeServices", e))?;
    Ok(output
        .services()
        .iter()
        .filter_map(|s| {
            Some(ServiceInfo {
                name: s.service_name()?.to_owned(),
                arn: s.service_arn().unwrap_or_default().to_owned(),
                cluster: cluster.to_owned(),
                task_definition: s.task_definition().map(str::to_owned),
                enable_execute_command: s.enable_execute_command(),
                tags: s
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
                    .collect(),
            })
        })
        .collect())
}

/// `DescribeTaskDefinition`: container names and the task role.
pub async fn task_definition(aws: &Aws, arn: &str) -> Result<TaskDefinitionInfo, ApiError> {
    let output = aws
        .ecs()
        .describe_task_definition()
        .task_definition(arn)
        .send()
        .await
        .map_err(|e| from_sdk(SERVICE, "DescribeTaskDefinition", e))?;
    let definition = output
        .task_definition()
        .ok_or_else(|| ApiError::missing(SERVICE, "DescribeTaskDefinition", "taskDefinition"))?;
    Ok(TaskDefinitionInfo {
        containers: definition
            .container_definitions()
            .iter()
            .filter_map(|c| c.name().map(str::to_owned))
            .collect(),
        task_role_arn: definition.task_role_arn().map(str::to_owned),
    })
}
