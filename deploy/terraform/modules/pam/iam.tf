# IAM.
#
#   task role        what the broker (and the recordings shipper) may do with
#                    AWS: assume exactly the target roles, ECS Exec into exactly
#                    the listed clusters, SSM port forwarding to exactly the
#                    listed hosts, RDS IAM tokens for exactly the listed users,
#                    read exactly the listed target secrets, write recordings.
#   execution role   what the ECS agent needs to start a broker task: pull the
#                    image, write logs, resolve the task's secrets.
#   bootstrap execution role  the same for the store bootstrap task, plus the
#                    RDS-managed master secret (which the broker never sees).
#
# Every trust policy pins aws:SourceAccount, and the task role trust also the
# task definitions of this module (confused deputy).

locals {
  ecs_tasks_trust = {
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:*" }
      }
    }]
  }

  # ECS Exec resources: the clusters and the tasks in them.
  ecs_exec_task_arns = [for c in var.ecs_exec_cluster_arns : "${replace(c, ":cluster/", ":task/")}/*"]
}

# --- task role -------------------------------------------------------------------

resource "aws_iam_role" "task" {
  name                 = "${local.name_prefix}-task"
  description          = "pam ${var.environment} broker: brokered access to targets"
  assume_role_policy   = jsonencode(local.ecs_tasks_trust)
  max_session_duration = 3600
  tags                 = local.tags
}

