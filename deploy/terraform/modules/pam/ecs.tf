# ECS: one Fargate service, at least two tasks spread over the AZs of
# private_subnet_ids, behind the ALB (HTTP) and the NLB (SSH, PostgreSQL).
#
# What a task receives:
#   environment  the whole pam.toml (PAM_CONFIG_TOML, written to /run/pam/pam.toml
#                by the entrypoint) and PAM_SECTION__KEY overrides for the values
#                this module owns (public URL, listeners, paths, region)
#   secrets      the store URL, the OIDC client secret and the five keys, resolved
#                by the ECS agent at start; the entrypoint writes the keys 0600
#                into /run/pam/keys and unsets the variables before exec'ing pam
#
# ECS Exec is off for the broker: an operator shell next to the CA keys would
# bypass the very controls the broker enforces. Debug with logs and metrics.

resource "aws_ecs_cluster" "this" {
  name = local.name_prefix
  tags = local.tags

  setting {
    name  = "containerInsights"
    value = "enhanced"
  }

  configuration {
    execute_command_configuration {
      kms_key_id = aws_kms_key.data.arn
      logging    = "OVERRIDE"

      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.ecs_exec.name
      }
    }

    managed_storage_configuration {
      fargate_ephemeral_storage_kms_key_id = aws_kms_key.data.arn
    }
  }

  depends_on = [aws_cloudwatch_log_group.container_insights]
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

locals {
  awslogs = {
    logDriver = "awslogs"
    options = {
      "awslogs-group"         = aws_cloudwatch_log_group.broker.name
      "awslogs-region"        = local.region
      "awslogs-stream-prefix" = "broker"
      # Operational logs; the audit trail itself is in the store.
      "mode"            = "non-blocking"
      "max-buffer-size" = "25m"
    }
  }

  broker_environment = [
    { name = "PAM_CONFIG_TOML", value = var.config_toml },
    { name = "PAM_REQUIRE_KEYMATERIAL", value = "1" },
    { name = "PAM_SERVER__PUBLIC_URL", value = local.public_url },
    { name = "PAM_SERVER__HTTP_LISTEN", value = "0.0.0.0:${local.http_port}" },
    { name = "PAM_SERVER__SSH_LISTEN", value = "0.0.0.0:${local.ssh_port}" },
    { name = "PAM_SERVER__POSTGRES_LISTEN", value = "0.0.0.0:${local.postgres_port}" },
    { name = "PAM_SERVER__SSH_PUBLIC_ADDR", value = "${var.tunnel_hostname}:${local.ssh_port}" },
    { name = "PAM_SERVER__POSTGRES_PUBLIC_ADDR", value = "${var.tunnel_hostname}:${local.postgres_port}" },
    { name = "PAM_SERVER__DATA_DIR", value = local.data_dir },
    { name = "PAM_SERVER__KEYS_DIR", value = local.keys_dir },
    # The ALB's subnets: from there, the client address is X-Forwarded-For's.
    { name = "PAM_SERVER__TRUSTED_PROXIES", value = jsonencode([for s in data.aws_subnet.load_balancer : s.cidr_block]) },
    { name = "PAM_AWS__REGION", value = local.region },
    { name = "PAM_LOG", value = var.log_level },
    { name = "PAM_LOG_FORMAT", value = "json" },
  ]

  broker_secrets = concat(
    [
      { name = "PAM_SERVER__DATABASE_URL", valueFrom = "${aws_secretsmanager_secret.store.arn}:url::" },
      { name = "PAM_OIDC_CLIENT_SECRET", valueFrom = aws_secretsmanager_secret.oidc_client_secret.arn },
    ],
    [
      for k in local.key_files : {
        name      = "PAM_KEYMATERIAL_${upper(k)}"
        valueFrom = "${aws_secretsmanager_secret.key_material.arn}:${k}::"
      }
    ],
    var.postgres_tls_secret_arn == null ? [] : [
      { name = "PAM_TLS_CERT_PEM", valueFrom = "${var.postgres_tls_secret_arn}:cert_pem::" },
      { name = "PAM_TLS_KEY_PEM", valueFrom = "${var.postgres_tls_secret_arn}:key_pem::" },
    ],
  )

  broker_container = {
    name      = "pam"
    image     = var.image
    essential = true
    command   = ["serve", "--config", "${local.run_dir}/pam.toml"]
    user      = "10001:10001"

    readonlyRootFilesystem = true
    privileged             = false
    linuxParameters = {
      initProcessEnabled = true
      capabilities       = { add = [], drop = ["ALL"] }
    }
    ulimits = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]

    portMappings = [
      { name = "http", containerPort = local.http_port, protocol = "tcp" },
      { name = "ssh", containerPort = local.ssh_port, protocol = "tcp" },
      { name = "postgres", containerPort = local.postgres_port, protocol = "tcp" },
    ]

    environment = local.broker_environment
    secrets     = local.broker_secrets

    mountPoints = [
      { sourceVolume = "data", containerPath = local.data_dir, readOnly = false },
      { sourceVolume = "run", containerPath = local.run_dir, readOnly = false },
    ]

    # Liveness (ECS ignores the image's HEALTHCHECK). Readiness is /readyz on
    # the load balancers.
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/pam-healthcheck"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 60
    }

    stopTimeout      = var.stop_timeout_seconds
    logConfiguration = merge(local.awslogs, { options = merge(local.awslogs.options, { "awslogs-stream-prefix" = "broker" }) })

    dependsOn = var.recordings_shipper_enabled ? [{ containerName = "recordings-shipper", condition = "START" }] : []
  }

  shipper_container = {
    name       = "recordings-shipper"
    image      = var.recordings_shipper_image
    essential  = true
    user       = "10001:10001"
    entryPoint = ["/bin/bash", "-c"]
    command    = [file("${path.module}/files/ship-recordings.sh")]

    readonlyRootFilesystem = true
    privileged             = false
    linuxParameters = {
      initProcessEnabled = true
      capabilities       = { add = [], drop = ["ALL"] }
    }

    environment = [
      { name = "RECORDINGS_DIR", value = "${local.data_dir}/recordings" },
      { name = "RECORDINGS_BUCKET", value = aws_s3_bucket.recordings.id },
      { name = "RECORDINGS_PREFIX", value = local.recordings_prefix },
      # Above session.idle_timeout (15m): a file this quiet is a finished session.
      { name = "QUIET_SECONDS", value = "1200" },
      { name = "SCAN_INTERVAL_SECONDS", value = "60" },
      { name = "HOME", value = "${local.data_dir}/.shipper" },
      { name = "AWS_REGION", value = local.region },
    ]

    mountPoints = [
      { sourceVolume = "data", containerPath = local.data_dir, readOnly = false },
    ]

    stopTimeout      = 120
    logConfiguration = merge(local.awslogs, { options = merge(local.awslogs.options, { "awslogs-stream-prefix" = "recordings-shipper" }) })
  }
}

