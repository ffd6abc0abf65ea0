variable "name" {
  description = "Role name, e.g. prod-readonly. The role's ARN goes into the broker config as role_arn of an aws target."
  type        = string

  validation {
    condition     = can(regex("^[\\w+=,.@-]{1,64}$", var.name))
    error_message = "name must be a valid IAM role name (1-64 characters of letters, digits and +=,.@_-)."
  }
}

variable "path" {
  description = "IAM path of the role. A dedicated path makes pam-assumable roles easy to find and to scope in SCPs."
  type        = string
  default     = "/pam-target/"

  validation {
    condition     = can(regex("^/([\\w+=,.@-]+/)*$", var.path))
    error_message = "path must start and end with '/'."
  }
}

variable "description" {
  description = "Description of the role (what access it grants through pam)."
  type        = string
  default     = "Assumed through the pam broker only"
}

variable "broker_role_arns" {
  description = "Task role ARN(s) of the pam broker(s) allowed to assume this role (pam module output task_role_arn). The roles must exist when this module is applied."
  type        = list(string)

  validation {
    condition     = length(var.broker_role_arns) > 0 && alltrue([for a in var.broker_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\\w+=,.@/-]+$", a))])
    error_message = "broker_role_arns must be a non-empty list of IAM role ARNs without wildcards."
  }
}

variable "external_id" {
  description = "Optional ExternalId the broker must present (target external_id in pam.toml). Useful when the role lives in an account run by another team."
  type        = string
  default     = null

  validation {
    condition     = var.external_id == null || can(regex("^[\\w+=,.@:/-]{2,1224}$", coalesce(var.external_id, "x")))
    error_message = "external_id must be 2-1224 characters of letters, digits and +=,.@:/-_."
  }
}

variable "source_identity_patterns" {
  description = "Optional StringLike patterns the session's SourceIdentity (the pam user's email) must match, e.g. [\"*@example.com\"]. A SourceIdentity is always required."
  type        = list(string)
  default     = []
}

variable "allowed_session_tag_keys" {
  description = "Optional allow-list of session tag keys the broker may pass with sts:TagSession. Empty: any keys."
  type        = list(string)
  default     = []
}

variable "max_session_duration" {
  description = "Maximum session duration in seconds (3600-43200). The broker's sessions are role-chained on ECS, which AWS caps at 1 hour regardless."
  type        = number
  default     = 3600

  validation {
    condition     = var.max_session_duration >= 3600 && var.max_session_duration <= 43200
    error_message = "max_session_duration must be between 3600 and 43200 seconds."
  }
}

variable "managed_policy_arns" {
  description = "Managed policies attached to the role (what a pam user can do in AWS with it), e.g. arn:aws:iam::aws:policy/ReadOnlyAccess."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.managed_policy_arns : can(regex("^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy/", a))])
    error_message = "managed_policy_arns must be IAM policy ARNs."
  }
}

variable "inline_policies" {
  description = "Inline policies, name => JSON document."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for p in values(var.inline_policies) : can(jsondecode(p))])
    error_message = "Every inline policy must be a JSON document."
  }
}

variable "permissions_boundary_arn" {
  description = "Optional permissions boundary of the role."
  type        = string
  default     = null
}

variable "pam_target" {
  description = "How the role appears in pam.toml: target name, session length and tags (output pam_target_toml renders the [[target]] block)."
  type = object({
    name         = optional(string)
    max_duration = optional(string, "1h")
    tags         = optional(map(string), {})
  })
  default = {}

  validation {
    condition     = can(regex("^[0-9]+(m|h)$", var.pam_target.max_duration))
    error_message = "pam_target.max_duration must be a duration like 15m or 1h."
  }
}

variable "tags" {
  description = "Tags of the role."
  type        = map(string)
  default     = {}
}
