# Real peers for the test suite: install what is missing, start the shared
# ones on free loopback ports, stop them by PID. Sourced by scripts/test and
# scripts/bench; per-test peers (sshd, the IdP) are started by the tests
# themselves (tests/it/support/peers.rs) from what is installed here.
#
# Exports for the tests:
#   PAM_TEST_PEERS_DIR      venv/ (moto, awscli, ssh-audit), st-venv/ (schemathesis) and node/ (oidc-provider, playwright-core, asciinema-player)
#   PAM_TEST_MOTO_URL       http://127.0.0.1:PORT (moto server: STS, IAM, Secrets Manager, SSM, KMS)
#   PAM_TEST_PG_SCRAM_URL   superuser URL of a PostgreSQL cluster that requires scram-sha-256 and offers TLS
#   PAM_TEST_PG_SCRAM_CA    the CA that signed the cluster's TLS certificate (verify-full)
#                           (members of the roles pam_weak_md5 and pam_weak_password log in
#                           there with md5 and cleartext password authentication instead)

PEER_PIDS=()
PG_SCRAM_DIR=""
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_wait_for() { # label, command...
  local label=$1; shift
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$label did not become ready"; return 1
}

peers_install() {
  local apt=()
  [ -x /usr/sbin/sshd ] || apt+=(openssh-server)
  command -v asciinema >/dev/null || apt+=(asciinema)
  command -v tmux >/dev/null || apt+=(tmux)
  command -v chromium >/dev/null || apt+=(chromium)
  command -v psql >/dev/null || apt+=(postgresql postgresql-client)
  command -v pgbench >/dev/null || apt+=(postgresql-contrib)
  command -v node >/dev/null || apt+=(nodejs npm)
  command -v curl >/dev/null || apt+=(curl)
  command -v openssl >/dev/null || apt+=(openssl)
  if [ ${#apt[@]} -gt 0 ]; then
    log "apt-get install ${apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}" >/dev/null
  fi
  # the login on the SSH test targets; "*" = no password but not locked
  if ! id pamtest >/dev/null 2>&1; then useradd -m -s /bin/bash pamtest; fi
  usermod -p '*' pamtest
  mkdir -p /run/sshd && chmod 755 /run/sshd

  local venv=$PAM_PEERS_DIR/venv
  if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/aws" ]; then
    log "pip install moto[server] awscli into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q 'moto[server]==5.*' 'awscli==1.*'
  fi
  # ssh-audit from PyPI: Debian 12's package (2.5.0) predates mlkem768x25519
  # and strict key exchange and reports both as unknown.
  if [ ! -x "$venv/bin/ssh-audit" ]; then
    log "pip install ssh-audit into $venv"
    "$venv/bin/pip" install -q 'ssh-audit==3.*'
  fi
  # schemathesis in its own venv: its pins must not fight moto's.
  local st=$PAM_PEERS_DIR/st-venv
  if [ ! -x "$st/bin/st" ]; then
    log "pip install schemathesis into $st"
    python3 -m venv "$st"
    "$st/bin/pip" install -q --upgrade pip
    "$st/bin/pip" install -q 'schemathesis==4.*'
  fi
  local node=$PAM_PEERS_DIR/node
  if [ ! -d "$node/node_modules/oidc-provider" ] || [ ! -d "$node/node_modules/playwright-core" ] \
     || [ ! -d "$node/node_modules/asciinema-player" ]; then
    log "npm install oidc-provider playwright-core asciinema-player into $node"
    mkdir -p "$node"
    (cd "$node" && { [ -f package.json ] || npm init -y >/dev/null; } \
      && npm install --no-audit --no-fund --silent oidc-provider@9 playwright-core@1 asciinema-player@3 >/dev/null)
  fi
  export PAM_TEST_PEERS_DIR=$PAM_PEERS_DIR
}

peers_start() { # RUN_DIR
  local run=$1
  export PAM_TEST_RUN_DIR=$run
  # The machine's PostgreSQL (trust auth) backs the PostgreSQL run of the suite.
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting the local PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    _wait_for "local postgres" pg_isready -q -h 127.0.0.1 -p 5432
  fi

  local moto_port; moto_port=$(_free_port)
  "$PAM_PEERS_DIR/venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$run/moto.log" 2>&1 &
  PEER_PIDS+=($!)
  export PAM_TEST_MOTO_URL=http://127.0.0.1:$moto_port
  _wait_for "moto" curl -fsS -o /dev/null "$PAM_TEST_MOTO_URL/moto-api/" || { cat "$run/moto.log"; return 1; }

  _start_scram_pg "$run"
  log "peers: moto $PAM_TEST_MOTO_URL, scram postgres on port $PG_SCRAM_PORT"
}

# A PostgreSQL cluster of its own that requires scram-sha-256 over TCP and offers TLS
# (except for members of pam_weak_md5 and pam_weak_password: md5 and cleartext password,
# so tests can show the broker refusing weak authentication).
_start_scram_pg() {
  local run=$1 d=$1/pg port; port=$(_free_port)
  PG_SCRAM_DIR=$d; PG_SCRAM_PORT=$port
  local as=(); [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  mkdir -p "$d/sock"
  # A CA and a server certificate it signs (a self-signed server certificate
  # is CA:TRUE, which strict verifiers such as webpki refuse as a leaf).
  openssl req -new -x509 -days 2 -nodes -subj "/CN=pam test CA" \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -new -nodes -subj "/CN=localhost" \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$d/server.ext"
  openssl x509 -req -days 2 -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
  chmod 600 "$d/server.key"
  local password; password=$(openssl rand -hex 16)
  printf '%s\n' "$password" > "$d/su.pw"
  [ "$(id -u)" = 0 ] && chown -R postgres "$d"
  "${as[@]}" "$PGBIN/initdb" -D "$d/data" -U postgres --pwfile="$d/su.pw" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$d/initdb.log" 2>&1
  cat >> "$d/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$d/sock'
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = '$d/server.crt'
ssl_key_file = '$d/server.key'
max_connections = 200
fsync = off
CONF
  printf '%s\n' 'local all all trust' \
    'host all +pam_weak_md5 127.0.0.1/32 md5' \
    'host all +pam_weak_password 127.0.0.1/32 password' \
    'host all all 127.0.0.1/32 scram-sha-256' > "$d/data/pg_hba.conf"
  [ "$(id -u)" = 0 ] && chown postgres "$d/data/pg_hba.conf" "$d/data/postgresql.conf"
  "${as[@]}" "$PGBIN/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 30 start >/dev/null
  PEER_PIDS+=("$(head -1 "$d/data/postmaster.pid")")
  "${as[@]}" "$PGBIN/psql" -q -h "$d/sock" -p "$port" -U postgres -d postgres \
    -c 'CREATE ROLE pam_weak_md5 NOLOGIN' -c 'CREATE ROLE pam_weak_password NOLOGIN' >/dev/null
  export PAM_TEST_PG_SCRAM_URL="postgres://postgres:$password@127.0.0.1:$port/postgres"
  export PAM_TEST_PG_SCRAM_CA=$d/ca.crt
}

peers_stop() {
  local pid
  for pid in "${PEER_PIDS[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  for pid in "${PEER_PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  PEER_PIDS=()
}
