#!/usr/bin/env bash
# Discovery of 5,000 tagged IAM roles in moto within one refresh interval
# (issue 15), target lookups while refreshes publish, and SSH sessions
# through the release broker (a real sshd, OpenSSH client) without
# discovery and while the broker refreshes those 5,000 roles back to back
# (interval 1s). Release build.
#
# usage: bench/discovery.sh      (as root: it starts an sshd for `pamtest`)
# env:   CARGO_TARGET_DIR, ROLES (default 5000), PAM_PEERS_DIR,
#        PAM_BIN (default $CARGO_TARGET_DIR/release/pam), BENCH_EXE (a built
#        benches/discovery binary, run as is: no cargo, no cargo lock),
#        SECONDS_RATE (session-rate run per broker, default 20), RUNS (latency samples per broker, default 60), ROUNDS (default 4)
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
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; peers_stop; rm -rf "$RUN"; }
trap cleanup EXIT
peers_start "$RUN"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=$PAM_TEST_MOTO_URL
TAG="pam:bench-$$"
log "cargo bench --bench discovery (ROLES=${ROLES:-5000})"
if [ -n "${BENCH_EXE:-}" ]; then  # an already built bench binary: no cargo lock
  PAM_BENCH_ROLES=${ROLES:-5000} PAM_BENCH_TAG=$TAG "$BENCH_EXE"
else
  PAM_BENCH_ROLES=${ROLES:-5000} PAM_BENCH_TAG=$TAG cargo bench --locked --bench discovery
fi

# --- sessions with and without a discovery refresh running ------------------
source "$ROOT/bench/discovery-sessions.sh"
