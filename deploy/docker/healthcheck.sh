#!/bin/bash
# Container liveness probe: GET /healthz on the broker's HTTP listener, using
# bash's /dev/tcp so the image needs no curl. Exit 0 on HTTP 200, 1 otherwise.
# The port follows PAM_SERVER__HTTP_LISTEN (default 8080).
set -uo pipefail

listen=${PAM_SERVER__HTTP_LISTEN:-0.0.0.0:8080}
port=${listen##*:}

probe() {
  exec 3<>"/dev/tcp/127.0.0.1/${port}" || return 1
  printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\nUser-Agent: pam-healthcheck\r\n\r\n' >&3
  local status_line
  IFS= read -r status_line <&3 || return 1
  exec 3>&-
  [[ $status_line == HTTP/1.[01]\ 200* ]]
}

# `timeout` bounds a listener that accepts but never answers.
export -f probe
export port
timeout 4 bash -c probe
