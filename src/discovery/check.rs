//! `pam targets check`: proves with IAM, STS, RDS, ECS, SSM and Secrets
//! Manager that each target will work before a user needs it. One line per
//! check, with what to change when it fails. Secret values are read only to
//! check their shape and never leave this module.

use serde_json::Value;

use crate::aws::Aws;
use crate::aws::error::ApiError;
use crate::config::{Credential, TargetConfig, TargetKind};

use super::iam_policy::{self, Trust};

/// One check of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What was checked (`trust`, `assume`, `iam-auth`, ...).
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to change when it failed.
    pub fix: Option<String>,
}

/// Every check of one target.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    pub kind: &'static str,
    pub lines: Vec<Line>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.lines.iter().all(|l| l.ok)
    }
}

fn pass(check: &'static str, detail: impl Into<String>) -> Line {
    Line {
        check,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
    Line {
        check,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// A failed AWS call as a failed check, with a hint for the usual causes.
fn api_fail(check: &'static str, error: &ApiError, what: &str) -> Line {
    let fix = if error.is_access_denied() {
        format!(
            "give the broker's role {} (deploy/terraform/modules/pam)",
            what
        )
    } else if error
        .code
        .as_deref()
        .is_some_and(|c| c.contains("Throttl") || c.contains("TooManyRequests"))
    {
        "AWS throttled the call: run the check again later".to_owned()
    } else {
        format!("make sure {what} works for the broker")
    };
    fail(check, error.to_string(), fix)
}

/// The broker's own principal, found once per run.
pub struct Caller {
    /// The IAM role or user ARN (an assumed-role session becomes its role).
    pub principal: String,
    pub account: String,
}

/// Who the broker is (`sts:GetCallerIdentity`).
pub async fn caller(aws: &Aws) -> Result<Caller, ApiError> {
    let arn = crate::aws::sts::caller_arn(aws).await?;
    let principal = crate::aws::iam::principal_of(&arn);
    let account = principal.split(':').nth(4).unwrap_or_default().to_owned();
    Ok(Caller { principal, account })
}

/// Checks `targets` one after the other (AWS rate limits favour few calls
/// at once over speed here). With `assume`, aws targets are also proven by
/// an actual AssumeRole (`pam targets check`; the check at start only reads).
pub async fn check_all(aws: &Aws, targets: &[TargetConfig], assume: bool) -> Vec<Report> {
    // Who the broker is matters for aws and rds-iam targets only.
    let mut caller_found: Option<Result<Caller, ApiError>> = None;
    let mut out = Vec::new();
    for target in targets {
        let needs_caller = match &target.kind {
            TargetKind::Aws(_) => true,
            TargetKind::Postgres(pg) => matches!(pg.credential, Credential::RdsIam { .. }),
            _ => false,
        };
        let lines = if needs_caller {
            if caller_found.is_none() {
                caller_found = Some(caller(aws).await);
            }
            match caller_found.as_ref() {
                Some(Ok(caller)) => check(aws, caller, target, assume).await,
                Some(Err(e)) => vec![api_fail(
                    "identity",
                    e,
                    "AWS credentials (sts:GetCallerIdentity)",
                )],
                None => Vec::new(),
            }
        } else {
            let nobody = Caller {
                principal: String::new(),
                account: String::new(),
            };
            check(aws, &nobody, target, assume).await
        };
        out.push(Report {
            target: target.name.clone(),
            kind: target.kind_name(),
            lines,
        });
    }
    out
}

async fn check(aws: &Aws, caller: &Caller, target: &TargetConfig, assume: bool) -> Vec<Line> {
    match &target.kind {
        TargetKind::Aws(a) => check_role(aws, caller, a, assume).await,
        TargetKind::Postgres(pg) => {
            let mut lines = Vec::new();
            match &pg.credential {
                Credential::RdsIam { db_user } => {
                    lines.extend(check_rds_iam(aws, caller, &pg.address, db_user).await);
                }
                Credential::Secretsmanager { secret_id } => {
                    lines.push(check_secret(aws, secret_id, SecretShape::Database).await);
                }
                Credential::BrokerCa => lines.push(fail(
                    "credential",
                    "broker-ca is not a database credential",
                    "use credential = { from = \"rds-iam\" } or { from = \"secretsmanager\" }",
                )),
            }
            if let Some(via) = &pg.via {
                lines.push(check_managed(aws, &via.ssm_target).await);
            }
            lines
        }
        TargetKind::Ecs(ecs) => check_ecs(aws, ecs).await,
        TargetKind::Ssh(ssh) => {
            let mut lines = Vec::new();
            if let Credential::Secretsmanager { secret_id } = &ssh.credential {
                lines.push(check_secret(aws, secret_id, SecretShape::SshKey).await);
            }
            if let Some(via) = &ssh.via {
                lines.push(check_managed(aws, &via.ssm_target).await);
            }
            if ssh.host_key.is_none() && ssh.host_ca.is_none() {
                lines.push(fail(
                    "host-key",
                    "neither host_key nor host_ca is set",
                    "pin the host key (host_key) or its CA (host_ca)",
                ));
            }
            if lines.is_empty() {
                lines.push(pass(
                    "aws",
                    "nothing in AWS to check (the broker's target CA signs its certificate)",
                ));
            }
            lines
        }
    }
}

async fn check_role(
    aws: &Aws,
    caller: &Caller,
    target: &crate::config::AwsTarget,
    assume: bool,
) -> Vec<Line> {
    let mut lines = Vec::new();
    let Some(name) = target.role_arn.rsplit('/').next().filter(|n| !n.is_empty()) else {
        return vec![fail(
            "role",
            format!("{} is not a role ARN", target.role_arn),
            "set role_arn to arn:aws:iam::ACCOUNT:role/NAME",
        )];
    };
    let role = match crate::aws::iam::role(aws, name).await {
        Ok(role) => role,
        Err(e) if e.code.as_deref() == Some("NoSuchEntity") => {
            return vec![fail(
                "role",
                format!("IAM has no role {name}"),
                "create the role (deploy/terraform/modules/target-role) or fix role_arn",
            )];
        }
        Err(e) => return vec![api_fail("role", &e, "iam:GetRole on the target roles")],
    };
    lines.push(pass("role", format!("{} exists", role.arn)));
    let statements = match role.trust_policy.as_deref().map(iam_policy::parse) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            lines.push(fail(
                "trust",
                format!("the trust policy is malformed: {e}"),
                "fix the role's trust policy document",
            ));
            None
        }
        None => {
            lines.push(fail(
                "trust",
                "IAM returned no trust policy",
                "give the role a trust policy naming the broker's role",
            ));
            None
        }
    };
    if let Some(statements) = statements {
        let mut demanded: Option<Vec<String>> = None;
        for action in ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"] {
            match iam_policy::trust(&statements, &caller.principal, &caller.account, action) {
                Trust::Allowed { external_ids } => {
                    if action == "sts:AssumeRole" {
                        demanded = Some(external_ids);
                    }
                    lines.push(pass(
                        "trust",
                        format!("the trust policy lets {} do {action}", caller.principal),
                    ));
                }
                Trust::Denied => lines.push(fail(
                    "trust",
                    format!("the trust policy denies {action} to {}", caller.principal),
                    format!("remove the Deny of {action} for the broker's role"),
                )),
                Trust::NotAllowed => lines.push(fail(
                    "trust",
                    format!(
                        "the trust policy does not let {} do {action}",
                        caller.principal
                    ),
                    format!(
                        "add {action} for {} to the role's trust policy{}",
                        caller.principal,
                        if action == "sts:AssumeRole" {
                            ""
                        } else {
                            " (without it every request fails at use time)"
                        }
                    ),
                )),
            }
        }
        match (&demanded, &target.external_id) {
            (Some(ids), Some(ours)) if !ids.is_empty() && !ids.contains(ours) => lines.push(fail(
                "external-id",
                "the trust policy demands another sts:ExternalId than the target's external_id",
                "make external_id equal to the trust policy's sts:ExternalId",
            )),
            (Some(ids), None) if !ids.is_empty() => lines.push(fail(
                "external-id",
                "the trust policy demands an sts:ExternalId and the target has none",
                "set external_id on the target (or tag pam:external_id)",
            )),
            (Some(ids), Some(_)) if ids.is_empty() => lines.push(pass(
                "external-id",
                "the trust policy does not check the ExternalId the broker sends",
            )),
            (Some(ids), None) if ids.is_empty() => {}
            (Some(_), _) => lines.push(pass("external-id", "the ExternalId matches")),
            (None, _) => {}
        }
    }
    let wanted = target.max_duration.0.as_secs();
    if u64::from(role.max_session_duration) >= wanted {
        lines.push(pass(
            "duration",
            format!(
                "MaxSessionDuration {}s covers max_duration {}",
                role.max_session_duration, target.max_duration
            ),
        ));
    } else {
        lines.push(fail(
            "duration",
            format!(
                "MaxSessionDuration {}s is shorter than max_duration {}",
                role.max_session_duration, target.max_duration
            ),
            format!(
                "raise the role's MaxSessionDuration to at least {wanted}s or lower max_duration"
            ),
        ));
    }
    if !assume {
        return lines;
    }
    let assumed = crate::aws::sts::assume_role(
        aws,
        &crate::aws::sts::AssumeRequest {
            role_arn: target.role_arn.clone(),
            session_name: "pam-targets-check".into(),
            source_identity: "pam-targets-check".into(),
            duration_secs: 900,
            tags: vec![("pam-check".into(), "true".into())],
            external_id: target.external_id.clone(),
            session_policy: None,
        },
    )
    .await;
    lines.push(match assumed {
        Ok(_) => pass(
            "assume",
            "sts:AssumeRole with SourceIdentity and a session tag works",
        ),
        Err(e) => fail(
            "assume",
            e.to_string(),
            "the trust policy or the broker's own sts:AssumeRole permission refuses it",
        ),
    });
    lines
}

