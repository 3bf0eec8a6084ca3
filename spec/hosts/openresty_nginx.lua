-- Starts and stops a throwaway nginx (loopback, free port, temp dir) from
-- spec/fixtures/openresty/workers.conf.in, for the OpenResty specs and the
-- bench. Not a spec itself.
local _M = {}

function _M.available()
  return os.execute("command -v nginx >/dev/null 2>&1 && test -f /usr/lib/nginx/modules/ngx_http_lua_module.so")
end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

--- opts: port, sim (base URL), shared_dict (true: `lua_shared_dict enrich 1m`),
--- repo (the tree whose lua/ and build/luajit nginx loads; default: here),
--- init_worker (an init_worker_by_lua_block body; default: none)
--- Returns { dir, port, url, log = path } or raises.
function _M.start(opts)
  local repo = opts.repo or sh("pwd"):gsub("%s+$", "")
  local dir = sh("mktemp -d /tmp/enrich-openresty.XXXXXX"):gsub("%s+$", "")
  os.execute("mkdir -p " .. dir .. "/logs")
  local modules = ""
  for _, m in ipairs { "ndk_http_module", "ngx_http_lua_module" } do
    local f = "/usr/lib/nginx/modules/" .. m .. ".so"
    if io.open(f) then modules = modules .. "load_module " .. f .. ";\n" end
  end
  local user = sh("id -u"):match("^0") and "user root;" or ""
  local here = sh("pwd"):gsub("%s+$", "")
  local conf = assert(io.open(here .. "/spec/fixtures/openresty/workers.conf.in")):read("*a")
  local subst = {
    LOAD_MODULES = modules, USER = user, PREFIX = dir, REPO = repo, PORT = tostring(opts.port),
    SIM = opts.sim, SHARED_DICT = opts.shared_dict and "lua_shared_dict enrich 1m;" or "",
    INIT_WORKER = opts.init_worker and ("init_worker_by_lua_block { " .. opts.init_worker .. " }") or "",
  }
  conf = conf:gsub("@([A-Z_]+)@", function(k) return subst[k] end)
  local f = assert(io.open(dir .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  local out = sh("nginx -p " .. dir .. " -c " .. dir .. "/nginx.conf -e " .. dir .. "/logs/error.log")
  local url = "http://127.0.0.1:" .. opts.port
  for _ = 1, 50 do
    if sh("curl -s --max-time 1 " .. url .. "/ping"):match("pong") then
      return { dir = dir, port = opts.port, url = url, log = dir .. "/logs/error.log" }
    end
    os.execute("sleep 0.1")
  end
  error("nginx did not start: " .. out .. sh("cat " .. dir .. "/logs/error.log"))
end

function _M.stop(ngx_)
  if not ngx_ then return end
  local pid = io.open(ngx_.dir .. "/nginx.pid")
  if pid then
    local n = pid:read("*l")
    pid:close()
    if n and n:match("^%d+$") then os.execute("kill " .. n) end
  end
  -- wait (bounded) for the master to go, then remove the temp dir
  for _ = 1, 50 do
    if not io.open(ngx_.dir .. "/nginx.pid") then break end
    os.execute("sleep 0.1")
  end
  -- KEEP_NGINX=1 keeps the directory (its error log) for a look
  if ngx_.dir:match("^/tmp/enrich%-openresty%.[%w]+$") and not os.getenv("KEEP_NGINX") then
    os.execute("rm -rf " .. ngx_.dir)
  end
end

--- The worker pids of the running nginx (children of the master).
function _M.workers(ngx_)
  local pid = io.open(ngx_.dir .. "/nginx.pid"):read("*l")
  local out = sh("ps -o pid= --ppid " .. pid)
  local pids = {}
  for p in out:gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
  return pids
end

function _M.log(ngx_)
  local f = io.open(ngx_.log)
  local s = f and f:read("*a") or ""
  if f then f:close() end
  return s
end

return _M
