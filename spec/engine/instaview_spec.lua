-- instaview end to end against the simulator: every outcome and error path.
local support = require "engine.support"
local enrich = require "enrich"

describe("instaview through the engine", function()
  local sim

  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  -- Every client of the spec key shares one bucket (the first client's rate
  -- decides it): keep them all fast. The provider's own rate is checked in
  -- spec/mapping/instaview_spec.lua.
  local function client(opts) return support.fast_rate_client(sim, "instaview", opts) end

  local function profile(id, row) return { id = id, custom = { row = row } } end

  it("finds emails, keeps input order and custom, and reports the credits charged", function()
    local custom = { row = "3", nested = { keep = true } }
    local inputs = { profile("p_7f31aa", "1"), profile("p_93bb11", "2"), { id = "p_c0ffee", custom = custom } }
    local job = support.run_job(client(), inputs)
    assert.equal("succeeded", job.state)
    assert.equal("instaview", job.provider)
    assert.matches("^enr_", job.id)
    assert.same({ total = 3, found = 3, not_found = 0, failed = 0, pending = 0 }, job.counts)
    for i, r in ipairs(job.results) do
      assert.equal(i, r.index)
      assert.equal(inputs[i], r.input)
      assert.equal("found", r.status)
      assert.matches("@", r.email)
      assert.same({ { address = r.email, status = "unknown" } }, r.emails)
      assert.equal(inputs[i].id, r.fields.profileId)
      assert.is_string(r.fields.name)
      assert.equal(inputs[i].id, r.raw.profileId)
    end
    assert.equal(custom, job.results[3].custom)
    assert.equal(3, job.cost.credits)
    local stats = support.stats(sim, "instaview")
    assert.equal(3, stats.credits.charged)
    assert.equal(1, stats.submissions)
  end)

  it("ends succeeded with not_found items when profiles have no email", function()
    local job = support.run_job(client(), { profile("p_notfound_1"), profile("p_ok") })
    assert.equal("succeeded", job.state)
    assert.same({ "not_found", "found" }, { job.results[1].status, job.results[2].status })
    assert.is_nil(job.results[1].email)
    assert.same({}, job.results[1].emails)
    assert.is_string(job.results[1].fields.name)      -- the candidate is still there
    assert.equal(2, job.cost.credits)                -- both profiles were enriched
  end)

  it("ends partial when profiles fail, with a retryable error per failed profile", function()
    local job = support.run_job(client(),
      { profile("p_ok", "1"), profile("p_notfound", "2"), profile("p_itemfail", "3"), profile("p_timeout", "4") })
    assert.equal("partial", job.state)
    assert.same({ "found", "not_found", "failed", "failed" },
      { job.results[1].status, job.results[2].status, job.results[3].status, job.results[4].status })
    assert.same({ total = 4, found = 1, not_found = 1, failed = 2, pending = 0 }, job.counts)
    assert.equal("server", job.results[3].error.code)
    assert.is_true(job.results[3].error.retryable)
    assert.equal("Profile enrichment timed out", job.results[4].error.message)
    assert.equal("4", job.results[4].custom.row)
    assert.equal(2, job.cost.credits)
  end)

  it("ends failed when the run fails, with the provider's error code", function()
    local job = support.run_job(client(), { profile("p_jobfail", "1"), profile("p_ok", "2") })
    assert.equal("failed", job.state)
    assert.equal("server", job.error.code)
    assert.equal("INTERNAL_ERROR", job.error.provider_code)
    assert.equal("failed", job.results[1].status)
    assert.equal("failed", job.results[2].status)
    assert.equal("2", job.results[2].custom.row)
    assert.equal(0, job.cost.credits)
  end)

  it("times out at the poll deadline, keeping the provider id", function()
    local job = support.run_job(client { poll = { interval = 0.01, factor = 1, jitter = 0, deadline = 0.3 } },
      { profile("p_jobhang", "7") })
    assert.equal("timed_out", job.state)
    assert.equal("timeout", job.error.code)
    assert.matches("^enr_", job.id)
    assert.equal("pending", job.results[1].status)
    assert.equal("7", job.results[1].custom.row)
  end)

  it("cancels locally (instaview has no cancel endpoint)", function()
    local c = client { poll = { interval = 0.05, factor = 1, jitter = 0, deadline = 5 }, coalesce = false }
    local job = assert(c:submit({ profile("p_jobhang", "9") }))
    enrich.sleep(0.1)
    assert.equal(job, job:cancel())
    assert.equal("cancelled", job.state)
    assert.equal("cancelled", job.error.code)
    assert.equal("9", job.results[1].custom.row)
    assert.equal("pending", job.results[1].status)
  end)

  it("keeps polling through 202 answers whatever their body", function()
    support.fault(sim, { type = 202, provider = "instaview", method = "GET", body = "", count = 2 })
    local job = support.run_job(client(), { profile("p_ok") })
    assert.equal("succeeded", job.state)
    -- two bare 202s, the simulator's own "processing" 202, then the 200
    assert.equal(4, support.stats(sim, "instaview").requests["GET /sourcing/enrich/{id}/results"])
  end)

  it("refuses bad input data with 'invalid' before sending anything", function()
    local c = client()
    local cases = { { {} }, { "p_7f31aa" }, { { id = "" } }, { { id = "  " } }, { { id = 7 } },
                    { { id = "p_1", custom = "row" } }, { profile("p_1"), 42 } }
    for _, inputs in ipairs(cases) do
      local job, err = c:submit(inputs)
      assert.is_nil(job)
      assert.equal("invalid", err.code)
    end
    local stats = support.stats(sim, "instaview")
    assert.equal(0, stats.submissions)
    assert.same({}, stats.requests)
  end)

  it("raises on submit options (instaview takes none)", function()
    assert.has_error(function() client():submit({ profile("p_1") }, { kind = "email" }) end)
  end)

  it("maps a revoked key to 'auth' with the provider's code", function()
    support.configure(sim, { revoke = "bad-key" })
    local job = support.run_job(client { api_key = "bad-key" }, { profile("p_1") })
    assert.equal("failed", job.state)
    assert.equal("auth", job.error.code)
    assert.equal(401, job.error.status)
    assert.equal("INVALID_API_KEY", job.error.provider_code)
  end)

  it("maps a prepaid shortfall (402) to 'credits' and stops submitting to instaview", function()
    support.configure(sim, { instaview = { credits = 1 } })
    local c = client { api_key = "poor-key" }
    local job = support.run_job(c, { profile("p_1"), profile("p_2") })
    assert.equal("failed", job.state)
    assert.equal("credits", job.error.code)
    assert.equal(402, job.error.status)
    assert.equal("INSUFFICIENT_CREDITS", job.error.provider_code)
    local before = support.stats(sim, "instaview").requests
    local again, err = c:submit({ profile("p_3") })
    assert.is_nil(again)
    assert.equal("credits", err.code)
    assert.same(before, support.stats(sim, "instaview").requests)
    assert.equal(0, support.stats(sim, "instaview").submissions)
    c:resume_submitting()
  end)

  it("maps a 404 on the results read to 'not_found'", function()
    support.fault(sim, { type = 404, provider = "instaview", method = "GET", count = 1 })
    local job = support.run_job(client(), { profile("p_1") })
    assert.equal("failed", job.state)
    assert.equal("not_found", job.error.code)
    assert.equal("RESOURCE_NOT_FOUND", job.error.provider_code)
  end)

  it("retries a submit refused with 429 when Retry-After says so, over the body's retryAfter", function()
    -- The body says 60 s; the header says 0 and wins, so this ends at once.
    support.fault(sim, { type = 429, provider = "instaview", method = "POST", count = 2, retry_after = 0 })
    local now = enrich.scheduler().now
    local t0 = now()
    local job = support.run_job(client(), { profile("p_7f31aa") })
    assert.equal("succeeded", job.state)
    assert.is_true(now() - t0 < 5)
    local stats = support.stats(sim, "instaview")
    assert.equal(3, stats.requests["POST /sourcing/enrich"])
    assert.equal(1, stats.submissions)
    assert.same({}, stats.duplicates)
  end)

  it("falls back to the body's retryAfter when a 429 has no Retry-After header", function()
    support.fault(sim, { type = 429, provider = "instaview", method = "POST", count = 1 })
    local c = client { retry = { attempts = 4, base = 0.01, cap = 0.05, max_retry_after = 10 } }
    local job = support.run_job(c, { profile("p_1") })
    -- 60 s asked for is more than this client waits: it gives up at once.
    assert.equal("failed", job.state)
    assert.equal("rate_limited", job.error.code)
    assert.equal(60, job.error.retry_after)
    assert.equal(0, support.stats(sim, "instaview").submissions)
  end)

  it("keeps polling through 5xx answers and 429s on the results read", function()
    support.fault(sim, { { type = 503, provider = "instaview", method = "GET", count = 2 },
                         { type = 429, provider = "instaview", method = "GET", count = 1, retry_after = 0 } })
    local job = support.run_job(client(), { profile("p_1") })
    assert.equal("succeeded", job.state)
    assert.equal(1, support.stats(sim, "instaview").submissions)
  end)

  it("does not resend a submit that failed with 5xx: it may have been processed", function()
    support.fault(sim, { type = 500, provider = "instaview", method = "POST", count = 1 })
    local job = support.run_job(client(), { profile("p_1") })
    assert.equal("failed", job.state)
    assert.equal("server", job.error.code)
    assert.equal(500, job.error.status)
    assert.equal(1, support.stats(sim, "instaview").requests["POST /sourcing/enrich"])
  end)

  it("survives a malformed results body", function()
    support.fault(sim, { type = "malformed", provider = "instaview", method = "GET", count = 2 })
    local job = support.run_job(client(), { profile("p_1") })
    assert.equal("succeeded", job.state)
  end)

  it("does not resend a submit whose answer came back malformed (the run was started)", function()
    support.fault(sim, { type = "malformed", provider = "instaview", method = "POST", count = 1 })
    local job = support.run_job(client(), { profile("p_1") })
    -- The provider may have accepted (and charged) it: `unknown`, never retryable.
    assert.equal("unknown", job.state)
    assert.equal("unknown", job.error.code)
    assert.is_false(job.error.retryable)
    assert.matches("may have accepted", job.error.message)
    local stats = support.stats(sim, "instaview")
    assert.equal(1, stats.requests["POST /sourcing/enrich"])
    assert.equal(1, stats.submissions)
  end)

  it("splits more than 10 profiles into runs behind one job, in input order", function()
    local inputs = {}
    for i = 1, 25 do inputs[i] = profile(string.format("p_%04d", i), tostring(i)) end
    inputs[12].id = "p_0012_itemfail"
    local job = support.run_job(client(), inputs)
    assert.equal("partial", job.state)
    assert.equal(25, #job.results)
    for i = 1, 25 do
      assert.equal(tostring(i), job.results[i].custom.row)
      assert.equal(inputs[i].id, job.results[i].raw.profileId)
    end
    assert.equal("failed", job.results[12].status)
    assert.equal(24, job.counts.found)
    assert.equal(24, job.cost.credits)
    local stats = support.stats(sim, "instaview")
    assert.equal(3, stats.requests["POST /sourcing/enrich"])
    assert.equal(3, stats.submissions)
    assert.same({}, stats.duplicates)
  end)

  it("never shows the key in errors or in the client", function()
    support.configure(sim, { revoke = "sk_secret_123" })
    local c = client { api_key = "sk_secret_123" }
    local job = support.run_job(c, { profile("p_1") })
    assert.is_nil(tostring(job.error):find("sk_secret_123", 1, true))
    assert.is_nil(tostring(c):find("sk_secret_123", 1, true))
  end)
end)
