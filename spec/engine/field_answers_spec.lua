-- Issue 11, the engine's side: poll cadence from a provider's hints (a
-- Retry-After on a 2xx counts; a zero hint never makes a tight loop), a
-- submit whose answer cannot be read is `unknown` and never retryable, an
-- API key that cannot be a header is refused at enrich.client, and a retry
-- budget per provider key keeps an outage from multiplying the traffic.
local support = require "engine.support"
local helper = require "helper"
local enrich = require "enrich"

-- A provider over the core specs' loopback server: submit answers an id at
-- once; check asks `/status` with the given query and never ends.
local keys = 0
local function status_client(server, query, opts, submit)
  keys = keys + 1
  local spec = {
    name = "hinted", base_url = server.url,
    prepare = function(input) return input end,
    submit = submit or function() return "run-1" end,
    check = function(ctx)
      local res, err = ctx:call { path = "/status", query = query, expect_json = false }
      if not res then return nil, err end
      return false                         -- still running
    end,
  }
  local o = { api_key = "hint-key-" .. keys }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(enrich.client(spec, o))
end

-- Counts the requests the loop hands the core while fn runs.
local function counting(fn)
  local sched = enrich.scheduler()
  local n = 0
  local unwatch = support.watch_engine(sched, { submit = function(real, req) n = n + 1; return real:submit(req) end })
  local ok, err = pcall(fn)
  unwatch()
  assert(ok, err)
  return n
end

describe("poll cadence from the provider's hints", function()
  local server
  setup(function() server = helper.spawn("spec/support/core_server.lua", {}, { max_seconds = 120 }) end)
  teardown(function() if server then server:stop() end end)

  it("honours a Retry-After on a 2xx 'still running' answer", function()
    local job
    local n = counting(function()
      local c = status_client(server, { code = "202", retry_after = "8" },
        { poll = { interval = 0.01, factor = 1, jitter = 0, deadline = 30 } })
      job = assert(c:submit({ { n = 1 } }))
      enrich.sleep(0.5)
    end)
    assert.equal(1, job.polls)               -- the next poll is 8 s away, not 10 ms
    assert.equal(1, n)
    job:cancel()
  end)

  it("never polls in a tight loop on a zero Retry-After, on a 2xx or a 503", function()
    for _, code in ipairs { "202", "503" } do
      local job
      local n = counting(function()
        local c = status_client(server, { code = code, retry_after = "0" },
          { poll = { interval = 0.1, factor = 1, jitter = 0, deadline = 30 },
            retry = { attempts = 3, base = 0.1, cap = 0.1 } })
        job = assert(c:submit({ { n = 1 } }))
        enrich.sleep(0.5)
      end)
      -- A floor of 0.1 s (the cadence's interval, the retry base) between
      -- requests: at most ~6 in 0.5 s; a tight loop makes hundreds.
      assert.is_true(n <= 8, code .. ": " .. n .. " requests in 0.5 s")
      job:cancel()
    end
  end)
end)

describe("a submit whose answer cannot be read", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  for _, fault in ipairs {
    { type = "malformed" },
    { type = "truncate", at = 10 },
    { type = "reset", after = true },
    { type = "latency", seconds = 2 },       -- past the client's 0.5 s timeout
  } do
    it("(" .. fault.type .. ") ends `unknown`, not retryable, never resent", function()
      support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
      fault.provider, fault.method = "tamtam", "POST"
      support.fault(sim, fault)
      local c = support.client(sim, "tamtam", { timeout = 0.5 })
      local job = support.run_job(c, { { first_name = "Ada", last_name = "Byron" },
                                       { first_name = "Alan", last_name = "Turing" } })
      assert.equal("unknown", job.state)
      assert.equal("unknown", job.error.code)
      assert.is_false(job.error.retryable)
      assert.matches("may have accepted", job.error.message)
      for i = 1, 2 do
        assert.equal("failed", job.results[i].status)
        assert.equal("unknown", job.results[i].error.code)
      end
      assert.equal(1, support.stats(sim, "tamtam").requests["POST /v2/people/enrich"])
    end)
  end

  it("is never `unknown` when the request was refused before it was sent", function()
    local c = assert(enrich.client("tamtam", { api_key = "k", base_url = "http://127.0.0.1:9/tamtam",
      retry = { attempts = 2, base = 0.01, cap = 0.01 } }))
    local job = support.run_job(c, { { first_name = "Ada", last_name = "Byron" } })
    assert.equal("failed", job.state)
    assert.equal("network", job.error.code)
  end)
end)

describe("enrich.client and the API key", function()
  it("refuses a key with a line break or a control character, naming the problem, never the key", function()
    for _, key in ipairs { "sk_secret_123\n", "sk_secret_123\r\n", "sk_se\tcret", "sk_secret\0" } do
      local c, err = enrich.client("tamtam", { api_key = key })
      assert.is_nil(c)
      assert.equal("auth", err.code)
      assert.matches(key:find("[\r\n]") and "line break" or "control character", err.message)
      assert.is_nil(tostring(err):find("sk_se", 1, true))
    end
    assert.is_truthy(enrich.client("tamtam", { api_key = "sk_fine-123_ABC" }))
  end)
end)

describe("the retry budget of a provider key", function()
  local server
  setup(function() server = helper.spawn("spec/support/core_server.lua", {}, { max_seconds = 120 }) end)
  teardown(function() if server then server:stop() end end)

  -- Jobs whose submit is a GET answered 500: retried by the retry policy.
  local function storm(jobs, opts)
    local function submit(ctx)
      local res, err = ctx:call { path = "/status", query = { code = "500" } }
      if not res then return nil, err end
      return "never"
    end
    return counting(function()
      local c = status_client(server, {}, opts, submit)
      local list = {}
      for i = 1, jobs do list[i] = assert(c:submit({ { n = i } })) end
      for i = 1, jobs do
        assert(list[i]:wait(10))
        assert.equal("server", list[i].error.code)
      end
    end)
  end

  it("stops retrying once spent, shared by every client on the key", function()
    local retry = { attempts = 4, base = 0.001, cap = 0.001 }
    assert.equal(5 * 4, storm(5, { api_key = "storm-a", retry = retry }))          -- the default budget: 500
    -- 10 tokens, 5 a retry: two retries in all, then failures surface at once.
    local small = { attempts = 4, base = 0.001, cap = 0.001, budget = 10, budget_cost = 5 }
    assert.equal(5 + 2, storm(5, { api_key = "storm-b", retry = small }))
    -- Another client on the same key finds the budget spent.
    assert.equal(3, storm(3, { api_key = "storm-b", retry = retry }))
  end)
end)
