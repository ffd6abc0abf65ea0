# Sourced by bench/discovery.sh once the roles tagged $TAG are in moto:
# `ssh target true` through the release broker, latency and sustained new
# sessions, with a broker that does not discover and with one that
# refreshes the $TAG roles back to back (interval 1s).
# shellcheck shell=bash
PAM=${PAM_BIN:-$CARGO_TARGET_DIR/release/pam}
RATE_SECS=${SECONDS_RATE:-20}
RUNS=${RUNS:-60}
[ -x "$PAM" ] || cargo build --release --locked --bin pam
W=$RUN/sessions; mkdir -p "$W"; chmod 755 "$W"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

id pamtest >/dev/null 2>&1 || useradd -m -s /bin/bash pamtest
usermod -p '*' pamtest; mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
: > "$W/trusted"
SSHD_PORT=$(port)
cat > "$W/sshd_config" <<CONF
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
LogLevel ERROR
CONF
/usr/sbin/sshd -D -f "$W/sshd_config" & PIDS+=($!)

start_broker() { # $1 = label, $2 = extra toml
  local dir=$W/$1
  mkdir -p "$dir"
  HTTP_PORT=$(port); SSH_PORT=$(port); PG_PORT=$(port)
  cat > "$dir/pam.toml" <<CONF
[server]
public_url = "http://127.0.0.1:$HTTP_PORT"
http_listen = "127.0.0.1:$HTTP_PORT"
ssh_listen = "127.0.0.1:$SSH_PORT"
postgres_listen = "127.0.0.1:$PG_PORT"
data_dir = "$dir/data"
[policy]
dir = "$ROOT/policies"
[[target]]
name = "bench"
kind = "ssh"
address = "127.0.0.1:$SSHD_PORT"
host_key = "$(cut -d' ' -f1,2 "$W/hostkey.pub")"
login = "pamtest"
tags = { env = "dev" }
$2
CONF
  PAM_LOG_FORMAT=json PAM_LOG="warn,pam::discovery=info,pam::app=info" \
    "$PAM" serve --config "$dir/pam.toml" 2>"$dir/broker.log" & BROKER=$!; PIDS+=($BROKER)
  for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  "$PAM" ca show target --config "$dir/pam.toml" >> "$W/trusted"
  local out pw secret code
  out=$("$PAM" admin breakglass add bench --config "$dir/pam.toml")
  pw=$(awk '/password:/ {print $2}' <<<"$out"); secret=$(awk '/TOTP secret:/ {print $3}' <<<"$out")
  code=$(python3 - "$secret" <<'PY'
import base64, hmac, struct, sys, time
key = base64.b32decode(sys.argv[1] + "=" * (-len(sys.argv[1]) % 8))
h = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), "sha1").digest(); o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o+4])[0] & 0x7fffffff) % 1000000))
PY
)
  PAM_HOME="$dir/home" PAM_BREAKGLASS_PASSWORD="$pw" PAM_BREAKGLASS_TOTP="$code" \
    "$PAM" login --broker "http://127.0.0.1:$HTTP_PORT" --break-glass bench >/dev/null 2>&1
  VIA=(ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$dir/home/id_ed25519"
       -o "CertificateFile=$dir/home/id_ed25519-cert.pub" -o "UserKnownHostsFile=$dir/home/known_hosts"
       -p "$SSH_PORT" bench@127.0.0.1)
  "${VIA[@]}" true || { cat "$dir/broker.log"; exit 1; }
}

# One round of both measurements for one broker, appended to $W/$label.*:
# latencies (us) of `ssh target true` one after the other, then sessions
# completed by 8 clients in a row for $ROUND_SECS.
round() { # label, name of the ssh command array
  local label=$1 t0 t1 end
  local -n via=$2
  for _ in $(seq 1 "$ROUND_RUNS"); do
    t0=$(date +%s%N); "${via[@]}" true; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 )) >> "$W/$label.lat"
  done
  end=$(( $(date +%s) + ROUND_SECS ))
  worker() { while [ "$(date +%s)" -lt "$end" ]; do if "${via[@]}" true 2>/dev/null; then echo >> "$W/$label.ok"; else echo >> "$W/$label.fail"; fi; done; }
  local workers=()
  for _ in $(seq 1 8); do worker & workers+=($!); done
  wait "${workers[@]}"
  touch "$W/$label.ok" "$W/$label.fail"
}

report() { # label, description
  python3 - "$W/$1" "$2" "$(( ROUNDS * ROUND_SECS ))" <<'PY'
import sys
base, label, secs = sys.argv[1], sys.argv[2], int(sys.argv[3])
v = sorted(int(x) / 1000 for x in open(base + ".lat"))
ok = sum(1 for _ in open(base + ".ok")); fail = sum(1 for _ in open(base + ".fail"))
p = lambda q: v[min(len(v) - 1, int(len(v) * q))]
print(f"sessions ({label}): ssh target true p50 {p(0.5):.1f} ms, p90 {p(0.9):.1f} ms, max {v[-1]:.1f} ms ({len(v)} runs); "
      f"{ok / secs:.1f} new sessions/s over {secs}s (8 clients), {fail} errors")
PY
}

refreshes() { # broker log -> "N refreshes, elapsed ms ..."
  python3 - "$1" <<'PY'
import json, sys
ms = []
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    f = e.get("fields", e)
    if f.get("message") == "discovery refreshed":
        ms.append((int(f.get("targets", 0)), int(f.get("elapsed_ms", 0))))
print(len(ms), " ".join(f"{t}:{m}" for t, m in ms))
PY
}

say() { log "$@"; }
# Both brokers run at once and are measured in alternating rounds, so the
# other work on this shared machine (and moto answering the refreshes)
# weighs on both alike; what differs is the refresh inside one broker.
ROUNDS=${ROUNDS:-4}; ROUND_RUNS=$(( RUNS / ROUNDS )); ROUND_SECS=$(( RATE_SECS / ROUNDS + 1 ))
start_broker plain ""
VIA_PLAIN=("${VIA[@]}")
start_broker discovering "[[discovery]]
source = \"iam-roles\"
tag = \"$TAG\"
interval = \"1s\""
VIA_DISC=("${VIA[@]}")
LOG=$W/discovering/broker.log
say "waiting for the first refresh and the targets check at start"
for _ in $(seq 1 1200); do grep -q 'targets check (pam targets check' "$LOG" && break; sleep 0.5; done
python3 - "$LOG" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
t = lambda e: e.get("timestamp", "")
first = next((e for e in lines), {})
check = next((e for e in lines if "targets check (" in str(e.get("message", ""))), {})
print(f"broker start {t(first)}; targets check at start done {t(check)}: {check.get('targets')} targets, {check.get('failed')} failed (moto roles trust nobody)")
PY
say "load average: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores; moto runs on the same machine)"
read -r BEFORE _ <<<"$(refreshes "$LOG")"
for r in $(seq 1 "$ROUNDS"); do
  say "round $r of $ROUNDS"
  round plain VIA_PLAIN
  round discovering VIA_DISC
done
read -r AFTER TIMES <<<"$(refreshes "$LOG")"
say "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
report plain "broker without discovery"
report discovering "broker refreshing ${ROLES:-5000} roles back to back, at the same time"
echo "refreshes completed during the rounds: $((AFTER - BEFORE)); every refresh in the broker (targets:ms): $TIMES"