async fn check_rds_iam(aws: &Aws, caller: &Caller, address: &str, db_user: &str) -> Vec<Line> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_matches(['[', ']']);
    let databases = match crate::aws::rds_describe::instances(aws, super::LIMIT).await {
        Ok(mut dbs) => {
            if let Ok(clusters) = crate::aws::rds_describe::clusters(aws, super::LIMIT).await {
                dbs.extend(clusters);
            }
            dbs
        }
        Err(e) => return vec![api_fail("rds", &e, "rds:DescribeDBInstances")],
    };
    let Some(db) = databases.iter().find(|d| {
        d.address
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(host))
    }) else {
        return vec![fail(
            "rds",
            format!("no RDS instance or cluster has the endpoint {host}"),
            "set address to the database's endpoint (aws rds describe-db-instances)",
        )];
    };
    let mut lines = vec![pass(
        "rds",
        format!("{} {} has the endpoint {host}", db.class, db.identifier),
    )];
    if db.iam_auth {
        lines.push(pass("iam-auth", "IAM database authentication is enabled"));
    } else {
        lines.push(fail(
            "iam-auth",
            format!("IAM database authentication is off on {}", db.identifier),
            format!(
                "aws rds modify-db-{} --{}-identifier {} --enable-iam-database-authentication",
                db.class,
                if db.class == "cluster" {
                    "db-cluster"
                } else {
                    "db-instance"
                },
                db.identifier
            ),
        ));
    }
    let Some(resource_id) = &db.resource_id else {
        lines.push(fail(
            "rds-db:connect",
            "RDS gave no resource id to check rds-db:connect against",
            "check the broker's rds-db:connect permission by hand",
        ));
        return lines;
    };
    let region = db.arn.split(':').nth(3).unwrap_or("*");
    let account = db.arn.split(':').nth(4).unwrap_or(&caller.account);
    let resource = format!("arn:aws:rds-db:{region}:{account}:dbuser:{resource_id}/{db_user}");
    lines.push(
        match crate::aws::iam::simulate(aws, &caller.principal, &["rds-db:connect"], &resource)
            .await
        {
            Ok(results)
                if results.iter().all(|r| r.decision == "allowed") && !results.is_empty() =>
            {
                pass(
                    "rds-db:connect",
                    format!("the broker may connect as {db_user} ({resource})"),
                )
            }
            Ok(results) => fail(
                "rds-db:connect",
                format!(
                    "iam:SimulatePrincipalPolicy says {} for {resource}",
                    results
                        .first()
                        .map_or("nothing".to_owned(), |r| r.decision.clone())
                ),
                format!("allow rds-db:connect on {resource} to {}", caller.principal),
            ),
            Err(e) => api_fail(
                "rds-db:connect",
                &e,
                "iam:SimulatePrincipalPolicy on its own role",
            ),
        },
    );
    lines
}