data "aws_iam_policy_document" "task" {
  # aws targets. SetSourceIdentity carries the user's identity into CloudTrail
  # of the target account; TagSession carries session tags.
  dynamic "statement" {
    for_each = length(var.target_role_arns) > 0 ? [1] : []
    content {
      sid       = "AssumeTargetRoles"
      actions   = ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]
      resources = var.target_role_arns
    }
  }

  # ecs targets: ECS Exec into the listed clusters only.
  dynamic "statement" {
    for_each = length(var.ecs_exec_cluster_arns) > 0 ? [1] : []
    content {
      sid       = "EcsExecIntoListedClusters"
      actions   = ["ecs:ExecuteCommand", "ecs:DescribeTasks"]
      resources = concat(var.ecs_exec_cluster_arns, local.ecs_exec_task_arns)
    }
  }

  # ListTasks authorizes on the container instance, so it is scoped by the
  # ecs:cluster condition key instead of by resource.
  dynamic "statement" {
    for_each = length(var.ecs_exec_cluster_arns) > 0 ? [1] : []
    content {
      sid       = "ListTasksInListedClusters"
      actions   = ["ecs:ListTasks"]
      resources = ["*"]

      condition {
        test     = "ArnEquals"
        variable = "ecs:cluster"
        values   = var.ecs_exec_cluster_arns
      }
    }
  }

  dynamic "statement" {
    for_each = var.ecs_exec_kms_key_arn != null && length(var.ecs_exec_cluster_arns) > 0 ? [1] : []
    content {
      sid       = "EcsExecSessionKey"
      actions   = ["kms:GenerateDataKey"]
      resources = [var.ecs_exec_kms_key_arn]
    }
  }

  # postgres targets with via = { ssm_target = ... }: port forwarding only,
  # to the listed hosts only.
  dynamic "statement" {
    for_each = length(var.ssm_port_forwarding_target_arns) > 0 ? [1] : []
    content {
      sid     = "SsmPortForwardingToListedTargets"
      actions = ["ssm:StartSession"]
      resources = concat(
        var.ssm_port_forwarding_target_arns,
        ["arn:${local.partition}:ssm:${local.region}::document/AWS-StartPortForwardingSessionToRemoteHost"],
      )

      condition {
        test     = "BoolIfExists"
        variable = "ssm:SessionDocumentAccessCheck"
        values   = ["true"]
      }
    }
  }

  dynamic "statement" {
    for_each = length(var.ssm_port_forwarding_target_arns) > 0 ? [1] : []
    content {
      # Sessions of an assumed role are tagged with the caller's user id.
      sid       = "SsmOwnSessionsOnly"
      actions   = ["ssm:ResumeSession", "ssm:TerminateSession"]
      resources = ["arn:${local.partition}:ssm:${local.region}:${local.account_id}:session/*"]

      condition {
        test     = "StringLike"
        variable = "ssm:resourceTag/aws:ssmmessages:session-id"
        values   = ["$${aws:userid}"]
      }
    }
  }

  # postgres targets with credential = { from = "rds-iam" }.
  dynamic "statement" {
    for_each = length(var.rds_iam_db_user_arns) > 0 ? [1] : []
    content {
      sid       = "RdsIamTokensForListedUsers"
      actions   = ["rds-db:connect"]
      resources = var.rds_iam_db_user_arns
    }
  }

  # ssh and postgres targets with credential = { from = "secretsmanager" }.
  dynamic "statement" {
    for_each = length(var.target_secret_arns) > 0 ? [1] : []
    content {
      sid       = "ReadListedTargetSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = var.target_secret_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.target_secret_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptTargetSecretsViaSecretsManager"
      actions   = ["kms:Decrypt"]
      resources = var.target_secret_kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }

  # [[discovery]] and `pam targets check`: read what is tagged and how it is
  # set up. Reads only; IAM reads limited to roles and policies of this
  # account, ECS reads to services and task definitions.
  dynamic "statement" {
    for_each = var.discovery_enabled ? [1] : []
    content {
      sid = "DiscoverTargetRolesAndPolicies"
      actions = [
        "iam:ListRoles", "iam:ListRoleTags", "iam:GetRole",
        "iam:ListAttachedRolePolicies", "iam:ListRolePolicies", "iam:GetRolePolicy",
        "iam:GetPolicy", "iam:GetPolicyVersion",
      ]
      resources = [
        "arn:${local.partition}:iam::${local.account_id}:role/*",
        "arn:${local.partition}:iam::${local.account_id}:policy/*",
        "arn:${local.partition}:iam::aws:policy/*",
      ]
    }
  }

  dynamic "statement" {
    for_each = var.discovery_enabled ? [1] : []
    content {
      sid       = "DiscoverEcsServices"
      actions   = ["ecs:ListServices", "ecs:DescribeServices"]
      resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:service/*"]
    }
  }

  # These describe calls have no resource-level permissions.
  dynamic "statement" {
    for_each = var.discovery_enabled ? [1] : []
    content {
      sid = "DiscoverDatabasesInstancesAndTaskDefinitions"
      actions = [
        "ecs:DescribeTaskDefinition",
        "rds:DescribeDBInstances", "rds:DescribeDBClusters",
        "ec2:DescribeInstances", "ssm:DescribeInstanceInformation",
      ]
      resources = ["*"]
    }
  }

  # `pam targets check`: rds-db:connect proven by simulating the broker's
  # own policies; target secrets described (GetSecretValue is granted above).
  dynamic "statement" {
    for_each = var.discovery_enabled ? [1] : []
    content {
      sid       = "SimulateOwnPolicies"
      actions   = ["iam:SimulatePrincipalPolicy"]
      resources = [aws_iam_role.task.arn]
    }
  }

  dynamic "statement" {
    for_each = var.discovery_enabled && length(var.target_secret_arns) > 0 ? [1] : []
    content {
      sid       = "DescribeListedTargetSecrets"
      actions   = ["secretsmanager:DescribeSecret"]
      resources = var.target_secret_arns
    }
  }

  # Recordings: write (shipper sidecar) and read back (replay), never delete.
  statement {
    sid       = "WriteAndReadRecordings"
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = ["${aws_s3_bucket.recordings.arn}/${local.recordings_prefix}*"]
  }

  statement {
    sid       = "RecordingsKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.recordings.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "brokered-access"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# --- execution role (broker tasks) -------------------------------------------

resource "aws_iam_role" "execution" {
  name               = "${local.name_prefix}-execution"
  description        = "pam ${var.environment}: ECS agent for broker tasks (image pull, logs, secrets)"
  assume_role_policy = jsonencode(local.ecs_tasks_trust)
  tags               = local.tags
}

locals {
  broker_secret_arns = compact([
    aws_secretsmanager_secret.key_material.arn,
    aws_secretsmanager_secret.oidc_client_secret.arn,
    aws_secretsmanager_secret.store.arn,
    var.postgres_tls_secret_arn,
  ])
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrAuthToken"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions
  }

  dynamic "statement" {
    for_each = length(local.image_ecr_repository_arns) > 0 ? [1] : []
    content {
      sid       = "PullBrokerImage"
      actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
      resources = local.image_ecr_repository_arns
    }
  }

  statement {
    sid       = "WriteTaskLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.broker.arn}:log-stream:*"]
  }

  statement {
    sid       = "ResolveTaskSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = local.broker_secret_arns
  }

  statement {
    sid       = "DecryptTaskSecrets"
    actions   = ["kms:Decrypt"]
    resources = compact([aws_kms_key.data.arn, var.postgres_tls_secret_kms_key_arn])

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "start-broker-tasks"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# --- execution role (store bootstrap task) -------------------------------------

resource "aws_iam_role" "bootstrap_execution" {
  name               = "${local.name_prefix}-store-bootstrap"
  description        = "pam ${var.environment}: ECS agent for the one-off store bootstrap task"
  assume_role_policy = jsonencode(local.ecs_tasks_trust)
  tags               = local.tags
}

data "aws_iam_policy_document" "bootstrap_execution" {
  statement {
    sid       = "WriteTaskLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.broker.arn}:log-stream:*"]
  }

  statement {
    sid     = "ResolveTaskSecrets"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_db_instance.store.master_user_secret[0].secret_arn,
      aws_secretsmanager_secret.store.arn,
    ]
  }

  statement {
    sid       = "DecryptTaskSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "bootstrap_execution" {
  name   = "start-store-bootstrap-task"
  role   = aws_iam_role.bootstrap_execution.id
  policy = data.aws_iam_policy_document.bootstrap_execution.json
}
