# ---------------------------------------------------------------------------
# Naming and placement
# ---------------------------------------------------------------------------

variable "name" {
  description = "Base name of every resource (ECS cluster, roles, buckets, log groups). Resources are named <name>-<environment>."
  type        = string
  default     = "pam"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name))
    error_message = "name must be 2-12 characters of lower-case letters, digits and '-', starting with a letter (load balancer names are limited to 32 characters)."
  }
}

variable "environment" {
  description = "Environment name, e.g. dev or prod. Part of every resource name and of the SSM parameter path /<name>/<environment>/."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,9}$", var.environment))
    error_message = "environment must be 2-10 lower-case letters or digits, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC the broker, its load balancers and its database live in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (one per AZ, at least two AZs) for the broker tasks. They need a route to AWS APIs and the IdP (NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "Give at least two subnet ids (subnet-...) in different AZs."
  }
}

variable "database_subnet_ids" {
  description = "Subnets for the RDS subnet group (at least two AZs). Defaults to private_subnet_ids."
  type        = list(string)
  default     = null

  validation {
    condition     = var.database_subnet_ids == null || (length(coalesce(var.database_subnet_ids, [])) >= 2 && alltrue([for s in coalesce(var.database_subnet_ids, []) : can(regex("^subnet-[0-9a-f]{8,17}$", s))]))
    error_message = "Give at least two subnet ids (subnet-...) in different AZs, or leave null."
  }
}

variable "load_balancer_subnet_ids" {
  description = "Subnets for the ALB and the NLB (at least two AZs): private subnets for internal load balancers, public subnets otherwise."
  type        = list(string)

  validation {
    condition     = length(var.load_balancer_subnet_ids) >= 2 && alltrue([for s in var.load_balancer_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "Give at least two subnet ids (subnet-...) in different AZs."
  }
}

variable "internal_load_balancers" {
  description = "Whether the ALB and NLB are internal (reached over VPN, Direct Connect or Transit Gateway). Internet-facing load balancers still only admit allowed_cidrs."
  type        = bool
  default     = true
}

variable "allowed_cidrs" {
  description = "Client networks (VPN pools, office egress ranges) admitted to HTTPS 443 on the ALB and SSH 2222 / PostgreSQL 6432 on the NLB. A privileged access entry point is never open to the whole internet."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "allowed_cidrs must be a non-empty list of valid CIDR blocks, without 0.0.0.0/0 or ::/0."
  }
}

# ---------------------------------------------------------------------------
# DNS and TLS
# ---------------------------------------------------------------------------

variable "hostname" {
  description = "DNS name of the web UI and API (HTTPS on the ALB); the broker's public_url is https://<hostname>. Register https://<hostname>/auth/callback as redirect URI at the IdP."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.hostname))
    error_message = "hostname must be a fully qualified lower-case DNS name."
  }
}

variable "tunnel_hostname" {
  description = "DNS name of the SSH (2222) and PostgreSQL (6432) listeners on the NLB, e.g. ssh.pam.example.com. Users run ssh -p 2222 TARGET@<tunnel_hostname>."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.tunnel_hostname))
    error_message = "tunnel_hostname must be a fully qualified lower-case DNS name."
  }
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone for hostname and tunnel_hostname. When set, the module creates alias records and (without certificate_arn) a DNS-validated ACM certificate. When null, create the DNS records yourself from the outputs."
  type        = string
  default     = null
}

variable "certificate_arn" {
  description = "ACM certificate for hostname on the ALB. When null the module requests one (DNS validation in route53_zone_id)."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn != null || var.route53_zone_id != null
    error_message = "Set certificate_arn, or route53_zone_id so that the module can request and validate a certificate."
  }
  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/", coalesce(var.certificate_arn, "x")))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "alb_ssl_policy" {
  description = "TLS policy of the HTTPS listener (TLS 1.2 and 1.3 only)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-Res-2021-06"

  validation {
    condition     = can(regex("^ELBSecurityPolicy-(TLS13-1-[23]|TLS-1-2|FS-1-2)", var.alb_ssl_policy))
    error_message = "Use a policy that allows TLS 1.2 and newer only."
  }
}

variable "waf_rate_limit" {
  description = "Requests per 5 minutes from one client IP above which the WAF blocks (login brute force, API abuse)."
  type        = number
  default     = 2000

  validation {
    condition     = var.waf_rate_limit >= 100 && var.waf_rate_limit <= 2000000000
    error_message = "waf_rate_limit must be between 100 and 2,000,000,000."
  }
}

# ---------------------------------------------------------------------------
# The broker service
# ---------------------------------------------------------------------------

