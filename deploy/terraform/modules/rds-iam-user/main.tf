# A PostgreSQL role on RDS that authenticates with IAM tokens only, for the pam
# broker. Two halves:
#
#   AWS side (applied here): looks up the instance's resource id and renders the
#   rds-db:connect ARN and policy. The ARN goes into the pam module's
#   rds_iam_db_user_arns, so only the broker's task role can mint tokens.
#
#   Database side (output bootstrap_sql, run once by the database owner): the
#   role, `GRANT rds_iam` (which disables password logins for it) and its
#   privileges. Rendered rather than applied with a PostgreSQL provider because
#   production databases sit in private subnets that the Terraform runner does
#   not reach, and because role grants belong in the database's own migration
#   history; the SQL is idempotent.

data "aws_db_instance" "this" {
  count                  = var.db_instance_identifier != null ? 1 : 0
  db_instance_identifier = var.db_instance_identifier
}

data "aws_rds_cluster" "this" {
  count              = var.db_cluster_identifier != null ? 1 : 0
  cluster_identifier = var.db_cluster_identifier
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  resource_id = var.db_instance_identifier != null ? data.aws_db_instance.this[0].resource_id : data.aws_rds_cluster.this[0].cluster_resource_id
  address     = var.db_instance_identifier != null ? data.aws_db_instance.this[0].address : data.aws_rds_cluster.this[0].endpoint
  port        = var.db_instance_identifier != null ? data.aws_db_instance.this[0].port : data.aws_rds_cluster.this[0].port

  dbuser_arn = "arn:${data.aws_partition.current.partition}:rds-db:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}:dbuser:${local.resource_id}/${var.db_user}"

  u = var.db_user

  table_privileges    = { read = "SELECT", write = "SELECT, INSERT, UPDATE, DELETE", none = "" }[var.access]
  sequence_privileges = { read = "SELECT", write = "USAGE, SELECT", none = "" }[var.access]

  schema_sql = var.access == "none" ? [] : flatten([
    for s in var.schemas : concat(
      [
        "GRANT USAGE ON SCHEMA ${s} TO ${local.u};",
        "GRANT ${local.table_privileges} ON ALL TABLES IN SCHEMA ${s} TO ${local.u};",
        "GRANT ${local.sequence_privileges} ON ALL SEQUENCES IN SCHEMA ${s} TO ${local.u};",
      ],
      var.table_owner == null ? [] : [
        "ALTER DEFAULT PRIVILEGES FOR ROLE ${var.table_owner} IN SCHEMA ${s} GRANT ${local.table_privileges} ON TABLES TO ${local.u};",
        "ALTER DEFAULT PRIVILEGES FOR ROLE ${var.table_owner} IN SCHEMA ${s} GRANT ${local.sequence_privileges} ON SEQUENCES TO ${local.u};",
      ],
    )
  ])

  bootstrap_sql = join("\n", concat(
    [
      "-- pam: IAM-authenticated role ${local.u} on ${coalesce(var.db_instance_identifier, var.db_cluster_identifier)}/${var.database} (access: ${var.access}).",
      "-- Run as the database owner or the RDS master user, connected to database ${var.database}. Idempotent.",
      "DO $$",
      "BEGIN",
      "  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${local.u}') THEN",
      "    CREATE ROLE ${local.u} LOGIN;",
      "  END IF;",
      "END",
      "$$;",
      "ALTER ROLE ${local.u} WITH LOGIN NOCREATEDB NOCREATEROLE CONNECTION LIMIT ${var.connection_limit};",
      "GRANT rds_iam TO ${local.u};",
      "ALTER ROLE ${local.u} IN DATABASE ${var.database} SET statement_timeout = '${var.statement_timeout}';",
      "ALTER ROLE ${local.u} IN DATABASE ${var.database} SET idle_in_transaction_session_timeout = '60s';",
      "ALTER ROLE ${local.u} IN DATABASE ${var.database} SET default_transaction_read_only = ${var.access == "read" ? "on" : "off"};",
      "GRANT CONNECT ON DATABASE ${var.database} TO ${local.u};",
    ],
    local.schema_sql,
  ))
}

data "aws_iam_policy_document" "connect" {
  statement {
    sid       = "ConnectAs${replace(title(replace(local.u, "_", " ")), " ", "")}"
    actions   = ["rds-db:connect"]
    resources = [local.dbuser_arn]
  }
}
