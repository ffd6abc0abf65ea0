# payments-prod / payments: IAM-authenticated role pam_ro for the pam target payments-prod (read access).
# After apply, run the rendered SQL once as the database owner:
#   terragrunt output -raw bootstrap_sql | psql "host=... dbname=payments sslmode=verify-full"
include "root" {
  path = find_in_parent_folders("root.hcl")
}

locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${get_repo_root()}/deploy/terraform/modules//rds-iam-user"
}

inputs = {
  db_instance_identifier = "payments-prod"
  database               = "payments"
  db_user                = "pam_ro"
  access                 = "read"
  table_owner            = "payments_app"
  connection_limit       = 20

  pam_target = {
    name = "payments-prod"
    tags = { env = local.env.environment, team = "payments", access = "read" }
  }
}
