# The pam broker on ECS Fargate: locals and lookups shared by the other files.
#
#   kms.tf        customer managed keys (data, logs, recordings)
#   network.tf    security groups
#   lb.tf         ALB (HTTPS) + WAF, NLB (SSH, PostgreSQL), DNS and certificate
#   rds.tf        the store: RDS PostgreSQL Multi-AZ
#   secrets.tf    Secrets Manager secrets and SSM parameters (CA public keys)
#   s3.tf         recordings bucket (Object Lock) and access-logs bucket
#   logs.tf       CloudWatch log groups and alarms
#   iam.tf        task role, execution roles
#   ecs.tf        cluster, task definition, service
#   bootstrap.tf  one-off task that creates the broker's database role

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  name_prefix = "${var.name}-${var.environment}"
  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition
  region      = data.aws_region.current.region
  dns_suffix  = data.aws_partition.current.dns_suffix

  tags = merge(var.tags, {
    "pam:environment" = var.environment
    "pam:component"   = "broker"
  })

  public_url = "https://${var.hostname}"
  ssm_prefix = "/${var.name}/${var.environment}"

  # Broker ports: HTTP behind the ALB, SSH and PostgreSQL behind the NLB.
  http_port     = 8080
  ssh_port      = 2222
  postgres_port = 6432

  # Paths inside the container (deploy/docker/Dockerfile).
  data_dir   = "/var/lib/pam"
  run_dir    = "/run/pam"
  keys_dir   = "/run/pam/keys"
  rds_ca     = "/etc/ssl/certs/rds-global-bundle.pem"
  store_db   = "pam"
  store_user = "pam_broker"

  # The files the broker reads from keys_dir; one JSON key each in the
  # key-material secret, one PAM_KEYMATERIAL_* variable each in the task.
  key_files = ["token_signing_ed25519", "ssh_user_ca", "ssh_target_ca", "ssh_host_ed25519", "audit_checkpoint_ed25519"]

  # ECR repository of the image, when it is in ECR, for a pull permission on
  # that repository only.
  image_ecr = regexall("^([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com(\\.cn)?/([^:@]+)", var.image)
  image_ecr_repository_arns = [
    for m in local.image_ecr : "arn:${local.partition}:ecr:${m[1]}:${m[0]}:repository/${m[3]}"
  ]

  database_subnet_ids = coalesce(var.database_subnet_ids, var.private_subnet_ids)
  create_certificate  = var.certificate_arn == null
  certificate_arn     = local.create_certificate ? aws_acm_certificate_validation.https[0].certificate_arn : var.certificate_arn
}
