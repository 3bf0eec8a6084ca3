-- The loop with libcurl on the engine's I/O thread: what a ticking host
-- relies on beyond the engine specs (which scripts/run-tests also runs in
-- this mode).
local support = require "engine.support"
local enrich = require "enrich"
assert(enrich.configure { io_thread = true })

describe("a loop on an I/O thread", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  it("hands a turn's new transfers over once, at the end of the turn, unpaced", function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local sched = enrich.scheduler()
    assert.is_true(sched.threaded)
    local events = {}                      -- "s" per submit, "f" per flush, this turn
    local unwatch = support.watch_engine(sched, {
      submit = function(real, req) events[#events + 1] = "s"; return real:submit(req) end,
      flush = function(real) events[#events + 1] = "f"; return real:flush() end,
    })
    local ok, err = pcall(function()
      local client = support.client(sim, "tamtam", { rate = { per_second = 10000, burst = 10000 }, coalesce = false })
      local jobs = {}
      for i = 1, 10 do jobs[i] = assert(client:submit({ { first_name = "T" .. i, last_name = "Thread" } })) end
      events = {}
      enrich.tick(1)                       -- a budget, yet no pacing: all ten go in this turn
      assert.equal("ssssssssssf", table.concat(events))
      local ticks = 0
      repeat
        events = {}
        local live = enrich.tick(1)
        local seq = table.concat(events)
        -- Whatever a turn submits is flushed after, once.
        assert.is_truthy(seq == "" or seq:match("^s*f$"), seq)
        ticks = ticks + 1
        require("socket").sleep(0.002)
      until live == 0 or ticks > 2500
      for i = 1, 10 do assert.equal("succeeded", jobs[i].state) end
    end)
    unwatch()
    assert(ok, err)
  end)
end)