enum SecretShape {
    Database,
    SshKey,
}

async fn check_secret(aws: &Aws, secret_id: &str, shape: SecretShape) -> Line {
    let client = aws.secrets_manager();
    if let Err(e) = client.describe_secret().secret_id(secret_id).send().await {
        let error = crate::aws::error::from_sdk("secretsmanager", "DescribeSecret", e);
        if error.code.as_deref() == Some("ResourceNotFoundException") {
            return fail(
                "secret",
                format!("no secret {secret_id}"),
                "create the secret or fix secret_id (or tag pam:secret)",
            );
        }
        return api_fail(
            "secret",
            &error,
            "secretsmanager:DescribeSecret on the target secrets",
        );
    }
    let value = match client.get_secret_value().secret_id(secret_id).send().await {
        Ok(v) => v,
        Err(e) => {
            let error = crate::aws::error::from_sdk("secretsmanager", "GetSecretValue", e);
            return api_fail(
                "secret",
                &error,
                "secretsmanager:GetSecretValue (and kms:Decrypt via Secrets Manager) on the secret",
            );
        }
    };
    let Some(text) = value.secret_string() else {
        return fail(
            "secret",
            format!("{secret_id} has no string value"),
            "store the credential as a string (SecretString)",
        );
    };
    match shape {
        SecretShape::Database => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                if map.get("password").and_then(Value::as_str).is_some() {
                    pass(
                        "secret",
                        format!(
                            "{secret_id} is readable and has a password{}",
                            if map.contains_key("username") {
                                " and a username"
                            } else {
                                ""
                            }
                        ),
                    )
                } else {
                    fail(
                        "secret",
                        format!("{secret_id} is JSON without a \"password\" key"),
                        "store {\"username\": ..., \"password\": ...} (RDS's shape) or the password alone",
                    )
                }
            }
            _ if !text.is_empty() => pass(
                "secret",
                format!("{secret_id} is readable (a plain password)"),
            ),
            _ => fail(
                "secret",
                format!("{secret_id} is empty"),
                "store the password",
            ),
        },
        SecretShape::SshKey => {
            if russh::keys::ssh_key::PrivateKey::from_openssh(text.trim()).is_ok() {
                pass(
                    "secret",
                    format!("{secret_id} is readable and holds an OpenSSH private key"),
                )
            } else {
                fail(
                    "secret",
                    format!("{secret_id} does not hold an OpenSSH private key"),
                    "store the key in OpenSSH format (-----BEGIN OPENSSH PRIVATE KEY-----)",
                )
            }
        }
    }
}

