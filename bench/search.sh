#!/usr/bin/env bash
# Full-text search over 100,000 indexed sessions (issue 14 item 4): p50,
# p95 and p99 of `Search::find` per kind of search, on SQLite (FTS5) and
# on PostgreSQL (tsvector + GIN). The goal is p95 < 500 ms. Release build.
#
# usage: bench/search.sh [sqlite|postgres|both]
# env:   CARGO_TARGET_DIR, PAM_BENCH_SESSIONS (default 100000),
#        PAM_TEST_PG_ADMIN (default postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pam/target}
log() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
which=${1:-both}

if [[ $which == sqlite || $which == both ]]; then
  log "cargo bench --bench search (SQLite)"
  cargo bench --locked --bench search
fi
if [[ $which == postgres || $which == both ]]; then
  admin=${PAM_TEST_PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
  db="pam_bench_search_$$"
  psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
  trap 'psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
  log "cargo bench --bench search (PostgreSQL, database $db)"
  PAM_BENCH_DATABASE_URL="${admin%/*}/$db" cargo bench --locked --bench search
fi
