-- The faults of issue 10, each as the example of its kind: slots that leak,
-- wakes that land on a later park, turns run inside turns, the provider
-- contract, budgets that stall, errors lost or spread, the credits stop.
local support = require "engine.support"
local enrich = require "enrich"
local socket = require "socket"

-- A provider that never touches the network unless its functions do:
-- submit answers an id at once, check says `done` (items found) or not.
local function pure(fields)
  local spec = {
    name = "pure", base_url = "http://127.0.0.1:9",
    prepare = function(input) return input end,
    submit = function() return "pure-1" end,
    check = function(_, part)
      for k = 1, part.count do part.items[k] = { status = "found" } end
      return true
    end,
  }
  for k, v in pairs(fields or {}) do spec[k] = v end
  return spec
end

local keys = 0
local function pure_client(fields, opts)
  keys = keys + 1
  local o = { api_key = "pure-key-" .. keys, poll = { interval = 0.02, factor = 1, jitter = 0, deadline = 5 },
              retry = { attempts = 3, base = 0.01, cap = 0.02 } }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(enrich.client(pure(fields), o))
end

local function busy(seconds)                 -- holds the loop: no turn runs meanwhile
  local t = os.clock() + seconds
  while os.clock() < t do end
end

describe("the loop", function()
  it("drops a wake meant for an earlier park (a wait whose job ends as its timer fires)", function()
    for trial = 1, 3 do
      local c = pure_client()
      local slept, other_state = enrich.run(function()
        local job = assert(c:submit({ { n = trial } }))
        local other = assert(pure_client({ check = function(ctx, part)
          ctx:sleep(0.2)
          part.items[1] = { status = "found" }
          return true
        end }):submit({ { n = 0 } }))
        -- Hold the loop past both the wait's timer and the job's poll, so
        -- that both come due in one turn.
        enrich.spawn(function() enrich.sleep(0.005); busy(0.1) end)
        job:wait(0.015)
        local t0 = socket.gettime()
        enrich.sleep(0.3)                    -- a stale wake would end this at once
        local took = socket.gettime() - t0
        assert(other:wait())                 -- no timeout: returns only once `other` ended
        return took, other.state
      end)
      assert.is_true(slept >= 0.25, ("trial %d: sleep(0.3) returned after %.3f s"):format(trial, slept))
      assert.equal("succeeded", other_state)
    end
  end)

  it("refuses to run a turn inside a turn, with a clear error, and goes on working", function()
    local c = pure_client({ check = function() return false end })
    local job
    local ok, err = pcall(enrich.run, function()
      job = assert(c:submit({ { n = 1 } }))
      local foreign = coroutine.wrap(function() return job:wait(1) end)
      foreign()
    end)
    assert.is_false(ok)
    assert.matches("already running a turn", err)
    assert.matches("enrich.spawn", err)
    job:cancel()
    assert.equal(7, enrich.run(function() enrich.sleep(0.01) return 7 end))
  end)

  it("makes progress in a budgeted tick however small the budget", function()
    -- Against a real server: the core spec's loopback one.
    local c
    local server = require("helper").spawn("spec/support/core_server.lua", {}, { max_seconds = 60 })
    local ok, err = pcall(function()
      c = pure_client({ submit = function(ctx)
        local res, e = ctx:call { path = "/json" }
        if not res then return nil, e end
        return ("id-%d"):format(res.json.n)
      end }, { base_url = server.url })
      local jobs = {}
      for i = 1, 3 do jobs[i] = assert(c:submit({ { n = i } })) end
      local ticks = 0
      while ticks < 20000 and enrich.tick(1e-9) > 0 do
        ticks = ticks + 1
        socket.sleep(0.0005)
      end
      for i = 1, 3 do
        assert.equal("succeeded", jobs[i].state)
        assert.equal("id-42", jobs[i].id)
      end
    end)
    server:stop()
    assert(ok, err)
  end)

  it("enrich.fd() and enrich.timeout() tell a foreign loop what to wait for", function()
    local fd = enrich.fd()
    assert.is_true(fd == nil or type(fd) == "number")
    local c = pure_client({ check = function() return false end },
      { poll = { interval = 30, factor = 1, jitter = 0, deadline = 60 } })
    local job = assert(c:submit({ { n = 1 } }))
    assert.equal(0, enrich.timeout())        -- the submit step is ready to run
    for _ = 1, 10 do enrich.tick() end
    local t = enrich.timeout()
    assert.is_number(t)
    assert.is_true(t > 1 and t <= 30)        -- the next poll, 30 s away
    job:cancel()
  end)
end)

