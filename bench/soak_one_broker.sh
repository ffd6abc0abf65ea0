#!/usr/bin/env bash
# One-process soak (issue 16, not in CI): ONE long-lived broker (`pam serve`,
# the dev build of this checkout) on its own PostgreSQL store, 8 SSH clients
# churning `ssh target true` and 3 long sessions, with a fault every
# FAULT_EVERY seconds in turn: the store restarted (nothing listening 3 s),
# the target black-holed for 20 s (bench/faultproxy.py), data_dir (a 64 MiB
# tmpfs) full for 20 s. Every 5 s it samples the broker's RSS, fds, threads,
# tokio tasks (/metrics pam_tasks_alive) and the clients' successes and
# errors, and plots them over time into docs/soak-one-broker.svg.
#
# usage: bench/soak.sh --one-broker [MINUTES]   (default 60; as root)
# env:   FAULT_EVERY  seconds between faults (default 180)
#        PAM_BIN      a pam binary to use instead of building one
#        OUT          the plot (default docs/soak-one-broker.svg)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
MINUTES=${1:-60}
FAULT_EVERY=${FAULT_EVERY:-180}
OUT=${OUT:-docs/soak-one-broker.svg}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pam/target}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

W=$(mktemp -d /tmp/pam-soak1.XXXXXX); chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true
  umount -l "$W/data" 2>/dev/null || true
  echo "[soak] work dir kept: $W" >&2
}
trap cleanup EXIT
say() { printf '\033[1m[soak]\033[0m %s\n' "$*" >&2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the broker binary: this checkout's dev build, copied (the shared target
# dir's debug/pam is whichever checkout linked last) ------------------------
BIN=${PAM_BIN:-}
[ -n "$BIN" ] || cargo build --locked --bin pam >&2
for candidate in "$CARGO_TARGET_DIR/debug/pam" $(ls -t "$CARGO_TARGET_DIR"/debug/deps/pam-* 2>/dev/null | grep -v '\.'); do
  [ -z "$BIN" ] || break
  if [ "$(PAM_TEST_PRINT_CHECKOUT=1 "$candidate" --version 2>/dev/null)" = "$ROOT" ]; then BIN=$candidate; break; fi
done
[ -n "$BIN" ] || { say "no pam binary built from $ROOT"; exit 1; }
cp "$BIN" "$W/pam"; PAM=$W/pam

# --- the store: a PostgreSQL cluster of its own, restarted by the faults ----
PGPORT=$(port)
mkdir -p "$W/pg" "$W/pgsock" "$W/pglog"; chown postgres "$W/pg" "$W/pgsock" "$W/pglog"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/pg" -U postgres --auth=trust >/dev/null
printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\n" \
  "$PGPORT" "$W/pgsock" >> "$W/pg/postgresql.conf"
pg() { runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pglog/pg.log" "$@" >/dev/null; }
pg -w start

# --- the target: sshd behind the black-hole proxy ----------------------------
id pamtest >/dev/null 2>&1 || useradd -m -s /bin/bash pamtest
usermod -p '*' pamtest; mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
touch "$W/trusted"
SSHD_PORT=$(port); PROXY_PORT=$(port)
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
python3 "$ROOT/bench/faultproxy.py" "$PROXY_PORT" "127.0.0.1:$SSHD_PORT" & PROXY=$!; PIDS+=($PROXY)

# --- the broker, data_dir on a small tmpfs -------------------------------------
mkdir -p "$W/data"; mount -t tmpfs -o size=64m,mode=0755 tmpfs "$W/data"
mkdir -p "$W/keys"
HTTP_PORT=$(port); SSH_PORT=$(port); PG_PORT=$(port)
cat > "$W/pam.toml" <<EOF
[server]
public_url = "http://127.0.0.1:$HTTP_PORT"
http_listen = "127.0.0.1:$HTTP_PORT"
ssh_listen = "127.0.0.1:$SSH_PORT"
postgres_listen = "127.0.0.1:$PG_PORT"
data_dir = "$W/data"
keys_dir = "$W/keys"
database_url = "postgres://postgres@127.0.0.1:$PGPORT/postgres"
[policy]
dir = "$ROOT/policies"
[session]
idle_timeout = "1h"
[[target]]
name = "soak"
kind = "ssh"
address = "127.0.0.1:$PROXY_PORT"
host_key = "$(cut -d' ' -f1,2 "$W/hostkey.pub")"
login = "pamtest"
connect_timeout = "5s"
tags = { env = "dev" }
EOF
PAM_LOG=warn "$PAM" serve --config "$W/pam.toml" 2>"$W/broker.log" & BROKER=$!; PIDS+=($BROKER)
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
"$PAM" ca show target --config "$W/pam.toml" >> "$W/trusted"

# A break-glass login (no IdP needed), as bench/ssh.sh does.
out=$("$PAM" admin breakglass add soak --config "$W/pam.toml")
pw=$(awk '/password:/ {print $2}' <<<"$out"); secret=$(awk '/TOTP secret:/ {print $3}' <<<"$out")
code=$(python3 - "$secret" <<'PY'
import base64, hmac, struct, sys, time
key = base64.b32decode(sys.argv[1] + "=" * (-len(sys.argv[1]) % 8))
h = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), "sha1").digest(); o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o+4])[0] & 0x7fffffff) % 1000000))
PY
)
PAM_HOME="$W/home" PAM_BREAKGLASS_PASSWORD="$pw" PAM_BREAKGLASS_TOTP="$code" \
  "$PAM" login --broker "http://127.0.0.1:$HTTP_PORT" --break-glass soak >/dev/null
