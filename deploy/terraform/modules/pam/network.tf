# Security groups: each hop admits only the hop before it.
#
#   clients (allowed_cidrs) --443--> ALB --8080--> tasks
#   clients (allowed_cidrs) --2222/6432--> NLB --2222/6432 (+8080 health)--> tasks
#   tasks --5432--> store;  bootstrap task --5432--> store
#   tasks --443--> AWS APIs and the IdP;  tasks --target_egress_rules--> targets
#
# The NLB has its own security group, so the tasks reference it instead of
# client ranges even though client IP preservation is on (the broker audits
# the real source address of SSH and PostgreSQL connections).

resource "aws_security_group" "alb" {
  name        = "${local.name_prefix}-alb"
  description = "pam ${var.environment}: HTTPS load balancer"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.name_prefix}-alb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "nlb" {
  name        = "${local.name_prefix}-nlb"
  description = "pam ${var.environment}: SSH and PostgreSQL load balancer"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.name_prefix}-nlb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "tasks" {
  name        = "${local.name_prefix}-tasks"
  description = "pam ${var.environment}: broker tasks"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.name_prefix}-tasks" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "store" {
  name        = "${local.name_prefix}-store"
  description = "pam ${var.environment}: broker store (RDS PostgreSQL)"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.name_prefix}-store" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "bootstrap" {
  #checkov:skip=CKV2_AWS_5:Attached at run time: the one-off store bootstrap task is started with this group (output store_bootstrap_command), not by a service.
  name        = "${local.name_prefix}-store-bootstrap"
  description = "pam ${var.environment}: one-off store bootstrap task"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.name_prefix}-store-bootstrap" })

  lifecycle {
    create_before_destroy = true
  }
}

# --- ALB --------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = toset(var.allowed_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from allowed client network ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "alb_to_tasks" {
  security_group_id            = aws_security_group.alb.id
  description                  = "HTTP to broker tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.http_port
  to_port                      = local.http_port
  referenced_security_group_id = aws_security_group.tasks.id
  tags                         = local.tags
}

# --- NLB --------------------------------------------------------------------

locals {
  nlb_client_rules = {
    for pair in setproduct(var.allowed_cidrs, [local.ssh_port, local.postgres_port]) :
    "${pair[0]}-${pair[1]}" => { cidr = pair[0], port = pair[1] }
  }
}

resource "aws_vpc_security_group_ingress_rule" "nlb_clients" {
  for_each = local.nlb_client_rules

  security_group_id = aws_security_group.nlb.id
  description       = "${each.value.port == local.ssh_port ? "SSH" : "PostgreSQL"} from allowed client network ${each.value.cidr}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_tasks" {
  for_each = {
    ssh      = local.ssh_port
    postgres = local.postgres_port
    health   = local.http_port
  }

  security_group_id            = aws_security_group.nlb.id
  description                  = "NLB ${each.key} to broker tasks"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.tasks.id
  tags                         = local.tags
}

# --- tasks ------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "tasks_from_alb" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "HTTP from the ALB"
  ip_protocol                  = "tcp"
  from_port                    = local.http_port
  to_port                      = local.http_port
  referenced_security_group_id = aws_security_group.alb.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "tasks_from_nlb" {
  for_each = {
    ssh      = local.ssh_port
    postgres = local.postgres_port
    health   = local.http_port
  }

  security_group_id            = aws_security_group.tasks.id
  description                  = "NLB ${each.key} traffic"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.nlb.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS to AWS APIs (STS, ECS, SSM, Secrets Manager, S3, ECR, CloudWatch) and the OIDC IdP"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "tasks_to_store" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "PostgreSQL to the broker store"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.store.id
  tags                         = local.tags
}

locals {
  target_egress = merge([
    for rule in var.target_egress_rules : {
      for cidr in rule.cidr_blocks : "${rule.port}-${cidr}" => {
        description = rule.description
        port        = rule.port
        cidr        = cidr
      }
    }
  ]...)
}

resource "aws_vpc_security_group_egress_rule" "tasks_to_targets" {
  for_each = local.target_egress

  security_group_id = aws_security_group.tasks.id
  description       = each.value.description
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
  tags              = local.tags
}

# --- store ------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "store_from_tasks" {
  security_group_id            = aws_security_group.store.id
  description                  = "PostgreSQL from broker tasks"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.tasks.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "store_from_bootstrap" {
  security_group_id            = aws_security_group.store.id
  description                  = "PostgreSQL from the store bootstrap task"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.bootstrap.id
  tags                         = local.tags
}

# The store group has no egress rule: the database initiates no connections.

# --- bootstrap task ----------------------------------------------------------

resource "aws_vpc_security_group_egress_rule" "bootstrap_https" {
  security_group_id = aws_security_group.bootstrap.id
  description       = "HTTPS to ECR Public, Secrets Manager and CloudWatch Logs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "bootstrap_to_store" {
  security_group_id            = aws_security_group.bootstrap.id
  description                  = "PostgreSQL to the broker store"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.store.id
  tags                         = local.tags
}
