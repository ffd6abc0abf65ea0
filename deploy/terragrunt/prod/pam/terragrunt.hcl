# The pam broker in prod: three tasks across three AZs, internal load balancers
# reached over the VPN, targets = the orders and payments services and
# databases plus two AWS roles.
include "root" {
  path = find_in_parent_folders("root.hcl")
}

locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${get_repo_root()}/deploy/terraform/modules//pam"
}

# Database users for rds-iam targets must exist first (their ARNs go into the
# task role). Target roles come after pam (they trust its task role).
dependency "orders_ro" {
  config_path = "../rds-iam-users/orders-ro"

  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
  mock_outputs = {
    dbuser_arn = "arn:aws:rds-db:eu-central-1:123456789012:dbuser:db-MOCKORDERSMOCKORDERS/pam_ro"
    address    = "orders-prod.mock.eu-central-1.rds.amazonaws.com"
    port       = 5432
  }
}

dependency "payments_ro" {
  config_path = "../rds-iam-users/payments-ro"

  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
  mock_outputs = {
    dbuser_arn = "arn:aws:rds-db:eu-central-1:123456789012:dbuser:db-MOCKPAYMENTSMOCKPAY/pam_ro"
    address    = "payments-prod.mock.eu-central-1.rds.amazonaws.com"
    port       = 5432
  }
}

inputs = {
  environment = local.env.environment

  vpc_id                   = local.env.vpc_id
  private_subnet_ids       = local.env.private_subnet_ids
  load_balancer_subnet_ids = local.env.lb_subnet_ids
  internal_load_balancers  = true
  allowed_cidrs            = local.env.vpn_client_cidrs

  hostname        = "pam.${local.env.domain}"
  tunnel_hostname = "ssh.pam.${local.env.domain}"
  route53_zone_id = local.env.route53_zone_id

  image            = local.env.pam_image
  desired_count    = 3
  cpu              = 1024
  memory           = 2048
  cpu_architecture = "ARM64"

  config_toml = templatefile("${get_terragrunt_dir()}/pam.toml.tftpl", {
    environment      = local.env.environment
    account_id       = local.env.account_id
    oidc_issuer      = local.env.oidc_issuer
    ecs_cluster      = local.env.ecs_cluster_name
    orders_address   = "${dependency.orders_ro.outputs.address}:${dependency.orders_ro.outputs.port}"
    payments_address = "${dependency.payments_ro.outputs.address}:${dependency.payments_ro.outputs.port}"
  })

  ssh_user_ca_public_key   = local.env.ssh_user_ca_public_key
  ssh_target_ca_public_key = local.env.ssh_target_ca_public_key

  # Least privilege of the broker: exactly these roles, clusters and users.
  target_role_arns = [
    for r in local.env.pam_target_roles : "arn:aws:iam::${local.env.account_id}:role/pam-target/${r}"
  ]
  ecs_exec_cluster_arns = ["arn:aws:ecs:${local.env.region}:${local.env.account_id}:cluster/${local.env.ecs_cluster_name}"]
  ecs_exec_kms_key_arn  = local.env.ecs_exec_kms_key_arn
  rds_iam_db_user_arns = [
    dependency.orders_ro.outputs.dbuser_arn,
    dependency.payments_ro.outputs.dbuser_arn,
  ]
  target_egress_rules = [
    { description = "PostgreSQL to RDS in the workload VPC", port = 5432, cidr_blocks = local.env.workload_cidrs },
  ]

  db_instance_class        = "db.m7g.large"
  db_backup_retention_days = 35

  recordings_retention_days   = 400
  recordings_object_lock_mode = "COMPLIANCE"

  log_retention_days = 400
  alarm_topic_arn    = local.env.alarm_topic_arn

  tags = { "compliance-scope" = "pci-dss" }
}