describe("host slots", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  it("are given back when the core's submit raises, so later jobs to that host still run", function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local sched = enrich.scheduler()
    local refused = 0
    local unwatch = support.watch_engine(sched, { submit = function(real, req)
      if refused < 40 then
        refused = refused + 1
        error("the core refused this request")
      end
      return real:submit(req)
    end })
    local ok, err = pcall(function()
      local c = support.client(sim, "tamtam", { rate = { per_second = 10000, burst = 10000 }, coalesce = false })
      local bad = {}
      for i = 1, 40 do bad[i] = assert(c:submit({ { first_name = "R" .. i, last_name = "Refused" } })) end
      for _ = 1, 2000 do
        local left = 0
        for i = 1, 40 do if not bad[i]:done() then left = left + 1 end end
        if left == 0 then break end
        enrich.tick()
        socket.sleep(0.001)
      end
      for i = 1, 40 do
        assert.equal("failed", bad[i].state)
        assert.equal("invalid", bad[i].error.code)
        assert.matches("the core refused this request", bad[i].error.message)
      end
      local good = assert(support.client(sim, "tamtam", { api_key = "other-key" })
        :submit({ { first_name = "Ada", last_name = "Byron" } }))
      assert(good:wait(10), "a job to the same host never ran")
      assert.equal("succeeded", good.state)
    end)
    unwatch()
    assert(ok, err)
  end)
end)

describe("the provider contract", function()
  local function ended(c, inputs)
    local job = assert(c:submit(inputs or { { n = 1 } }))
    assert(job:wait(10), "job did not end")
    return job
  end

  it("makes a submit that returns neither id nor error, or an id that is not a string, `protocol`", function()
    for _, submit in ipairs {
      function() return nil end,
      function() return 42 end,
      function() return {} end,
      function() return "" end,
    } do
      local job = ended(pure_client({ submit = submit }))
      assert.equal("failed", job.state)
      assert.equal("protocol", job.error.code)
      assert.equal("failed", job.results[1].status)
    end
  end)

  it("wraps errors that are not tables, and errors a provider raises", function()
    local job = ended(pure_client({ submit = function() return nil, "upstream said no" end }))
    assert.equal("failed", job.state)
    assert.equal("table", type(job.error))
    assert.equal("protocol", job.error.code)
    assert.matches("upstream said no", job.error.message)
    assert.matches("upstream said no", tostring(job.error))

    job = ended(pure_client({ check = function() return nil, 17 end }))
    assert.equal("failed", job.state)
    assert.equal("protocol", job.error.code)

    job = ended(pure_client({ check = function() error("mapping bug") end }))
    assert.equal("failed", job.state)
    assert.equal("protocol", job.error.code)
    assert.matches("mapping bug", job.error.message)
  end)

  it("fails the items a terminal check left unset, never a silent `pending`", function()
    local job = ended(pure_client({ check = function(_, part)
      part.items[2] = { status = "found", email = "b@example.com" }
      return true
    end }), { { n = 1 }, { n = 2 }, { n = 3 } })
    assert.equal("partial", job.state)
    assert.same({ total = 3, found = 1, not_found = 0, failed = 2, pending = 0 }, job.counts)
    for _, i in ipairs { 1, 3 } do
      assert.equal("failed", job.results[i].status)
      assert.equal("protocol", job.results[i].error.code)
    end
  end)

  it("lets ctx:call send headers of its own and set a timeout", function()
    local server = require("helper").spawn("spec/support/core_server.lua", {}, { max_seconds = 60 })
    local ok, err = pcall(function()
      local seen = {}
      local c = pure_client({ submit = function(ctx)
        local res, e = ctx:call { method = "POST", path = "/echo", json = { a = 1 },
                                  headers = { ["Idempotency-Key"] = "key-123" }, timeout = 5 }
        if not res then return nil, e end
        seen = res.json.headers
        return "echo-1"
      end }, { base_url = server.url })
      local job = ended(c)
      assert.equal("succeeded", job.state)
      assert.equal("key-123", seen["idempotency-key"])
      assert.is_string(seen["authorization"])         -- the provider's own headers still go
      assert.has_error(function()
        local ctx = require("enrich.request").new(c, job)
        ctx:call { path = "/x", timeout = 0 }
      end)
    end)
    server:stop()
    assert(ok, err)
  end)

  describe("against the simulator", function()
    local sim
    setup(function() sim = support.start() end)
    teardown(function() if sim then sim:stop() end end)
    before_each(function() support.reset(sim) end)

    it("resends a submit after a 5xx only when the provider declares idempotent_submit", function()
      support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
      local tamtam = require "enrich.providers.tamtam"
      local copy = {}
      for k, v in pairs(tamtam) do copy[k] = v end
      copy.idempotent_submit = true
      support.fault(sim, { type = "500", provider = "tamtam", method = "POST", count = 1 })
      local c = assert(enrich.client(copy, { api_key = "idem-key", base_url = sim.url .. "/tamtam",
        poll = support.FAST.poll, retry = support.FAST.retry }))
      local job = ended(c, { { first_name = "Ada", last_name = "Byron" } })
      assert.equal("succeeded", job.state)
      assert.equal(2, support.stats(sim, "tamtam").requests["POST /v2/people/enrich"])

      support.reset(sim)
      support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
      support.fault(sim, { type = "500", provider = "tamtam", method = "POST", count = 1 })
      job = ended(support.client(sim, "tamtam"), { { first_name = "Ada", last_name = "Byron" } })
      assert.equal("failed", job.state)
      assert.equal("server", job.error.code)
      assert.equal(1, support.stats(sim, "tamtam").requests["POST /v2/people/enrich"])
    end)
  end)
end)

