variable "db_instance_identifier" {
  description = "Identifier of the RDS PostgreSQL instance (for Aurora use db_cluster_identifier instead). IAM database authentication must be enabled on it."
  type        = string
  default     = null
}

variable "db_cluster_identifier" {
  description = "Identifier of the Aurora PostgreSQL cluster, instead of db_instance_identifier."
  type        = string
  default     = null

  validation {
    condition     = (var.db_cluster_identifier == null) != (var.db_instance_identifier == null)
    error_message = "Set exactly one of db_instance_identifier and db_cluster_identifier."
  }
}

variable "db_user" {
  description = "Database role the broker logs in as with an IAM token (pam.toml: credential = { from = \"rds-iam\", db_user = ... })."
  type        = string

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.db_user)) && !contains(["postgres", "rdsadmin", "rds_iam", "rds_superuser", "public"], var.db_user)
    error_message = "db_user must be a plain lower-case PostgreSQL identifier (letters, digits, '_') and not a reserved RDS role."
  }
}

variable "database" {
  description = "Database the user may connect to (pam.toml: database)."
  type        = string

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.database))
    error_message = "database must be a plain lower-case PostgreSQL identifier."
  }
}

variable "access" {
  description = "Privileges in the listed schemas: read (SELECT, and every transaction read-only), write (SELECT, INSERT, UPDATE, DELETE), or none (CONNECT only; grant the rest yourself)."
  type        = string
  default     = "read"

  validation {
    condition     = contains(["read", "write", "none"], var.access)
    error_message = "access must be read, write or none."
  }
}

variable "schemas" {
  description = "Schemas the privileges apply to."
  type        = list(string)
  default     = ["public"]

  validation {
    condition     = alltrue([for s in var.schemas : can(regex("^[a-z_][a-z0-9_]{0,62}$", s))])
    error_message = "schemas must be plain lower-case PostgreSQL identifiers."
  }
}

variable "table_owner" {
  description = "Role that creates the application's tables (usually the migration user). When set, ALTER DEFAULT PRIVILEGES makes future tables visible to db_user too."
  type        = string
  default     = null

  validation {
    condition     = var.table_owner == null || can(regex("^[a-z_][a-z0-9_]{0,62}$", coalesce(var.table_owner, "x")))
    error_message = "table_owner must be a plain lower-case PostgreSQL identifier."
  }
}

variable "connection_limit" {
  description = "Maximum concurrent connections of db_user (all pam users share it)."
  type        = number
  default     = 20

  validation {
    condition     = var.connection_limit >= 1 && var.connection_limit <= 1000
    error_message = "connection_limit must be between 1 and 1000."
  }
}

variable "statement_timeout" {
  description = "statement_timeout of db_user, so an interactive query cannot hold locks for long."
  type        = string
  default     = "5min"

  validation {
    condition     = can(regex("^[0-9]+(ms|s|min|h)$", var.statement_timeout))
    error_message = "statement_timeout must be a PostgreSQL duration such as 30s, 5min or 1h."
  }
}

variable "pam_target" {
  description = "How the database appears in pam.toml (output pam_target_toml renders the [[target]] block)."
  type = object({
    name            = string
    tls             = optional(string, "verify-full")
    ca_file         = optional(string, "/etc/ssl/certs/rds-global-bundle.pem")
    connect_timeout = optional(string, "10s")
    tags            = optional(map(string), {})
  })

  validation {
    condition     = contains(["require", "verify-ca", "verify-full"], var.pam_target.tls)
    error_message = "pam_target.tls must be require, verify-ca or verify-full (RDS IAM tokens are only sent over TLS)."
  }
}