H=$W/home
VIA=(ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o ConnectTimeout=15 -i "$H/id_ed25519"
     -o "CertificateFile=$H/id_ed25519-cert.pub" -o "UserKnownHostsFile=$H/known_hosts" -p "$SSH_PORT" soak@127.0.0.1)
"${VIA[@]}" true || { cat "$W/broker.log"; exit 1; }

# --- load -------------------------------------------------------------------------
END=$(( $(date +%s) + MINUTES * 60 ))
churn() { # $1 = client number
  while [ "$(date +%s)" -lt "$END" ]; do
    if out=$(timeout 60 "${VIA[@]}" true 2>&1); then echo "$(date +%s) ok"
    else echo "$(date +%s) err $(tr '\n' ' ' <<<"$out" | head -c 160)"; fi >> "$W/churn-$1.log"
  done
}
long() { # $1 = session number; a session printing every 2 s, reopened when it ends
  while [ "$(date +%s)" -lt "$END" ]; do
    timeout $(( END - $(date +%s) + 5 )) "${VIA[@]}" 'while :; do date; sleep 2; done' >/dev/null 2>>"$W/long-$1.err" || true
    echo "$(date +%s) ended" >> "$W/long-$1.log"
    sleep 1
  done
}
for i in 1 2 3 4 5 6 7 8; do churn "$i" & PIDS+=($!); done
for i in 1 2 3; do long "$i" & PIDS+=($!); done

sample() {
  local t rss fds threads tasks ok err
  t=$(date +%s)
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$BROKER/status" 2>/dev/null || echo 0)
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$BROKER/status" 2>/dev/null || echo 0)
  fds=$(ls "/proc/$BROKER/fd" 2>/dev/null | wc -l)
  tasks=$(curl -fs -m 5 "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^pam_tasks_alive / {print $2}')
  ok=$(cat "$W"/churn-*.log 2>/dev/null | grep -c ' ok$' || true)
  err=$(cat "$W"/churn-*.log 2>/dev/null | grep -c ' err ' || true)
  echo "$t $rss $fds $threads ${tasks:-0} $ok $err" >> "$W/samples.txt"
}
sampler() { while [ "$(date +%s)" -lt "$END" ]; do sample; sleep 5; done; }
sampler & PIDS+=($!)

fault() { # $1 = kind; appends "start end kind" to faults.txt
  local t0; t0=$(date +%s)
  case $1 in
    store) pg -m fast stop; sleep 3; pg -w start ;;
    target) kill -USR1 "$PROXY"; sleep 20; kill -USR2 "$PROXY" ;;
    disk) dd if=/dev/zero of="$W/data/filler" bs=1M >/dev/null 2>&1 || true; sleep 20; rm -f "$W/data/filler" ;;
  esac
  echo "$t0 $(date +%s) $1" >> "$W/faults.txt"
  say "fault $1: $t0 to $(date +%s)"
}
say "soak: $MINUTES min, a fault every ${FAULT_EVERY}s; work dir $W"
kinds=(store target disk); n=0
while [ $(( $(date +%s) + FAULT_EVERY )) -lt "$END" ]; do
  sleep "$FAULT_EVERY"
  fault "${kinds[$((n % 3))]}"; n=$((n + 1))
