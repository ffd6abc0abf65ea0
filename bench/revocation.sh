#!/usr/bin/env bash
# Revocation timing (issue 19 item 2): how long an open SSH port forward
# (real OpenSSH `ssh -N -L`, through the broker to a real sshd) stays open
# after its user runs `pam logout`. N cycles, each with a fresh break-glass
# user: log in, open the tunnel, send a line through it and read the echo,
# run `pam logout`, and time until the tunnel's local socket reads EOF.
# Two figures per cycle: from the start of `pam logout` (what the user
# sees) and from its return (the revocation is stored and broadcast).
#
# usage: bench/revocation.sh     (as root; a dev build is fine: the close is
#                                 driven by a broadcast, not by CPU)
# env:   PAM_BIN  the pam binary (default: $CARGO_TARGET_DIR/debug/pam)
#        N        cycles (default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pam/target}
PAM=${PAM_BIN:-$CARGO_TARGET_DIR/debug/pam}
N=${N:-10}
[ -x "$PAM" ] || cargo build --locked

W=$(mktemp -d /tmp/pam-bench-revocation.XXXXXX); chmod 755 "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
say() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the target: a real sshd, and an echo server behind it ------------------------
id pamtest >/dev/null 2>&1 || useradd -m -s /bin/bash pamtest
usermod -p '*' pamtest; mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
: > "$W/trusted"
SSHD_PORT=$(port); ECHO_PORT=$(port)
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
AllowTcpForwarding yes
UseDNS no
LogLevel ERROR
EOF
/usr/sbin/sshd -D -f "$W/sshd_config" & PIDS+=($!)
python3 - "$ECHO_PORT" <<'PY' & PIDS+=($!)
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
def echo(c):
    with c:
        while (d := c.recv(4096)):
            c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
PY

# --- the broker --------------------------------------------------------------------
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
[[target]]
name = "bench"
kind = "ssh"
address = "127.0.0.1:$SSHD_PORT"
host_key = "$(cut -d' ' -f1,2 "$W/hostkey.pub")"
login = "pamtest"
tags = { env = "dev" }
EOF
PAM_LOG=warn "$PAM" serve --config "$W/pam.toml" 2>"$W/broker.log" & PIDS+=($!)
for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
"$PAM" ca show target --config "$W/pam.toml" >> "$W/trusted"

login() { # $1 = user, $2 = PAM_HOME
  local out pw secret code
  out=$("$PAM" admin breakglass add "$1" --config "$W/pam.toml")
  pw=$(awk '/password:/ {print $2}' <<<"$out"); secret=$(awk '/TOTP secret:/ {print $3}' <<<"$out")
  code=$(python3 - "$secret" <<'PY'
import base64, hmac, struct, sys, time
key = base64.b32decode(sys.argv[1] + "=" * (-len(sys.argv[1]) % 8))
msg = struct.pack(">Q", int(time.time()) // 30)
h = hmac.new(key, msg, "sha1").digest(); o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o+4])[0] & 0x7fffffff) % 1000000))
PY
)
  PAM_HOME="$2" PAM_BREAKGLASS_PASSWORD="$pw" PAM_BREAKGLASS_TOTP="$code" \
    "$PAM" login --broker "http://127.0.0.1:$HTTP_PORT" --break-glass "$1" >/dev/null 2>&1
}

say "load average: $(cut -d' ' -f1-3 /proc/loadavg)  (2 cores; other work on the machine skews timings)"
: > "$W/results"
for i in $(seq 1 "$N"); do
  H="$W/home$i"; mkdir -p "$H"
  login "rev$i" "$H"
  LOCAL=$(port)
  ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$H/id_ed25519" \
    -o "CertificateFile=$H/id_ed25519-cert.pub" -o "UserKnownHostsFile=$H/known_hosts" \
    -o ExitOnForwardFailure=yes -N -L "127.0.0.1:$LOCAL:127.0.0.1:$ECHO_PORT" \
    -p "$SSH_PORT" bench@127.0.0.1 2>"$W/ssh$i.log" & SSH=$!
  PAM_HOME="$H" python3 - "$LOCAL" "$PAM" >> "$W/results" <<'PY'
import socket, subprocess, sys, time
local, pam = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 15
while True:
    try:
        s = socket.create_connection(("127.0.0.1", local)); break
    except OSError:
        if time.monotonic() > deadline: sys.exit("the tunnel never listened")
        time.sleep(0.05)
s.sendall(b"ping\n")
assert s.recv(64) == b"ping\n", "no echo through the tunnel"
s.settimeout(30)
t0 = time.monotonic()
subprocess.run([pam, "logout"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
t_ret = time.monotonic()
try:
    data = s.recv(64)
except (ConnectionResetError, socket.timeout) as e:
    data = b"" if isinstance(e, ConnectionResetError) else None
t1 = time.monotonic()
if data != b"":
    sys.exit(f"the tunnel did not close: {data!r}")
print(f"{t1 - t0:.3f} {t1 - t_ret:.3f}")
PY
  kill "$SSH" 2>/dev/null || true; wait "$SSH" 2>/dev/null || true
  say "cycle $i: $(tail -1 "$W/results")"
done
python3 - "$W/results" "$N" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
start = [r[0] for r in rows]; ret = [r[1] for r in rows]
print(f"tunnel closed after `pam logout` (N={len(rows)}): "
      f"from its start median {statistics.median(start)*1000:.0f} ms, max {max(start)*1000:.0f} ms; "
      f"from its return median {statistics.median(ret)*1000:.0f} ms, max {max(ret)*1000:.0f} ms")
PY
