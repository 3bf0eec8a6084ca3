local support = require "sim.support"
local parsetx = require "enrich.sim.parsetx"

local KEY = { ["x-api-key"] = "pt_live_SIMKEY" }
local CATEGORIES = {}
for _, c in ipairs { "Shopping", "Groceries", "Food & Drink", "Gas & Fuel", "Transportation",
  "Entertainment", "Digital Services", "Software", "Utilities", "Travel", "Transfer",
  "Payroll & Tax", "Healthcare", "Fees & Charges", "Unknown" } do CATEGORIES[c] = true end

describe("sim parsetx", function()
  local sim, call
  before_each(function()
    sim = support.new_sim()
    call = support.client(sim, "/parsetx", KEY)
  end)

  it("enriches up to 10 strings synchronously, in order, with job_id null", function()
    local input = { "SQ *SOME CAFE CITY ST", "STREAMFLIX.EXAMPLE MONTHLY", "00012345678 9988" }
    local status, body, res = call("POST", "/v1/enrich", { transactions = input })
    assert.equal(200, status)
    assert.truthy(res.body:find('"job_id":null', 1, true))
    assert.equal("complete", body.status)
    for i, r in ipairs(body.results) do assert.equal(input[i], r.input) end
    local cafe, flix, junk = body.results[1], body.results[2], body.results[3]
    assert.equal("complete", cafe.status)
    assert.equal("Food & Drink", cafe.category)
    assert.equal("5814", cafe.mcc_code)
    assert.equal("llm", cafe.source)
    assert.is_true(CATEGORIES[flix.category])
    assert.equal("Streamflix", flix.merchant)
    assert.is_true(flix.is_subscription)
    assert.equal("rejected", junk.status)
    assert.is_nil(junk.merchant)
  end)

  it("answers from the cache with confidence 1 once a merchant is known", function()
    call("POST", "/v1/enrich", { transactions = { "NETFLIX.COM MONTHLY" } })
    local _, body = call("POST", "/v1/enrich", { transactions = { "netflix.com monthly" } })
    assert.equal("cache", body.results[1].source)
    assert.equal(1, body.results[1].confidence)
    assert.equal("Netflix", body.results[1].merchant)
  end)

  it("reports partial when an item must be retried", function()
    local _, body = call("POST", "/v1/enrich", { transactions = { "UBER TRIP", "ACME retry" } })
    assert.equal("partial", body.status)
    assert.equal("retry", body.results[2].status)
  end)

  it("answers 500 Internal Server Error to a sync call with 'jobfail'", function()
    local status, body = call("POST", "/v1/enrich", { transactions = { "JOBFAIL STORE" } })
    assert.equal(500, status)
    assert.same({ error = "Internal Server Error" }, body)
  end)

  describe("the sanitiser", function()
    local cases = {
      { "EXMPL COFFEE #0042 SPRINGFIELD", "EXMPL COFFEE #0042 SPRINGFIELD", false },
      { "amzn mktp 1234567890", "AMZN MKTP", false },
      { "00012345678 9988", "9988", true },
      { "XKCDQRST", "XKCDQRST", true },
      { "SHOP 12/31/2025", "SHOP", false },
    }
    for _, c in ipairs(cases) do
      it("turns '" .. c[1] .. "' into '" .. c[2] .. "'" .. (c[3] and " and rejects it" or ""), function()
        local s = parsetx.sanitise(c[1])
        assert.equal(c[2], s)
        assert.equal(c[3], parsetx.is_junk(s))
      end)
    end

    it("truncates to 64 characters", function()
      assert.equal(64, #parsetx.sanitise(string.rep("ABCD ", 30)))
    end)
  end)

  describe("async jobs", function()
    it("queues a job with 202 and results []", function()
      local status, body, res = call("POST", "/v1/enrich/async", { transactions = { "UBER TRIP" } })
      assert.equal(202, status)
      assert.equal("queued", body.status)
      assert.truthy(res.body:find('"results":[]', 1, true))
      assert.is_string(body.job_id)
    end)

    it("moves queued -> processing -> complete with results in order", function()
      sim:configure { parsetx = { polls = 2 } }
      local input = { "UBER TRIP", "STARBUCKS 123", "ACME itemfail", "12345" }
      local _, s = call("POST", "/v1/enrich/async", { transactions = input })
      local path = "/v1/enrich/jobs/" .. s.job_id
      local _, q = call("GET", path)
      assert.equal("queued", q.status)
      assert.is_nil(q.item_count)
      local _, p, res = call("GET", path)
      assert.equal("processing", p.status)
      assert.equal(4, p.item_count)
      assert.truthy(res.body:find('"results":[]', 1, true))
      local status, c = call("GET", path)
      assert.equal(200, status)
      assert.equal("complete", c.status)
      assert.equal(s.job_id, c.id)
      assert.is_string(c.created_at)
      assert.is_string(c.updated_at)
      local statuses = {}
      for i, r in ipairs(c.results) do
        assert.equal(input[i], r.input)
        statuses[i] = r.status
      end
      assert.same({ "complete", "complete", "retry", "rejected" }, statuses)
    end)

    it("fails a 'jobfail' job with results []", function()
      local _, s = call("POST", "/v1/enrich/async", { transactions = { "JOBFAIL INC" } })
      local _, b, res = support.poll_until(call, "/v1/enrich/jobs/" .. s.job_id,
        function(_, x) return x.status == "complete" or x.status == "failed" end)
      assert.equal("failed", b.status)
      assert.truthy(res.body:find('"results":[]', 1, true))
    end)

    it("answers 404 Job not found. to an unknown id", function()
      local status, body = call("GET", "/v1/enrich/jobs/6a1f3c2e-9b7d-4e10-8c55-0123456789ab")
      assert.equal(404, status)
      assert.same({ error = "Job not found." }, body)
    end)

    it("answers 401 when another key polls the job", function()
      local _, s = call("POST", "/v1/enrich/async", { transactions = { "UBER" } })
      local status, body = call("GET", "/v1/enrich/jobs/" .. s.job_id, nil,
        { ["x-api-key"] = "pt_live_OTHER" })
      assert.equal(401, status)
      assert.same({ error = "Invalid or revoked API key." }, body)
    end)
  end)

  describe("auth", function()
    it("takes a Bearer key when X-API-Key is absent", function()
      local status = call("POST", "/v1/enrich", { transactions = { "UBER" } },
        { ["x-api-key"] = "", authorization = "Bearer pt_live_SIMKEY" })
      assert.equal(200, status)
    end)

    it("lets X-API-Key win over Bearer", function()
      sim:configure { revoked_keys = { "pt_live_BEARER" } }
      local status = call("POST", "/v1/enrich", { transactions = { "UBER" } },
        { authorization = "Bearer pt_live_BEARER" })
      assert.equal(200, status)
    end)

    it("answers the documented 401 strings", function()
      local status, body = call("POST", "/v1/enrich", { transactions = { "UBER" } }, { ["x-api-key"] = "" })
      assert.equal(401, status)
      assert.same({ error = "Missing API key. Provide your key via the X-API-Key header." }, body)
      sim:configure { revoke = "pt_live_SIMKEY" }
      status, body = call("POST", "/v1/enrich", { transactions = { "UBER" } })
      assert.equal(401, status)
      assert.same({ error = "Invalid or revoked API key." }, body)
    end)
  end)

  describe("validation", function()
    local eleven, big = {}, {}
    for i = 1, 11 do eleven[i] = "SHOP " .. i end
    for i = 1, 501 do big[i] = "SHOP " .. i end
    local cases = {
      { "/v1/enrich", "invalid JSON", "{" },
      { "/v1/enrich", "a missing transactions", {} },
      { "/v1/enrich", "a non-string transaction", { transactions = { 1 } } },
      { "/v1/enrich", "an empty list", { transactions = {} } },
      { "/v1/enrich", "11 strings", { transactions = eleven } },
      { "/v1/enrich/async", "501 strings", { transactions = big } },
    }
    for _, c in ipairs(cases) do
      it("answers 400 {error} on " .. c[1] .. " to " .. c[2], function()
        local status, body = call("POST", c[1], c[3])
        assert.equal(400, status)
        assert.is_string(body.error)
      end)
    end
  end)

  describe("quotas", function()
    it("answers 429 Monthly quota exceeded with usage, limit and plan", function()
      sim:configure { parsetx = { quota = { monthly = 12, usage = 10 } } }
      assert.equal(200, (call("POST", "/v1/enrich", { transactions = { "A SHOP", "B SHOP" } })))
      local status, body = call("POST", "/v1/enrich", { transactions = { "C SHOP" } })
      assert.equal(429, status)
      assert.same({ error = "Monthly quota exceeded.", usage = 12, limit = 12, plan = "pay_as_you_go" }, body)
    end)

    it("answers 429 for the daily token budget and resets it at midnight UTC", function()
      sim:configure { parsetx = { quota = { daily_tokens = 1000, tokens_per_miss = 500 } } }
      assert.equal(200, (call("POST", "/v1/enrich", { transactions = { "A SHOP", "B SHOP" } })))
      local status, body = call("POST", "/v1/enrich", { transactions = { "C SHOP" } })
      assert.equal(429, status)
      assert.equal("Daily token budget exceeded. Your quota resets at midnight UTC.", body.error)
      assert.equal(1000, body.token_usage)
      assert.equal(1000, body.token_limit)
      local now = sim.test_clock.now
      sim.test_clock.now = (math.floor(now / 86400) + 1) * 86400 + 1
      assert.equal(200, (call("POST", "/v1/enrich", { transactions = { "C SHOP" } })))
    end)

    it("can be turned off", function()
      sim:configure { parsetx = { quota = false } }
      assert.equal(200, (call("POST", "/v1/enrich", { transactions = { "A SHOP" } })))
    end)

    it("bills cache misses only", function()
      call("POST", "/v1/enrich", { transactions = { "NETFLIX MONTHLY", "NETFLIX MONTHLY", "12345" } })
      local st = sim:stats().providers.parsetx
      assert.equal(1, st.credits.charged)
      assert.equal(2, st.inputs["NETFLIX MONTHLY"])
    end)
  end)
end)
