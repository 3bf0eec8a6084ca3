-- The loop's engine (libcurl, an epoll set) is made at its first use, never
-- when a client is made: a client made before fork() (OpenResty's
-- init_by_lua, a pre-forking server) leaves no engine in the parent. A loop
-- used in another process than the one that made its engine makes a fresh
-- one (issue 10, fault 9). enrich.close() ends the loop.
local support = require "engine.support"
local core = require "enrich.core"
local made = 0
local real_new = core.new
core.new = function(...) made = made + 1; return real_new(...) end
local enrich = require "enrich"
local scheduler = require "enrich.scheduler"

describe("the loop's engine", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function()
    core.new = real_new
    if sim then sim:stop() end
  end)
  before_each(function() support.reset(sim) end)

  it("is not made by enrich.client, only at the first turn", function()
    local c = support.client(sim, "tamtam")
    assert.equal(0, made)
    local job = assert(c:submit({ { first_name = "Ada", last_name = "Byron" } }))
    assert.equal(0, made)
    assert(job:wait(10))
    assert.equal("succeeded", job.state)
    assert.equal(1, made)
  end)

  it("is made afresh in a process other than the one that made it", function()
    local sched = enrich.scheduler()
    local first = sched.engine
    local pid = scheduler.getpid and scheduler.getpid() or 1
    local real_getpid = scheduler.getpid
    scheduler.getpid = function() return pid + 1 end       -- as if fork() had happened
    local ok, err = pcall(function()
      local c = support.client(sim, "tamtam")
      local job = assert(c:submit({ { first_name = "Grace", last_name = "Hopper" } }))
      assert(job:wait(10))
      assert.equal("succeeded", job.state)
      assert.are_not.equal(first, sched.engine)
    end)
    scheduler.getpid = real_getpid
    assert(ok, err)
  end)

  it("ends with enrich.close(); the next use makes a new loop, free of the old one's steps", function()
    support.configure(sim, { tamtam = { polls = 1000, rate_limit = false } })
    local c = support.client(sim, "tamtam", { rate = { per_second = 10000, burst = 10000 } })
    for i = 1, 40 do assert(c:submit({ { first_name = "C" .. i, last_name = "Closed" } })) end
    enrich.tick()                          -- the key's lane is full, and steps wait in it
    support.reset(sim)
    local before = enrich.scheduler()
    enrich.close()
    local after = enrich.scheduler()
    assert.are_not.equal(before, after)
    local job = assert(support.client(sim, "tamtam"):submit({ { first_name = "Alan", last_name = "Turing" } }))
    assert(job:wait(10))
    assert.equal("succeeded", job.state)
  end)
end)
