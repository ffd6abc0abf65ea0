# One-off task that prepares the store for the broker, run by an operator
# after the first apply and after every store_password_version bump (the
# exact command is the output store_bootstrap_command). Idempotent.
#
# It logs in as the RDS-managed master user (secret never given to the broker)
# and makes pam_broker a LOGIN role with the current password from the store
# secret, owner of the pam database (and so, on PostgreSQL 15+, of its public
# schema, where the broker's migrations create their tables), and enables
# pgaudit. It runs inside the VPC, so no Terraform runner needs a network path
# to the database.

resource "aws_ecs_task_definition" "store_bootstrap" {
  family                   = "${local.name_prefix}-store-bootstrap"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.bootstrap_execution.arn
  # No task role: the task calls no AWS API.

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name       = "store-bootstrap"
    image      = var.store_bootstrap_image
    essential  = true
    user       = "postgres"
    entryPoint = ["/bin/sh", "-c"]
    command    = [file("${path.module}/files/store-bootstrap.sh")]

    readonlyRootFilesystem = true
    privileged             = false
    linuxParameters = {
      initProcessEnabled = true
      capabilities       = { add = [], drop = ["ALL"] }
    }

    environment = [
      { name = "PGHOST", value = aws_db_instance.store.address },
      { name = "PGPORT", value = tostring(aws_db_instance.store.port) },
      { name = "PGDATABASE", value = local.store_db },
      # The stock postgres image has no RDS CA bundle; the connection is still
      # TLS (rds.force_ssl) inside the VPC, but unauthenticated.
      { name = "PGSSLMODE", value = "require" },
      { name = "PGCONNECT_TIMEOUT", value = "15" },
      { name = "PGAPPNAME", value = "pam-store-bootstrap" },
      { name = "STORE_USER", value = local.store_user },
    ]

    secrets = [
      { name = "PGUSER", valueFrom = "${aws_db_instance.store.master_user_secret[0].secret_arn}:username::" },
      { name = "PGPASSWORD", valueFrom = "${aws_db_instance.store.master_user_secret[0].secret_arn}:password::" },
      { name = "STORE_PASSWORD", valueFrom = "${aws_secretsmanager_secret.store.arn}:password::" },
    ]

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.broker.name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "store-bootstrap"
      }
    }
  }])

  tags = local.tags
}

locals {
  store_bootstrap_command = join(" ", [
    "aws ecs run-task",
    "--region ${local.region}",
    "--cluster ${aws_ecs_cluster.this.name}",
    "--task-definition ${aws_ecs_task_definition.store_bootstrap.family}",
    "--launch-type FARGATE",
    "--network-configuration 'awsvpcConfiguration={subnets=[${join(",", var.private_subnet_ids)}],securityGroups=[${aws_security_group.bootstrap.id}],assignPublicIp=DISABLED}'",
  ])
}
