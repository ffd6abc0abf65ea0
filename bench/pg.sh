#!/usr/bin/env bash
# PostgreSQL through the broker versus direct, side by side on this machine:
#   - pgbench -S -c 8 -j 2 -T $SECS TPS (simple and prepared), query audit on,
#     with audit.db_window = 256 (the default) and 0 (every db.query committed
#     before the client sees its ReadyForQuery);
#   - connection setup time (pgbench -C: a new connection per transaction).
# Direct runs use sslmode=require to the SCRAM cluster; broker runs use
# sslmode=require to the broker, which logs in with SCRAM over
# tls = "verify-full" using the password from Secrets Manager (moto).
# The broker's audit store is SQLite under the run directory.
#
# usage: bench/pg.sh
# env:   CARGO_TARGET_DIR, SECS (default 20), PAM_PEERS_DIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pam/target}
export PAM_PEERS_DIR=${PAM_PEERS_DIR:-$HOME/.cache/pam/peers}
SECS=${SECS:-20}
log() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
# shellcheck source=scripts/peers.sh
source "$ROOT/scripts/peers.sh"

log "cargo build --release"
cargo build --release --locked -q
PAM=$CARGO_TARGET_DIR/release/pam

peers_install
RUN=$(mktemp -d /tmp/pam-bench.XXXXXX)
chmod 755 "$RUN"
BROKER_PID=""
cleanup() {
  if [ -n "$BROKER_PID" ]; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  peers_stop
  rm -rf "$RUN"
}
trap cleanup EXIT
peers_start "$RUN"

# The database: a role with a SCRAM password and a pgbench scale-1 data set.
DB_PORT=$(python3 -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).port)' "$PAM_TEST_PG_SCRAM_URL")
APP_PW=$(openssl rand -hex 16)
psql "$PAM_TEST_PG_SCRAM_URL" -qX -c "CREATE ROLE app LOGIN PASSWORD '$APP_PW'" \
  -c "CREATE DATABASE appdb OWNER app" >/dev/null
DIRECT="host=127.0.0.1 port=$DB_PORT user=app dbname=appdb sslmode=require"
PGPASSWORD=$APP_PW pgbench -q -i -s 1 "$DIRECT" >/dev/null 2>&1

# The password in Secrets Manager (moto); the broker reads it, nobody else.
export AWS_ENDPOINT_URL=$PAM_TEST_MOTO_URL AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
"$PAM_PEERS_DIR/venv/bin/aws" secretsmanager create-secret --name bench/app \
  --secret-string "{\"username\":\"app\",\"password\":\"$APP_PW\"}" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP=$(free_port); SSH=$(free_port); PG=$(free_port)
cat > "$RUN/pam.toml" <<TOML
[server]
public_url = "http://127.0.0.1:$HTTP"
http_listen = "127.0.0.1:$HTTP"
ssh_listen = "127.0.0.1:$SSH"
postgres_listen = "127.0.0.1:$PG"
data_dir = "$RUN/data"

[policy]
dir = "$ROOT/policies"

[[target]]
name = "bench"
kind = "postgres"
address = "127.0.0.1:$DB_PORT"
database = "appdb"
credential = { from = "secretsmanager", secret_id = "bench/app" }
tls = "verify-full"
ca_file = "$PAM_TEST_PG_SCRAM_CA"
tags = { env = "dev" }
TOML
export PAM_LOG=warn

start_broker() { # [VAR=value...]
  if [ -n "$BROKER_PID" ]; then
    kill "$BROKER_PID"
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  env "$@" "$PAM" serve --config "$RUN/pam.toml" >"$RUN/broker.log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$HTTP/readyz" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  cat "$RUN/broker.log"
  return 1
}
totp() {
  python3 - "$1" <<'PY'
import base64, hmac, struct, sys, time
key = base64.b32decode(sys.argv[1].upper() + "=" * (-len(sys.argv[1]) % 8))
mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), "sha1").digest()
o = mac[-1] & 15
print("%06d" % ((struct.unpack(">I", mac[o:o + 4])[0] & 0x7fffffff) % 1000000))
PY
}

# The first start generates the keys; then a break-glass account to log in
# with (no IdP needed here).
start_broker
"$PAM" admin breakglass add bench --config "$RUN/pam.toml" > "$RUN/breakglass.txt"
BG_PASSWORD=$(awk '/password:/ {print $2}' "$RUN/breakglass.txt")
BG_TOTP=$(awk '/TOTP secret:/ {print $3}' "$RUN/breakglass.txt")
export PAM_HOME=$RUN/home
PAM_BREAKGLASS_PASSWORD=$BG_PASSWORD PAM_BREAKGLASS_TOTP=$(totp "$BG_TOTP") \
  "$PAM" login --broker "http://127.0.0.1:$HTTP" --break-glass bench >/dev/null 2>&1
TOKEN=$(cat "$PAM_HOME/token")
USER_EMAIL=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["user"])' "$PAM_HOME/session.json")
VIA="host=127.0.0.1 port=$PG user=$USER_EMAIL dbname=bench sslmode=require"

tps() { # password conninfo pgbench-args...
  local password=$1 conninfo=$2
  shift 2
  PGPASSWORD=$password pgbench -n "$@" "$conninfo" 2>&1 | awk '/^tps = / {printf "%.0f", $3}'
}
connect_ms() { # password conninfo
  PGPASSWORD=$1 pgbench -n -S -C -c 1 -j 1 -T 5 "$2" 2>&1 | awk '/average connection time/ {print $5}'
}
row() { printf '%-40s %10s %10s %7s\n' "$@"; }
ratio() { python3 -c "import sys; a, b = float(sys.argv[1] or 0), float(sys.argv[2] or 1); print(f'{a / b:.2f}x')" "$1" "$2"; }

echo
echo "pgbench -S -c 8 -j 2 -T $SECS; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
row "" "direct" "broker" "ratio"
for mode in simple prepared; do
  d=$(tps "$APP_PW" "$DIRECT" -S -M "$mode" -c 8 -j 2 -T "$SECS")
  b=$(tps "$TOKEN" "$VIA" -S -M "$mode" -c 8 -j 2 -T "$SECS")
  row "TPS -M $mode (db_window=256)" "$d" "$b" "$(ratio "$b" "$d")"
done
start_broker PAM_AUDIT__DB_WINDOW=0
d=$(tps "$APP_PW" "$DIRECT" -S -M simple -c 8 -j 2 -T "$SECS")
b=$(tps "$TOKEN" "$VIA" -S -M simple -c 8 -j 2 -T "$SECS")
row "TPS -M simple (db_window=0)" "$d" "$b" "$(ratio "$b" "$d")"
start_broker
d=$(connect_ms "$APP_PW" "$DIRECT")
b=$(connect_ms "$TOKEN" "$VIA")
row "connection setup, ms (pgbench -C)" "$d" "$b" "$(ratio "$b" "$d")"
kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=""
# Every statement above is a db.query event in one hash chain; check it.
"$PAM" audit verify --config "$RUN/pam.toml" --json |
  python3 -c 'import json, sys; r = json.load(sys.stdin); print("audit trail: %d events, chain ok: %s, verified in %d ms" % (r["events"], r["ok"], r["elapsed_ms"]))'
