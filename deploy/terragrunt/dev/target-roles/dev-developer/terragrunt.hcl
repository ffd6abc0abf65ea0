# dev-developer: build and debug in dev. PowerUserAccess (everything but IAM
# and Organizations), fenced by the account's developer permissions boundary.
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
    task_role_arn = "arn:aws:iam::210987654321:role/pam-dev-task"
  }
}

inputs = {
  name        = "dev-developer"
  description = "pam: developer access to the dev account"

  broker_role_arns         = [dependency.pam.outputs.task_role_arn]
  source_identity_patterns = ["*@${local.env.email_domain}"]
  managed_policy_arns      = ["arn:aws:iam::aws:policy/PowerUserAccess"]
  permissions_boundary_arn = "arn:aws:iam::${local.env.account_id}:policy/developer-boundary"

  pam_target = {
    name = "dev-developer"
    tags = { env = "dev", access = "write" }
  }
}
