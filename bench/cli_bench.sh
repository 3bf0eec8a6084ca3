#!/bin/sh
# `enrich run` over N rows (default 10,000) through tamtam against the
# simulator under nginx with its limits off (and the command's client rate
# lifted: ENRICH_TAMTAM_RATE), beside the engine alone on the same people;
# each on a freshly reset simulator, alternating, median of BENCH_RUNS.
#   sh bench/cli_bench.sh [SIM_URL]
set -eu
cd "$(dirname "$0")/.."
N=${BENCH_ROWS:-10000}
RUNS=${BENCH_RUNS:-3}
own=""
if [ $# -gt 0 ]; then sim=$1; else
  own=$(mktemp -d "${TMPDIR:-/tmp}/enrich-cli-bench.XXXXXX")
  port=$(scripts/sim-nginx start --port 0 --dir "$own" 2>/dev/null | sed -n 's/^listening //p')
  sim="http://127.0.0.1:$port"
  trap 'scripts/sim-nginx stop "$own" >/dev/null 2>&1 || true' EXIT INT TERM
fi
fresh_sim() {
  curl -s -o /dev/null -X POST "$sim/_sim/reset"
  curl -s -o /dev/null -X POST -H 'Content-Type: application/json' \
    -d '{"tamtam":{"polls":1,"rate_limit":false,"credits":1000000000}}' "$sim/_sim/config"
}
field() { sed -E "s/.*$1=([0-9.]+).*/\\1/"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
e_rps=""; e_cpu=""; c_rps=""; c_cpu=""
i=0
while [ $i -lt "$RUNS" ]; do
  fresh_sim
  e=$(lua5.4 bench/cli_bench.lua "$sim" "$N" engine)
  fresh_sim
  c=$(ENRICH_TAMTAM_API_KEY=bench-key ENRICH_TAMTAM_BASE_URL="$sim/tamtam" ENRICH_TAMTAM_RATE=1000000 \
      lua5.4 bench/cli_bench.lua "$sim" "$N" cli)
  echo "  run $((i + 1)): $e"
  echo "         $c"
  e_rps="$e_rps $(echo "$e" | awk -v n="$N" '{ match($0, /wall=[0-9.]+/); w = substr($0, RSTART + 5, RLENGTH - 5); printf "%d", n / w }')"
  c_rps="$c_rps $(echo "$c" | awk -v n="$N" '{ match($0, /wall=[0-9.]+/); w = substr($0, RSTART + 5, RLENGTH - 5); printf "%d", n / w }')"
  e_cpu="$e_cpu $(echo "$e" | field cpu)"
  c_cpu="$c_cpu $(echo "$c" | field cpu)"
  i=$((i + 1))
done
er=$(echo $e_rps | tr ' ' '\n' | median); cr=$(echo $c_rps | tr ' ' '\n' | median)
ec=$(echo $e_cpu | tr ' ' '\n' | median); cc=$(echo $c_cpu | tr ' ' '\n' | median)
awk -v n="$N" -v er="$er" -v cr="$cr" -v ec="$ec" -v cc="$cc" 'BEGIN {
  printf "  engine alone: %d rows/s, %.1f us CPU per row (100-person jobs, submit + polls)\n", er, ec * 1e6 / n
  printf "  enrich run:   %d rows/s, %.1f us CPU per row (CSV in and out, dedupe, budget, store, progress)\n", cr, cc * 1e6 / n
  printf "  the command'"'"'s own CPU: %.1f us per row (%.2fx the engine alone)\n", (cc - ec) * 1e6 / n, cc / ec }'
