output "dbuser_arn" {
  description = "arn:aws:rds-db:REGION:ACCOUNT:dbuser:RESOURCE_ID/USER: add it to the pam module's rds_iam_db_user_arns."
  value       = local.dbuser_arn
}

output "policy_json" {
  description = "IAM policy allowing rds-db:connect as this user only (for principals other than the broker, e.g. a migration job)."
  value       = data.aws_iam_policy_document.connect.json
}

output "bootstrap_sql" {
  description = "Idempotent SQL creating the role with rds_iam and its privileges; run once by the database owner."
  value       = local.bootstrap_sql
}

output "address" {
  description = "Endpoint address of the database."
  value       = local.address
}

output "port" {
  description = "Port of the database."
  value       = local.port
}

output "pam_target_toml" {
  description = "The [[target]] block for pam.toml."
  value = join("\n", compact([
    "[[target]]",
    "name = \"${var.pam_target.name}\"",
    "kind = \"postgres\"",
    "address = \"${local.address}:${local.port}\"",
    "database = \"${var.database}\"",
    "credential = { from = \"rds-iam\", db_user = \"${var.db_user}\" }",
    "tls = \"${var.pam_target.tls}\"",
    "ca_file = \"${var.pam_target.ca_file}\"",
    "connect_timeout = \"${var.pam_target.connect_timeout}\"",
    length(var.pam_target.tags) > 0 ? "tags = { ${join(", ", [for k, v in var.pam_target.tags : "${k} = \"${v}\""])} }" : "",
  ]))
}
