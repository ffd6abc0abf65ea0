#!/usr/bin/env bash
# SSH broker benchmarks (issue 5), side by side with a direct OpenSSH
# connection to the same sshd in the same run:
#   1. bulk throughput (upload and download), direct vs broker, and the
#      broker with recording off (the cost of recording)
#   2. time for `ssh target true` (hyperfine), direct vs broker
#   3. sustained new sessions per second (new connections, and new sessions
#      on multiplexed connections), with the error count
#   4. broker memory with 1,000 concurrent idle sessions
#
# usage: bench/ssh.sh            (as root; builds the release binary if needed)
# env:   PAM_BIN   the pam binary (default: $CARGO_TARGET_DIR/release/pam)
#        SIZE_MB   bulk transfer size (default 512)
#        SECONDS_RATE  duration of the session-rate runs (default 20)
#        IDLE      idle sessions (default 1000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pam/target}
PAM=${PAM_BIN:-$CARGO_TARGET_DIR/release/pam}
SIZE_MB=${SIZE_MB:-512}
RATE_SECS=${SECONDS_RATE:-20}
IDLE=${IDLE:-1000}
[ -x "$PAM" ] || cargo build --release --locked
command -v hyperfine >/dev/null || { apt-get install -y -qq hyperfine >/dev/null; }

W=$(mktemp -d /tmp/pam-bench-ssh.XXXXXX); chmod 755 "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; pkill -f "$W/" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
say() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# --- the target: a real sshd -------------------------------------------------
id pamtest >/dev/null 2>&1 || useradd -m -s /bin/bash pamtest
usermod -p '*' pamtest; mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$W/direct_ca"
ssh-keygen -q -t ed25519 -N '' -f "$W/direct"
ssh-keygen -q -s "$W/direct_ca" -I direct -n pamtest -V -5m:+1d "$W/direct.pub"
cp "$W/direct_ca.pub" "$W/trusted"
SSHD_PORT=$(port)
cat > "$W/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $W/hostkey
PidFile $W/sshd.pid
AuthorizedKeysFile none
TrustedUserCAKeys $W/trusted
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers pamtest
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 500:30:1000
MaxSessions 100
LogLevel ERROR
EOF
/usr/sbin/sshd -D -f "$W/sshd_config" & PIDS+=($!)
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$W/hostkey.pub")" > "$W/known_direct"

# --- the broker ----------------------------------------------------------------
start_broker() { # $1 = record (true|false)
  HTTP_PORT=$(port); SSH_PORT=$(port); PG_PORT=$(port)
  cat > "$W/pam.toml" <<EOF
[server]
public_url = "http://127.0.0.1:$HTTP_PORT"
http_listen = "127.0.0.1:$HTTP_PORT"
ssh_listen = "127.0.0.1:$SSH_PORT"
postgres_listen = "127.0.0.1:$PG_PORT"
data_dir = "$W/data"
[policy]
dir = "$ROOT/policies"
[session]
idle_timeout = "1h"
record = $1
[[target]]
name = "bench"
kind = "ssh"
address = "127.0.0.1:$SSHD_PORT"
host_key = "$(cut -d' ' -f1,2 "$W/hostkey.pub")"
login = "pamtest"
tags = { env = "dev" }
EOF
  PAM_LOG=warn "$PAM" serve --config "$W/pam.toml" 2>"$W/broker.log" & BROKER=$!; PIDS+=($BROKER)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  "$PAM" ca show target --config "$W/pam.toml" >> "$W/trusted"
}

login() {
  local out pw secret code
  out=$("$PAM" admin breakglass add bench --config "$W/pam.toml")
  pw=$(awk '/password:/ {print $2}' <<<"$out"); secret=$(awk '/TOTP secret:/ {print $3}' <<<"$out")
  code=$(python3 - "$secret" <<'PY'
import base64, hmac, struct, sys, time
key = base64.b32decode(sys.argv[1] + "=" * (-len(sys.argv[1]) % 8))
msg = struct.pack(">Q", int(time.time()) // 30)
h = hmac.new(key, msg, "sha1").digest(); o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o+4])[0] & 0x7fffffff) % 1000000))
PY
)
  PAM_HOME="$W/home" PAM_BREAKGLASS_PASSWORD="$pw" PAM_BREAKGLASS_TOTP="$code" \
    "$PAM" login --broker "http://127.0.0.1:$HTTP_PORT" --break-glass bench >/dev/null 2>&1
}