done
while [ "$(date +%s)" -lt "$END" ]; do sleep 5; done
sleep 15   # clients finish; sessions close
sample
touch "$W/faults.txt"
grep -h ' err ' "$W"/churn-*.log | cut -d' ' -f3- | sed 's/[0-9]\{2,\}/N/g' | sort | uniq -c | sort -rn | head -8 >&2 || true
python3 - "$W/samples.txt" "$W/faults.txt" "$OUT" "$MINUTES" "$W" <<'PY'
import glob, sys
samples = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
faults = [l.split() for l in open(sys.argv[2]) if l.strip()]
t0 = samples[0][0]
W, H, L, R, T, B = 640, 300, 50, 20, 30, 60
span = max(1, samples[-1][0] - t0)
x = lambda t: L + (W - L - R) * (t - t0) / span
names = [("RSS MiB", 1, "#1f77b4", 1 / 1024), ("fds", 2, "#ff7f0e", 1), ("threads", 3, "#2ca02c", 1),
         ("tasks", 4, "#9467bd", 1), ("client errors", 6, "#d62728", 1)]
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{L}" y="16">one broker, {sys.argv[4]} min: 8 clients churning + 3 long sessions; shaded: faults</text>']
for a, b, kind in faults:
    a, b = int(a), int(b)
    color = {"store": "#fde0dd", "target": "#e0ecf4", "disk": "#f0f0d0"}.get(kind, "#eee")
    svg.append(f'<rect x="{x(a):.0f}" y="{T}" width="{max(2, x(b) - x(a)):.0f}" height="{H - T - B}" fill="{color}"/>')
    svg.append(f'<text x="{x(a):.0f}" y="{T + 10}" font-size="9">{kind}</text>')
for i, (name, col, color, scale) in enumerate(names):
    values = [s[col] * scale for s in samples]
    top = max(values + [1]) * 1.15
    pts = " ".join(f"{x(s[0]):.0f},{H - B - (H - T - B) * v / top:.0f}" for s, v in zip(samples, values))
    svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
    first, last, peak = values[0], values[-1], max(values)
    svg.append(f'<text x="{L + (i % 3) * 200}" y="{H - 30 + (i // 3) * 14}" fill="{color}">'
               f'{name}: {first:.0f} → {last:.0f} (max {peak:.0f})</text>')
ok = samples[-1][5]
svg.append(f'<text x="{L}" y="{H - 2}">{ok} sessions ok, {samples[-1][6]} client errors; each line scaled to its own max</text>')
svg.append("</svg>")
open(sys.argv[3], "w").write("\n".join(svg) + "\n")
first, last = samples[0], samples[-1]
print(f"samples {len(samples)} over {span}s; faults {len(faults)}")
print(f"rss KiB {first[1]} -> {last[1]} (max {max(s[1] for s in samples)}); fds {first[2]} -> {last[2]} (max {max(s[2] for s in samples)})")
print(f"threads {first[3]} -> {last[3]}; tasks {first[4]} -> {last[4]} (max {max(s[4] for s in samples)})")
print(f"sessions ok {last[5]}, client errors {last[6]}")
attempts = sorted((int(l.split()[0]), l.split()[1]) for f in glob.glob(sys.argv[5] + "/churn-*.log") for l in open(f) if l.strip())
for a, b, kind in faults:
    a, b = int(a), int(b)
    errors = sum(1 for t, r in attempts if a <= t <= b + 30 and r == "err")
    back = next((t - b for t, r in attempts if t >= b and r == "ok"), None)
    print(f"fault {kind} at +{a - t0}s for {b - a}s: {errors} client errors until 30 s after; first session ok {back} s after it cleared")
PY
say "broker log: $(grep -c 'ERROR' "$W/broker.log" || true) ERROR lines, $(grep -c 'WARN' "$W/broker.log" || true) WARN lines (the store restarts log some)"

for f in "$W"/long-*.log; do [ -f "$f" ] && say "$(basename "$f"): $(wc -l < "$f") ends"; done
say "plot: $OUT"
