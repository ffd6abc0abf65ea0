output "role_arn" {
  description = "ARN of the role: role_arn of the aws target in pam.toml, and an entry of the pam module's target_role_arns."
  value       = aws_iam_role.this.arn
}

output "role_name" {
  description = "Name of the role."
  value       = aws_iam_role.this.name
}

output "pam_target_toml" {
  description = "The [[target]] block for pam.toml."
  value = join("\n", compact([
    "[[target]]",
    "name = \"${coalesce(var.pam_target.name, var.name)}\"",
    "kind = \"aws\"",
    "role_arn = \"${aws_iam_role.this.arn}\"",
    "max_duration = \"${var.pam_target.max_duration}\"",
    var.external_id != null ? "external_id = \"${var.external_id}\"" : "",
    length(var.pam_target.tags) > 0 ? "tags = { ${join(", ", [for k, v in var.pam_target.tags : "${k} = \"${v}\""])} }" : "",
  ]))
}
