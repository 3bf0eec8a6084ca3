-- OpenResty: nginx with four workers (spec/fixtures/openresty/workers.conf.in:
-- the plain API, no init_worker line), 200 one-person jobs that each wait
-- between polls (1 s apart, done at the 6th status read; the simulator
-- answers each request 0.3 s late, so transfers are in flight), against the
-- simulator without limits. While they wait: /ping latency (one loopback
-- connection per ping) and the workers' CPU seconds (utime + stime from
-- /proc/<pid>/stat), the figure a driver that wakes too often shows.
--   lua5.4 bench/openresty_bench.lua [jobs] [repo] [init_worker code]
-- (repo/init_worker: to measure another tree, e.g. an older driver.)
package.path = "spec/?.lua;lua/?.lua;lua/?/init.lua;" .. package.path
local helper = require "helper"
local nginx = require "hosts.openresty_nginx"
local socket = require "socket"

local JOBS = tonumber(arg[1]) or 200
local REPO, INIT = arg[2], arg[3]

local function clk_tck()
  local p = io.popen("getconf CLK_TCK")
  local n = tonumber(p:read("*l"))
  p:close()
  return n or 100
end
local TCK = clk_tck()

local function cpu(pids)
  local total = 0
  for _, pid in ipairs(pids) do
    local f = io.open("/proc/" .. pid .. "/stat")
    if f then
      local stat = f:read("*a")
      f:close()
      -- fields after the command name (which is in parentheses)
      local rest = stat:match("%) (.*)$")
      local fields = {}
      for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
      total = total + (tonumber(fields[12]) + tonumber(fields[13])) / TCK   -- utime, stime
    end
  end
  return total
end

local function ping(url)
  local t0 = socket.gettime()
  local c = socket.tcp()
  c:settimeout(5)
  local ok = c:connect("127.0.0.1", url:match(":(%d+)$"))
  if not ok then return nil end
  c:send("GET /ping HTTP/1.0\r\nHost: x\r\n\r\n")
  local body = c:receive("*a")
  c:close()
  if not (body and body:match("pong")) then return nil end
  return (socket.gettime() - t0) * 1000
end

local sim = helper.spawn("bin/enrich-sim", { "--port", "0", "--no-limits" }, { max_seconds = 120 })
local ok, err = pcall(function()
  local http = require "socket.http"
  http.request(sim.url .. "/_sim/config", '{"tamtam":{"polls":5,"latency":0.3}}')
  local ngx_ = nginx.start { port = helper.free_port(), sim = sim.url, shared_dict = true,
                             repo = REPO, init_worker = INIT }
  local inner_ok, inner_err = pcall(function()
    local workers = nginx.workers(ngx_)
    -- warm every worker's loop first (one job each is enough to start it)
    os.execute("curl -s -Z -o /dev/null '" .. ngx_.url .. "/one?i=[1-8]&poll=0.05' >/dev/null 2>&1")
    local urls = ngx_.dir .. "/urls"
    local f = assert(io.open(urls, "w"))
    for i = 1, JOBS do f:write('url = "', ngx_.url, "/one?i=", i, '&keys=50&poll=1"\n') end
    f:close()
    local out, done = ngx_.dir .. "/out", ngx_.dir .. "/done"
    local c0, t0 = cpu(workers), socket.gettime()
    os.execute("(curl -s -Z --parallel-max 300 --max-time 60 -K " .. urls .. " > " .. out
               .. "; touch " .. done .. ") >/dev/null 2>&1 &")
    local lat, lost = {}, 0
    for _ = 1, 3000 do                       -- bounded: ~60 s at most
      if io.open(done) then break end
      local ms = ping(ngx_.url)
      if ms then lat[#lat + 1] = ms else lost = lost + 1 end
      socket.sleep(0.02)
    end
    local wall, used = socket.gettime() - t0, cpu(workers) - c0
    local okn = 0
    for line in io.lines(out) do if line:match("^succeeded ok") then okn = okn + 1 end end
    table.sort(lat)
    local n = #lat
    local function at(q) return n > 0 and lat[math.max(1, math.min(n, math.floor(n * q + 0.5)))] or 0 end
    print(string.format("  %d jobs (polls 1 s apart, done at the 6th; every answer 0.3 s late), %d succeeded,"
                        .. " over %.1f s of wall time", JOBS, okn, wall))
    print(string.format("  /ping: %d answered, %d lost, median %.2f ms, p99 %.2f ms, worst %.2f ms",
                        n, lost, at(0.5), at(0.99), n > 0 and lat[n] or 0))
    print(string.format("  the 4 workers' CPU: %.2f s in all (%.1f%% of one core over the run)",
                        used, 100 * used / wall))
  end)
  nginx.stop(ngx_)
  assert(inner_ok, inner_err)
end)
sim:stop()
assert(ok, err)
