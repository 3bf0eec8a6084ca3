local support = require "sim.support"

local KEY = { authorization = "Bearer sk_SIMKEY" }
local RATE_HEADERS = {
  "X-RateLimit-Limit-Minute", "X-RateLimit-Limit-Hour", "X-RateLimit-Remaining-Minute",
  "X-RateLimit-Remaining-Hour", "X-RateLimit-Reset-Minute", "X-RateLimit-Reset-Hour",
}

describe("sim instaview", function()
  local sim, call
  before_each(function()
    sim = support.new_sim()
    call = support.client(sim, "/instaview", KEY)
  end)

  local function submit(ids, extra)
    local body = { profileIds = ids }
    for k, v in pairs(extra or {}) do body[k] = v end
    local status, b = call("POST", "/sourcing/enrich", body)
    assert.equal(202, status)
    return b.requestId, b
  end

  local function finish(id)
    return support.poll_until(call, "/sourcing/enrich/" .. id .. "/results", function(s) return s == 200 end)
  end

  it("starts a run with 202, an enr_ id and status processing", function()
    local id, b = submit({ "p_1", "p_2" }, { webhookId = "5d0c2a7e-0000-4000-8000-00000000abcd" })
    assert.matches("^enr_", id)
    assert.is_true(b.success)
    assert.equal("processing", b.status)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT", b.createdAt)
    assert.equal("5d0c2a7e-0000-4000-8000-00000000abcd", b.webhookId)
  end)

  it("answers 202 processing on the results route, then 200 completed with per-profile data", function()
    local id = submit { "p_7f31aa", "p_notfound", "p_itemfail", "p_timeout" }
    local status, body = call("GET", "/sourcing/enrich/" .. id .. "/results")
    assert.equal(202, status)
    assert.equal("processing", body.status)
    assert.is_string(body.message)
    status, body = call("GET", "/sourcing/enrich/" .. id .. "/results")
    assert.equal(200, status)
    assert.equal("completed", body.status)
    assert.is_string(body.completedAt)
    assert.equal(2, body.enrichedCount)
    assert.equal(2, body.failureCount)
    assert.equal(2, body.creditsConsumed)
    local d = body.data
    assert.same({ "p_7f31aa", "p_notfound", "p_itemfail", "p_timeout" },
      { d[1].profileId, d[2].profileId, d[3].profileId, d[4].profileId })
    assert.is_true(d[1].success)
    assert.equal(1, #d[1].candidate.emails)
    assert.matches("@", d[1].candidate.emails[1])
    assert.is_string(d[1].candidate.linkedinUrl)
    assert.is_true(d[2].success)
    assert.equal(0, #d[2].candidate.emails)
    assert.is_false(d[3].success)
    assert.equal("Profile enrichment timed out", d[4].error)
  end)

  it("encodes empty candidate lists as JSON arrays", function()
    local id = submit { "p_notfound" }
    local _, _, res = finish(id)
    assert.is_true(support.has_empty_array(res.body, "emails"))
    assert.is_true(support.has_empty_array(res.body, "aiRedFlags"))
  end)

  it("ends a 'jobfail' run as failed with 200, data [] and an error", function()
    local id = submit { "p_jobfail", "p_2" }
    local status, body, res = finish(id)
    assert.equal(200, status)
    assert.equal("failed", body.status)
    assert.equal("INTERNAL_ERROR", body.error.code)
    assert.equal(0, body.creditsConsumed)
    assert.is_true(support.has_empty_array(res.body, "data"))
  end)

  it("keeps a 'jobhang' run processing", function()
    local id = submit { "p_jobhang" }
    local status = support.poll_until(call, "/sourcing/enrich/" .. id .. "/results", function(s) return s == 200 end, 8)
    assert.equal(202, status)
  end)

  it("hides a run from another key with 404 RESOURCE_NOT_FOUND", function()
    local id = submit { "p_1" }
    local status, body = call("GET", "/sourcing/enrich/" .. id .. "/results", nil,
      { authorization = "Bearer sk_OTHER" })
    assert.equal(404, status)
    assert.is_false(body.success)
    assert.equal("RESOURCE_NOT_FOUND", body.error.code)
    assert.equal(id, body.error.details.resourceId)
  end)

  describe("errors", function()
    local eleven = {}
    for i = 1, 11 do eleven[i] = "p_" .. i end
    local cases = {
      { "invalid JSON", "{", 400, "VALIDATION_ERROR" },
      { "missing profileIds", {}, 400, "VALIDATION_ERROR" },
      { "an empty profileIds", { profileIds = {} }, 400, "VALIDATION_ERROR" },
      { "11 profile ids", { profileIds = eleven }, 400, "VALIDATION_ERROR" },
      { "a non-string id", { profileIds = { 5 } }, 400, "VALIDATION_ERROR" },
      { "a webhookId that is not a UUID", { profileIds = { "p" }, webhookId = "x" }, 400, "VALIDATION_ERROR" },
      { "a webhook without enrichment events", { profileIds = { "p" },
        webhookId = "5d0c2a7e-0000-4000-8000-000000000422" }, 422, "VALIDATION_ERROR" },
      { "a webhook of another company", { profileIds = { "p" },
        webhookId = "5d0c2a7e-0000-4000-8000-000000000403" }, 403, "FORBIDDEN" },
    }
    for _, c in ipairs(cases) do
      it("answers " .. c[3] .. " " .. c[4] .. " in the envelope to " .. c[1], function()
        local status, body = call("POST", "/sourcing/enrich", c[2])
        assert.equal(c[3], status)
        assert.is_false(body.success)
        assert.equal(c[4], body.error.code)
        assert.is_string(body.timestamp)
        assert.truthy(body.data == require("cjson").null)
      end)
    end

    it("answers 402 INSUFFICIENT_CREDITS when the prepaid balance is short", function()
      sim:configure { instaview = { credits = 2 } }
      local status, body = call("POST", "/sourcing/enrich", { profileIds = { "a", "b", "c" } })
      assert.equal(402, status)
      assert.equal("INSUFFICIENT_CREDITS", body.error.code)
      assert.same({ required = 3, balance = 2 }, body.error.details)
      assert.equal(0, sim:stats().providers.instaview.jobs)
    end)

    it("never blocks a postpaid account", function()
      sim:configure { instaview = { credits = false } }
      assert.equal(202, (call("POST", "/sourcing/enrich", { profileIds = { "a" } })))
    end)

    it("answers 401 INVALID_API_KEY without Bearer and for a revoked key", function()
      local status, body = call("POST", "/sourcing/enrich", { profileIds = { "a" } }, { authorization = "sk_SIMKEY" })
      assert.equal(401, status)
      assert.equal("INVALID_API_KEY", body.error.code)
      sim:configure { revoke = "sk_SIMKEY" }
      assert.equal(401, (call("POST", "/sourcing/enrich", { profileIds = { "a" } })))
    end)
  end)

  describe("rate limits", function()
    it("sends the six X-RateLimit headers on every response, errors included", function()
      local _, _, ok_res = call("POST", "/sourcing/enrich", { profileIds = { "a" } })
      local _, _, bad_res = call("POST", "/sourcing/enrich", {})
      local _, _, no_key = call("POST", "/sourcing/enrich", {}, { authorization = "" })
      for _, res in ipairs { ok_res, bad_res, no_key } do
        for _, h in ipairs(RATE_HEADERS) do assert.is_string(res.headers[h], h) end
      end
      assert.equal("60", ok_res.headers["X-RateLimit-Limit-Minute"])
      assert.equal("2000", ok_res.headers["X-RateLimit-Limit-Hour"])
      assert.equal("59", ok_res.headers["X-RateLimit-Remaining-Minute"])
      assert.equal("58", bad_res.headers["X-RateLimit-Remaining-Minute"])
    end)

    it("answers the 61st request in a minute with 429, Retry-After and the NestJS body", function()
      sim.test_clock.now = 1780000040     -- 40 s before the minute ends (at ...080)
      for _ = 1, 60 do assert.equal(404, (call("GET", "/sourcing/enrich/x/results"))) end
      local status, body, res = call("GET", "/sourcing/enrich/x/results")
      assert.equal(429, status)
      assert.equal("40", res.headers["Retry-After"])
      assert.same({ statusCode = 429, message = "Rate limit exceeded", error = "Too Many Requests",
                    retryAfter = 60, limit = 60, remaining = 0, reset = 1780000080 }, body)
      assert.equal("0", res.headers["X-RateLimit-Remaining-Minute"])
      sim.test_clock.now = 1780000080
      assert.equal(404, (call("GET", "/sourcing/enrich/x/results")))
    end)

    it("enforces the hourly quota too, and can be resized or turned off", function()
      sim:configure { instaview = { rate_limit = { minute = 1000, hour = 3 } } }
      for _ = 1, 3 do assert.equal(404, (call("GET", "/sourcing/enrich/x/results"))) end
      local status, body = call("GET", "/sourcing/enrich/x/results")
      assert.equal(429, status)
      assert.equal(3, body.limit)
      sim:configure { instaview = { rate_limit = false } }
      for _ = 1, 100 do assert.equal(404, (call("GET", "/sourcing/enrich/x/results"))) end
    end)
  end)

  it("counts submissions, inputs and credits", function()
    local id = submit { "p_a", "p_b", "p_itemfail" }
    finish(id)
    submit { "p_a" }
    local st = sim:stats().providers.instaview
    assert.equal(2, st.submissions)
    assert.equal(2, st.inputs.p_a)
    assert.same({ "p_a" }, st.duplicates)
    assert.equal(2, st.credits.charged)
    assert.equal(2, st.requests["POST /sourcing/enrich"])
  end)
end)
