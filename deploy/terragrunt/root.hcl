# Root Terragrunt configuration of the pam live layout, included by every unit:
#
#   deploy/terragrunt/
#     root.hcl                  this file: state backend, provider, deploy role
#     <env>/env.hcl             account, region, network and naming of one environment
#     <env>/pam/                the broker (modules/pam) + its pam.toml template
#     <env>/rds-iam-users/<db>/ database users for rds-iam targets (modules/rds-iam-user)
#     <env>/target-roles/<role>/ IAM roles for aws targets (modules/target-role)
#
# Named root.hcl rather than terragrunt.hcl: Terragrunt treats every
# terragrunt.hcl as a unit, so `terragrunt run --all` from deploy/terragrunt
# would try to apply the root itself (Terragrunt deprecated that pattern).
#
# Apply order inside an environment (dependency blocks encode it):
#   rds-iam-users/*  ->  pam  ->  target-roles/*

locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals

  # Organisation-wide conventions (the AWS landing zone provides these).
  org          = "acmepay"
  state_bucket = "${local.org}-terraform-state-${local.env.account_id}-${local.env.region}"
  lock_table   = "${local.org}-terraform-locks"
  state_key    = "arn:aws:kms:${local.env.region}:${local.env.account_id}:alias/terraform-state"
}

# Terragrunt assumes the environment's deploy role before touching state or
# running Terraform; nothing here uses long-lived keys.
iam_role = "arn:aws:iam::${local.env.account_id}:role/${local.env.deploy_role_name}"

remote_state {
  backend = "s3"

  generate = {
    path      = "backend.tf"
    if_exists = "overwrite_terragrunt"
  }

  config = {
    bucket         = local.state_bucket
    key            = "pam/${path_relative_to_include()}/terraform.tfstate"
    region         = local.env.region
    encrypt        = true
    kms_key_id     = local.state_key
    dynamodb_table = local.lock_table

    # Used only if Terragrunt has to create the bucket or table itself.
    s3_bucket_tags                     = { "managed-by" = "terragrunt", "data-classification" = "confidential" }
    dynamodb_table_tags                = { "managed-by" = "terragrunt" }
    enable_lock_table_ssencryption     = true
    skip_bucket_versioning             = false
    skip_bucket_ssencryption           = false
    skip_bucket_public_access_blocking = false
    skip_bucket_enforced_tls           = false
    skip_bucket_root_access            = false
  }
}

generate "provider" {
  path      = "provider.tf"
  if_exists = "overwrite_terragrunt"
  contents  = <<-EOT
    provider "aws" {
      region              = "${local.env.region}"
      allowed_account_ids = ["${local.env.account_id}"]

      default_tags {
        tags = {
          "application"         = "pam"
          "environment"         = "${local.env.environment}"
          "owner"               = "${local.env.owner}"
          "cost-center"         = "${local.env.cost_center}"
          "data-classification" = "confidential"
          "managed-by"          = "terragrunt"
          "source"              = "deploy/terragrunt/${path_relative_to_include()}"
        }
      }
    }
  EOT
}

# Terraform and provider versions come from the modules' required_version /
# required_providers; the lock file (.terraform.lock.hcl) is committed per unit.
terraform {
  extra_arguments "no_input" {
    commands  = get_terraform_commands_that_need_input()
    arguments = ["-input=false"]
  }
}
