-- parsetx end to end against the simulator: every outcome and error path.
local support = require "engine.support"
local enrich = require "enrich"
local P = require "enrich.providers.parsetx"

describe("parsetx through the engine", function()
  local sim

  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  local function client(opts) return support.fast_rate_client(sim, "parsetx", opts) end

  it("enriches merchants, keeps input order and custom, and counts billed misses", function()
    local custom = { row = "2", nested = { keep = true } }
    local inputs = { "STARBUCKS STORE 1234 SEATTLE WA", { text = "NETFLIX.COM MONTHLY", custom = custom },
                     "SQ *SUNRISE BAKERY PORTLAND" }
    local job = support.run_job(client(), inputs)
    assert.equal("succeeded", job.state)
    assert.equal("parsetx", job.provider)
    assert.is_string(job.id)
    assert.same({ total = 3, found = 3, not_found = 0, failed = 0, pending = 0 }, job.counts)
    for i, r in ipairs(job.results) do
      assert.equal(i, r.index)
      assert.equal(inputs[i], r.input)
      assert.equal("found", r.status)
      assert.equal(type(inputs[i]) == "table" and inputs[i].text or inputs[i], r.raw.input)
      assert.equal("llm", r.fields.source)
      assert.is_number(r.merchant.confidence)
    end
    assert.same({ name = "Starbucks", domain = "starbucks.com", category = "Food & Drink", mcc = "5814",
                  subscription = false, confidence = 0.97 }, job.results[1].merchant)
    assert.is_true(job.results[2].merchant.subscription)
    assert.equal(custom, job.results[2].custom)
    assert.equal("Food & Drink", job.results[3].merchant.category)
    local stats = support.stats(sim, "parsetx")
    assert.equal(stats.credits.charged, job.cost.credits)
    assert.equal(3, job.cost.credits)
    assert.equal(1, stats.submissions)
  end)

  it("answers a cached merchant from the cache, unbilled", function()
    support.run_job(client(), { "NETFLIX.COM MONTHLY" })
    local job = support.run_job(client(), { "NETFLIX.COM MONTHLY" })
    assert.equal("cache", job.results[1].fields.source)
    assert.equal(1, job.results[1].merchant.confidence)
    assert.equal(0, job.cost.credits)
  end)

  it("has no not_found: an unknown merchant is found with category Unknown", function()
    local job = support.run_job(client(), { "ACME NOTFOUND SHOP" })
    assert.equal("succeeded", job.state)
    local m = job.results[1].merchant
    assert.equal("found", job.results[1].status)
    assert.equal("Unknown", m.category)
    assert.is_nil(m.domain)
    assert.is_nil(m.mcc)
  end)

  it("ends partial with retry (retryable) and rejected (not retryable) items", function()
    local job = support.run_job(client(),
      { "UBER TRIP HELP.UBER.COM", "ACME RETRY SHOP", "00012345678 9988",
        { text = "ACME ITEMFAIL SHOP", custom = { row = "4" } } })
    assert.equal("partial", job.state)
    assert.same({ "found", "failed", "failed", "failed" },
      { job.results[1].status, job.results[2].status, job.results[3].status, job.results[4].status })
    assert.same({ total = 4, found = 1, not_found = 0, failed = 3, pending = 0 }, job.counts)
    assert.equal("server", job.results[2].error.code)
    assert.is_true(job.results[2].error.retryable)
    assert.equal("invalid", job.results[3].error.code)
    assert.is_false(job.results[3].error.retryable)
    assert.is_true(job.results[4].error.retryable)
    assert.equal("4", job.results[4].custom.row)
    assert.equal(1, job.cost.credits)
  end)

  it("ends failed when parsetx fails the job", function()
    local job = support.run_job(client(), { "ACME JOBFAIL", { text = "UBER TRIP", custom = { row = "2" } } })
    assert.equal("failed", job.state)
    assert.equal("server", job.error.code)
    assert.equal("failed", job.error.provider_code)
    assert.equal("failed", job.results[1].status)
    assert.equal("2", job.results[2].custom.row)
  end)

  it("times out at the poll deadline, keeping the provider id", function()
    local job = support.run_job(client { poll = { interval = 0.01, factor = 1, jitter = 0, deadline = 0.3 } },
      { { text = "ACME JOBHANG", custom = { row = "7" } } })
    assert.equal("timed_out", job.state)
    assert.equal("timeout", job.error.code)
    assert.is_string(job.id)
    assert.equal("pending", job.results[1].status)
    assert.equal("7", job.results[1].custom.row)
  end)

  it("cancels locally (parsetx has no cancel endpoint)", function()
    local c = client { poll = { interval = 0.05, factor = 1, jitter = 0, deadline = 5 }, coalesce = false }
    local job = assert(c:submit({ { text = "ACME JOBHANG", custom = { row = "9" } } }))
    enrich.sleep(0.1)
    assert.equal(job, job:cancel())
    assert.equal("cancelled", job.state)
    assert.equal("cancelled", job.error.code)
    assert.equal("9", job.results[1].custom.row)
  end)

  it("refuses bad input data with 'invalid' before sending anything", function()
    local c = client()
    local cases = { { "" }, { "   " }, { 42 }, { {} }, { { text = "" } }, { { text = 5 } },
                    { { text = "UBER", custom = "row" } }, { "UBER TRIP", false } }
    for _, inputs in ipairs(cases) do
      local job, err = c:submit(inputs)
      assert.is_nil(job)
      assert.equal("invalid", err.code)
    end
    local stats = support.stats(sim, "parsetx")
    assert.equal(0, stats.submissions)
    assert.same({}, stats.requests)
  end)

  it("raises on submit options (parsetx takes none)", function()
    assert.has_error(function() client():submit({ "UBER TRIP" }, { kind = "email" }) end)
  end)

  it("maps a revoked key to 'auth' with the documented message", function()
    support.configure(sim, { revoke = "pt_live_revoked" })
    local job = support.run_job(client { api_key = "pt_live_revoked" }, { "UBER TRIP" })
    assert.equal("failed", job.state)
    assert.equal("auth", job.error.code)
    assert.equal(401, job.error.status)
    assert.equal("Invalid or revoked API key.", job.error.message)
  end)

  it("maps the monthly quota to 'credits', not retried, and stops submitting to parsetx", function()
    support.configure(sim, { parsetx = { quota = { monthly = 0 } } })
    local c = client { api_key = "pt_live_poor" }
    local job = support.run_job(c, { "UBER TRIP" })
    assert.equal("failed", job.state)
    assert.equal("credits", job.error.code)
    assert.equal(429, job.error.status)
    assert.is_false(job.error.retryable)
    assert.equal("Monthly quota exceeded.", job.error.message)
    local stats = support.stats(sim, "parsetx")
    assert.equal(1, stats.requests["POST /v1/enrich/async"])
    local again, err = c:submit({ "UBER TRIP" })
    assert.is_nil(again)
    assert.equal("credits", err.code)
    assert.same(stats.requests, support.stats(sim, "parsetx").requests)
    c:resume_submitting()
  end)

  it("maps the daily token budget to 'rate_limited' until the next 00:00 UTC", function()
    local left = P.until_midnight(os.time())
    if left < 5 then return pending("too close to midnight UTC") end
    support.configure(sim, { parsetx = { quota = { token_usage = 1000000 } } })
    local job = support.run_job(client(), { "UBER TRIP" })
    assert.equal("failed", job.state)
    assert.equal("rate_limited", job.error.code)
    assert.is_true(job.error.retryable)
    assert.is_true(math.abs(job.error.retry_after - left) <= 2)
    -- hours away: more than the client waits for, so it was not resent
    assert.equal(1, support.stats(sim, "parsetx").requests["POST /v1/enrich/async"])
    assert.equal(0, support.stats(sim, "parsetx").submissions)
  end)

  it("retries a 429 whose Retry-After header says when, submitting once", function()
    local daily = { error = "Daily token budget exceeded. Your quota resets at midnight UTC.",
                    token_usage = 1000000, token_limit = 1000000, plan = "pay_as_you_go" }
    support.fault(sim, { type = 429, provider = "parsetx", method = "POST", count = 2, retry_after = 0, body = daily })
    local job = support.run_job(client(), { "UBER TRIP", "ACME HARDWARE STORE" })
    assert.equal("succeeded", job.state)
    local stats = support.stats(sim, "parsetx")
    assert.equal(3, stats.requests["POST /v1/enrich/async"])
    assert.equal(1, stats.submissions)
    assert.same({}, stats.duplicates)
  end)

  it("maps a 404 on the job read to 'not_found' with the documented message", function()
    support.fault(sim, { type = 404, provider = "parsetx", method = "GET", count = 1,
                         body = { error = "Job not found." } })
    local job = support.run_job(client(), { "UBER TRIP" })
    assert.equal("failed", job.state)
    assert.equal("not_found", job.error.code)
    assert.equal("Job not found.", job.error.message)
  end)

  it("keeps polling through 5xx answers and ends well", function()
    support.fault(sim, { type = 500, provider = "parsetx", method = "GET", count = 3 })
    local job = support.run_job(client(), { "UBER TRIP" })
    assert.equal("succeeded", job.state)
    assert.equal(1, support.stats(sim, "parsetx").submissions)
  end)

  it("does not resend a submit that failed with 5xx: it may have been processed", function()
    support.fault(sim, { type = 500, provider = "parsetx", method = "POST", count = 1 })
    local job = support.run_job(client(), { "UBER TRIP" })
    assert.equal("failed", job.state)
    assert.equal("server", job.error.code)
    assert.equal("Internal Server Error", job.error.message)
    assert.equal(1, support.stats(sim, "parsetx").requests["POST /v1/enrich/async"])
  end)

  it("survives a malformed job body", function()
    support.fault(sim, { type = "malformed", provider = "parsetx", method = "GET", count = 2 })
    local job = support.run_job(client(), { "UBER TRIP" })
    assert.equal("succeeded", job.state)
  end)

  it("does not resend a submit whose answer came back malformed (the job was created)", function()
    support.fault(sim, { type = "malformed", provider = "parsetx", method = "POST", count = 1 })
    local job = support.run_job(client(), { "UBER TRIP" })
    -- The provider may have accepted (and charged) it: `unknown`, never retryable.
    assert.equal("unknown", job.state)
    assert.equal("unknown", job.error.code)
    assert.is_false(job.error.retryable)
    assert.matches("may have accepted", job.error.message)
    local stats = support.stats(sim, "parsetx")
    assert.equal(1, stats.requests["POST /v1/enrich/async"])
    assert.equal(1, stats.submissions)
  end)

  it("splits more than 500 strings into several jobs behind one, in input order", function()
    local inputs = {}
    for i = 1, 1100 do inputs[i] = "CORNER SHOP NO " .. i .. " MAIN ST" end
    inputs[700] = "00012345678 9988 " .. 700
    local job = support.run_job(client(), inputs)
    assert.equal("partial", job.state)
    assert.equal(1100, #job.results)
    for i = 1, 1100 do assert.equal(inputs[i], job.results[i].raw.input) end
    assert.equal("failed", job.results[700].status)
    assert.equal(1099, job.counts.found)
    local stats = support.stats(sim, "parsetx")
    assert.equal(3, stats.requests["POST /v1/enrich/async"])
    assert.equal(3, stats.submissions)
    assert.same({}, stats.duplicates)
    assert.equal(stats.credits.charged, job.cost.credits)
  end)

  it("never shows the key in errors or in the client", function()
    support.configure(sim, { revoke = "pt_live_secret_123" })
    local c = client { api_key = "pt_live_secret_123" }
    local job = support.run_job(c, { "UBER TRIP" })
    assert.is_nil(tostring(job.error):find("pt_live_secret_123", 1, true))
    assert.is_nil(tostring(c):find("pt_live_secret_123", 1, true))
  end)
end)