variable "image" {
  description = "Broker image built from deploy/docker/Dockerfile, pinned by digest (REPO@sha256:...). Images in ECR of this account get least-privilege pull permissions automatically."
  type        = string

  validation {
    condition     = can(regex("@sha256:[0-9a-f]{64}$", var.image))
    error_message = "Pin the image by digest: <repository>[:tag]@sha256:<64 hex digits>."
  }
}

variable "config_toml" {
  description = "The broker's pam.toml (see deploy/pam.example.toml) without secrets. The module overrides public_url, the listeners and their public addresses, data_dir, keys_dir, database_url and aws.region through the environment."
  type        = string

  validation {
    condition     = !can(regex("(?m)^\\s*database_url\\s*=", var.config_toml))
    error_message = "Do not put database_url in config_toml: the module injects it from Secrets Manager (it holds a password)."
  }
  validation {
    condition     = length(var.config_toml) <= 32768
    error_message = "config_toml must stay below 32 KiB (it travels in the task definition)."
  }
}

variable "log_level" {
  description = "Broker log filter (PAM_LOG), e.g. info or pam=debug,info."
  type        = string
  default     = "info"
}

variable "desired_count" {
  description = "Number of broker tasks, spread across the AZs of private_subnet_ids. 0 only for the first apply (before key material, OIDC secret and store user exist); otherwise at least 2."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_count == 0 || var.desired_count >= 2
    error_message = "desired_count must be 0 (bootstrap) or at least 2 (one task per AZ)."
  }
}

variable "cpu" {
  description = "Task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be a Fargate CPU size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "memory" {
  description = "Task memory in MiB; must be a valid Fargate combination with cpu."
  type        = number
  default     = 2048

  validation {
    condition     = var.memory >= 512 && var.memory <= 122880
    error_message = "memory must be between 512 and 122880 MiB."
  }
}

variable "cpu_architecture" {
  description = "Fargate CPU architecture of the broker tasks; the image must be built for it."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "ephemeral_storage_gib" {
  description = "Task ephemeral storage (GiB) for data_dir: recordings stay there until shipped to S3."
  type        = number
  default     = 50

  validation {
    condition     = var.ephemeral_storage_gib >= 21 && var.ephemeral_storage_gib <= 200
    error_message = "ephemeral_storage_gib must be between 21 and 200."
  }
}

variable "stop_timeout_seconds" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL (Fargate maximum 120). Keep the broker's server.shutdown_grace below it."
  type        = number
  default     = 90

  validation {
    condition     = var.stop_timeout_seconds >= 30 && var.stop_timeout_seconds <= 120
    error_message = "stop_timeout_seconds must be between 30 and 120."
  }
}

variable "deletion_protection" {
  description = "Deletion protection on the database and the load balancers. Keep true outside throw-away environments."
  type        = bool
  default     = true
}