async fn check_managed(aws: &Aws, ssm_target: &str) -> Line {
    if ssm_target.starts_with("ecs:") {
        return pass(
            "ssm",
            format!("{ssm_target} is an ECS task (checked at use)"),
        );
    }
    match crate::aws::ssm::managed_instances(aws, &[ssm_target.to_owned()]).await {
        Ok(found) => match found.get(ssm_target).map(String::as_str) {
            Some("Online") => pass(
                "ssm",
                format!("SSM manages {ssm_target} and its agent is Online"),
            ),
            Some(other) => fail(
                "ssm",
                format!("the SSM agent of {ssm_target} is {other}"),
                "start the SSM agent on the instance (systemctl status amazon-ssm-agent)",
            ),
            None => fail(
                "ssm",
                format!("SSM does not manage {ssm_target}"),
                "give the instance an instance profile with AmazonSSMManagedInstanceCore and the SSM agent",
            ),
        },
        Err(e) => api_fail("ssm", &e, "ssm:DescribeInstanceInformation"),
    }
}

async fn check_ecs(aws: &Aws, ecs: &crate::config::EcsTarget) -> Vec<Line> {
    let Some(service) = &ecs.service else {
        return vec![pass(
            "ecs",
            "a fixed task: enableExecuteCommand is checked when it is used",
        )];
    };
    let services =
        match crate::aws::ecs::describe_services(aws, &ecs.cluster, std::slice::from_ref(service))
            .await
        {
            Ok(s) => s,
            Err(e) => return vec![api_fail("ecs", &e, "ecs:DescribeServices")],
        };
    let Some(info) = services.into_iter().next() else {
        return vec![fail(
            "ecs",
            format!("cluster {} has no service {service}", ecs.cluster),
            "fix cluster and service",
        )];
    };
    let mut lines = Vec::new();
    if info.enable_execute_command {
        lines.push(pass(
            "exec",
            format!("{service} runs its tasks with enableExecuteCommand"),
        ));
    } else {
        lines.push(fail(
            "exec",
            format!("{service} does not enable ECS Exec"),
            format!(
                "aws ecs update-service --cluster {} --service {service} --enable-execute-command --force-new-deployment",
                ecs.cluster
            ),
        ));
    }
    let Some(definition) = &info.task_definition else {
        lines.push(fail(
            "task-role",
            "the service has no task definition",
            "deploy the service",
        ));
        return lines;
    };
    let definition = match crate::aws::ecs::task_definition(aws, definition).await {
        Ok(d) => d,
        Err(e) => {
            lines.push(api_fail("task-role", &e, "ecs:DescribeTaskDefinition"));
            return lines;
        }
    };
    if !definition.containers.contains(&ecs.container) {
        lines.push(fail(
            "container",
            format!("the task definition has no container {}", ecs.container),
            format!(
                "set container to one of {}",
                definition.containers.join(", ")
            ),
        ));
    }
    let Some(role_arn) = definition.task_role_arn else {
        lines.push(fail(
            "task-role",
            "the task definition has no task role: the SSM agent in the container cannot open its channels",
            "give the task definition a taskRoleArn with ssmmessages:CreateControlChannel, CreateDataChannel, OpenControlChannel, OpenDataChannel",
        ));
        return lines;
    };
    let role_name = role_arn.rsplit('/').next().unwrap_or_default();
    let policies = match crate::aws::iam::role_policies(aws, role_name).await {
        Ok(p) => p,
        Err(e) => {
            lines.push(api_fail(
                "task-role",
                &e,
                "iam:ListAttachedRolePolicies, iam:ListRolePolicies, iam:GetPolicy, iam:GetPolicyVersion, iam:GetRolePolicy on task roles",
            ));
            return lines;
        }
    };
    let statements: Vec<_> = policies
        .iter()
        .filter_map(|p| iam_policy::parse(&p.document).ok())
        .flatten()
        .collect();
    let missing: Vec<&str> = SSM_MESSAGES
        .iter()
        .copied()
        .filter(|a| !iam_policy::allows(&statements, a, "*"))
        .collect();
    if missing.is_empty() {
        lines.push(pass(
            "task-role",
            format!("{role_name} allows the ssmmessages channel actions"),
        ));
    } else {
        lines.push(fail(
            "task-role",
            format!("{role_name} does not allow {}", missing.join(", ")),
            format!("add {} to the task role's policy", missing.join(", ")),
        ));
    }
    lines
}

/// What the SSM agent in a container needs (aws-protocols.md 2, IAM).
const SSM_MESSAGES: [&str; 4] = [
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
];
