#!/bin/sh
# `make bench`, the ticking host: examples/host's C program calls enrich.tick()
# once per frame at 60 fps with JOBS (500) tamtam jobs of one person in
# flight against the simulator under nginx (each job: submit + 3 polls).
# Reports the wall time inside tick() (median, p99, worst; target: worst
# < 1 ms) and the thread's CPU time inside it, for two poll cadences:
#   (t1) polls 1 s apart, jobs submitted 25 per frame (a tool's pace);
#   (t2) polls 50 ms apart (stress: ~2,500 requests in about 1.5 s).
# Asserts nothing about speed. Usage: sh bench/tick_bench.sh [SIM_URL]
set -eu
cd "$(dirname "$0")/.."
JOBS=${BENCH_TICK_JOBS:-500}
make -s -C examples/host
simdir=""
sim=${1:-}
if [ -z "$sim" ]; then
  simdir=$(mktemp -d "${TMPDIR:-/tmp}/enrich-tick-sim.XXXXXX")
  trap 'scripts/sim-nginx stop "$simdir" >/dev/null 2>&1 || true' EXIT INT TERM
  port=$(scripts/sim-nginx start --port 0 --dir "$simdir" 2>/dev/null | sed -n 's/^listening //p')
  sim="http://127.0.0.1:$port"
fi
curl -s -o /dev/null -X POST "$sim/_sim/reset"
curl -s -o /dev/null -X POST -H 'Content-Type: application/json' \
  -d '{"tamtam":{"polls":3,"rate_limit":false,"credits":1000000000}}' "$sim/_sim/config"
pick() { tr ' ' '\n' | grep -E "^($1)=" | tr '\n' ' '; }
echo "ticking host, $JOBS jobs in flight, 60 fps (ms inside enrich.tick()):"
line=$(ENRICH_POLL_INTERVAL=1 build/host/enrich-host "$sim" "$JOBS" 25 | tail -n 1)
echo "  (t1) polls 1 s apart:   $(echo "$line" | pick 'succeeded|frames|median_ms|p99_ms|worst_ms|cpu_median_ms|cpu_worst_ms')"
line=$(ENRICH_POLL_INTERVAL=0.05 build/host/enrich-host "$sim" "$JOBS" 25 | tail -n 1)
echo "  (t2) polls 50 ms apart: $(echo "$line" | pick 'succeeded|frames|median_ms|p99_ms|worst_ms|cpu_median_ms|cpu_worst_ms')"
echo "  target: worst < 1 ms; where the time goes:"
ENRICH_POLL_INTERVAL=1 ENRICH_HOST_SCRIPT=bench/tick_profile.lua build/host/enrich-host "$sim" "$JOBS" 25 2>&1 \
  | grep -E '^(all|ticks touching)' | sed 's/^/    /'
