# payments-dev / payments: IAM-authenticated role pam_rw for the pam target payments-dev (write access).
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
  db_instance_identifier = "payments-dev"
  database               = "payments"
  db_user                = "pam_rw"
  access                 = "write"
  table_owner            = "payments_app"
  connection_limit       = 20

  pam_target = {
    name = "payments-dev"
    tags = { env = local.env.environment, team = "payments", access = "write" }
  }
}
