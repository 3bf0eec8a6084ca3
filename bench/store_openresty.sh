#!/bin/sh
# `make bench`, the store under OpenResty: /ping latency of one nginx worker
# while it runs JOBS (200) tamtam jobs, without a store and with every job
# recorded in an SQLite store of that worker's own (sqlite:DIR/jobs-PID.db:
# one process per store file). The store's commits run on its writer
# thread; what the worker pays is its Lua per job. Asserts nothing.
# Usage: sh bench/store_openresty.sh
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)
JOBS=${BENCH_STORE_OR_JOBS:-200}
dir=$(mktemp -d "${TMPDIR:-/tmp}/enrich-store-or.XXXXXX")
: > "$dir/sim.out"
lua5.4 bin/enrich-sim --port 0 --no-limits --max-seconds 120 > "$dir/sim.out" 2>/dev/null &
simpid=$!
cleanup() {
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null
  kill "$simpid" 2>/dev/null
  return 0
}
trap cleanup EXIT INT TERM
i=0; simp=""
while [ $i -lt 50 ] && [ -z "$simp" ]; do simp=$(sed -n 's/^listening //p' "$dir/sim.out"); sleep 0.1; i=$((i + 1)); done
sim="http://127.0.0.1:$simp"
curl -s -X POST -d '{"tamtam":{"polls":4}}' "$sim/_sim/config" > /dev/null
port=$(lua5.4 -e 'local s = require("socket").bind("127.0.0.1", 0); local _, p = s:getsockname(); print(p); s:close()')
modules=""
for m in ndk_http_module ngx_http_lua_module; do
  f=/usr/lib/nginx/modules/$m.so
  [ -f "$f" ] && modules="$modules load_module $f;"
done
user=""
[ "$(id -u)" = 0 ] && user="user root;"
mkdir -p "$dir/logs"
cat > "$dir/nginx.conf" <<CONF
$modules
$user
daemon on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/tmp_body; proxy_temp_path $dir/tmp_proxy;
  fastcgi_temp_path $dir/tmp_fcgi; uwsgi_temp_path $dir/tmp_uwsgi; scgi_temp_path $dir/tmp_scgi;
  lua_package_path "$repo/lua/?.lua;$repo/lua/?/init.lua;;";
  lua_package_cpath "$repo/build/luajit/?.so;;";
  init_worker_by_lua_block { assert(require("enrich.hosts.openresty").start()) }
  server {
    listen 127.0.0.1:$port;
    location = /ping { content_by_lua_block { ngx.say("pong") } }
    location = /enrich {
      content_by_lua_block {
        local enrich = require "enrich"
        local with_store = ngx.var.arg_store == "1"
        local store
        if with_store then
          store = assert(enrich.store.open("sqlite:$dir/jobs-" .. ngx.worker.pid() .. "-" .. ngx.now() .. ".db"))
        end
        local c = assert(enrich.client("tamtam", { api_key = "k", base_url = "$sim/tamtam", store = store,
          poll = { interval = 0.05, factor = 1.5, max_interval = 0.5 }, rate = { per_second = 1000, burst = 100 } }))
        local jobs = {}
        for i = 1, tonumber(ngx.var.arg_n) do
          jobs[i] = assert(c:submit({ { first_name = "P" .. i, last_name = "Example" } }))
        end
        local ok = 0
        for _, j in ipairs(jobs) do j:wait(60); if j.state == "succeeded" then ok = ok + 1 end end
        if store then store:close() end
        ngx.say("succeeded=", ok)
      }
    }
  }
}
CONF
nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log"
i=0
until curl -s "http://127.0.0.1:$port/ping" 2>/dev/null | grep -q pong; do
  i=$((i + 1)); [ $i -lt 50 ] || { echo "nginx did not start"; cat "$dir/logs/error.log"; exit 1; }; sleep 0.1
done
run() {   # run STORE(0|1)
  curl -s "http://127.0.0.1:$port/enrich?n=$JOBS&store=$1" > "$dir/enrich.txt" &
  epid=$!
  : > "$dir/ping.txt"
  n=0
  while kill -0 "$epid" 2>/dev/null && [ $n -lt 400 ]; do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/ping" >> "$dir/ping.txt"
    n=$((n + 1))
  done
  wait "$epid" || true
  printf '%s ' "$(cat "$dir/enrich.txt")"
  sort -n "$dir/ping.txt" | awk '{ a[NR] = $1 * 1000 } END {
    if (NR == 0) { print "no pings answered"; exit }
    p99 = int(NR * 0.99 + 0.5); if (p99 < 1) p99 = 1
    printf "pings=%d median_ms=%.2f p99_ms=%.2f worst_ms=%.2f\n", NR, a[int((NR + 1) / 2)], a[p99], a[NR] }'
}
echo "OpenResty, /ping while $JOBS jobs run in the same worker:"
echo "  no store:   $(run 0)"
echo "  with store: $(run 1)"