variable "kms_deletion_window_days" {
  description = "Waiting period before a scheduled KMS key deletion takes effect."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

variable "log_retention_days" {
  description = "Retention of every CloudWatch log group of the module (PCI DSS 10.5.1: at least 12 months)."
  type        = number
  default     = 400

  validation {
    condition     = var.log_retention_days >= 400 && contains([400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch retention value of at least 400 days (400, 545, 731, 1096, 1827, ...)."
  }
}

variable "alarm_topic_arn" {
  description = "SNS topic for CloudWatch alarms (tasks below desired count, unhealthy targets, database storage and CPU). No alarms when null."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------
# Key material and secrets
# ---------------------------------------------------------------------------

variable "ssh_user_ca_public_key" {
  description = "Public key of the broker's SSH user CA (printed by deploy/scripts/init-key-material.sh). Stored in SSM at /<name>/<environment>/ssh_user_ca.pub. Null until the key material exists."
  type        = string
  default     = null

  validation {
    condition     = var.ssh_user_ca_public_key == null || can(regex("^ssh-ed25519 AAAA[0-9A-Za-z+/]+={0,2}( .*)?$", coalesce(var.ssh_user_ca_public_key, "x")))
    error_message = "ssh_user_ca_public_key must be an OpenSSH ed25519 public key line."
  }
}

variable "ssh_target_ca_public_key" {
  description = "Public key of the broker's SSH target CA, the key targets put in TrustedUserCAKeys. Stored in SSM at /<name>/<environment>/ssh_target_ca.pub. Null until the key material exists."
  type        = string
  default     = null

  validation {
    condition     = var.ssh_target_ca_public_key == null || can(regex("^ssh-ed25519 AAAA[0-9A-Za-z+/]+={0,2}( .*)?$", coalesce(var.ssh_target_ca_public_key, "x")))
    error_message = "ssh_target_ca_public_key must be an OpenSSH ed25519 public key line."
  }
}

variable "postgres_tls_secret_arn" {
  description = "Optional Secrets Manager secret (JSON {\"cert_pem\": ..., \"key_pem\": ...}) with one certificate for the PostgreSQL listener of every task. Without it each task generates its own self-signed certificate."
  type        = string
  default     = null

  validation {
    condition     = var.postgres_tls_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:", coalesce(var.postgres_tls_secret_arn, "x")))
    error_message = "postgres_tls_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "postgres_tls_secret_kms_key_arn" {
  description = "KMS key of postgres_tls_secret_arn when it is not encrypted with the module's data key."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------
# The store (RDS PostgreSQL)
# ---------------------------------------------------------------------------

variable "db_engine_version" {
  description = "PostgreSQL major (or major.minor) version of the store. Minor versions are upgraded in the maintenance window."
  type        = string
  default     = "17"

  validation {
    condition     = can(regex("^1[4-9](\\.[0-9]+)?$", var.db_engine_version))
    error_message = "db_engine_version must be PostgreSQL 14 or newer, e.g. 17 or 17.6."
  }
}

variable "db_instance_class" {
  description = "RDS instance class of the store."
  type        = string
  default     = "db.m7g.large"

  validation {
    condition     = can(regex("^db\\.", var.db_instance_class))
    error_message = "db_instance_class must be an RDS instance class (db.*)."
  }
}

variable "db_allocated_storage_gib" {
  description = "Initial gp3 storage of the store (GiB)."
  type        = number
  default     = 50

  validation {
    condition     = var.db_allocated_storage_gib >= 20 && var.db_allocated_storage_gib <= 65536
    error_message = "db_allocated_storage_gib must be between 20 and 65536."
  }
}

variable "db_max_allocated_storage_gib" {
  description = "Upper bound for storage autoscaling (GiB); the audit trail only grows."
  type        = number
  default     = 500
}

variable "db_backup_retention_days" {
  description = "Automated backup retention of the store (days)."
  type        = number
  default     = 35

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 7 and 35."
  }
}

variable "db_backup_window" {
  description = "Daily backup window (UTC, hh24:mi-hh24:mi)."
  type        = string
  default     = "02:00-03:00"
}

variable "db_maintenance_window" {
  description = "Weekly maintenance window (UTC, ddd:hh24:mi-ddd:hh24:mi); must not overlap the backup window."
  type        = string
  default     = "sun:03:30-sun:04:30"
}

variable "db_performance_insights_retention_days" {
  description = "Performance Insights retention: 7 (free tier) or a multiple of 31 up to 731."
  type        = number
  default     = 7

  validation {
    condition     = var.db_performance_insights_retention_days == 7 || var.db_performance_insights_retention_days == 731 || (var.db_performance_insights_retention_days % 31 == 0 && var.db_performance_insights_retention_days <= 713)
    error_message = "db_performance_insights_retention_days must be 7, 731 or a multiple of 31 below that."
  }
}

variable "store_password_version" {
  description = "Version of the broker's store password. Terraform writes a fresh random password (write-only, never in state) whenever this number changes; then run the store bootstrap task again and redeploy."
  type        = number
  default     = 1
}

variable "store_bootstrap_image" {
  description = "Image with psql used by the one-off store bootstrap task (creates the broker's database role)."
  type        = string
  default     = "public.ecr.aws/docker/library/postgres:17-alpine"
}

# ---------------------------------------------------------------------------
# Session recordings (S3)
# ---------------------------------------------------------------------------

variable "recordings_retention_days" {
  description = "Object Lock retention of session recordings (days); objects cannot be deleted or overwritten before it ends."
  type        = number
  default     = 400

  validation {
    condition     = var.recordings_retention_days >= 365 && var.recordings_retention_days <= 3653
    error_message = "recordings_retention_days must be between 365 and 3653 (PCI DSS 10.5.1 asks for at least 12 months)."
  }
}

variable "recordings_object_lock_mode" {
  description = "Object Lock mode of the recordings bucket. COMPLIANCE: nobody, including the root user, can shorten retention. GOVERNANCE only for test environments."
  type        = string
  default     = "COMPLIANCE"

  validation {
    condition     = contains(["COMPLIANCE", "GOVERNANCE"], var.recordings_object_lock_mode)
    error_message = "recordings_object_lock_mode must be COMPLIANCE or GOVERNANCE."
  }
}

variable "recordings_shipper_enabled" {
  description = "Run the recordings-shipper sidecar, which uploads finished recordings from data_dir/recordings to the recordings bucket and removes the local copy. Disable once the broker writes to S3 itself."
  type        = bool
  default     = true
}

variable "recordings_shipper_image" {
  description = "AWS CLI v2 image for the recordings-shipper sidecar. Mirror it into ECR (pull-through cache) and pin by digest in production."
  type        = string
  default     = "public.ecr.aws/aws-cli/aws-cli:2.27.49"
}

variable "access_logs_retention_days" {
  description = "Retention of ALB and S3 access logs in the access-logs bucket (days)."
  type        = number
  default     = 400

  validation {
    condition     = var.access_logs_retention_days >= 365
    error_message = "access_logs_retention_days must be at least 365."
  }
}

# ---------------------------------------------------------------------------
# What the broker may reach (least privilege of the task role)
# ---------------------------------------------------------------------------

variable "target_role_arns" {
  description = "IAM roles behind aws targets (target-role module). The task role may call sts:AssumeRole, sts:SetSourceIdentity and sts:TagSession on exactly these."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.target_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\\w+=,.@/-]+$", a))])
    error_message = "target_role_arns must be IAM role ARNs without wildcards."
  }
}

variable "ecs_exec_cluster_arns" {
  description = "ECS clusters whose tasks ecs targets live in. ecs:ExecuteCommand, ecs:DescribeTasks and ecs:ListTasks are allowed on these clusters only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.ecs_exec_cluster_arns : can(regex("^arn:aws[a-z-]*:ecs:[a-z0-9-]+:[0-9]{12}:cluster/[A-Za-z0-9_-]+$", a))])
    error_message = "ecs_exec_cluster_arns must be ECS cluster ARNs."
  }
}

variable "ecs_exec_kms_key_arn" {
  description = "KMS key of the target clusters' ECS Exec configuration (executeCommandConfiguration.kmsKeyId), if any. The caller of ExecuteCommand needs kms:GenerateDataKey on it."
  type        = string
  default     = null

  validation {
    condition     = var.ecs_exec_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", coalesce(var.ecs_exec_kms_key_arn, "x")))
    error_message = "ecs_exec_kms_key_arn must be a KMS key ARN."
  }
}

variable "discovery_enabled" {
  description = "The broker reads AWS for targets tagged pam:target ([[discovery]]) and runs `pam targets check`: read-only IAM, ECS, RDS, EC2 and SSM describes, and iam:SimulatePrincipalPolicy on its own role."
  type        = bool
  default     = false
}

variable "ssm_port_forwarding_target_arns" {
  description = "SSM targets of postgres targets with via = { ssm_target = ... }: EC2 instance ARNs (arn:aws:ec2:REGION:ACCOUNT:instance/i-...) or ECS task ARNs (arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/*). ssm:StartSession is allowed on these with the AWS-StartPortForwardingSessionToRemoteHost document only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.ssm_port_forwarding_target_arns : can(regex("^arn:aws[a-z-]*:(ec2:[a-z0-9-]+:[0-9]{12}:instance/i-[0-9a-f]+|ecs:[a-z0-9-]+:[0-9]{12}:task/[A-Za-z0-9_-]+/(\\*|[0-9a-f]+))$", a))])
    error_message = "ssm_port_forwarding_target_arns must be EC2 instance ARNs or ECS task ARNs (task/CLUSTER/* or task/CLUSTER/ID)."
  }
}

variable "rds_iam_db_user_arns" {
  description = "Database users of postgres targets with credential = { from = \"rds-iam\" } (rds-iam-user module output dbuser_arn): arn:aws:rds-db:REGION:ACCOUNT:dbuser:DBI_RESOURCE_ID/USER."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.rds_iam_db_user_arns : can(regex("^arn:aws[a-z-]*:rds-db:[a-z0-9-]+:[0-9]{12}:dbuser:(db|cluster)-[A-Z0-9]+/[A-Za-z0-9_]+$", a))])
    error_message = "rds_iam_db_user_arns must be rds-db dbuser ARNs with a resource id (db-... or cluster-...) and a user name, no wildcards."
  }
}

