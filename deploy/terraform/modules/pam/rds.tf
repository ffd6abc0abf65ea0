# The broker's store: sessions, login history, policy decisions and the
# hash-chained audit trail. RDS PostgreSQL, Multi-AZ, encrypted with the data
# key, TLS enforced, IAM authentication on (for DBAs through pam itself),
# deletion protection, 35 days of point-in-time recovery by default.
#
# Credentials:
#   master (pam_admin)  managed and rotated by RDS in Secrets Manager; used
#                       only by the store bootstrap task (bootstrap.tf)
#   pam_broker          owner of the pam database; its password is generated
#                       write-only (never in state) into the store secret
#                       (secrets.tf), which also holds the broker's database URL

resource "aws_db_subnet_group" "store" {
  name        = "${local.name_prefix}-store"
  description = "pam ${var.environment}: broker store"
  subnet_ids  = local.database_subnet_ids
  tags        = local.tags
}

resource "aws_db_parameter_group" "store" {
  name_prefix = "${local.name_prefix}-store-"
  family      = "postgres${split(".", var.db_engine_version)[0]}"
  description = "pam ${var.environment}: TLS only, pgaudit, slow-query and connection logging"
  tags        = local.tags

  # Clients must use TLS (the broker uses sslmode=verify-full).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Statement logging through pgaudit, which redacts passwords in
  # CREATE/ALTER ROLE; log_statement itself stays off because it would write
  # the bootstrap task's ALTER ROLE ... PASSWORD in clear text.
  parameter {
    name         = "shared_preload_libraries"
    value        = "pg_stat_statements,pgaudit"
    apply_method = "pending-reboot"
  }
  parameter {
    name  = "pgaudit.log"
    value = "ddl,role"
  }
  parameter {
    name  = "log_statement"
    value = "none"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_connections"
    value = "1"
  }
  parameter {
    name  = "log_disconnections"
    value = "1"
  }
  parameter {
    name  = "log_lock_waits"
    value = "1"
  }
  parameter {
    name  = "password_encryption"
    value = "scram-sha-256"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name        = "${local.name_prefix}-rds-monitoring"
  description = "Enhanced Monitoring for the pam ${var.environment} store"
  tags        = local.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
      }
    }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

# Created before the instance so RDS exports into encrypted, retained groups.
resource "aws_cloudwatch_log_group" "store" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${local.name_prefix}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = local.tags
}

resource "aws_db_instance" "store" {
  identifier     = local.name_prefix
  engine         = "postgres"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class

  db_name                             = local.store_db
  username                            = "pam_admin"
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = aws_kms_key.data.arn
  iam_database_authentication_enabled = true

  allocated_storage     = var.db_allocated_storage_gib
  max_allocated_storage = var.db_max_allocated_storage_gib
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.data.arn

  multi_az               = true
  db_subnet_group_name   = aws_db_subnet_group.store.name
  vpc_security_group_ids = [aws_security_group.store.id]
  publicly_accessible    = false
  port                   = 5432
  ca_cert_identifier     = "rds-ca-rsa2048-g1"
  parameter_group_name   = aws_db_parameter_group.store.name

  backup_retention_period   = var.db_backup_retention_days
  backup_window             = var.db_backup_window
  maintenance_window        = var.db_maintenance_window
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.name_prefix}-final"

  auto_minor_version_upgrade  = true
  allow_major_version_upgrade = false
  apply_immediately           = false

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.data.arn
  performance_insights_retention_period = var.db_performance_insights_retention_days
  monitoring_interval                   = 30
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]

  tags = local.tags

  depends_on = [aws_cloudwatch_log_group.store, aws_iam_role_policy_attachment.rds_monitoring]
}
