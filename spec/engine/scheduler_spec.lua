-- The loop and the public task API: run, spawn, sleep, tick, job waits.
local enrich = require "enrich"
local support = require "engine.support"

describe("enrich.run", function()
  it("returns the function's results after its spawned tasks finish", function()
    local order = {}
    local a, b = enrich.run(function(x)
      enrich.spawn(function() enrich.sleep(0.05); order[#order + 1] = "child" end)
      order[#order + 1] = "parent"
      return x, "two"
    end, "one")
    assert.equal("one", a)
    assert.equal("two", b)
    assert.same({ "parent", "child" }, order)
  end)

  it("raises an error from the function or from any task it spawned", function()
    assert.has_error(function() enrich.run(function() error("boom") end) end)
    local ok, err = pcall(enrich.run, function()
      enrich.spawn(function() enrich.sleep(0.01); error("child failed") end)
      enrich.sleep(0.2)
    end)
    assert.is_false(ok)
    assert.matches("child failed", err)
  end)

  it("sleeps tasks concurrently, not one after the other", function()
    local t0 = require("enrich.core").now()
    enrich.run(function()
      for _ = 1, 50 do enrich.spawn(enrich.sleep, 0.1) end
    end)
    assert.is_true(require("enrich.core").now() - t0 < 2)
  end)

  it("refuses what is not a function, and a nested run", function()
    assert.has_error(function() enrich.run(42) end)
    assert.has_error(function() enrich.spawn("x") end)
    local ok, err = pcall(enrich.run, function() enrich.run(function() end) end)
    assert.is_false(ok)
    assert.matches("already inside a task", err)
  end)

  it("reports tasks parked forever instead of hanging", function()
    assert.has_error(function()
      enrich.run(function() coroutine.yield() end)
    end)
  end)
end)

describe("jobs and the loop", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  local function slow_client(polls)
    support.configure(sim, { tamtam = { polls = polls, rate_limit = false } })
    return support.client(sim, "tamtam", { rate = { per_second = 10000, burst = 10000 }, coalesce = false })
  end

  it("tick() never blocks and counts live jobs down to zero", function()
    local client = slow_client(3)
    local job = assert(client:submit({ { first_name = "Ada", last_name = "Byron" } }))
    assert.equal(1, enrich.tick())
    local frames = 0
    while enrich.tick() > 0 and frames < 2000 do
      frames = frames + 1
      require("socket").sleep(0.002)
    end
    assert.equal("succeeded", job.state)
    assert.is_true(frames > 1)
  end)

  it("tick(budget) spreads the work over more ticks and still finishes every job", function()
    local client = slow_client(2)
    local function run(budget)
      local jobs = {}
      for i = 1, 100 do jobs[i] = assert(client:submit({ { first_name = "B" .. i, last_name = "Budget" } })) end
      local ticks = 0
      while ticks < 20000 do
        ticks = ticks + 1
        if enrich.tick(budget) == 0 then break end
        require("socket").sleep(0.0005)
      end
      for i = 1, 100 do assert.equal("succeeded", jobs[i].state) end
      return ticks
    end
    local free = run(nil)
    local tight = run(0.000001)              -- one step or completion per tick, about
    assert.is_true(tight > free, ("budgeted %d ticks vs %d"):format(tight, free))
    assert.has_error(function() enrich.tick(0) end)
    assert.has_error(function() enrich.tick("soon") end)
  end)

  it("submits queued behind a full host wait as records, not coroutines, and all finish", function()
    local sched = enrich.scheduler()
    local client = slow_client(1)
    local jobs = {}
    for i = 1, 300 do jobs[i] = assert(client:submit({ { first_name = "H" .. i, last_name = "Held" } })) end
    enrich.tick()
    local coroutines = 0
    for _ in pairs(sched.tasks) do coroutines = coroutines + 1 end
    assert.is_true(coroutines <= sched.per_host, ("%d coroutines for %d slots"):format(coroutines, sched.per_host))
    assert.equal(300, sched:transfers())
    local ticks = 0
    while ticks < 20000 and enrich.tick() > 0 do ticks = ticks + 1; require("socket").sleep(0.0005) end
    for i = 1, 300 do assert.equal("succeeded", jobs[i].state) end
  end)

  it("held submits still all end when the ones ahead end without sending (out of credits)", function()
    support.configure(sim, { tamtam = { credits = 0, rate_limit = false } })
    local client = support.client(sim, "tamtam",
      { api_key = "broke-key", rate = { per_second = 10000, burst = 10000 } })
    local jobs = {}
    for i = 1, 200 do jobs[i] = assert(client:submit({ { first_name = "C" .. i, last_name = "Broke" } })) end
    local ticks = 0
    while ticks < 20000 and enrich.tick() > 0 do ticks = ticks + 1; require("socket").sleep(0.0005) end
    for i = 1, 200 do
      assert.equal("failed", jobs[i].state)
      assert.equal("credits", jobs[i].error.code)
    end
    assert.equal(0, enrich.scheduler():transfers())
    client:resume_submitting()
  end)

  it("a budgeted tick hands the core at most BUDGET_TRANSFERS new transfers, oldest first (all, on an I/O thread)",
     function()
    local scheduler = require "enrich.scheduler"
    local sched = enrich.scheduler()
    -- Watch the submits the loop makes: how many per tick, and in which order.
    local sent, order = 0, {}
    local unwatch = support.watch_engine(sched, {
      submit = function(real, req)
        sent = sent + 1
        order[#order + 1] = req.body and req.body:match('"first_name":"(P%d+)"') or "poll"
        return real:submit(req)
      end,
    })
    local ok, err = pcall(function()
      local client = slow_client(1)
      local jobs = {}
      for i = 1, 10 do jobs[i] = assert(client:submit({ { first_name = "P" .. i, last_name = "Paced" } })) end
      local ticks, most = 0, 0
      repeat
        sent = 0
        local live = enrich.tick(1)          -- a generous time budget: only the share limits
        most = math.max(most, sent)
        ticks = ticks + 1
        require("socket").sleep(0.001)
      until live == 0 or ticks > 5000
      for i = 1, 10 do assert.equal("succeeded", jobs[i].state) end
      -- With an I/O thread a send costs the ticking thread nothing: no pacing.
      assert.equal(sched.threaded and 10 or scheduler.BUDGET_TRANSFERS, most)
      -- Deferred submits go first each turn: nothing overtakes them.
      local first = { (table.unpack or unpack)(order, 1, 10) }
      assert.same({ "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10" }, first)
      -- Unbudgeted, every submit goes out in the first turn.
      for i = 1, 10 do jobs[i] = assert(client:submit({ { first_name = "Q" .. i, last_name = "Free" } })) end
      sent = 0
      enrich.tick()
      assert.equal(10, sent)
      while ticks < 10000 and enrich.tick() > 0 do ticks = ticks + 1; require("socket").sleep(0.001) end
      for i = 1, 10 do assert.equal("succeeded", jobs[i].state) end
    end)
    unwatch()
    assert(ok, err)
  end)

  it("wait(timeout) gives a timeout error while the job goes on", function()
    local client = slow_client(1000)
    local job = assert(client:submit({ { first_name = "Ada", last_name = "Byron" } }))
    local none, err = job:wait(0.1)
    assert.is_nil(none)
    assert.equal("timeout", err.code)
    assert.is_false(job:done())
    job:cancel()
    assert.equal("cancelled", job.state)
  end)

  it("waits inside tasks by yielding, with the same timeout semantics", function()
    local client = slow_client(2)
    local states = enrich.run(function()
      local quick = assert(client:submit({ { first_name = "A", last_name = "B" } }))
      local hang = assert(client:submit({ { first_name = "C", last_name = "Jobhang" } }))
      local _, err = hang:wait(0.1)
      assert(quick:wait())
      hang:cancel()
      return { quick.state, err.code, hang.state }
    end)
    assert.same({ "succeeded", "timeout", "cancelled" }, states)
  end)

  it("refresh() polls now instead of waiting for the cadence", function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local client = support.client(sim, "tamtam", { poll = { interval = 30, deadline = 60 }, coalesce = false })
    local job = assert(client:submit({ { first_name = "Ada", last_name = "Byron" } }))
    enrich.sleep(0.05)                   -- submitted, next poll 30 s away
    assert.equal("running", job.state)
    job:refresh()                        -- the first poll: still processing
    job:refresh()                        -- the second: done
    assert.equal("succeeded", job.state)
  end)

  it("never has more transfers in flight to one host than its cap", function()
    local client = slow_client(2)
    local sched = enrich.scheduler()
    local most = 0
    local jobs = {}
    for i = 1, 300 do jobs[i] = assert(client:submit({ { first_name = "P" .. i, last_name = "Cap" } })) end
    for _ = 1, 5000 do                       -- bounded
      local live = enrich.tick()
      most = math.max(most, sched.engine:pending())
      if live == 0 then break end
      require("socket").sleep(0.001)
    end
    for i = 1, 300 do assert.equal("succeeded", jobs[i].state) end
    assert.is_true(most <= sched.per_host, "in flight: " .. most)
    assert.is_true(most > 1)
  end)

  it("runs a thousand jobs concurrently in one thread", function()
    local client = slow_client(2)
    local jobs = {}
    enrich.run(function()
      for i = 1, 1000 do
        jobs[i] = assert(client:submit({ { first_name = "P" .. i, last_name = "Person" } }))
      end
      for i = 1, 1000 do assert(jobs[i]:wait(30)) end
    end)
    for i = 1, 1000 do
      assert.equal("succeeded", jobs[i].state)
      assert.matches("^p" .. i .. "%.", jobs[i].results[1].email)
    end
    assert.same({}, support.stats(sim, "tamtam").duplicates)
  end)
end)
