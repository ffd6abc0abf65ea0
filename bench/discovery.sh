#!/usr/bin/env bash
# Discovery of 5,000 tagged IAM roles in moto within one refresh interval
# (issue 15), and target lookups while refreshes publish. Release build.
#
# usage: bench/discovery.sh
# env:   CARGO_TARGET_DIR, ROLES (default 5000), PAM_PEERS_DIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pam/target}
export PAM_PEERS_DIR=${PAM_PEERS_DIR:-$HOME/.cache/pam/peers}
log() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
# shellcheck source=scripts/peers.sh
source "$ROOT/scripts/peers.sh"

peers_install
RUN=$(mktemp -d /tmp/pam-bench.XXXXXX)
chmod 755 "$RUN"
trap 'peers_stop; rm -rf "$RUN"' EXIT
peers_start "$RUN"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
log "cargo bench --bench discovery (ROLES=${ROLES:-5000})"
PAM_BENCH_ROLES=${ROLES:-5000} AWS_ENDPOINT_URL=$PAM_TEST_MOTO_URL \
  cargo bench --locked --bench discovery
