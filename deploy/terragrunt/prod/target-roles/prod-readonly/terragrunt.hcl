# prod-readonly: look, do not touch. ViewOnlyAccess shows resource metadata
# but not data (unlike ReadOnlyAccess, which reads S3 objects and DynamoDB
# items, i.e. possible cardholder data), plus reading the services' logs.
include "root" {
  path = find_in_parent_folders("root.hcl")
}

locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${get_repo_root()}/deploy/terraform/modules//target-role"
}

dependency "pam" {
  config_path = "../../pam"

  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
  mock_outputs = {
    task_role_arn = "arn:aws:iam::123456789012:role/pam-prod-task"
  }
}

inputs = {
  name        = "prod-readonly"
  description = "pam: read-only view of the prod account (metadata and application logs)"

  broker_role_arns         = [dependency.pam.outputs.task_role_arn]
  source_identity_patterns = ["*@${local.env.email_domain}"]
  max_session_duration     = 3600

  managed_policy_arns = ["arn:aws:iam::aws:policy/job-function/ViewOnlyAccess"]
  inline_policies = {
    "read-service-logs" = jsonencode({
      Version = "2012-10-17"
      Statement = [
        {
          Sid      = "ReadEcsServiceLogs"
          Effect   = "Allow"
          Action   = ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:StartQuery", "logs:GetQueryResults", "logs:StopQuery"]
          Resource = "arn:aws:logs:${local.env.region}:${local.env.account_id}:log-group:/ecs/${local.env.ecs_cluster_name}/*"
        },
        {
          Sid      = "ReadMetrics"
          Effect   = "Allow"
          Action   = ["cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics", "cloudwatch:ListMetrics"]
          Resource = "*"
        },
      ]
    })
  }

  pam_target = {
    name = "prod-readonly"
    tags = { env = "prod", access = "read" }
  }
}
