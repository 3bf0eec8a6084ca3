-- tamtam end to end against the simulator: every outcome and error path.
local support = require "engine.support"
local enrich = require "enrich"

describe("tamtam through the engine", function()
  local sim

  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  local function person(first, last, row)
    return { first_name = first, last_name = last, domain = "example.com", custom = { row = row } }
  end

  it("finds emails and keeps input order and custom untouched", function()
    local custom = { row = "17", nested = { keep = true } }
    local inputs = { person("Ada", "Byron"), person("Grace", "Hopper"),
                     { first_name = "Alan", last_name = "Turing", domain = "example.org", custom = custom } }
    local job = support.run_job(support.client(sim, "tamtam"), inputs, { kind = "email" })
    assert.equal("succeeded", job.state)
    assert.equal("tamtam", job.provider)
    assert.is_string(job.id)
    assert.same({ total = 3, found = 3, not_found = 0, failed = 0, pending = 0 }, job.counts)
    for i, r in ipairs(job.results) do
      assert.equal(i, r.index)
      assert.equal(inputs[i], r.input)
      assert.equal("found", r.status)
      assert.matches("@", r.email)
      assert.is_true(#r.emails >= 1)
    end
    assert.matches("^ada", job.results[1].email)
    assert.equal(custom, job.results[3].custom)
    assert.equal(3, job.cost.credits)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", job.finished_at)
    assert.equal("COMPLETED", job.raw.status)
    assert.equal(job.id, job.raw.request_id)
  end)

  it("lower-cases email verdicts and picks the most probable address", function()
    local job = support.run_job(support.client(sim, "tamtam"), { person("Mara", "Quill") })
    local r = job.results[1]
    for _, e in ipairs(r.emails) do assert.equal(e.status, e.status:lower()) end
    assert.equal(r.raw.most_probable_email, r.email)
  end)

  it("reports phones for kind = phone", function()
    local job = support.run_job(support.client(sim, "tamtam"), { person("Oskar", "Fenn") }, { kind = "phone" })
    assert.equal("found", job.results[1].status)
    assert.matches("^%+", job.results[1].phone)
    assert.equal(10, job.cost.credits)
  end)

  it("ends partial when items are not found or fail, with one item per input", function()
    local job = support.run_job(support.client(sim, "tamtam"),
      { person("Ada", "Byron", "1"), person("Nobody", "Notfound", "2"), person("Bad", "Itemfail", "3") })
    assert.equal("partial", job.state)
    assert.same({ "found", "not_found", "failed" },
      { job.results[1].status, job.results[2].status, job.results[3].status })
    assert.equal("2", job.results[2].custom.row)
    assert.is_truthy(job.results[3].error)
  end)

  it("ends failed when the provider fails the whole request", function()
    local job = support.run_job(support.client(sim, "tamtam"), { person("Ada", "Jobfail", "1"), person("B", "C", "2") })
    assert.equal("failed", job.state)
    assert.equal("server", job.error.code)
    assert.equal("failed", job.results[1].status)
    assert.equal("2", job.results[2].custom.row)
  end)

  it("times out at the poll deadline, keeping the provider id", function()
    local client = support.client(sim, "tamtam", { poll = { interval = 0.01, factor = 1, jitter = 0, deadline = 0.3 } })
    local job = support.run_job(client, { person("Slow", "Jobhang") })
    assert.equal("timed_out", job.state)
    assert.equal("timeout", job.error.code)
    assert.is_string(job.id)
    assert.equal("pending", job.results[1].status)
  end)

  it("cancels locally (tamtam has no cancel endpoint)", function()
    local client = support.client(sim, "tamtam",
      { poll = { interval = 0.05, factor = 1, jitter = 0, deadline = 5 }, coalesce = false })
    local job = assert(client:submit({ person("Slow", "Jobhang", "9") }))
    enrich.sleep(0.1)
    assert.equal(job, job:cancel())
    assert.equal("cancelled", job.state)
    assert.equal("cancelled", job.error.code)
    assert.equal("9", job.results[1].custom.row)
  end)

  it("refuses bad input data with 'invalid' before sending anything", function()
    local client = support.client(sim, "tamtam")
    local cases = { { {} }, { "Ada" }, { { custom = { row = 1 } } }, { person("A", "B"), 42 } }
    for _, inputs in ipairs(cases) do
      local job, err = client:submit(inputs)
      assert.is_nil(job)
      assert.equal("invalid", err.code)
    end
    local _, err = client:submit({ person("A", "B") }, { kind = "fax" })
    assert.equal("invalid", err.code)
    assert.equal(0, support.stats(sim, "tamtam").submissions)
  end)

  it("raises on misuse of the API", function()
    local client = support.client(sim, "tamtam")
    assert.has_error(function() client:submit("Ada") end)
    assert.has_error(function() client:submit({ x = 1 }) end)
    assert.has_error(function() client:submit({ person("A", "B") }, { colour = "red" }) end)
    assert.has_error(function() enrich.client("tamtam", { api_key = "k", speed = 1 }) end)
  end)

  it("maps a revoked key to 'auth' and a missing one to 'auth' before sending", function()
    support.configure(sim, { revoke = "bad-key" })
    local job = support.run_job(support.client(sim, "tamtam", { api_key = "bad-key" }), { person("A", "B") })
    assert.equal("failed", job.state)
    assert.equal("auth", job.error.code)
    assert.equal(401, job.error.status)
    local none, err = enrich.client("tamtam", {})
    assert.is_nil(none)
    assert.equal("auth", err.code)
  end)

  it("maps running out of credits to 'credits' and stops submitting to tamtam", function()
    support.configure(sim, { tamtam = { credits = 0 } })
    local client = support.client(sim, "tamtam", { api_key = "poor-key" })
    local job = support.run_job(client, { person("A", "B") })
    assert.equal("failed", job.state)
    assert.equal("credits", job.error.code)
    local before = support.stats(sim, "tamtam").requests
    local again, err = client:submit({ person("C", "D") })
    assert.is_nil(again)
    assert.equal("credits", err.code)
    assert.same(before, support.stats(sim, "tamtam").requests)
    client:resume_submitting()
  end)

  it("maps a 404 on the status read to 'not_found'", function()
    support.fault(sim, { type = 404, provider = "tamtam", method = "GET", count = 1 })
    local job = support.run_job(support.client(sim, "tamtam"), { person("A", "B") })
    assert.equal("failed", job.state)
    assert.equal("not_found", job.error.code)
  end)

  it("retries a submit refused with 429, submitting each person once", function()
    support.fault(sim, { type = 429, provider = "tamtam", method = "POST", count = 2 })
    local job = support.run_job(support.client(sim, "tamtam"), { person("Ada", "Byron") })
    assert.equal("succeeded", job.state)
    local stats = support.stats(sim, "tamtam")
    assert.equal(1, stats.submissions)
    assert.same({}, stats.duplicates)
  end)

  it("keeps polling through 5xx answers and ends well", function()
    support.fault(sim, { type = 503, provider = "tamtam", method = "GET", count = 3 })
    local job = support.run_job(support.client(sim, "tamtam"), { person("Ada", "Byron") })
    assert.equal("succeeded", job.state)
  end)

  it("does not resend a submit that failed with 5xx: it may have been processed", function()
    support.fault(sim, { type = 500, provider = "tamtam", method = "POST", count = 1 })
    local job = support.run_job(support.client(sim, "tamtam"), { person("Ada", "Byron") })
    assert.equal("failed", job.state)
    assert.equal("server", job.error.code)
    assert.equal(500, job.error.status)
    assert.equal(1, support.stats(sim, "tamtam").requests["POST /v2/people/enrich"])
  end)

  it("survives a malformed status body", function()
    support.fault(sim, { type = "malformed", provider = "tamtam", method = "GET", count = 1 })
    local job = support.run_job(support.client(sim, "tamtam"), { person("Ada", "Byron") })
    assert.equal("succeeded", job.state)
  end)

  it("splits more than 100 people into several requests behind one job", function()
    local inputs = {}
    for i = 1, 230 do inputs[i] = person("P" .. i, "Person", tostring(i)) end
    local job = support.run_job(support.client(sim, "tamtam", { rate = { per_second = 1000, burst = 1000 } }), inputs)
    assert.equal("succeeded", job.state)
    assert.equal(230, #job.results)
    for i = 1, 230 do assert.equal(tostring(i), job.results[i].custom.row) end
    local stats = support.stats(sim, "tamtam")
    assert.equal(3, stats.requests["POST /v2/people/enrich"])
    assert.same({}, stats.duplicates)
  end)

  -- Until the job has polled n times (bounded).
  local function polled(job, n)
    for _ = 1, 500 do
      if job.polls >= n then return end
      enrich.sleep(0.01)
    end
    error("job did not poll " .. n .. " times")
  end

  it("waits holding no prepared inputs, only each part's count; results still follow input order", function()
    -- One "in progress" answer, then the next poll is an hour away: the job waits.
    local client = support.client(sim, "tamtam", { rate = { per_second = 1000, burst = 1000 },
      poll = { interval = 0.01, factor = 360000, max_interval = 3600, jitter = 0, deadline = 7200 } })
    local inputs = {}
    for i = 1, 230 do inputs[i] = person("P" .. i, i % 50 == 0 and "Notfound" or "Person", tostring(i)) end
    local job = assert(client:submit(inputs))
    polled(job, 1)
    assert.equal("running", job.state)
    assert.equal("PROCESSING", job.raw.status)
    assert.equal(3, #job.parts)
    for i, part in ipairs(job.parts) do
      assert.is_nil(part.inputs)
      assert.equal(i < 3 and 100 or 30, part.count)
      assert.is_string(part.id)
      assert.is_nil(part.items)
      assert.is_nil(part.raw)
      assert.is_nil(part.done)
    end
    local snap = job:snapshot()
    assert.same({ 100, 100, 30 }, { snap.parts[1].count, snap.parts[2].count, snap.parts[3].count })
    assert.is_nil(snap.parts[1].inputs)
    assert.equal(job, job:refresh())                  -- the second poll: completed
    assert.equal("succeeded", job.state)
    assert.same({ total = 230, found = 226, not_found = 4, failed = 0, pending = 0 }, job.counts)
    for i = 1, 230 do
      local r = job.results[i]
      assert.equal(i, r.index)
      assert.equal(inputs[i], r.input)
      assert.equal(tostring(i), r.custom.row)
      assert.equal(i % 50 == 0 and "not_found" or "found", r.status)
      if r.email then assert.matches("^p" .. i .. "%.", r.email) end
    end
    assert.equal(230, job.cost.credits)
  end)

  it("times out a waiting job whose inputs are gone with one item per input", function()
    local client = support.client(sim, "tamtam", { poll = { interval = 0.01, factor = 1, jitter = 0, deadline = 0.3 } })
    local job = support.run_job(client, { person("Slow", "Jobhang", "1"), person("Also", "Slow", "2") })
    assert.equal("timed_out", job.state)
    assert.is_nil(job.parts[1].inputs)
    assert.same({ total = 2, found = 0, not_found = 0, failed = 0, pending = 2 }, job.counts)
    assert.equal("2", job.results[2].custom.row)
  end)

  it("cancels a waiting job whose inputs are gone with one item per input", function()
    local client = support.client(sim, "tamtam",
      { poll = { interval = 0.01, factor = 1000, jitter = 0, deadline = 60 } })
    local job = assert(client:submit({ person("Ada", "Byron", "1"), person("Grace", "Hopper", "2") }))
    polled(job, 1)
    job:cancel()
    assert.equal("cancelled", job.state)
    assert.same({ total = 2, found = 0, not_found = 0, failed = 0, pending = 2 }, job.counts)
    assert.same({ "1", "2" }, { job.results[1].custom.row, job.results[2].custom.row })
  end)

  it("applies a client's own rate to its key, even after another client of that key", function()
    local first = support.client(sim, "tamtam", { api_key = "shared-key" })
    local second = support.client(sim, "tamtam", { api_key = "shared-key", rate = { per_second = 2, burst = 1 } })
    assert.equal(first.shared, second.shared)
    assert.equal(2, second.shared.bucket.rate)
    local t0 = require("enrich.core").now()
    support.run_job(second, { person("A", "B") })       -- submit + polls at 2 per second
    assert.is_true(require("enrich.core").now() - t0 >= 0.4)
  end)

  it("redacts the key when a provider's error text echoes it", function()
    support.fault(sim, { type = 401, provider = "tamtam", method = "POST", count = 1,
                         body = { title = "Unauthorized", detail = "key sk_echoed_4242 is not valid" } })
    local job = support.run_job(support.client(sim, "tamtam", { api_key = "sk_echoed_4242" }), { person("A", "B") })
    assert.equal("auth", job.error.code)
    assert.matches("%[redacted%]", job.error.message)
    assert.is_nil(tostring(job.error):find("sk_echoed_4242", 1, true))
  end)

  it("never shows the key in errors or in the client", function()
    support.configure(sim, { revoke = "sk_secret_123" })
    local client = support.client(sim, "tamtam", { api_key = "sk_secret_123" })
    local job = support.run_job(client, { person("A", "B") })
    assert.is_nil(tostring(job.error):find("sk_secret_123", 1, true))
    assert.is_nil(tostring(client):find("sk_secret_123", 1, true))
  end)
end)
