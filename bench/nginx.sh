# Shell functions to run a throwaway nginx on a loopback port (sourced by
# bench scripts). nginx_start DIR PORT SERVER_BLOCK_FILE; nginx_stop DIR.
# master_process off: one process, running as whoever started it, so no
# `user` juggling as root; fine for a loopback benchmark.

nginx_modules() {
  for m in ndk_http_module ngx_http_lua_module; do
    f=/usr/lib/nginx/modules/$m.so
    [ -f "$f" ] && echo "load_module $f;"
  done
}

nginx_start() {
  dir=$1; port=$2; server_block=$3
  mkdir -p "$dir/logs"
  {
    [ "${NGINX_LUA:-0}" = 1 ] && nginx_modules
    cat <<CONF
daemon on;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/tmp_body;
  proxy_temp_path $dir/tmp_proxy;
  fastcgi_temp_path $dir/tmp_fcgi;
  uwsgi_temp_path $dir/tmp_uwsgi;
  scgi_temp_path $dir/tmp_scgi;
  server {
    listen 127.0.0.1:$port;
CONF
    cat "$server_block"
    echo "  }"
    echo "}"
  } > "$dir/nginx.conf"
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" || return 1
  i=0
  while [ $i -lt 50 ]; do       # wait up to 5 s for the port to answer
    curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
    sleep 0.1; i=$((i + 1))
  done
  echo "nginx did not come up; see $dir/logs/error.log" >&2
  return 1
}

nginx_stop() {
  dir=$1
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null
  rm -f "$dir/nginx.pid"
}
