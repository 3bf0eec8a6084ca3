local support = require "sim.support"
local util = require "enrich.sim.util"

local KEY = { authorization = "tt_live_SIMKEY" }

local function person(extra)
  local p = { enrichment_type = "email", first_name = "Mara", last_name = "Quill",
              company_domain = "example.com", custom = { row_id = "r-1" } }
  for k, v in pairs(extra or {}) do p[k] = v end
  return p
end

describe("sim tamtam", function()
  local sim, call
  before_each(function()
    sim = support.new_sim()
    call = support.client(sim, "/tamtam", KEY)
  end)

  local function submit(requests)
    local status, body = call("POST", "/v2/people/enrich", { requests = requests })
    assert.equal(202, status)
    return body.request_id
  end

  it("accepts a batch with 202, a request id and the item count", function()
    local status, body = call("POST", "/v2/people/enrich", { requests = { person(), person { first_name = "Oskar" } } })
    assert.equal(202, status)
    assert.is_true(util.is_uuid(body.request_id))
    assert.equal(2, body.item_count)
  end)

  it("answers PROCESSING with results null, then COMPLETED with items in order", function()
    local id = submit {
      person(),
      { enrichment_type = "phone", linkedin_url = "https://www.linkedin.com/in/oskar-fenn-example",
        custom = { row_id = "r-2" } },
    }
    local status, body, res = call("GET", "/v2/people/enrich/" .. id)
    assert.equal(200, status)
    assert.equal("PROCESSING", body.status)
    assert.truthy(res.body:find('"results":null', 1, true))
    status, body = call("GET", "/v2/people/enrich/" .. id)
    assert.equal(200, status)
    assert.equal("COMPLETED", body.status)
    assert.equal(id, body.request_id)
    assert.equal(2, body.item_count)
    local email, phone = body.results[1], body.results[2]
    assert.same({ row_id = "r-1" }, email.custom)
    assert.equal("COMPLETED", email.status)
    assert.equal("mara.quill@example.com", email.most_probable_email)
    assert.same({ "DELIVERABLE", "CATCH_ALL", "UNKNOWN" },
      { email.emails[1].status, email.emails[2].status, email.emails[3].status })
    assert.same({ row_id = "r-2" }, phone.custom)
    assert.equal("phone", phone.enrichment_type)
    assert.matches("^%+1555%d%d%d%d%d%d%d$", phone.phones[1].number)
    assert.equal("US", phone.phones[1].region)
  end)

  it("returns the same data for the same person every time", function()
    local a = submit { person { enrichment_type = "phone" } }
    local b = submit { person { enrichment_type = "phone" } }
    local function done(_, x) return x.status ~= "PROCESSING" end
    local _, ra = support.poll_until(call, "/v2/people/enrich/" .. a, done)
    local _, rb = support.poll_until(call, "/v2/people/enrich/" .. b, done)
    assert.equal(ra.results[1].phones[1].number, rb.results[1].phones[1].number)
  end)

  it("accepts the firstname/lastname spelling too", function()
    local status = call("POST", "/v2/people/enrich",
      { requests = { { enrichment_type = "email", firstname = "Ada", lastname = "Byron" } } })
    assert.equal(202, status)
  end)

  describe("outcomes chosen by the input", function()
    local cases = {
      { "notfound", "COMPLETED", 0, "" },
      { "itemfail", "FAILED", 0, "person could not be resolved" },
    }
    for _, c in ipairs(cases) do
      it("gives a " .. c[2] .. " item for a name with '" .. c[1] .. "'", function()
        local id = submit { person { last_name = "Quill-" .. c[1] } }
        local _, body = support.poll_until(call, "/v2/people/enrich/" .. id,
          function(_, b) return b.status ~= "PROCESSING" end)
        assert.equal("COMPLETED", body.status)
        assert.equal(c[2], body.results[1].status)
        assert.equal(c[3], #body.results[1].emails)
        assert.equal(c[4], body.results[1].error)
      end)
    end

    it("fails the whole request with results [] for 'jobfail'", function()
      local id = submit { person(), person { company_domain = "jobfail.example" } }
      local _, body, res = support.poll_until(call, "/v2/people/enrich/" .. id,
        function(_, b) return b.status ~= "PROCESSING" end)
      assert.equal("FAILED", body.status)
      assert.is_true(support.has_empty_array(res.body, "results"))
    end)

    it("never finishes a request with 'jobhang'", function()
      sim:configure { tamtam = { rate_limit = false } }
      local id = submit { person { company_name = "Jobhang Ltd" } }
      local _, body = support.poll_until(call, "/v2/people/enrich/" .. id,
        function(_, b) return b.status ~= "PROCESSING" end, 20)
      assert.equal("PROCESSING", body.status)
    end)

    it("takes an explicit per-input outcome from the control API", function()
      local p = person { first_name = "Plain" }
      assert(sim:configure { tamtam = { outcomes = { [require("enrich.sim.tamtam").input_key(p)] = "not_found" } } })
      local id = submit { p }
      local _, body = support.poll_until(call, "/v2/people/enrich/" .. id,
        function(_, b) return b.status ~= "PROCESSING" end)
      assert.equal(0, #body.results[1].emails)
    end)
  end)

  describe("the clock", function()
    it("completes after the configured number of polls", function()
      sim:configure { tamtam = { polls = 3 } }
      local id = submit { person() }
      local seen = {}
      for i = 1, 4 do seen[i] = select(2, call("GET", "/v2/people/enrich/" .. id)).status end
      assert.same({ "PROCESSING", "PROCESSING", "PROCESSING", "COMPLETED" }, seen)
    end)

    it("completes only once the configured milliseconds have passed", function()
      sim:configure { tamtam = { polls = 0, ms = 500 } }
      local id = submit { person() }
      assert.equal("PROCESSING", select(2, call("GET", "/v2/people/enrich/" .. id)).status)
      sim.test_clock.now = sim.test_clock.now + 0.6
      assert.equal("COMPLETED", select(2, call("GET", "/v2/people/enrich/" .. id)).status)
    end)

    it("finishes a job on demand through the job control", function()
      local id = submit { person { first_name = "jobhang" } }
      assert(sim:control_job("tamtam", id, { outcome = "complete", finish = true }))
      assert.equal("COMPLETED", select(2, call("GET", "/v2/people/enrich/" .. id)).status)
    end)
  end)

  describe("credits", function()
    it("reserves at submit, charges completed items and releases failed ones", function()
      local id = submit { person(), person { enrichment_type = "phone", first_name = "itemfail" } }
      local _, c = call("GET", "/v2/credits")
      assert.same({ credit_type = "MaxPeopleEnrichments", used_credits = 11, total_credits = 100000,
                    remaining_credits = 99989 }, c.credits[1])
      support.poll_until(call, "/v2/people/enrich/" .. id, function(_, b) return b.status ~= "PROCESSING" end)
      _, c = call("GET", "/v2/credits")
      assert.equal(1, c.credits[1].used_credits)
      assert.same({ reserved = 11, charged = 1, released = 10 }, sim:stats().providers.tamtam.credits)
    end)

    it("refuses a batch it cannot reserve with 402 problem+json", function()
      sim:configure { tamtam = { credits = 5 } }
      local status, body, res = call("POST", "/v2/people/enrich",
        { requests = { person { enrichment_type = "phone" } } })
      assert.equal(402, status)
      assert.equal("application/problem+json", res.headers["Content-Type"])
      assert.equal(10, body.errors[1].value)
      assert.equal(0, sim:stats().providers.tamtam.submissions)
    end)
  end)

  describe("validation", function()
    local many = {}
    for i = 1, 101 do many[i] = person { first_name = "P" .. i } end
    local cases = {
      { "invalid JSON", "{nope", 400, "body" },
      { "an empty batch", { requests = {} }, 422, "body.requests" },
      { "101 people", { requests = many }, 422, "body.requests", "expected at most 100 items" },
      { "a missing requests field", { other = 1 }, 422, "body.other" },
      { "an unknown item property", { requests = { person { favourite = "x" } } }, 422, "body.requests[0].favourite" },
      { "a missing enrichment_type", { requests = { { first_name = "A", last_name = "B" } } }, 422,
        "body.requests[0].enrichment_type" },
      { "an unknown enrichment_type", { requests = { person { enrichment_type = "fax" } } }, 422,
        "body.requests[0].enrichment_type" },
      { "a person without any identifier", { requests = { { enrichment_type = "email" } } }, 422,
        "body.requests[0]" },
    }
    for _, c in ipairs(cases) do
      it("answers " .. c[3] .. " problem+json to " .. c[1], function()
        local status, body, res = call("POST", "/v2/people/enrich", c[2])
        assert.equal(c[3], status)
        assert.equal("application/problem+json", res.headers["Content-Type"])
        assert.equal(c[3], body.status)
        assert.equal("about:blank", body.type)
        assert.equal("/api/v2/people/enrich", body.instance)
        assert.equal(c[4], body.errors[1].location)
        if c[5] then assert.equal(c[5], body.errors[1].message) end
      end)
    end

    it("answers 404 problem+json for an unknown request id", function()
      local status, body = call("GET", "/v2/people/enrich/00000000-0000-4000-8000-000000000000")
      assert.equal(404, status)
      assert.equal("Not Found", body.title)
    end)
  end)

  describe("auth", function()
    it("answers 401 without a key", function()
      assert.equal(401, (call("GET", "/v2/credits", nil, { authorization = "" })))
    end)

    it("refuses an API key sent with a Bearer prefix", function()
      local status, body = call("GET", "/v2/credits", nil, { authorization = "Bearer tt_live_SIMKEY" })
      assert.equal(401, status)
      assert.matches("without the Bearer prefix", body.detail)
    end)

    it("accepts a dashboard JWT as Bearer", function()
      assert.equal(200, (call("GET", "/v2/credits", nil, { authorization = "Bearer aaa.bbb.ccc" })))
    end)

    it("answers 401 for a key marked revoked", function()
      sim:configure { revoked_keys = { "tt_live_SIMKEY" } }
      assert.equal(401, (call("GET", "/v2/credits")))
    end)
  end)

  describe("rate limit", function()
    it("allows 10 requests a second per key across routes, then a bare 429", function()
      for i = 1, 10 do
        local status = call("GET", i % 2 == 0 and "/v2/credits" or "/v2/people/enrich/x")
        assert.is_true(status == 200 or status == 404)
      end
      local status, body, res = call("GET", "/v2/credits")
      assert.equal(429, status)
      assert.same({ Message = "Too Many Requests" }, body)
      assert.is_nil(res.headers["Retry-After"])
      -- another key has its own bucket
      assert.equal(200, (call("GET", "/v2/credits", nil, { authorization = "tt_other" })))
      sim.test_clock.now = sim.test_clock.now + 0.15
      assert.equal(200, (call("GET", "/v2/credits")))
      assert.equal(429, (call("GET", "/v2/credits")))
    end)

    it("can be turned off or resized by configuration", function()
      sim:configure { tamtam = { rate_limit = false } }
      for _ = 1, 50 do assert.equal(200, (call("GET", "/v2/credits"))) end
      sim:configure { tamtam = { rate_limit = { rate = 2, burst = 2 } } }
      assert.equal(200, (call("GET", "/v2/credits", nil, { authorization = "k2" })))
      assert.equal(200, (call("GET", "/v2/credits", nil, { authorization = "k2" })))
      assert.equal(429, (call("GET", "/v2/credits", nil, { authorization = "k2" })))
    end)
  end)
end)
