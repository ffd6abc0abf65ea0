# Three customer managed keys, so that access to one kind of data does not
# imply access to another:
#   data        the store (RDS storage, Performance Insights, master secret),
#               the broker's secrets and the tasks' Fargate ephemeral storage
#   logs        CloudWatch log groups of the module
#   recordings  session recordings in S3 (auditors get Decrypt on this one only)
#
# Key policies give the account (IAM) administration of the key; use is then
# granted by the identity policies in iam.tf, plus the service principals
# that need the key directly (CloudWatch Logs, Fargate).

locals {
  kms_account_root = "arn:${local.partition}:iam::${local.account_id}:root"

  kms_admin_statement = {
    Sid       = "AccountAdministersKeyThroughIAM"
    Effect    = "Allow"
    Principal = { AWS = local.kms_account_root }
    Action    = "kms:*"
    Resource  = "*"
  }
}

resource "aws_kms_key" "data" {
  description             = "${local.name_prefix}: broker store, secrets and task storage"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days
  tags                    = local.tags

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.kms_admin_statement,
      {
        # https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-storage-encryption.html
        Sid       = "FargateEphemeralStorageDataKeys"
        Effect    = "Allow"
        Principal = { Service = "fargate.${local.dns_suffix}" }
        Action    = "kms:GenerateDataKeyWithoutPlaintext"
        Resource  = "*"
        Condition = {
          StringEquals = {
            "kms:EncryptionContext:aws:ecs:clusterAccount" = local.account_id
            "kms:EncryptionContext:aws:ecs:clusterName"    = local.name_prefix
          }
        }
      },
      {
        Sid       = "FargateEphemeralStorageGrants"
        Effect    = "Allow"
        Principal = { Service = "fargate.${local.dns_suffix}" }
        Action    = "kms:CreateGrant"
        Resource  = "*"
        Condition = {
          StringEquals = {
            "kms:EncryptionContext:aws:ecs:clusterAccount" = local.account_id
            "kms:EncryptionContext:aws:ecs:clusterName"    = local.name_prefix
          }
          "ForAllValues:StringEquals" = { "kms:GrantOperations" = ["Decrypt"] }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "data" {
  name          = "alias/${local.name_prefix}-data"
  target_key_id = aws_kms_key.data.key_id
}

resource "aws_kms_key" "logs" {
  description             = "${local.name_prefix}: CloudWatch log groups"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days
  tags                    = local.tags

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.kms_admin_statement,
      {
        Sid       = "CloudWatchLogsForThisModuleOnly"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.${local.dns_suffix}" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = [
              "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/${var.name}/${var.environment}/*",
              "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/rds/instance/${local.name_prefix}/*",
              "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/ecs/containerinsights/${local.name_prefix}/*",
              "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:aws-waf-logs-${local.name_prefix}",
            ]
          }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${local.name_prefix}-logs"
  target_key_id = aws_kms_key.logs.key_id
}

resource "aws_kms_key" "recordings" {
  description             = "${local.name_prefix}: session recordings in S3"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days
  tags                    = local.tags

  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [local.kms_admin_statement]
  })
}

resource "aws_kms_alias" "recordings" {
  name          = "alias/${local.name_prefix}-recordings"
  target_key_id = aws_kms_key.recordings.key_id
}
