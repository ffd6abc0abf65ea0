#!/usr/bin/env bash
# SIEM export against the append rate of the SQLite store (issue 13):
# appends/s through the real audit writer (256 concurrent callers, each
# waiting for durability) against events/s the webhook sink (a receiver on
# loopback) and the s3 sink (moto, gzipped objects) acknowledge meanwhile,
# and the time to drain what is left. Release build.
#
# usage: bench/export.sh
# env:   CARGO_TARGET_DIR, SECS (default 10), PAM_PEERS_DIR
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

bucket="pam-bench-$(date +%s)"
AWS=("$PAM_PEERS_DIR/venv/bin/aws" --endpoint-url "$PAM_TEST_MOTO_URL" --region us-east-1)
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
"${AWS[@]}" s3api create-bucket --bucket "$bucket" --object-lock-enabled-for-bucket >/dev/null
"${AWS[@]}" s3api put-object-lock-configuration --bucket "$bucket" --object-lock-configuration \
  '{"ObjectLockEnabled":"Enabled","Rule":{"DefaultRetention":{"Mode":"GOVERNANCE","Days":1}}}' >/dev/null

log "cargo bench --bench export (SECS=${SECS:-10})"
PAM_BENCH_SECS=${SECS:-10} PAM_BENCH_S3_URL="s3://$bucket/bench" AWS_ENDPOINT_URL_S3=$PAM_TEST_MOTO_URL \
  cargo bench --locked --bench export
