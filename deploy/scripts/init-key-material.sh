#!/usr/bin/env bash
# Generates the broker fleet's key material once and stores it in the Secrets
# Manager secret the pam Terraform module created (output key_material_secret_arn).
#
#   deploy/scripts/init-key-material.sh --secret-id ARN [--region REGION] [--profile PROFILE]
#
# Five Ed25519 keys in OpenSSH format, the files pam reads from keys_dir:
#   token_signing_ed25519     signs broker session tokens (JWT, EdDSA)
#   ssh_user_ca               signs users' SSH certificates (`pam login`)
#   ssh_target_ca             signs the broker's certificates towards targets
#   ssh_host_ed25519          host key of the broker's SSH listener
#   audit_checkpoint_ed25519  signs audit-trail checkpoints
#
# The secret value is one JSON object {file name: private key}; the ECS task
# definition maps each JSON key to a PAM_KEYMATERIAL_* variable and the image
# entrypoint writes the files (0600) before the broker starts.
#
# Private keys only ever exist in a private temporary directory (on /dev/shm
# when available) that is removed on exit. The script refuses to overwrite a
# secret that already has a value: replacing ssh_user_ca or ssh_target_ca
# locks every user and target out, replacing audit_checkpoint_ed25519 orphans
# existing checkpoints. Rotation is a planned change (see deploy/README.md).
#
# Prints the two CA public keys; put them into the module inputs
# ssh_user_ca_public_key / ssh_target_ca_public_key (SSM parameters for target
# bootstrap) and re-apply.
set -euo pipefail

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

SECRET_ID="" AWS_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --secret-id) SECRET_ID=${2:-}; shift 2 ;;
    --region) AWS_ARGS+=(--region "${2:-}"); shift 2 ;;
    --profile) AWS_ARGS+=(--profile "${2:-}"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[ -n "$SECRET_ID" ] || usage
for tool in aws ssh-keygen python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done

stages=$(aws "${AWS_ARGS[@]}" secretsmanager describe-secret --secret-id "$SECRET_ID" \
  --query 'VersionIdsToStages' --output json)
if [ "$stages" != "null" ] && [ "$stages" != "{}" ]; then
  echo "error: $SECRET_ID already holds key material; refusing to replace it" >&2
  exit 1
fi

umask 077
base=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
work=$(mktemp -d "$base/pam-keys.XXXXXX")
trap 'rm -rf "$work"' EXIT

names=(token_signing_ed25519 ssh_user_ca ssh_target_ca ssh_host_ed25519 audit_checkpoint_ed25519)
for name in "${names[@]}"; do
  ssh-keygen -q -t ed25519 -N '' -C "pam $name" -f "$work/$name"
done

python3 - "$work" "${names[@]}" >"$work/secret.json" <<'PY'
import json, pathlib, sys
work, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
json.dump({n: (work / n).read_text() for n in names}, sys.stdout)
PY

aws "${AWS_ARGS[@]}" secretsmanager put-secret-value --secret-id "$SECRET_ID" \
  --secret-string "file://$work/secret.json" --query VersionId --output text >/dev/null

echo "stored ${#names[@]} keys in $SECRET_ID"
echo
echo "# module inputs (public keys, safe to commit):"
printf 'ssh_user_ca_public_key   = "%s"\n' "$(cut -d' ' -f1,2 "$work/ssh_user_ca.pub") pam-user-ca"
printf 'ssh_target_ca_public_key = "%s"\n' "$(cut -d' ' -f1,2 "$work/ssh_target_ca.pub") pam-target-ca"
echo
echo "# SSH host key of the broker (for users' known_hosts, @cert-authority not needed):"
cut -d' ' -f1,2 "$work/ssh_host_ed25519.pub"