describe("errors", function()
  it("reports an error raised in a provider's cancel", function()
    local c = pure_client({
      check = function() return false end,
      cancel = function() error("cancel exploded") end,
    })
    local job = assert(c:submit({ { n = 1 } }))
    for _ = 1, 100 do
      if job.state == "running" then break end
      enrich.sleep(0.005)
    end
    job:cancel()
    assert.equal("cancelled", job.state)
    assert.equal("cancelled", job.error.code)
    assert.is_table(job.cancel_error)
    assert.matches("cancel exploded", job.cancel_error.message)
    assert.matches("cancel exploded", job.error.message)
  end)

  it("keeps a failing run's error to that run: tasks outside it go on, its own are abandoned", function()
    local outside_done, sibling_ran = false, false
    enrich.spawn(function() enrich.sleep(0.1); outside_done = true end)
    local ok, err = pcall(enrich.run, function()
      enrich.spawn(function() enrich.sleep(0.2); sibling_ran = true end)
      enrich.sleep(0.01)
      error("my own failure")
    end)
    assert.is_false(ok)
    assert.matches("my own failure", err)
    for _ = 1, 1000 do
      if outside_done then break end
      enrich.tick()
      socket.sleep(0.001)
    end
    assert.is_true(outside_done)
    enrich.sleep(0.3)
    assert.is_false(sibling_ran)             -- the failed run's other tasks never run again
    assert.equal(0, enrich.tick())
  end)

  it("never lets a check that was under way write to a job a cancel ended", function()
    local under_way = false
    local c = pure_client({ check = function(ctx, part)
      under_way = true
      ctx:sleep(0.05)
      part.raw = { late = true }
      part.items[1] = { status = "found" }
      return true
    end })
    local job = assert(c:submit({ { n = 1 } }))
    for _ = 1, 200 do
      if under_way then break end
      enrich.sleep(0.005)
    end
    assert.is_true(under_way)
    job:cancel()
    assert.equal("cancelled", job.state)
    enrich.sleep(0.1)                        -- the check comes back meanwhile
    assert.equal("cancelled", job.state)
    assert.is_nil(job.raw)
    assert.equal("pending", job.results[1].status)
  end)
end)

describe("the credits breaker", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  it("fails submits fast for the cooldown, then lets one through, whose success closes it", function()
    support.configure(sim, { tamtam = { credits = 0, rate_limit = false, polls = 1 } })
    local c = support.client(sim, "tamtam", { api_key = "breaker-key", credits_cooldown = 0.3 })
    local job = support.run_job(c, { { first_name = "Ada", last_name = "Byron" } })
    assert.equal("failed", job.state)
    assert.equal("credits", job.error.code)
    local posts = support.stats(sim, "tamtam").requests["POST /v2/people/enrich"]
    local none, err = c:submit({ { first_name = "Alan", last_name = "Turing" } })
    assert.is_nil(none)
    assert.equal("credits", err.code)
    assert.equal(posts, support.stats(sim, "tamtam").requests["POST /v2/people/enrich"])
    support.configure(sim, { tamtam = { credits = 1000 } })       -- a top-up
    enrich.sleep(0.35)
    job = support.run_job(c, { { first_name = "Grace", last_name = "Hopper" } })
    assert.equal("succeeded", job.state)
    job = support.run_job(c, { { first_name = "Edsger", last_name = "Dijkstra" } })
    assert.equal("succeeded", job.state)
  end)

  it("closes at once with resume_submitting()", function()
    support.configure(sim, { tamtam = { credits = 0, rate_limit = false, polls = 1 } })
    local c = support.client(sim, "tamtam", { api_key = "breaker-key-2" })
    assert.equal("credits", support.run_job(c, { { first_name = "Ada", last_name = "Byron" } }).error.code)
    assert.equal("credits", select(2, c:submit({ { first_name = "A", last_name = "B" } })).code)
    support.configure(sim, { tamtam = { credits = 1000 } })
    c:resume_submitting()
    assert.equal("succeeded", support.run_job(c, { { first_name = "A", last_name = "B" } }).state)
  end)
end)
