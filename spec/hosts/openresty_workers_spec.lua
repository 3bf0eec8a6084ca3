-- The OpenResty host with the plain API and no init_worker line, under a
-- real nginx with four workers, against the simulator with its documented
-- rate limits on (tamtam: 10 requests/s per key, burst 10): jobs from any
-- request of any worker finish, no worker dies, the workers together stay
-- under each key's rate (one limit in a lua_shared_dict), and a plain
-- location keeps answering meanwhile.
local helper = require "helper"
local support = require "engine.support"
local nginx = require "hosts.openresty_nginx"
local socket = require "socket"

local JOBS, KEYS = 400, 10

local function get(url, timeout)
  local p = io.popen("curl -s --max-time " .. (timeout or 5) .. " '" .. url .. "'")
  local body = p:read("*a")
  p:close()
  return body
end

-- Sends n one-person jobs over `keys` keys, 300 at a time; returns the
-- answer lines and the pings that got "pong" of those sent meanwhile.
local function flood(ngx_, n, keys)
  local urls = ngx_.dir .. "/urls"
  local f = assert(io.open(urls, "w"))
  for i = 1, n do f:write('url = "', ngx_.url, "/one?i=", i, "&keys=", keys, '"\n') end
  f:close()
  local out, done = ngx_.dir .. "/out", ngx_.dir .. "/done"
  os.remove(done)
  os.execute("(curl -s -Z --parallel-max 300 --max-time 60 -K " .. urls .. " > " .. out
             .. "; touch " .. done .. ") >/dev/null 2>&1 &")
  local pings, pongs = 0, 0
  for _ = 1, 600 do                                  -- bounded: at most ~60 s of pinging
    if io.open(done) then break end
    pings = pings + 1
    if get(ngx_.url .. "/ping", 2) == "pong\n" then pongs = pongs + 1 end
    socket.sleep(0.1)
  end
  assert.truthy(io.open(done), "the jobs did not finish within 60 s")
  local lines, ok, workers = 0, 0, {}
  for line in io.lines(out) do
    lines = lines + 1
    local state, right, worker = line:match("^(%S+) (%S+) (%d+)")
    if state == "succeeded" and right == "ok" then ok = ok + 1 end
    if worker then workers[worker] = true end
  end
  local spread = 0
  for _ in pairs(workers) do spread = spread + 1 end
  return { lines = lines, ok = ok, spread = spread, pings = pings, pongs = pongs }
end

local function tamtam_429s(sim)
  local stats = support.stats(sim, "tamtam")
  return (stats.responses or {})["429"] or 0, stats
end

-- nginx runs LuaJIT whatever runs busted: one run (the LuaJIT one) is enough.
local describe_luajit = jit and describe or function(name) pending(name .. " (run under LuaJIT only)") end

describe_luajit("the OpenResty host, four workers, plain API, no init_worker line", function()
  local sim, ngx_

  setup(function()
    assert(nginx.available(), "nginx with the Lua module is needed (make deps installs it)")
    assert(io.open("build/luajit/enrich/core.so"), "enrich.core for LuaJIT is needed (make build)")
    sim = helper.spawn("bin/enrich-sim", { "--port", "0" })        -- documented limits on
    support.configure(sim, { tamtam = { polls = 0 } })              -- done at the first poll
    ngx_ = nginx.start { port = helper.free_port(), sim = sim.url, shared_dict = true }
  end)

  teardown(function()
    nginx.stop(ngx_)
    if sim then sim:stop() end
  end)

  it("finishes 400 one-person jobs spread over the workers, no 429, no dead worker, /ping answering", function()
    local r = flood(ngx_, JOBS, KEYS)
    assert.equal(JOBS, r.lines)
    assert.equal(JOBS, r.ok)
    assert.is_true(r.spread >= 2, "the jobs were not spread over the workers")
    assert.is_true(r.pings > 0)
    assert.equal(r.pings, r.pongs)
    local log = nginx.log(ngx_)
    assert.falsy(log:match("exited on signal"), "a worker died:\n" .. log:sub(1, 4000))
    assert.falsy(log:match("%[alert%]"), log:sub(1, 4000))
    local n429, stats = tamtam_429s(sim)
    assert.equal(0, n429)
    -- every person sent once; the client gathers one-person jobs into
    -- shared requests (coalescing), so there are fewer submits than jobs
    local sent = 0
    for _, times in pairs(stats.inputs) do sent = sent + times end
    assert.equal(JOBS, sent)
    assert.is_true(stats.submissions >= 1 and stats.submissions <= JOBS)
    assert.same({}, stats.duplicates)
  end)

  it("runs enrich.run and enrich.spawn from a request without blocking the worker", function()
    assert.equal("42 3\n", get(ngx_.url .. "/run"))
    assert.equal("spawned\n", get(ngx_.url .. "/spawn"))
  end)

  it("refuses to wait where nginx cannot yield, with a clear error in the log", function()
    assert.equal("body\n", get(ngx_.url .. "/badphase"))
    socket.sleep(0.2)
    assert.truthy(nginx.log(ngx_):match("badphase: false [^\n]*cannot wait in log"))
  end)

  it("without a shared dict, gives each worker its share of the rate, says so once; recycled drivers", function()
    -- ... and with a driver that hands over to a fresh timer whenever it can
    -- (recycle = 0), which must lose nothing.
    local other = nginx.start { port = helper.free_port(), sim = sim.url, shared_dict = false,
                                init_worker = 'assert(require("enrich.hosts.openresty").start { recycle = 0 })' }
    local before = tamtam_429s(sim)
    local ok, r = pcall(flood, other, 80, KEYS)
    local status = get(other.url .. "/status")
    local log = nginx.log(other)
    nginx.stop(other)
    assert(ok, r)
    assert.equal(80, r.ok)
    local attached, running, generation = status:match("^(%S+) (%S+) (%d+)")
    assert.equal("true", attached)
    assert.equal("true", running)
    assert.is_true(tonumber(generation) > 1, status)
    assert.equal(before, (tamtam_429s(sim)))
    assert.falsy(log:match("exited on signal"))
    local _, lines = log:gsub("each of the 4 workers sends at most 1/4", "")
    assert.is_true(lines >= 1 and lines <= 4, log)   -- once per worker that used a key
  end)

  it("lets a client made in init_by_lua work in the workers, and refuses to submit in the master", function()
    local body = get(ngx_.url .. "/init")
    assert.truthy(body:match("^false [^\n]*nothing can be submitted or run in init_by_lua"), body)
    assert.truthy(body:match("\nsucceeded\n$"), body)
  end)

  it("refuses enrich.tick from a request: the worker's driver owns the loop", function()
    local body = get(ngx_.url .. "/tick")
    assert.truthy(body:match("^false .*stepped by its driver only"), body)
  end)
end)
