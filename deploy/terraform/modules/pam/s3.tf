# Two buckets:
#   recordings   asciicast v2 session recordings and query logs. Versioned,
#                Object Lock (COMPLIANCE by default) for recordings_retention_days,
#                SSE-KMS with the recordings key, TLS only, access-logged.
#   access-logs  ALB access/connection logs and the recordings bucket's server
#                access logs. SSE-S3, because neither ELB nor S3 server access
#                logging can deliver into an SSE-KMS bucket.

locals {
  recordings_bucket  = "${local.name_prefix}-recordings-${local.account_id}-${local.region}"
  access_logs_bucket = "${local.name_prefix}-access-logs-${local.account_id}-${local.region}"
  recordings_prefix  = "recordings/"
}

# --- recordings ----------------------------------------------------------------

resource "aws_s3_bucket" "recordings" {
  #checkov:skip=CKV_AWS_144:A second copy needs a pre-provisioned Object Lock bucket in another region; replicate with AWS Backup or an org-level replication rule, not from this module.
  bucket              = local.recordings_bucket
  object_lock_enabled = true
  force_destroy       = false
  tags                = merge(local.tags, { "pam:data" = "session-recordings" })
}

resource "aws_s3_bucket_ownership_controls" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "recordings" {
  bucket                  = aws_s3_bucket.recordings.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  rule {
    default_retention {
      mode = var.recordings_object_lock_mode
      days = var.recordings_retention_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.recordings]
}

resource "aws_s3_bucket_server_side_encryption_configuration" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.recordings.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "recordings" {
  bucket        = aws_s3_bucket.recordings.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3/${local.recordings_bucket}/"

  target_object_key_format {
    partitioned_prefix {
      partition_date_source = "EventTime"
    }
  }

  depends_on = [aws_s3_bucket_policy.access_logs]
}

resource "aws_s3_bucket_lifecycle_configuration" "recordings" {
  bucket = aws_s3_bucket.recordings.id

  rule {
    id     = "retention"
    status = "Enabled"

    filter {}

    # Replays of old sessions are rare; Glacier Instant Retrieval keeps them
    # readable in milliseconds.
    transition {
      days          = 90
      storage_class = "GLACIER_IR"
    }

    # After the lock has expired, remove what is past retention. Locked
    # versions cannot be removed earlier, whatever this rule says.
    expiration {
      days = var.recordings_retention_days + 1
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.recordings]
}

# New recordings as EventBridge events, for SIEM forwarding or integrity checks.
resource "aws_s3_bucket_notification" "recordings" {
  bucket      = aws_s3_bucket.recordings.id
  eventbridge = true
}

data "aws_iam_policy_document" "recordings_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.recordings.arn, "${aws_s3_bucket.recordings.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyOutdatedTLS"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.recordings.arn, "${aws_s3_bucket.recordings.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  # Recordings are only ever encrypted with the recordings key: uploads may
  # rely on the bucket default, but must not ask for SSE-S3 or another key.
  statement {
    sid       = "DenyNonKmsEncryption"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.recordings.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }

  statement {
    sid       = "DenyOtherKmsKey"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.recordings.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = [aws_kms_key.recordings.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "recordings" {
  bucket = aws_s3_bucket.recordings.id
  policy = data.aws_iam_policy_document.recordings_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.recordings]
}

# --- access logs ---------------------------------------------------------------

resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_18:This is the access-log sink; logging it into itself would loop, logging it elsewhere needs an org log-archive bucket outside this module.
  #checkov:skip=CKV_AWS_144:Access logs stay in-region; the org log-archive replication (if any) is configured centrally.
  #checkov:skip=CKV_AWS_145:ELB access logs and S3 server access logs can only be delivered to SSE-S3 buckets (AES256), not SSE-KMS.
  bucket        = local.access_logs_bucket
  force_destroy = false
  tags          = merge(local.tags, { "pam:data" = "access-logs" })
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    id     = "retention"
    status = "Enabled"

    filter {}

    transition {
      days          = 90
      storage_class = "GLACIER_IR"
    }

    expiration {
      days = var.access_logs_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.access_logs]
}

resource "aws_s3_bucket_notification" "access_logs" {
  bucket      = aws_s3_bucket.access_logs.id
  eventbridge = true
}

# Regions launched before August 2022 deliver ALB logs from a regional ELB
# account; newer ones from the log delivery service principal. Both are allowed,
# each only into this account's alb* prefixes.
data "aws_elb_service_account" "current" {}

data "aws_iam_policy_document" "access_logs_bucket" {
  statement {
    sid     = "ElbLogDelivery"
    effect  = "Allow"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.access_logs.arn}/alb/AWSLogs/${local.account_id}/*",
      "${aws_s3_bucket.access_logs.arn}/alb-connections/AWSLogs/${local.account_id}/*",
    ]

    principals {
      type        = "AWS"
      identifiers = [data.aws_elb_service_account.current.arn]
    }
  }

  statement {
    sid     = "ElbLogDeliveryService"
    effect  = "Allow"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.access_logs.arn}/alb/AWSLogs/${local.account_id}/*",
      "${aws_s3_bucket.access_logs.arn}/alb-connections/AWSLogs/${local.account_id}/*",
    ]

    principals {
      type        = "Service"
      identifiers = ["logdelivery.elasticloadbalancing.amazonaws.com"]
    }
  }

  statement {
    sid       = "S3ServerAccessLogDelivery"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.access_logs.arn}/s3/*"]

    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.recordings.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.access_logs.arn, "${aws_s3_bucket.access_logs.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  policy = data.aws_iam_policy_document.access_logs_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}