variable "target_secret_arns" {
  description = "Secrets Manager secrets of targets with credential = { from = \"secretsmanager\" }. Use full ARNs, or NAME-?????? to match the random suffix of a known name."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.target_secret_arns : can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[\\w/+=.@-]+(-\\?{6}|-[A-Za-z0-9]{6})$", a))])
    error_message = "target_secret_arns must be secret ARNs ending in the 6-character suffix or in -??????."
  }
}

variable "target_secret_kms_key_arns" {
  description = "Customer managed KMS keys that encrypt target_secret_arns; kms:Decrypt is allowed on them through Secrets Manager only."
  type        = list(string)
  default     = []
}

variable "target_egress_rules" {
  description = "Egress from the broker tasks to targets, e.g. SSH 22 and PostgreSQL 5432 to the workload VPC ranges. HTTPS 443 (AWS APIs, IdP) and the store are always allowed."
  type = list(object({
    description = string
    port        = number
    cidr_blocks = list(string)
  }))
  default = []

  validation {
    condition     = alltrue([for r in var.target_egress_rules : r.port > 0 && r.port < 65536 && length(r.cidr_blocks) > 0 && alltrue([for c in r.cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])])
    error_message = "Each target egress rule needs a port (1-65535) and CIDR blocks other than 0.0.0.0/0."
  }
}
