# Secrets the broker tasks receive through ECS `secrets` (resolved by the ECS
# agent with the execution role at task start, never in the task definition):
#
#   key-material  JSON {token_signing_ed25519, ssh_user_ca, ssh_target_ca,
#                 ssh_host_ed25519, audit_checkpoint_ed25519}: OpenSSH private
#                 keys shared by every broker of the fleet. Value written once by
#                 deploy/scripts/init-key-material.sh, never by Terraform, so
#                 private keys never enter plan or state.
#   oidc-client-secret  plain string from the IdP; value written by the
#                 operator (aws secretsmanager put-secret-value).
#   store         JSON {username, password, url}: the broker's database role
#                 and its connection URL; written by Terraform from an
#                 ephemeral password through a write-only argument.

resource "aws_secretsmanager_secret" "key_material" {
  #checkov:skip=CKV2_AWS_57:CA and signing keys are rotated as a planned change (new CA trusted by targets first, see deploy/README.md); automatic rotation would lock users and targets out.
  name                    = "${var.name}/${var.environment}/key-material"
  description             = "pam ${var.environment}: broker key material (five Ed25519 private keys, OpenSSH format). Written by deploy/scripts/init-key-material.sh."
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

resource "aws_secretsmanager_secret" "oidc_client_secret" {
  #checkov:skip=CKV2_AWS_57:The client secret is issued by the IdP; it is rotated there and then stored here with put-secret-value (no rotation Lambda can mint it).
  name                    = "${var.name}/${var.environment}/oidc-client-secret"
  description             = "pam ${var.environment}: OIDC client secret of the broker at the company IdP."
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

resource "aws_secretsmanager_secret" "store" {
  #checkov:skip=CKV2_AWS_57:Rotated by bumping store_password_version (new write-only password) and re-running the store bootstrap task; a single-user rotation Lambda would break the running brokers' connection pools.
  name                    = "${var.name}/${var.environment}/store"
  description             = "pam ${var.environment}: the broker's database role and connection URL (sslmode=verify-full)."
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

# Regenerated on every plan, but only written when store_password_version
# changes; never stored in state. Alphanumeric so it needs no URL encoding.
ephemeral "random_password" "store" {
  length  = 40
  special = false
}

resource "aws_secretsmanager_secret_version" "store" {
  secret_id = aws_secretsmanager_secret.store.id
  secret_string_wo = jsonencode({
    username = local.store_user
    password = ephemeral.random_password.store.result
    url = format(
      "postgres://%s:%s@%s:%d/%s?sslmode=verify-full&sslrootcert=%s&application_name=pam-broker",
      local.store_user,
      ephemeral.random_password.store.result,
      aws_db_instance.store.address,
      aws_db_instance.store.port,
      local.store_db,
      local.rds_ca,
    )
  })
  secret_string_wo_version = var.store_password_version
}

# --- CA public keys for target bootstrap ------------------------------------
# Hosts read ssh_target_ca.pub at boot (user data, SSM State Manager) into
# sshd's TrustedUserCAKeys; clients may pin ssh_user_ca.pub. Public keys, not
# secrets, so plain String parameters that need no kms:Decrypt to read.

resource "aws_ssm_parameter" "ssh_user_ca" {
  #checkov:skip=CKV2_AWS_34:Public key, not a secret; a String parameter can be read at host boot without kms:Decrypt.
  count = var.ssh_user_ca_public_key != null ? 1 : 0

  name        = "${local.ssm_prefix}/ssh_user_ca.pub"
  description = "pam ${var.environment}: public key of the SSH user CA (users' certificates)"
  type        = "String"
  tier        = "Standard"
  value       = trimspace(var.ssh_user_ca_public_key)
  tags        = local.tags
}

resource "aws_ssm_parameter" "ssh_target_ca" {
  #checkov:skip=CKV2_AWS_34:Public key, not a secret; a String parameter can be read at host boot without kms:Decrypt.
  count = var.ssh_target_ca_public_key != null ? 1 : 0

  name        = "${local.ssm_prefix}/ssh_target_ca.pub"
  description = "pam ${var.environment}: public key of the SSH target CA (TrustedUserCAKeys on targets)"
  type        = "String"
  tier        = "Standard"
  value       = trimspace(var.ssh_target_ca_public_key)
  tags        = local.tags
}
