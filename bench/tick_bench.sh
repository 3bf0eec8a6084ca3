#!/bin/sh
# `make bench`, the ticking host: examples/host's C program calls enrich.tick()
# once per frame at 60 fps with JOBS (500) tamtam jobs of one person in
# flight against the simulator under nginx (each job: submit + 3 polls).
# Reports the wall time inside tick() (median, p99, worst; target: worst
# < 1 ms) and the thread's CPU time inside it.
#
# The game sends and receives on libcurl's own thread (enrich.configure
# { io_thread = true }): tick() hands requests over and turns answers into
# results. A game runs the collector in the idle rest of its frames
# (ENRICH_HOST_GC=idle), and its provider is another machine. Here the
# provider is nginx on the same 2 cores, and every loopback send runs
# nginx's side in the sending thread and wakes nginx where it may preempt
# it; so the main runs put the simulator on the last CPU and the host (both
# its threads) on the first (taskset), and more runs show what each of
# those choices costs:
#   (t1) polls 1 s apart, jobs submitted 25 per frame (a tool's pace);
#   (t2) polls 50 ms apart (stress: ~2,500 requests in a few seconds);
#   (t3) as t1, the collector left inside tick (Lua's own pacing);
#   (t4) as t1, host and simulator sharing both cores;
#   (t5) as t1 without the I/O thread: libcurl inside tick, sends paced;
#   (t6), (t7) as t1 and t2 with every job recorded in an SQLite store
#        (its commits on the store's writer thread).
# BENCH_TICK_PROFILE=1 adds where a tick's time goes (bench/tick_profile.lua).
# Asserts nothing about speed. Usage: sh bench/tick_bench.sh
set -eu
cd "$(dirname "$0")/.."
JOBS=${BENCH_TICK_JOBS:-500}
make -s -C examples/host
simdir=$(mktemp -d "${TMPDIR:-/tmp}/enrich-tick-sim.XXXXXX")
trap 'scripts/sim-nginx stop "$simdir" >/dev/null 2>&1 || true' EXIT INT TERM
port=$(scripts/sim-nginx start --port 0 --dir "$simdir" 2>/dev/null | sed -n 's/^listening //p')
sim="http://127.0.0.1:$port"

cpus=$(nproc)
last=$((cpus - 1))
pin_host=""
if [ "$cpus" -ge 2 ] && command -v taskset > /dev/null; then
  for pid in $(pgrep -P "$(cat "$simdir/nginx.pid")"); do taskset -p -c "$last" "$pid" > /dev/null; done
  pin_host="taskset -c 0"
fi

reset() {
  curl -s -o /dev/null -X POST "$sim/_sim/reset"
  curl -s -o /dev/null -X POST -H 'Content-Type: application/json' \
    -d '{"tamtam":{"polls":3,"rate_limit":false,"credits":1000000000}}' "$sim/_sim/config"
}
pick() { tr ' ' '\n' | grep -E "^($1)=" | tr '\n' ' '; }
fields='succeeded|frames|median_ms|p99_ms|worst_ms|cpu_median_ms|cpu_worst_ms'
host() {   # host() INTERVAL GC PIN [IO_THREAD]
  reset
  ENRICH_IO_THREAD=${4:-1} ENRICH_POLL_INTERVAL=$1 ENRICH_HOST_GC=$2 $3 build/host/enrich-host "$sim" "$JOBS" 25 \
    | tail -n 1 | pick "$fields"
}
echo "ticking host, $JOBS jobs in flight, 60 fps (ms inside enrich.tick());"
if [ -n "$pin_host" ]; then
  echo "simulator on CPU $last, host on CPU 0 unless said; collector in idle frame time unless said:"
else
  echo "(one CPU or no taskset: nothing pinned) collector in idle frame time unless said:"
fi
echo "  (t1) polls 1 s apart:        $(host 1 idle "$pin_host")"
echo "  (t2) polls 50 ms apart:      $(host 0.05 idle "$pin_host")"
echo "  (t3) t1, collector in tick:  $(host 1 auto "$pin_host")"
echo "  (t4) t1, sharing both cores: $(host 1 idle "")"
echo "  (t5) t1, no I/O thread:      $(host 1 idle "$pin_host" 0)"
store_db="$simdir/tick-store.db"
rm -f "$store_db" "$store_db-wal" "$store_db-shm" "$store_db.lock"
echo "  (t6) t1, jobs in a store:    $(ENRICH_STORE="sqlite:$store_db" host 1 idle "$pin_host")"
rm -f "$store_db" "$store_db-wal" "$store_db-shm" "$store_db.lock"
echo "  (t7) t2, jobs in a store:    $(ENRICH_STORE="sqlite:$store_db" host 0.05 idle "$pin_host")"
echo "  target: worst < 1 ms (t1, t2)"
if [ "${BENCH_TICK_PROFILE:-0}" = 1 ]; then
  reset
  ENRICH_POLL_INTERVAL=1 ENRICH_HOST_GC=idle ENRICH_HOST_SCRIPT=bench/tick_profile.lua $pin_host \
    build/host/enrich-host "$sim" "$JOBS" 25 2>&1 | grep -E '^(all|ticks touching|heaviest|  )' | sed 's/^/    /'
fi
