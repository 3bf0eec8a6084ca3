local support = require "sim.support"
local util = require "enrich.sim.util"
local cjson = require "cjson"

local call = support.call
local TT = { authorization = "tt_key" }
local PT = { ["x-api-key"] = "pt_key" }
local TT_BODY = { requests = { { enrichment_type = "email", first_name = "A", last_name = "B" } } }

describe("enrich.sim", function()
  local sim
  before_each(function() sim = support.new_sim() end)

  describe("routing", function()
    it("answers 404 outside the provider prefixes and /_sim/", function()
      local status, body = call(sim, "GET", "/nowhere/v1")
      assert.equal(404, status)
      assert.matches("/tamtam", body.error)
    end)

    local shapes = {
      { "/tamtam/v9/x", TT, function(b) return b.title == "Not Found" and b.status == 404 end },
      { "/instaview/nope", { authorization = "Bearer k" },
        function(b) return b.error.code == "RESOURCE_NOT_FOUND" end },
      { "/lance/api/v1/nope", { authorization = "Bearer k" }, function(b) return b.error.code == "NOT_FOUND" end },
      { "/puffle/api/nope", { authorization = "Bearer k" }, function(b) return type(b.error) == "string" end },
      { "/parsetx/v2/nope", PT, function(b) return type(b.error) == "string" end },
    }
    for _, s in ipairs(shapes) do
      it("answers an unknown route under " .. s[1]:match("^/%w+") .. " with that provider's 404 body", function()
        local status, body = call(sim, "GET", s[1], nil, s[2])
        assert.equal(404, status)
        assert.is_true(s[3](body))
      end)
    end

    it("answers 405 with Allow for a known path and the wrong method", function()
      local status, _, res = call(sim, "DELETE", "/parsetx/v1/enrich", nil, PT)
      assert.equal(405, status)
      assert.equal("POST", res.headers.Allow)
    end)
  end)

  describe("outcome conventions", function()
    local items = {
      { "Ada Byron", "found" }, { "ada notfound", "not_found" }, { "NOT_FOUND corp", "not_found" },
      { "x-ItemFail", "failed" }, { "slow timeout", "timeout" }, { "retry me", "retry" },
      { "reject", "rejected" },
      { "1b0c6c0e-7e55-4a51-9c53-000000000404", "not_found" },
      { "1b0c6c0e-7e55-4a51-9c53-000000000500", "failed" },
      { "1b0c6c0e-7e55-4a51-9c53-000000000408", "timeout" },
      { "1b0c6c0e-7e55-4a51-9c53-000000000410", "cancelled" },
      { "1b0c6c0e-7e55-4a51-9c53-000000000102", "never" },
      { "1b0c6c0e-7e55-4a51-9c53-100000000404", "found" },
    }
    for _, c in ipairs(items) do
      it("reads item outcome " .. c[2] .. " from '" .. c[1] .. "'", function()
        assert.equal(c[2], util.item_outcome(c[1]))
      end)
    end

    local jobs = {
      { { "a", "b" }, nil }, { { "a", "JobFail" }, "failed" }, { { "jobhang" }, "never" },
      { { "x jobcancel" }, "cancelled" },
    }
    for _, c in ipairs(jobs) do
      it("reads job outcome " .. tostring(c[2]) .. " from {" .. table.concat(c[1], ", ") .. "}", function()
        assert.equal(c[2], util.job_outcome(c[1]))
      end)
    end
  end)

  describe("JSON", function()
    it("encodes deliberate empty arrays as [] and nested ones too", function()
      local text = util.encode { a = util.array({}), b = { c = util.array() } }
      assert.truthy(text:find('"a":[]', 1, true))
      assert.truthy(text:find('{"c":[]}', 1, true))
      assert.equal("[1]", util.encode(util.array { 1 }))
    end)

    it("makes UUID v4 ids", function()
      for _ = 1, 20 do assert.is_true(util.is_uuid_v4(sim:uuid())) end
    end)

    it("makes the same ids for the same seed", function()
      local a, b = support.new_sim { seed = 7 }, support.new_sim { seed = 7 }
      assert.equal(a:uuid(), b:uuid())
    end)
  end)

  describe("faults", function()
    local function tt_submit()
      return call(sim, "POST", "/tamtam/v2/people/enrich", TT_BODY, TT)
    end

    it("answers 503 in the provider's error shape for the next request only", function()
      assert(sim:fault { provider = "tamtam", type = "503" })
      local status, body = tt_submit()
      assert.equal(503, status)
      assert.equal("Service Unavailable", body.title)
      assert.equal(0, sim:stats().providers.tamtam.submissions)
      assert.equal(202, (tt_submit()))
    end)

    it("matches on provider, method and a path pattern, count times", function()
      assert(sim:fault { provider = "parsetx", method = "GET", path = "^/v1/enrich/jobs/", type = "status",
                         status = 502, count = 2 })
      assert.equal(200, (call(sim, "POST", "/parsetx/v1/enrich", { transactions = { "UBER" } }, PT)))
      assert.equal(202, (tt_submit()))
      assert.equal(502, (call(sim, "GET", "/parsetx/v1/enrich/jobs/x", nil, PT)))
      assert.equal(502, (call(sim, "GET", "/parsetx/v1/enrich/jobs/x", nil, PT)))
      assert.equal(404, (call(sim, "GET", "/parsetx/v1/enrich/jobs/x", nil, PT)))
      assert.equal(2, sim:stats().faults)
    end)

    it("gives 429 with Retry-After in seconds, as an HTTP date, or none", function()
      sim:fault { provider = "tamtam", type = 429, retry_after = 3 }
      sim:fault { provider = "tamtam", type = 429, retry_after_date = 5 }
      sim:fault { provider = "tamtam", type = 429 }
      local s1, b1, r1 = tt_submit()
      assert.equal(429, s1)
      assert.same({ Message = "Too Many Requests" }, b1)
      assert.equal("3", r1.headers["Retry-After"])
      local _, _, r2 = tt_submit()
      assert.equal(util.http_date(sim:now() + 5), r2.headers["Retry-After"])
      assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", r2.headers["Retry-After"])
      local _, _, r3 = tt_submit()
      assert.equal(429, r3.status)
      assert.is_nil(r3.headers["Retry-After"])
    end)

    it("uses each provider's own 429 body", function()
      sim:fault { type = 429, count = 2 }
      local _, iv = call(sim, "GET", "/instaview/sourcing/enrich/x/results", nil, { authorization = "Bearer k" })
      assert.equal(429, iv.statusCode)
      assert.equal("Rate limit exceeded", iv.message)
      local _, px = call(sim, "POST", "/parsetx/v1/enrich", { transactions = { "A" } }, PT)
      assert.equal("Monthly quota exceeded.", px.error)
    end)

    it("replaces the body with an explicit one when given", function()
      sim:fault { provider = "puffle", type = 409,
                  body = { error = "run_status_changed", reason = "run_status_changed" } }
      local status, body = call(sim, "POST", "/puffle/api/enrichment/x/cancel", nil, { authorization = "Bearer k" })
      assert.equal(409, status)
      assert.equal("run_status_changed", body.reason)
    end)

    it("asks the front to reset or close without processing the request", function()
      sim:fault { provider = "tamtam", type = "reset" }
      sim:fault { provider = "tamtam", type = "close" }
      local _, _, r1 = tt_submit()
      local _, _, r2 = tt_submit()
      assert.equal("reset", r1.fault)
      assert.equal("close", r2.fault)
      assert.equal(0, sim:stats().providers.tamtam.submissions)
    end)

    it("processes the request first and then drops the answer with after = true", function()
      sim:fault { provider = "tamtam", type = "reset", after = true }
      local _, _, res = tt_submit()
      assert.equal("reset", res.fault)
      assert.equal(1, sim:stats().providers.tamtam.submissions)
    end)

    it("mangles the JSON of a processed answer with malformed", function()
      sim:fault { provider = "tamtam", type = "malformed" }
      local status, body, res = tt_submit()
      assert.equal(202, status)
      assert.is_nil(body)
      assert.is_false((pcall(cjson.decode, res.body)))
      assert.equal(1, sim:stats().providers.tamtam.submissions)
    end)

    it("marks truncate, drip, huge and latency for the front", function()
      sim:fault { provider = "tamtam", type = "truncate" }
      sim:fault { provider = "tamtam", type = "drip", chunk = 4, interval = 0.01 }
      sim:fault { provider = "tamtam", type = "huge", size = 1000 }
      sim:fault { provider = "tamtam", type = "latency", seconds = 0.25 }
      local _, _, r1 = tt_submit()
      local _, _, r2 = tt_submit()
      local _, _, r3 = tt_submit()
      local _, _, r4 = tt_submit()
      assert.equal("truncate", r1.fault)
      assert.same({ "drip", 4, 0.01 }, { r2.fault, r2.drip_chunk, r2.drip_interval })
      assert.same({ 1000, '{"pad":"', '"}' }, { r3.body_size, r3.body, r3.body_suffix })
      assert.equal(0.25, r4.delay)
      assert.equal(202, r4.status)
    end)

    it("adds configured latency to every answer of a provider", function()
      sim:configure { tamtam = { latency = 0.1 } }
      local _, _, res = tt_submit()
      assert.equal(0.1, res.delay)
    end)

    it("refuses bad fault specs", function()
      assert.is_nil((sim:fault { type = "explode" }))
      assert.is_nil((sim:fault { type = "status" }))
      assert.is_nil((sim:fault { type = "503", provider = "nobody" }))
      assert.is_nil((sim:fault { type = "503", path = "[" }))
      assert.is_nil((sim:fault { type = "503", count = 0 }))
    end)
  end)

  describe("control API over handle()", function()
    it("reports health", function()
      local status, body = call(sim, "GET", "/_sim/health")
      assert.equal(200, status)
      assert.is_true(body.ok)
    end)

    it("configures, queues faults, reports stats and resets", function()
      local status, cfg = call(sim, "POST", "/_sim/config", { all = { polls = 0 }, revoked_keys = { "bad" } })
      assert.equal(200, status)
      assert.equal(0, cfg.providers.lance.polls)
      assert.equal(1, cfg.revoked_keys)   -- a count: keys are never echoed
      status = call(sim, "POST", "/_sim/faults", { { type = "503", provider = "parsetx" }, { type = "close" } })
      assert.equal(200, status)
      local _, f = call(sim, "GET", "/_sim/faults")
      assert.equal(2, #f.faults)
      assert.equal(200, (call(sim, "DELETE", "/_sim/faults")))
      local _, _, res = call(sim, "GET", "/_sim/faults")
      assert.is_true(support.has_empty_array(res.body, "faults"))

      local _, s = call(sim, "POST", "/tamtam/v2/people/enrich", TT_BODY, TT)
      local _, done = call(sim, "GET", "/tamtam/v2/people/enrich/" .. s.request_id, nil, TT)
      assert.equal("COMPLETED", done.status)   -- polls = 0
      local _, stats = call(sim, "GET", "/_sim/stats")
      local tt = stats.providers.tamtam
      assert.equal(1, tt.submissions)
      assert.equal(1, tt.requests["GET /v2/people/enrich/{id}"])
      assert.equal(1, tt.inputs["email||a|b||"])
      assert.equal(1, tt.credits.charged)
      assert.equal(1, tt.responses["202"])

      assert.equal(200, (call(sim, "POST", "/_sim/reset")))
      _, stats = call(sim, "GET", "/_sim/stats")
      assert.equal(0, stats.providers.tamtam.submissions)
      assert.equal(1, sim:cfg("lance").polls)
    end)

    it("lists duplicates: inputs submitted more than once", function()
      call(sim, "POST", "/parsetx/v1/enrich/async", { transactions = { "A SHOP", "B SHOP" } }, PT)
      call(sim, "POST", "/parsetx/v1/enrich/async", { transactions = { "B SHOP" } }, PT)
      local _, stats = call(sim, "GET", "/_sim/stats")
      assert.same({ "B SHOP" }, stats.providers.parsetx.duplicates)
    end)

    it("steers one job: outcome, polls and finish", function()
      local _, s = call(sim, "POST", "/parsetx/v1/enrich/async", { transactions = { "UBER" } }, PT)
      local status, view = call(sim, "POST", "/_sim/jobs/parsetx/" .. s.job_id, { outcome = "failed", finish = true })
      assert.equal(200, status)
      assert.equal("failed", view.outcome)
      local _, job = call(sim, "GET", "/parsetx/v1/enrich/jobs/" .. s.job_id, nil, PT)
      assert.equal("failed", job.status)
      assert.equal(409, (call(sim, "POST", "/_sim/jobs/parsetx/" .. s.job_id, { finish = true })))
      assert.equal(404, (call(sim, "GET", "/_sim/jobs/parsetx/nope")))
    end)

    it("moves the clock for ms-based completion", function()
      call(sim, "POST", "/_sim/config", { instaview = { polls = 0, ms = 2000 } })
      local _, s = call(sim, "POST", "/instaview/sourcing/enrich", { profileIds = { "p" } },
        { authorization = "Bearer k" })
      local path = "/instaview/sourcing/enrich/" .. s.requestId .. "/results"
      assert.equal(202, (call(sim, "GET", path, nil, { authorization = "Bearer k" })))
      local _, clk = call(sim, "POST", "/_sim/clock", { advance = 2.5 })
      assert.equal(2.5, clk.offset)
      assert.equal(200, (call(sim, "GET", path, nil, { authorization = "Bearer k" })))
    end)

    it("answers 400 to bad control bodies and 404/405 to unknown endpoints", function()
      assert.equal(400, (call(sim, "POST", "/_sim/config", "{")))
      assert.equal(400, (call(sim, "POST", "/_sim/config", { nobody = {} })))
      assert.equal(400, (call(sim, "POST", "/_sim/faults", { type = "nope" })))
      assert.equal(404, (call(sim, "GET", "/_sim/nothing")))
      assert.equal(405, (call(sim, "PUT", "/_sim/stats")))
    end)
  end)
end)
