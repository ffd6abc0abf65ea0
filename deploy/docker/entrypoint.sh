#!/bin/bash
# pam container entrypoint: materialises configuration and key material that
# arrive through the environment (ECS `secrets` from Secrets Manager), then
# replaces itself with the broker (`exec`, so pam is PID 1 and gets SIGTERM).
#
# Environment read here (none of them reaches the broker: each is unset first):
#   PAM_CONFIG_TOML                  whole pam.toml; written to /run/pam/pam.toml
#   PAM_KEYMATERIAL_<NAME>           one OpenSSH private key per file the broker
#                                    expects (NAME upper-cased): TOKEN_SIGNING_ED25519,
#                                    SSH_USER_CA, SSH_TARGET_CA, SSH_HOST_ED25519,
#                                    AUDIT_CHECKPOINT_ED25519; written 0600 into
#                                    PAM_SERVER__KEYS_DIR (default /run/pam/keys)
#   PAM_REQUIRE_KEYMATERIAL=1        fail unless all five keys are given (fleets:
#                                    a broker that generated its own CA would
#                                    issue certificates no target trusts)
#   PAM_TLS_CERT_PEM, PAM_TLS_KEY_PEM  shared certificate for the PostgreSQL
#                                    listener; written to /run/pam/tls/ and
#                                    announced as PAM_SERVER__TLS_CERT_FILE/_KEY_FILE
#
# Nothing here is specific to AWS: with a mounted config and a data volume the
# image runs as `docker run ... pam serve --config /etc/pam/pam.toml`.
set -euo pipefail
umask 077

log() { printf '{"level":"INFO","target":"pam-entrypoint","message":"%s"}\n' "$*" >&2; }
die() { printf '{"level":"ERROR","target":"pam-entrypoint","message":"%s"}\n' "$*" >&2; exit 64; }

RUN_DIR=/run/pam
KEY_FILES=(token_signing_ed25519 ssh_user_ca ssh_target_ca ssh_host_ed25519 audit_checkpoint_ed25519)

# Writes stdin to $1 with mode 0600 via a temporary file and a rename.
write_private() {
  local dest=$1 tmp
  tmp=$(mktemp "${dest}.XXXXXX")
  cat >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$dest"
}

# --- configuration ---------------------------------------------------------
if [[ -n ${PAM_CONFIG_TOML:-} ]]; then
  printf '%s\n' "$PAM_CONFIG_TOML" | write_private "$RUN_DIR/pam.toml"
  log "wrote $RUN_DIR/pam.toml from PAM_CONFIG_TOML"
fi
unset PAM_CONFIG_TOML

# --- key material ----------------------------------------------------------
given=0
for name in "${KEY_FILES[@]}"; do
  var="PAM_KEYMATERIAL_${name^^}"
  [[ -n ${!var:-} ]] && given=$((given + 1))
done

if (( given > 0 )); then
  (( given == ${#KEY_FILES[@]} )) \
    || die "only ${given} of ${#KEY_FILES[@]} PAM_KEYMATERIAL_* variables are set; refusing to let the broker generate the rest"
  keys_dir=${PAM_SERVER__KEYS_DIR:-$RUN_DIR/keys}
  install -d -m 0700 "$keys_dir"
  for name in "${KEY_FILES[@]}"; do
    var="PAM_KEYMATERIAL_${name^^}"
    value=${!var}
    [[ $value == *"-----BEGIN OPENSSH PRIVATE KEY-----"* ]] \
      || die "${var} is not an OpenSSH private key"
    # Secrets Manager JSON values may carry literal \n; restore real newlines.
    value=${value//\\n/$'\n'}
    printf '%s\n' "${value%$'\n'}" | write_private "$keys_dir/$name"
    unset "$var"
  done
  export PAM_SERVER__KEYS_DIR=$keys_dir
  log "wrote ${#KEY_FILES[@]} keys into $keys_dir"
elif [[ ${PAM_REQUIRE_KEYMATERIAL:-0} == 1 ]]; then
  die "PAM_REQUIRE_KEYMATERIAL=1 but no PAM_KEYMATERIAL_* variable is set"
fi
unset PAM_REQUIRE_KEYMATERIAL

# --- TLS for the PostgreSQL listener ----------------------------------------
if [[ -n ${PAM_TLS_CERT_PEM:-} || -n ${PAM_TLS_KEY_PEM:-} ]]; then
  [[ -n ${PAM_TLS_CERT_PEM:-} && -n ${PAM_TLS_KEY_PEM:-} ]] \
    || die "set both PAM_TLS_CERT_PEM and PAM_TLS_KEY_PEM, or neither"
  install -d -m 0700 "$RUN_DIR/tls"
  printf '%s\n' "${PAM_TLS_CERT_PEM//\\n/$'\n'}" | write_private "$RUN_DIR/tls/postgres.crt"
  printf '%s\n' "${PAM_TLS_KEY_PEM//\\n/$'\n'}" | write_private "$RUN_DIR/tls/postgres.key"
  export PAM_SERVER__TLS_CERT_FILE=$RUN_DIR/tls/postgres.crt
  export PAM_SERVER__TLS_KEY_FILE=$RUN_DIR/tls/postgres.key
  log "wrote the PostgreSQL listener certificate into $RUN_DIR/tls"
fi
unset PAM_TLS_CERT_PEM PAM_TLS_KEY_PEM

# `docker run IMAGE --help` and `docker run IMAGE ca show user` work as expected.
exec /usr/local/bin/pam "$@"
