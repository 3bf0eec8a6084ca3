-- Host slots are taken after the key's rate token: a key whose bucket is
-- empty holds no slot while it waits, so it cannot stall other keys on the
-- same host (issue 10, fault 4: head-of-line blocking across keys). Two
-- slots per host make the fault visible.
local support = require "engine.support"
local enrich = require "enrich"
assert(enrich.configure { per_host = 2 })

describe("host slots shared by two keys", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  it("let a key with tokens go past a key that waits for its rate", function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local slow = support.client(sim, "tamtam",
      { api_key = "slow-key", rate = { per_second = 2, burst = 1 }, coalesce = false })
    local quick = support.client(sim, "tamtam", { api_key = "quick-key", rate = { per_second = 100, burst = 10 } })
    local slow_jobs = {}
    for i = 1, 6 do slow_jobs[i] = assert(slow:submit({ { first_name = "S" .. i, last_name = "Slow" } })) end
    local job = assert(quick:submit({ { first_name = "Q", last_name = "Quick" } }))
    assert(job:wait(20))
    assert.equal("succeeded", job.state)
    -- The slow key sends one request per half second: had the quick job
    -- waited behind it, all six slow submits would have gone first.
    local submitted = 0
    for i = 1, 6 do if slow_jobs[i].id then submitted = submitted + 1 end end
    assert.is_true(submitted <= 3, submitted .. " slow submits went before the quick job ended")
    for i = 1, 6 do slow_jobs[i]:cancel() end
  end)
end)
