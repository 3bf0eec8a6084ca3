-- lance end to end against the simulator: every outcome and error path.
local support = require "engine.support"
local enrich = require "enrich"

local BATCH = "POST /api/v1/operations/enrichment/batch"
local QUERY = "POST /api/v1/operations/enrichment/batch/query"
local PERSON = "GET /api/v1/entities/prospects/person/{id}"

-- A person UUID v4; coded ones end in eight zeros and the simulator's code
-- (0404 not found, 0500 failed, 0408 timeout, 0410 cancelled, 0102 pending).
local function uuid(n) return string.format("1b0c6c0e-7e55-4a51-9c53-a%011x", n) end
local function coded(code) return "1b0c6c0e-7e55-4a51-9c53-00000000" .. code end
local function person(id, row) return { id = id, custom = row and { row = row } or nil } end

describe("lance through the engine", function()
  local sim

  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  -- The spec's requests are many and quick: lift lance's 5/s client limit.
  local function client(opts) return support.fast_rate_client(sim, "lance", opts) end

  it("finds emails on the person, keeps input order and custom untouched", function()
    local custom = { row = "3", nested = { keep = true } }
    local inputs = { person(uuid(1), "1"), person(uuid(2), "2"), { id = uuid(3), custom = custom } }
    local job = support.run_job(client(), inputs, { kind = "email" })
    assert.equal("succeeded", job.state)
    assert.equal("lance", job.provider)
    assert.matches("^%x+%-", job.id)
    assert.same({ total = 3, found = 3, not_found = 0, failed = 0, pending = 0 }, job.counts)
    for i, r in ipairs(job.results) do
      assert.equal(i, r.index)
      assert.equal(inputs[i], r.input)
      assert.equal("found", r.status)
      assert.matches("@example%.com$", r.email)
      assert.equal("unknown", r.emails[1].status)
      assert.equal(inputs[i].id, r.raw.entityId)
      assert.equal("finished", r.raw.status)
    end
    assert.equal(custom, job.results[3].custom)
    local stats = support.stats(sim, "lance")
    assert.equal(1, stats.requests[BATCH])
    assert.equal(3, stats.requests[PERSON])
    assert.equal(3, stats.credits.charged)
  end)

  it("reads phones for kind = phone", function()
    local job = support.run_job(client(), { person(uuid(7)) }, { kind = "phone" })
    assert.equal("succeeded", job.state)
    assert.matches("^%+1%-555%-", job.results[1].phone)
    assert.is_nil(job.results[1].phones[1].region)
    assert.equal("phones", job.results[1].raw.field)
    assert.equal(10, support.stats(sim, "lance").credits.charged)
  end)

  it("ends partial with found, not found, failed, timed-out and cancelled records", function()
    local job = support.run_job(client(), {
      person(uuid(1), "1"), person(coded("0404"), "2"), person(coded("0500"), "3"),
      person(coded("0408"), "4"), person(coded("0410"), "5") })
    assert.equal("partial", job.state)
    local r = job.results
    assert.same({ "found", "not_found", "failed", "failed", "failed" },
      { r[1].status, r[2].status, r[3].status, r[4].status, r[5].status })
    assert.same({ "server", "timeout", "cancelled" }, { r[3].error.code, r[4].error.code, r[5].error.code })
    assert.equal("All providers returned errors", r[3].error.message)
    assert.equal("2", r[2].custom.row)
    assert.same({ total = 5, found = 1, not_found = 1, failed = 3, pending = 0 }, job.counts)
    assert.equal(1, support.stats(sim, "lance").requests[PERSON])
  end)

  it("fails an item whose record is missing from the batch query (no record, not pending)", function()
    support.fault(sim, { type = "200", provider = "lance", method = "POST", path = "batch/query$",
                         body = "[]", count = 1 })
    local job = support.run_job(client(), { person(uuid(1), "1") })
    assert.equal("partial", job.state)
    assert.equal("failed", job.results[1].status)
    assert.equal("not_found", job.results[1].error.code)
  end)

  it("ends failed when the batch trigger keeps failing", function()
    support.fault(sim, { type = 500, provider = "lance", method = "POST", path = "batch$", count = 20 })
    local job = support.run_job(client(), { person(uuid(1), "1"), person(uuid(2), "2") })
    assert.equal("failed", job.state)
    assert.equal("server", job.error.code)
    assert.equal(500, job.error.status)
    assert.equal("INTERNAL_ERROR", job.error.provider_code)
    assert.same({ "failed", "failed" }, { job.results[1].status, job.results[2].status })
    assert.equal("2", job.results[2].custom.row)
    assert.equal(0, support.stats(sim, "lance").submissions)
  end)

  it("times out at the poll deadline, keeping the record id", function()
    local c = client({ poll = { interval = 0.01, factor = 1, jitter = 0, deadline = 0.3 } })
    local job = support.run_job(c, { person(coded("0102"), "1") })
    assert.equal("timed_out", job.state)
    assert.equal("timeout", job.error.code)
    assert.is_string(job.id)
    assert.equal("pending", job.results[1].status)
    assert.equal("1", job.results[1].custom.row)
  end)

  it("cancels locally (lance documents no cancel endpoint)", function()
    local c = client({ poll = { interval = 0.05, factor = 1, jitter = 0, deadline = 5 }, coalesce = false })
    local job = assert(c:submit({ person(coded("0102"), "9") }))
    enrich.sleep(0.1)
    assert.equal(job, job:cancel())
    assert.equal("cancelled", job.state)
    assert.equal("cancelled", job.error.code)
    assert.equal("pending", job.results[1].status)
    assert.equal("9", job.results[1].custom.row)
    local requests = support.stats(sim, "lance").requests
    assert.is_nil(requests.unmatched)
    assert.equal(1, requests[BATCH])
  end)

  it("refuses bad input data with 'invalid' before sending anything", function()
    local c = client()
    local cases = {
      { {} }, { "1b0c6c0e-7e55-4a51-9c53-0a0a0a0a0a01" }, { { id = "not-a-uuid" } }, { { id = 42 } },
      { { id = "1b0c6c0e-7e55-1a51-9c53-0a0a0a0a0a01" } },           -- not v4
      { { id = "1b0c6c0e-7e55-4a51-9c53-0a0a0a0a0a01/../x" } },
      { person(uuid(1)), { id = uuid(2), custom = "row" } },
    }
    for i, inputs in ipairs(cases) do
      local job, err = c:submit(inputs)
      assert.is_nil(job, "case " .. i)
      assert.equal("invalid", err.code)
    end
    local _, err = c:submit({ person(uuid(1)) }, { kind = "fax" })
    assert.equal("invalid", err.code)
    local stats = support.stats(sim, "lance")
    assert.equal(0, stats.submissions)
    assert.same({}, stats.requests)
  end)

  it("raises on misuse of the API", function()
    local c = client()
    assert.has_error(function() c:submit(uuid(1)) end)
    assert.has_error(function() c:submit({ person(uuid(1)) }, { enrichment = "work_email" }) end)
  end)

  it("maps a revoked key and a key without organisation to 'auth'", function()
    support.configure(sim, { revoke = "bad-key" })
    local job = support.run_job(client({ api_key = "bad-key" }), { person(uuid(1)) })
    assert.equal("failed", job.state)
    assert.equal("auth", job.error.code)
    assert.equal(401, job.error.status)
    assert.equal("UNAUTHORIZED", job.error.provider_code)
    job = support.run_job(client({ api_key = "key-noorg" }), { person(uuid(1)) })
    assert.equal("auth", job.error.code)
    assert.equal(400, job.error.status)
    assert.matches("Organization ID is missing", job.error.message)
  end)

  it("maps 402 INSUFFICIENT_CREDITS to 'credits' and stops submitting", function()
    support.configure(sim, { lance = { credits = 0 } })
    local c = client({ api_key = "poor-key" })
    local job = support.run_job(c, { person(uuid(1)) })
    assert.equal("failed", job.state)
    assert.equal("credits", job.error.code)
    assert.equal("INSUFFICIENT_CREDITS", job.error.provider_code)
    local before = support.stats(sim, "lance").requests
    local again, err = c:submit({ person(uuid(2)) })
    assert.is_nil(again)
    assert.equal("credits", err.code)
    assert.same(before, support.stats(sim, "lance").requests)
    assert.equal(0, support.stats(sim, "lance").submissions)
    c:resume_submitting()
  end)

  it("maps a 404 on the batch query to 'not_found'", function()
    support.fault(sim, { type = 404, provider = "lance", method = "POST", path = "batch/query$", count = 1 })
    local job = support.run_job(client(), { person(uuid(1)) })
    assert.equal("failed", job.state)
    assert.equal("not_found", job.error.code)
    assert.equal("NOT_FOUND", job.error.provider_code)
  end)

  it("retries a trigger refused with 429, creating each record once", function()
    support.fault(sim, { type = 429, provider = "lance", method = "POST", path = "batch$", count = 2 })
    local job = support.run_job(client(), { person(uuid(1)) })
    assert.equal("succeeded", job.state)
    local stats = support.stats(sim, "lance")
    assert.equal(3, stats.requests[BATCH])
    assert.equal(1, stats.submissions)
    assert.same({}, stats.duplicates)
  end)

  it("resends a trigger whose answer was a 5xx: the records come back, charged once", function()
    -- after = true: the records are created, then the answer is lost.
    support.fault(sim, { type = 503, provider = "lance", method = "POST", path = "batch$", after = true })
    local job = support.run_job(client(), { person(uuid(1)), person(uuid(2)) })
    assert.equal("succeeded", job.state)
    local stats = support.stats(sim, "lance")
    assert.equal(2, stats.requests[BATCH])
    assert.equal(1, stats.submissions)
    assert.equal(2, stats.reused)
    assert.same({}, stats.duplicates)
    assert.equal(2, stats.credits.charged)
  end)

  it("keeps polling through 5xx answers on the query and the person read", function()
    support.fault(sim, { { type = 503, provider = "lance", method = "POST", path = "batch/query$", count = 2 },
                         { type = 502, provider = "lance", method = "GET", path = "/person/", count = 1 } })
    local job = support.run_job(client(), { person(uuid(1)) })
    assert.equal("succeeded", job.state)
    assert.matches("@", job.results[1].email)
    local requests = support.stats(sim, "lance").requests
    assert.is_true(requests[QUERY] >= 3)
    assert.equal(2, requests[PERSON])
  end)

  it("survives malformed bodies on the trigger and the query", function()
    support.fault(sim, { { type = "malformed", provider = "lance", method = "POST", path = "batch$" },
                         { type = "malformed", provider = "lance", method = "POST", path = "batch/query$" } })
    local job = support.run_job(client(), { person(uuid(1)) })
    assert.equal("succeeded", job.state)
    local stats = support.stats(sim, "lance")
    assert.equal(2, stats.requests[BATCH])
    assert.equal(1, stats.submissions)
    assert.same({}, stats.duplicates)
  end)

  it("splits more than 100 people into several batches behind one job", function()
    local inputs = {}
    for i = 1, 230 do inputs[i] = person(uuid(i), tostring(i)) end
    local job = support.run_job(client(), inputs)
    assert.equal("succeeded", job.state)
    assert.equal(230, #job.results)
    for i = 1, 230 do
      assert.equal(tostring(i), job.results[i].custom.row)
      assert.equal(inputs[i].id, job.results[i].raw.entityId)
    end
    local stats = support.stats(sim, "lance")
    assert.equal(3, stats.requests[BATCH])
    assert.equal(3, stats.submissions)
    assert.same({}, stats.duplicates)
    assert.equal(230, stats.credits.charged)
  end)

  it("reuses the record of a person already enriched: a second job costs nothing", function()
    local c = client()
    local first = support.run_job(c, { person(uuid(1)), person(uuid(1)) })
    assert.equal("succeeded", first.state)
    assert.equal(first.results[1].email, first.results[2].email)
    local second = support.run_job(c, { person(uuid(1)) })
    assert.equal("succeeded", second.state)
    assert.equal(first.id, second.id)
    assert.equal(first.results[1].email, second.results[1].email)
    local stats = support.stats(sim, "lance")
    assert.equal(1, stats.submissions)
    assert.equal(1, stats.reused)
    assert.same({}, stats.duplicates)
    assert.equal(1, stats.credits.charged)
  end)

  it("never shows the key in errors or in the client", function()
    support.configure(sim, { revoke = "lnc_secret_123" })
    local c = client({ api_key = "lnc_secret_123" })
    local job = support.run_job(c, { person(uuid(1)) })
    assert.is_nil(tostring(job.error):find("lnc_secret_123", 1, true))
    assert.is_nil(tostring(c):find("lnc_secret_123", 1, true))
  end)
end)
