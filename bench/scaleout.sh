#!/bin/sh
# Scale-out: one run of ROWS people (tamtam, chunks of CHUNK rows, one job
# per chunk: a submit and two polls) shared by 1, 2 and 4 worker processes
# through one redis-server (appendfsync always), against the simulator
# under nginx with its limits off and the key's rate lifted, so the figure
# is the machinery's own: Redis round trips, the engine, the simulator.
# Prints rows/s (wall time from the first worker's start to the last one's
# end, each worker writing the whole run's output) and Redis round trips
# per job (every command and script of every worker, divided by the jobs).
set -eu
cd "$(dirname "$0")/.."
ROWS=${BENCH_SCALEOUT_ROWS:-10000}
CHUNK=${BENCH_SCALEOUT_CHUNK:-100}
out=build/bench/scaleout
mkdir -p "$out"
redisdir=$(mktemp -d "${TMPDIR:-/tmp}/enrich-bench-redis.XXXXXX")
simdir=$(mktemp -d "${TMPDIR:-/tmp}/enrich-bench-sim.XXXXXX")
cleanup() {
  sh scripts/redis-test-server stop "$redisdir" >/dev/null 2>&1 || true
  rm -rf "$redisdir"
  scripts/sim-nginx stop "$simdir" >/dev/null 2>&1 || true
  rm -rf "$simdir"
  return 0
}
trap cleanup EXIT INT TERM
rport=$(sh scripts/redis-test-server start "$redisdir" | cut -d' ' -f1)
simport=$(scripts/sim-nginx start --port 0 --dir "$simdir" 2>/dev/null | sed -n 's/^listening //p')
sim="http://127.0.0.1:$simport"
jobs=$(( (ROWS + CHUNK - 1) / CHUNK ))
echo "scale-out: $ROWS rows in $jobs jobs of $CHUNK, one run shared through Redis (127.0.0.1:$rport), simulator limits off:"
for w in 1 2 4; do
  curl -s -o /dev/null -X POST "$sim/_sim/reset"
  curl -s -o /dev/null -X POST -H 'Content-Type: application/json' \
    -d '{"tamtam":{"polls":1,"rate_limit":false,"credits":1000000000}}' "$sim/_sim/config"
  run="bench$w-$$"
  t0=$(date +%s.%N)
  i=1
  while [ $i -le $w ]; do
    lua5.4 spec/support/scaleout_worker.lua "redis://127.0.0.1:$rport/0" "$run" "$sim" "$ROWS" \
      "$out/w$i.tsv" 30 "$CHUNK" 0.02 100000 >"$out/w$i.log" 2>&1 &
    i=$((i + 1))
  done
  wait
  t1=$(date +%s.%N)
  trips=$(cat "$out"/w*.log | sed -n 's/.*round_trips \([0-9]*\).*/\1/p' | awk '{s += $1} END {print s}')
  ok=$(cat "$out"/w*.log | grep -c '^worker ' || true)
  rows_ok=$(awk -F'\t' '$2 == "found"' "$out/w1.tsv" | wc -l)
  awk -v w="$w" -v r="$ROWS" -v a="$t0" -v b="$t1" -v t="$trips" -v j="$jobs" -v ok="$ok" -v found="$rows_ok" 'BEGIN {
    printf "  %d worker(s): %6.0f rows/s (%.2f s), %.1f Redis round trips per job, %d/%d workers ok, %d rows found\n",
      w, r / (b - a), b - a, t / j, ok, w, found }'
  [ "$rows_ok" -eq "$ROWS" ] && rm -f "$out"/w*.log "$out"/w*.tsv
  [ "$rows_ok" -eq "$ROWS" ] || { echo "  (rows not found: see $out)"; break; }
done
