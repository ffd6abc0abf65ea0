# --- endpoints ------------------------------------------------------------------

output "public_url" {
  description = "The broker's public_url: web UI under /ui/, API under /api/v1/, `pam login --broker <this>`."
  value       = local.public_url
}

output "oidc_redirect_uri" {
  description = "Redirect URI to register for the broker's OIDC client at the IdP."
  value       = "${local.public_url}/auth/callback"
}

output "ssh_endpoint" {
  description = "SSH endpoint: ssh -p 2222 TARGET@<tunnel_hostname>."
  value       = "${var.tunnel_hostname}:${local.ssh_port}"
}

output "postgres_endpoint" {
  description = "PostgreSQL endpoint that `pam db connect` tunnels to."
  value       = "${var.tunnel_hostname}:${local.postgres_port}"
}

output "alb_dns_name" {
  description = "DNS name of the ALB (alias target for hostname when route53_zone_id is not managed here)."
  value       = aws_lb.https.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone id of the ALB, for alias records."
  value       = aws_lb.https.zone_id
}

output "nlb_dns_name" {
  description = "DNS name of the NLB (alias target for tunnel_hostname)."
  value       = aws_lb.tunnel.dns_name
}

output "nlb_zone_id" {
  description = "Hosted zone id of the NLB, for alias records."
  value       = aws_lb.tunnel.zone_id
}

# --- SSH CA public keys ---------------------------------------------------------

output "ssm_parameter_names" {
  description = "SSM parameters holding the CA public keys (OpenSSH format). Targets put ssh_target_ca into sshd's TrustedUserCAKeys. The names are fixed; the parameters exist once the public keys are passed in."
  value = {
    ssh_user_ca   = "${local.ssm_prefix}/ssh_user_ca.pub"
    ssh_target_ca = "${local.ssm_prefix}/ssh_target_ca.pub"
  }
}

# --- identities -------------------------------------------------------------------

output "task_role_arn" {
  description = "The broker's task role: the principal that target roles (target-role module) must trust."
  value       = aws_iam_role.task.arn
}

output "task_role_name" {
  description = "Name of the broker's task role."
  value       = aws_iam_role.task.name
}

output "execution_role_arn" {
  description = "ECS execution role of the broker tasks."
  value       = aws_iam_role.execution.arn
}

# --- runtime ------------------------------------------------------------------------

output "cluster_name" {
  description = "ECS cluster of the broker."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service of the broker."
  value       = aws_ecs_service.broker.name
}

output "log_group_name" {
  description = "CloudWatch log group of the broker, the recordings shipper and the store bootstrap task."
  value       = aws_cloudwatch_log_group.broker.name
}

output "task_security_group_id" {
  description = "Security group of the broker tasks; allow it on targets (SSH 22, PostgreSQL 5432) instead of CIDRs where targets are in reach."
  value       = aws_security_group.tasks.id
}

# --- data ---------------------------------------------------------------------------

output "recordings_bucket" {
  description = "S3 bucket of session recordings (Object Lock)."
  value       = aws_s3_bucket.recordings.id
}

output "recordings_kms_key_arn" {
  description = "KMS key of the recordings; grant auditors kms:Decrypt on it (and s3:GetObject on the bucket) to replay from S3."
  value       = aws_kms_key.recordings.arn
}

output "access_logs_bucket" {
  description = "S3 bucket with ALB and S3 access logs."
  value       = aws_s3_bucket.access_logs.id
}

output "db_instance_identifier" {
  description = "RDS instance of the broker's store."
  value       = aws_db_instance.store.identifier
}

output "db_endpoint" {
  description = "Address of the broker's store."
  value       = aws_db_instance.store.address
}

output "db_master_user_secret_arn" {
  description = "RDS-managed master credentials of the store (break-glass only)."
  value       = aws_db_instance.store.master_user_secret[0].secret_arn
}

# --- secrets and bootstrap -----------------------------------------------------------

output "key_material_secret_arn" {
  description = "Secret to fill once with deploy/scripts/init-key-material.sh --secret-id <this>."
  value       = aws_secretsmanager_secret.key_material.arn
}

output "oidc_client_secret_arn" {
  description = "Secret to fill with the IdP's client secret: aws secretsmanager put-secret-value --secret-id <this> --secret-string file://..."
  value       = aws_secretsmanager_secret.oidc_client_secret.arn
}

output "store_secret_arn" {
  description = "Secret with the broker's database role, password and URL (written by Terraform, write-only)."
  value       = aws_secretsmanager_secret.store.arn
}

output "store_bootstrap_command" {
  description = "Runs the one-off task that creates or updates the broker's database role; run after the first apply and after each store_password_version bump."
  value       = local.store_bootstrap_command
}