start_broker true
login
H=$W/home
DIRECT=(ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$W/direct" -o "UserKnownHostsFile=$W/known_direct" -p "$SSHD_PORT" pamtest@127.0.0.1)
VIA=(ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$H/id_ed25519" -o "CertificateFile=$H/id_ed25519-cert.pub" -o "UserKnownHostsFile=$H/known_hosts" -p "$SSH_PORT" bench@127.0.0.1)
"${VIA[@]}" true || { cat "$W/broker.log"; exit 1; }
say "load average: $(cut -d' ' -f1-3 /proc/loadavg)  (2 cores; other work on the machine skews timings)"

# --- 1. throughput ---------------------------------------------------------------
BYTES=$((SIZE_MB * 1024 * 1024))
upload() { local t0; t0=$(now); head -c "$BYTES" /dev/zero | "$@" 'cat > /dev/null'; echo "$(now) $t0" | awk -v b="$BYTES" '{printf "%.1f", b/1048576/($1-$2)}'; }
download() { local t0; t0=$(now); "$@" "yes pam-bench-output-line | head -c $BYTES" > /dev/null; echo "$(now) $t0" | awk -v b="$BYTES" '{printf "%.1f", b/1048576/($1-$2)}'; }
best() { local b=0 v; for _ in 1 2 3; do v=$("$@"); b=$(awk -v a="$b" -v c="$v" 'BEGIN{print (c>a)?c:a}'); done; echo "$b"; }
UP_D=$(best upload "${DIRECT[@]}"); UP_V=$(best upload "${VIA[@]}")
DOWN_D=$(best download "${DIRECT[@]}"); DOWN_V=$(best download "${VIA[@]}")
echo "throughput upload   ${SIZE_MB} MiB: direct $UP_D MiB/s, broker $UP_V MiB/s ($(awk -v a="$UP_V" -v b="$UP_D" 'BEGIN{printf "%.2f", a/b}')x)"
echo "throughput download ${SIZE_MB} MiB: direct $DOWN_D MiB/s, broker (recorded) $DOWN_V MiB/s ($(awk -v a="$DOWN_V" -v b="$DOWN_D" 'BEGIN{printf "%.2f", a/b}')x)"

# --- 2. latency of `ssh target true` --------------------------------------------
hyperfine -N -w 3 -r 40 --export-json "$W/latency.json" \
  -n direct "${DIRECT[*]} true" -n broker "${VIA[*]} true" >/dev/null 2>&1
python3 - "$W/latency.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
d, b = r["direct"], r["broker"]
print(f"ssh target true: direct {d['mean']*1000:.1f} ms (p50 {d['median']*1000:.1f}), broker {b['mean']*1000:.1f} ms (p50 {b['median']*1000:.1f}), ratio {b['mean']/d['mean']:.2f}x")
PY

# --- 3. sustained new sessions per second -----------------------------------------
rate() { # label, command...
  local label=$1; shift
  local end=$(( $(date +%s) + RATE_SECS )) ok=0 fail=0
  rm -f "$W/rate.ok" "$W/rate.fail"
  worker() { while [ "$(date +%s)" -lt "$end" ]; do if "$@" true 2>/dev/null; then echo >> "$W/rate.ok"; else echo >> "$W/rate.fail"; fi; done; }
  local workers=()
  for _ in $(seq 1 16); do worker "$@" & workers+=($!); done
  wait "${workers[@]}"  # not a bare `wait`: the broker and sshd are children too
  ok=$(wc -l < "$W/rate.ok" 2>/dev/null || echo 0); fail=$(wc -l < "$W/rate.fail" 2>/dev/null || echo 0)
  echo "new sessions ($label): $(awk -v n="$ok" -v s="$RATE_SECS" 'BEGIN{printf "%.0f", n/s}')/s over ${RATE_SECS}s, $fail errors"
}
rate "direct, new connections" "${DIRECT[@]}"
rate "broker, new connections" "${VIA[@]}"
"${VIA[@]}" -o ControlMaster=yes -o ControlPath="$W/mux-rate" -fN
rate "broker, new sessions on one multiplexed connection" "${VIA[@]}" -o ControlPath="$W/mux-rate"

# --- 4. memory with idle sessions -----------------------------------------------------
rss() { awk '/VmRSS/ {print $2}' "/proc/$BROKER/status"; }
BEFORE=$(rss)
MASTERS=$(( (IDLE + 49) / 50 ))
for m in $(seq 1 "$MASTERS"); do "${VIA[@]}" -o ControlMaster=yes -o ControlPath="$W/mux-$m" -fN; done
for i in $(seq 1 "$IDLE"); do
  m=$(( (i - 1) / 50 + 1 ))
  "${VIA[@]}" -o ControlPath="$W/mux-$m" 'sleep 600' </dev/null >/dev/null 2>&1 &
done
for _ in $(seq 1 120); do
  LIVE=$(curl -fs "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^pam_sessions_active\{kind="ssh"\}/ {print $2}')
  [ "${LIVE:-0}" -ge "$IDLE" ] && break; sleep 1
done
sleep 2
AFTER=$(rss)
echo "memory: $LIVE live sessions: broker RSS $((AFTER / 1024)) MiB (before $((BEFORE / 1024)) MiB; $(( (AFTER - BEFORE) / LIVE )) KiB per session)"
pkill -f "sleep 600" 2>/dev/null || true

# --- recording cost: the same download with recording off ------------------------------
kill "$BROKER"; wait "$BROKER" 2>/dev/null || true
start_broker false
VIA=(ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$H/id_ed25519" -o "CertificateFile=$H/id_ed25519-cert.pub" -o "UserKnownHostsFile=$H/known_hosts" -p "$SSH_PORT" bench@127.0.0.1)
echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f2,3 "$H/known_hosts" | head -1)" >> "$H/known_hosts"
DOWN_NR=$(best download "${VIA[@]}")
echo "recording cost: download with recording $DOWN_V MiB/s, without $DOWN_NR MiB/s ($(awk -v a="$DOWN_V" -v b="$DOWN_NR" 'BEGIN{printf "%.1f", (1-a/b)*100}')% slower recorded)"
