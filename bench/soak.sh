#!/usr/bin/env bash
# Soak (not in CI): repeats the fault suite's churn-through-a-store-restart
# run (8 SSH clients, a PostgreSQL restart every run) for MINUTES minutes and
# plots the broker's fds, RSS and errors per run into docs/soak.svg.
# Each run is a fresh broker: this catches leaks per fault cycle, not drift
# of one long-lived process; `--one-broker` runs one process for the whole
# time with faults injected every few minutes (bench/soak_one_broker.sh).
#
# usage: bench/soak.sh [MINUTES]                (default 60)
#        bench/soak.sh --one-broker [MINUTES]   (default 60; docs/soak-one-broker.svg)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "--one-broker" ]; then
  shift
  exec bench/soak_one_broker.sh "$@"
fi
MINUTES=${1:-60}
OUT=$(mktemp -d /tmp/pam-soak.XXXXXX)
end=$(( $(date +%s) + MINUTES * 60 ))
i=0
while [ "$(date +%s)" -lt "$end" ]; do
  i=$((i + 1))
  NEXTEST_SUCCESS_OUTPUT=final ./scripts/test --quick --pg-only \
    -E 'test(=faults_store::eight_clients_churning_through_a_store_restart_see_only_refusals_and_nothing_leaks)' \
    > "$OUT/run-$i.log" 2>&1 || true
  grep -hE "^\s*load" "$OUT/run-$i.log" | sed "s/^/run $i: /" | tee -a "$OUT/summary.txt"
done
python3 - "$OUT/summary.txt" docs/soak.svg <<'PY'
import re, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"run (\d+): \s*load: fds (\d+) -> (\d+), rss (\d+) KiB -> (\d+) KiB", line)
    if m:
        r = runs.setdefault(int(m[1]), {})
        r.update(fds=int(m[3]), rss=int(m[5]) / 1024)
    m = re.match(r"run (\d+): \s*load through a store restart: (\d+) sessions, (\d+) ok .*?(\d+) refused, (\d+) broken", line)
    if m:
        runs.setdefault(int(m[1]), {}).update(sessions=int(m[2]), errors=int(m[5]))
xs = sorted(runs)
W, H, P = 480, 200, 40
def poly(key, color, scale):
    pts = [(P + (W - 2 * P) * (i / max(1, len(xs) - 1)), H - P - (H - 2 * P) * runs[x].get(key, 0) / scale) for i, x in enumerate(xs)]
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(f"{a:.0f},{b:.0f}" for a, b in pts)}"/>'
top_rss = max([runs[x].get("rss", 0) for x in xs] + [1]) * 1.2
top_fds = max([runs[x].get("fds", 0) for x in xs] + [1]) * 1.2
top_err = max([runs[x].get("errors", 0) for x in xs] + [1])
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{P}" y="15">soak: {len(xs)} runs of 8 clients through a store restart (end of each run)</text>',
       poly("rss", "#1f77b4", top_rss), poly("fds", "#ff7f0e", top_fds), poly("errors", "#d62728", top_err),
       f'<text x="{P}" y="{H-10}" fill="#1f77b4">RSS MiB (max {top_rss/1.2:.1f})</text>',
       f'<text x="{P+170}" y="{H-10}" fill="#ff7f0e">fds (max {top_fds/1.2:.0f})</text>',
       f'<text x="{P+280}" y="{H-10}" fill="#d62728">errors (max {max([runs[x].get("errors", 0) for x in xs] + [0])})</text>',
       '</svg>']
open(sys.argv[2], "w").write("\n".join(svg) + "\n")
print(f"{len(xs)} runs -> {sys.argv[2]}")
PY
