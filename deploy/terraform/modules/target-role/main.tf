# An IAM role that only the pam broker can assume, and only on behalf of an
# identified user: every AssumeRole must carry a SourceIdentity (the broker
# sets it to the user's email), which then appears on every CloudTrail event
# of the session and cannot be changed by role chaining.

data "aws_iam_policy_document" "trust" {
  statement {
    sid     = "PamBrokerOnly"
    effect  = "Allow"
    actions = ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]

    principals {
      type        = "AWS"
      identifiers = var.broker_role_arns
    }

    # A SourceIdentity is mandatory.
    condition {
      test     = "Null"
      variable = "sts:SourceIdentity"
      values   = ["false"]
    }

    dynamic "condition" {
      for_each = length(var.source_identity_patterns) > 0 ? [1] : []
      content {
        test     = "StringLike"
        variable = "sts:SourceIdentity"
        values   = var.source_identity_patterns
      }
    }

    dynamic "condition" {
      for_each = var.external_id != null ? [1] : []
      content {
        test     = "StringEquals"
        variable = "sts:ExternalId"
        values   = [var.external_id]
      }
    }

    dynamic "condition" {
      for_each = length(var.allowed_session_tag_keys) > 0 ? [1] : []
      content {
        test     = "ForAllValues:StringEquals"
        variable = "aws:TagKeys"
        values   = var.allowed_session_tag_keys
      }
    }
  }
}

resource "aws_iam_role" "this" {
  name                 = var.name
  path                 = var.path
  description          = var.description
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = var.max_session_duration
  permissions_boundary = var.permissions_boundary_arn
  tags                 = merge(var.tags, { "pam:target" = coalesce(var.pam_target.name, var.name) })
}

resource "aws_iam_role_policy_attachment" "managed" {
  for_each = toset(var.managed_policy_arns)

  role       = aws_iam_role.this.name
  policy_arn = each.value
}

resource "aws_iam_role_policy" "inline" {
  for_each = var.inline_policies

  name   = each.key
  role   = aws_iam_role.this.id
  policy = each.value
}
