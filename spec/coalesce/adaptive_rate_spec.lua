-- The rate bucket's adaptive side: hints from a provider's headers, and a
-- 429's shrink and cubic regrowth. Pure: the clock is passed in.
local ratelimit = require "enrich.ratelimit"

-- Requests granted between t0 and t1 when a caller takes as fast as allowed.
local function drain(b, t0, t1, step)
  local n, t = 0, t0
  while t < t1 do
    if b:take(t) == 0 then n = n + 1 else t = t + (step or 0.001) end
  end
  return n
end

describe("ratelimit (adaptive)", function()
  it("keeps a margin under a documented rate, none under a caller's rate or a provider's hint", function()
    local doc = ratelimit.new(10, 10, { documented = true })
    assert.near(10 * ratelimit.MARGIN, doc:nominal(), 1e-12)
    assert.equal(math.floor(10 * ratelimit.MARGIN), doc.burst)
    doc:hint(4, nil, 0)                          -- the provider's own count: as given
    assert.equal(4, doc:nominal())
    assert.near(10 * ratelimit.MARGIN, doc.rate, 1e-12)
    assert.equal(10, ratelimit.new(10, 10, {}):nominal())
  end)

  it("reads X-RateLimit-Remaining-* / Reset-* tiers; the slowest tier wins", function()
    local wall = 1767261630                     -- 30 s into a minute window
    local rate, allowance = ratelimit.headers_hint({
      ["x-ratelimit-limit-minute"] = "600", ["x-ratelimit-remaining-minute"] = "301",
      ["x-ratelimit-reset-minute"] = tostring(wall + 30),
      ["x-ratelimit-limit-hour"] = "30000", ["x-ratelimit-remaining-hour"] = "29001",
      ["x-ratelimit-reset-hour"] = tostring(wall + 1800),
    }, wall)
    -- minute: 300 spare over 31 s; hour: 29000 over 1801 s
    assert.near(300 / 31, rate, 1e-9)
    assert.equal(300, allowance)
    rate = ratelimit.headers_hint({
      ["x-ratelimit-remaining-minute"] = "59", ["x-ratelimit-reset-minute"] = tostring(wall + 30),
      ["x-ratelimit-remaining-hour"] = "101", ["x-ratelimit-reset-hour"] = tostring(wall + 1799),
    }, wall)
    assert.near(100 / 1800, rate, 1e-9)
  end)

  it("reads a plain remaining/reset pair in seconds, and nothing from other headers", function()
    local rate, allowance = ratelimit.headers_hint({ ["x-ratelimit-remaining"] = "11", ["x-ratelimit-reset"] = "9" }, 0)
    assert.near(1, rate, 1e-9)
    assert.equal(10, allowance)
    assert.is_nil(ratelimit.headers_hint({ ["content-type"] = "application/json" }, 0))
    assert.is_nil(ratelimit.headers_hint({ ["x-ratelimit-remaining-minute"] = "5" }, 0))  -- no reset
  end)

  it("with nothing left, waits for the reset", function()
    local rate, allowance = ratelimit.headers_hint(
      { ["x-ratelimit-remaining-minute"] = "0", ["x-ratelimit-reset-minute"] = "1000000019" }, 1000000000)
    assert.equal(0, allowance)
    assert.near(1 / 20, rate, 1e-9)
    local b = ratelimit.new(10, 10)
    b:hint(rate, allowance, 5)
    assert.near(20, b:take(5), 1e-6)             -- the first token comes at the reset
  end)

  it("a hint raises the configured rate and caps what is saved up", function()
    local b = ratelimit.new(0.5, 10)
    assert.equal(10, drain(b, 0, 0.5))            -- the configured burst
    b:hint(10, 3, 0.5)
    local n = drain(b, 0.5, 10.5)
    assert.is_true(n >= 99 and n <= 101, n)       -- 10 per second now
    b:hint(5, 0, 10.5)                            -- fewer left: spend nothing saved
    assert.is_true(b:take(10.5) > 0)
  end)

  it("a 429 shrinks the rate to BETA of it, and it grows back along a cubic", function()
    local b = ratelimit.new(10, 1)
    assert.equal(10, b:current_rate(0))
    b:throttled(100)
    assert.near(10 * ratelimit.BETA, b:current_rate(100), 1e-9)
    assert.is_true(b:take(100) > 0)               -- nothing saved is spent right after
    local k = (10 * (1 - ratelimit.BETA) / ratelimit.CUBIC_C) ^ (1 / 3)
    local mid = b:current_rate(100 + k / 2)
    assert.is_true(mid > 7 and mid < 10, mid)     -- concave part: near the old rate
    assert.near(10, b:current_rate(100 + k + 0.5), 1e-9)  -- back, capped at the nominal
    assert.is_nil(b.throttled_at)
    -- two 429s in a row shrink twice
    b:throttled(200); b:throttled(200)
    assert.near(10 * ratelimit.BETA ^ 2, b:current_rate(200), 1e-9)
  end)

  it("set_rate changes the configured rate from now on", function()
    local b = ratelimit.new(1, 1)
    b:take(0)
    b:set_rate(100, 5, 0)
    assert.equal(0, b:take(0.011))
    assert.equal(1, b:nominal() / 100)
  end)
end)

describe("ratelimit (adaptive) against the simulator", function()
  local support = require "engine.support"
  local enrich = require "enrich"
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  it("instaview's X-RateLimit-* headers move a default bucket; an explicit rate stays put", function()
    support.configure(sim, { instaview = { polls = 1, rate_limit = { minute = 600, hour = 30000 } } })
    local c = support.client(sim, "instaview", { api_key = "sk_adaptive" })   -- the default 0.5/s
    local jobs = {}
    enrich.run(function()
      for i = 1, 12 do jobs[i] = assert(c:submit({ { id = "p_rate" .. i } })) end
      for i = 1, 12 do assert(jobs[i]:wait(30)) end
    end)
    for i = 1, 12 do assert.equal("succeeded", jobs[i].state) end
    local b = c.shared.bucket
    assert.is_true(b.hinted > 1, "hinted " .. tostring(b.hinted))   -- about 10/s: the plan's minute
    -- the configured rate is kept: the documented 0.5/s, a margin under
    -- (ratelimit.MARGIN applies to documented rates, not to hints)
    assert.near(0.5 * ratelimit.MARGIN, b.rate, 1e-12)
    assert.is_nil(support.stats(sim, "instaview").responses["429"])
    local fixed = support.client(sim, "instaview", { api_key = "sk_fixed", rate = { per_second = 3, burst = 3 } })
    local job = assert(fixed:submit({ { id = "p_fixed" } }))
    assert(job:wait(30))
    assert.is_nil(fixed.shared.bucket.hinted)
  end)

  it("a 429 throttles the key's bucket", function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    support.fault(sim, { provider = "tamtam", method = "GET", type = 429, count = 1 })
    local c = support.client(sim, "tamtam", { api_key = "throttled-key", rate = { per_second = 50, burst = 5 } })
    local job = assert(c:submit({ { first_name = "Ada", last_name = "Byron" } }))
    assert(job:wait(30))
    assert.equal("succeeded", job.state)
    local b = c.shared.bucket
    assert.equal(1, support.stats(sim, "tamtam").responses["429"])
    assert.is_number(b.w_max)                -- it was throttled at that rate
    assert.near(50, b.w_max, 1e-9)
  end)
end)
