# payments-oncall: the payments team's incident role. Can see the account,
# read the payments service's logs, and restart or scale payments-api; cannot
# read secrets or data, cannot change IAM.
include "root" {
  path = find_in_parent_folders("root.hcl")
}

locals {
  env     = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
  service = "arn:aws:ecs:${local.env.region}:${local.env.account_id}:service/${local.env.ecs_cluster_name}/payments-api"
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
  name        = "payments-oncall"
  description = "pam: payments on-call (restart/scale payments-api, read its logs)"

  broker_role_arns         = [dependency.pam.outputs.task_role_arn]
  source_identity_patterns = ["*@${local.env.email_domain}"]
  max_session_duration     = 3600

  managed_policy_arns = ["arn:aws:iam::aws:policy/job-function/ViewOnlyAccess"]
  inline_policies = {
    "operate-payments-api" = jsonencode({
      Version = "2012-10-17"
      Statement = [
        {
          Sid      = "RestartAndScalePaymentsApi"
          Effect   = "Allow"
          Action   = ["ecs:UpdateService"]
          Resource = local.service
        },
        {
          Sid      = "ReadPaymentsLogs"
          Effect   = "Allow"
          Action   = ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:StartQuery", "logs:GetQueryResults", "logs:StopQuery"]
          Resource = "arn:aws:logs:${local.env.region}:${local.env.account_id}:log-group:/ecs/${local.env.ecs_cluster_name}/payments-api*"
        },
      ]
    })
  }

  pam_target = {
    name         = "payments-oncall"
    max_duration = "30m"
    tags         = { env = "prod", team = "payments", access = "write" }
  }
}
