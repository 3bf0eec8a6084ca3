-- Scale-out: worker processes share one run through a real redis-server,
-- against the simulator with tamtam's rate limit on (10 requests/s per key).
local helper = require "helper"
local support = require "engine.support"
local redis_server = require "support.redis"

local q = helper.shell_quote

-- Starts a worker process; returns a handle whose :wait() gives its output.
local function worker(env, args)
  local cmd = (env or "") .. " " .. helper.server_lua .. " spec/support/scaleout_worker.lua"
  for _, a in ipairs(args) do cmd = cmd .. " " .. q(a) end
  return helper.background(cmd)
end

local function read_rows(path)
  local rows = {}
  for line in io.lines(path) do
    local row, status, email, echo = line:match("^(%d+)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    rows[tonumber(row)] = { status = status, email = email, echo = echo }
  end
  return rows
end

describe("scale-out on Redis", function()
  local sim, server
  setup(function()
    sim = support.start()
    server = redis_server.start()
  end)
  teardown(function()
    if sim then sim:stop() end
    if server then server:close() end
  end)

  it("three workers, one killed mid-run: every row answered once, no input sent twice, no 429", function()
    support.reset(sim)
    local N = 300
    local outs, ws = {}, {}
    for i = 1, 3 do
      outs[i] = os.tmpname()
      -- Worker 2 dies (SIGKILL) right after the provider id of its 2nd job is durable.
      local env = i == 2 and "ENRICH_CRASH_AT=id_committed:2" or ""
      ws[i] = worker(env, { server.url, "spec300", sim.url, tostring(N), outs[i], "1", "20" })
    end
    local texts = {}
    for i = 1, 3 do texts[i] = ws[i]:wait(180) end
    assert.matches("exit 137", texts[2])                  -- killed
    if os.getenv("SCALEOUT_VERBOSE") then for i = 1, 3 do io.stderr:write(texts[i]) end end
    local taken_over = 0
    for _, i in ipairs({ 1, 3 }) do
      assert.matches("exit 0", texts[i], 1, true)
      taken_over = taken_over + tonumber(texts[i]:match("taken_over (%d+)"))
      -- Every live worker writes the whole run: all 300 rows, each its own answer.
      local rows = read_rows(outs[i])
      for row = 1, N do
        assert.equals("found", rows[row].status, "row " .. row)
        assert.equals("ada" .. row .. ".byron@example.com", rows[row].email)
        assert.equals(tostring(row), rows[row].echo)
      end
    end
    assert.is_true(taken_over >= 1, "no chunk was taken over from the killed worker")
    local stats = support.stats(sim, "tamtam")
    -- No input submitted twice, every one once.
    local inputs = 0
    for _, times in pairs(stats.inputs) do
      assert.equals(1, times)
      inputs = inputs + 1
    end
    assert.equals(N, inputs)
    assert.same({}, stats.duplicates)
    assert.is_nil(stats.responses["429"])                  -- the shared rate held
    -- Every chunk answered exactly once (the completion count).
    assert.equals("15", server:cli("HGET", "{enrich:run:spec300}:run", "done"))
    assert.equals(tostring(N), server:cli("HLEN", "{enrich:run:spec300}:rows"))
    for i = 1, 3 do os.remove(outs[i]) end
  end)

  it("two workers through a Redis restart mid-run: every row answered once, nothing sent twice", function()
    support.reset(sim)
    local N = 160
    local outs, ws = {}, {}
    for i = 1, 2 do
      outs[i] = os.tmpname()
      ws[i] = worker("", { server.url, "restart160", sim.url, tostring(N), outs[i], "2", "20" })
    end
    require("socket").sleep(1.0)
    server:stop()                                           -- SHUTDOWN NOSAVE: only the fsynced log survives
    require("socket").sleep(0.5)
    server:start()
    for i = 1, 2 do
      local text = ws[i]:wait(180)
      assert.matches("exit 0", text, 1, true)
      local rows = read_rows(outs[i])
      for row = 1, N do assert.equals("ada" .. row .. ".byron@example.com", rows[row].email) end
      os.remove(outs[i])
    end
    local stats = support.stats(sim, "tamtam")
    for key, times in pairs(stats.inputs) do assert.equals(1, times, key) end
    assert.is_nil(stats.responses["429"])
    assert.equals(tostring(math.floor(N / 20)), server:cli("HGET", "{enrich:run:restart160}:run", "done"))
  end)

  it("says clearly when Redis cannot be reached or the URL is wrong", function()
    local port = helper.free_port()
    local unreachable = "redis://127.0.0.1:" .. port .. "/0?retry_for=0.3"
    local text = worker("", { unreachable, "x", sim.url, "10", "/dev/null" }):wait(30)
    assert.matches("cannot reach Redis at 127.0.0.1:" .. port, text, 1, true)
    assert.is_nil(text:find("exit 0", 1, true))
    text = worker("", { "redis://127.0.0.1:notaport/0", "x", sim.url, "10", "/dev/null" }):wait(30)
    assert.matches("redis URL: bad host", text, 1, true)
    text = worker("", { "http://127.0.0.1/0", "x", sim.url, "10", "/dev/null" }):wait(30)
    assert.matches("not a redis:// URL", text, 1, true)
  end)

  it("refuses to join a run started with other input", function()
    local text = worker("", { server.url, "spec300", sim.url, "299", "/dev/null" }):wait(30)
    assert.matches("the run was started with other input", text, 1, true)
  end)
end)