resource "aws_ecs_task_definition" "broker" {
  family                   = "${local.name_prefix}-broker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  task_role_arn            = aws_iam_role.task.arn
  execution_role_arn       = aws_iam_role.execution.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  ephemeral_storage {
    size_in_gib = var.ephemeral_storage_gib
  }

  # Task-local bind mounts on the (KMS-encrypted) ephemeral storage. Their
  # ownership comes from the image's VOLUME directories (pam:pam, 0700).
  volume {
    name = "data"
  }

  volume {
    name = "run"
  }

  container_definitions = jsonencode(concat(
    [local.broker_container],
    var.recordings_shipper_enabled ? [local.shipper_container] : [],
  ))

  tags = local.tags
}

resource "aws_ecs_service" "broker" {
  name            = var.name
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.broker.arn
  desired_count   = var.desired_count

  launch_type                   = "FARGATE"
  platform_version              = "LATEST"
  availability_zone_rebalancing = "ENABLED"
  enable_execute_command        = false
  enable_ecs_managed_tags       = true
  propagate_tags                = "SERVICE"

  # Rolling deploys keep full capacity: new tasks come up before old ones stop
  # (old tasks get stop_timeout_seconds to close sessions), and a deploy whose
  # tasks never turn healthy rolls back.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 60

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.http.arn
    container_name   = "pam"
    container_port   = local.http_port
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.tunnel["ssh"].arn
    container_name   = "pam"
    container_port   = local.ssh_port
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.tunnel["postgres"].arn
    container_name   = "pam"
    container_port   = local.postgres_port
  }

  tags = local.tags

  depends_on = [
    aws_lb_listener.https,
    aws_lb_listener.tunnel,
    aws_iam_role_policy.execution,
    aws_iam_role_policy.task,
  ]
}

# The load balancers' subnets, whose addresses the broker trusts to report
# the client in X-Forwarded-For (the ALB appends it).
data "aws_subnet" "load_balancer" {
  for_each = toset(var.load_balancer_subnet_ids)
  id       = each.value
}
