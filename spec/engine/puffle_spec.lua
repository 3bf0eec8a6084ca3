-- puffle end to end against the simulator: every outcome and error path.
local support = require "engine.support"
local enrich = require "enrich"

local START = "POST /api/enrichment"
local STATUS = "GET /api/enrichment/{id}"
local ITEMS = "GET /api/enrichment/{id}/items"
local CANCEL = "POST /api/enrichment/{id}/cancel"

local function lead(id, row) return { id = id, custom = row and { row = row } or nil } end

describe("puffle through the engine", function()
  local sim

  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  -- The spec's requests are many and quick: lift puffle's client limit.
  local function client(opts) return support.fast_rate_client(sim, "puffle", opts) end

  -- Drives the loop until the job has polled n times (bounded).
  local function polled(job, n)
    for _ = 1, 200 do
      if job.polls >= n then return end
      enrich.sleep(0.01)
    end
    error("job did not poll " .. n .. " times")
  end

  it("finds work emails, keeps input order and custom untouched, reports credits", function()
    local custom = { row = "3", nested = { keep = true } }
    local inputs = { lead("ld_ada", "1"), lead("ld_grace", "2"), { id = "ld_alan", custom = custom } }
    local job = support.run_job(client(), inputs, { kind = "email" })
    assert.equal("succeeded", job.state)
    assert.equal("puffle", job.provider)
    assert.matches("^run_", job.id)
    assert.same({ total = 3, found = 3, not_found = 0, failed = 0, pending = 0 }, job.counts)
    for i, r in ipairs(job.results) do
      assert.equal(i, r.index)
      assert.equal(inputs[i], r.input)
      assert.equal("found", r.status)
      assert.equal(r.fields.email, r.email)
      assert.same({ { address = r.email, status = "unknown" } }, r.emails)
      assert.equal(inputs[i].id, r.raw.leadId)
    end
    assert.equal("ldada@ldada.example", job.results[1].email)
    assert.equal(custom, job.results[3].custom)
    assert.equal(6, job.cost.credits)
    local stats = support.stats(sim, "puffle")
    assert.equal(6, stats.credits.charged)
    assert.equal(1, stats.requests[ITEMS])
  end)

  it("reads phones for kind = phone (slug phone_number)", function()
    local job = support.run_job(client(), { lead("ld_oskar") }, { kind = "phone" })
    assert.equal("succeeded", job.state)
    assert.matches("^%+1555", job.results[1].phone)
    assert.equal(8, job.cost.credits)
  end)

  it("keeps the idempotency key in the job's snapshot, and no secret", function()
    local c = support.fast_rate_client(sim, "puffle", { api_key = "pk_live_snapshot_secret" })
    local job = support.run_job(c, { lead("ld_snap_1"), lead("ld_snap_2") })
    local snap = job:snapshot()
    assert.equal(2, snap.v)
    assert.equal("puffle", snap.provider)
    assert.equal(job.id, snap.parts[1].id)
    assert.is_string(snap.parts[1].idempotency_key)
    assert.equal(2, snap.parts[1].count)
    local text = require("cjson").encode(snap)
    assert.is_nil(text:find("pk_live_snapshot_secret", 1, true))
  end)

  it("runs any catalog contract given as opts.enrichment, output in fields", function()
    local job = support.run_job(client(), { lead("co_acme") }, { enrichment = "website_overview" })
    assert.equal("succeeded", job.state)
    assert.equal("found", job.results[1].status)
    assert.matches("co_acme", job.results[1].fields.overview)
    assert.is_nil(job.results[1].email)
    assert.equal(1, job.cost.credits)
  end)

  it("ends partial when items are not found or fail, with one item per input", function()
    local job = support.run_job(client(),
      { lead("ld_ada", "1"), lead("ld_notfound", "2"), lead("ld_itemfail", "3") })
    assert.equal("partial", job.state)
    local r = job.results
    assert.same({ "found", "not_found", "failed" }, { r[1].status, r[2].status, r[3].status })
    assert.equal("2", r[2].custom.row)
    assert.equal("server", r[3].error.code)
    assert.equal("Provider returned an error", r[3].error.message)
  end)

  it("ends failed when puffle fails the run", function()
    local job = support.run_job(client(), { lead("ld_jobfail", "1"), lead("ld_b", "2") })
    assert.equal("failed", job.state)
    assert.equal("server", job.error.code)
    assert.equal("Worker crashed while calling provider", job.error.message)
    assert.equal("upstream_timeout", job.error.provider_code)
    assert.same({ "failed", "failed" }, { job.results[1].status, job.results[2].status })
    assert.equal("2", job.results[2].custom.row)
  end)

  it("fails with 'cancelled' a run puffle cancelled on its side, items skipped", function()
    local job = support.run_job(client(), { lead("ld_jobcancel", "1"), lead("ld_b", "2") })
    assert.equal("failed", job.state)
    assert.equal("cancelled", job.error.code)
    for _, r in ipairs(job.results) do
      assert.equal("failed", r.status)
      assert.equal("cancelled", r.error.code)
      assert.equal("run_cancelled", r.error.provider_code)
    end
  end)

  it("times out at the poll deadline, keeping the run id", function()
    local c = client({ poll = { interval = 0.01, factor = 1, jitter = 0, deadline = 0.3 } })
    local job = support.run_job(c, { lead("ld_jobhang", "1") })
    assert.equal("timed_out", job.state)
    assert.equal("timeout", job.error.code)
    assert.matches("^run_", job.id)
    assert.equal("pending", job.results[1].status)
  end)

  it("cancels at puffle: the running item finishes, the pending ones come back cancelled", function()
    support.configure(sim, { puffle = { polls = 1000 } })
    local c = client({ poll = { interval = 0.02, factor = 1, jitter = 0, deadline = 5 } })
    local job = assert(c:submit({ lead("ld_jobhang_a", "1"), lead("ld_b", "2"), lead("ld_c", "3") }))
    polled(job, 2)                   -- the run is running, its first item too
    assert.equal(job, job:cancel())
    assert.equal("cancelled", job.state)
    assert.equal("cancelled", job.error.code)
    local r = job.results
    assert.equal("found", r[1].status)
    assert.equal("ldjobhanga@ldjobhanga.example", r[1].email)
    for i = 2, 3 do
      assert.equal("failed", r[i].status)
      assert.equal("cancelled", r[i].error.code)
      assert.equal(tostring(i), r[i].custom.row)
    end
    assert.equal(6, job.cost.credits)                  -- charged at dispatch, never refunded
    local stats = support.stats(sim, "puffle")
    assert.equal(1, stats.requests[CANCEL])
    assert.equal(1, stats.requests[ITEMS])
  end)

  it("keeps what a cancel writes to a part while a poll of that part comes back meanwhile", function()
    support.configure(sim, { puffle = { polls = 1000 } })
    local c = client({ poll = { interval = 0.02, factor = 1, jitter = 0, deadline = 5 } })
    local job = assert(c:submit({ lead("ld_jobhang_a", "1"), lead("ld_b", "2"), lead("ld_c", "3") }))
    polled(job, 1)
    -- The next status read takes 0.1 s; the cancel reaches puffle only after 0.3 s:
    -- that poll still sees the run going, and ends while the cancel runs.
    support.fault(sim, {
      { type = "latency", seconds = 0.1, provider = "puffle", method = "GET", path = "^/api/enrichment/[^/]+$" },
      { type = "latency", seconds = 0.3, after = false, provider = "puffle", method = "POST", path = "/cancel$" },
    })
    local jobs = require "enrich.job"
    for _ = 1, 200 do
      if jobs.is_checking(job) then break end
      enrich.sleep(0.005)
    end
    assert.is_true(jobs.is_checking(job))
    job:cancel()
    assert.equal("cancelled", job.state)
    for i = 2, 3 do
      assert.equal("failed", job.results[i].status)
      assert.equal("cancelled", job.results[i].error.code)
    end
    -- The poll under way when the cancel began counts for nothing, and none follows.
    assert.equal(1, job.polls)
    assert.equal(3, support.stats(sim, "puffle").requests["GET /api/enrichment/{id}"])  -- 2 polls, 1 by cancel
  end)

  it("treats 409 run_not_cancellable as cancelled and re-tries after run_status_changed", function()
    support.configure(sim, { puffle = { polls = 1000 } })
    local c = client({ poll = { interval = 0.02, factor = 1, jitter = 0, deadline = 5 } })
    local job = assert(c:submit({ lead("ld_jobhang_a", "1") }))
    polled(job, 1)
    support.fault(sim, { type = 409, provider = "puffle", method = "POST", path = "/cancel$",
                         body = { error = "run_not_cancellable", reason = "run_not_cancellable" } })
    job:cancel()
    assert.equal("cancelled", job.state)
    assert.is_nil(job.parts[1].cancel_error)
    assert.equal(1, support.stats(sim, "puffle").requests[CANCEL])

    job = assert(c:submit({ lead("ld_jobhang_b", "1") }))
    polled(job, 1)
    support.fault(sim, { type = 409, provider = "puffle", method = "POST", path = "/cancel$" })
    job:cancel()
    assert.equal("cancelled", job.state)
    assert.is_nil(job.parts[1].cancel_error)
    assert.equal(3, support.stats(sim, "puffle").requests[CANCEL])
  end)

  it("refuses bad input data with 'invalid' before sending anything", function()
    local c = client()
    local cases = { { {} }, { "ld_ada" }, { { id = "" } }, { { id = {} } }, { lead("ld_a"), { id = "b", custom = 1 } } }
    for i, inputs in ipairs(cases) do
      local job, err = c:submit(inputs)
      assert.is_nil(job, "case " .. i)
      assert.equal("invalid", err.code)
    end
    local _, err = c:submit({ lead("ld_a") }, { kind = "fax" })
    assert.equal("invalid", err.code)
    _, err = c:submit({ lead("ld_a") }, { enrichment = 5 })
    assert.equal("invalid", err.code)
    local stats = support.stats(sim, "puffle")
    assert.equal(0, stats.submissions)
    assert.same({}, stats.requests)
  end)

  it("raises on misuse of the API", function()
    local c = client()
    assert.has_error(function() c:submit("ld_a") end)
    assert.has_error(function() c:submit({ lead("ld_a") }, { field = "emails" }) end)
  end)

  it("maps a revoked key to 'auth'", function()
    support.configure(sim, { revoke = "bad-key" })
    local job = support.run_job(client({ api_key = "bad-key" }), { lead("ld_a") })
    assert.equal("failed", job.state)
    assert.equal("auth", job.error.code)
    assert.equal(401, job.error.status)
    assert.matches("revoked", job.error.message)
  end)

  it("maps 402 {required, balance} to 'credits' and stops submitting", function()
    support.configure(sim, { puffle = { credits = 3 } })
    local c = client({ api_key = "poor-key" })
    local job = support.run_job(c, { lead("ld_a"), lead("ld_b") })
    assert.equal("failed", job.state)
    assert.equal("credits", job.error.code)
    assert.equal(402, job.error.status)
    assert.matches("needs 4 credits, balance 3", job.error.message)
    local before = support.stats(sim, "puffle").requests
    local again, err = c:submit({ lead("ld_c") })
    assert.is_nil(again)
    assert.equal("credits", err.code)
    assert.same(before, support.stats(sim, "puffle").requests)
    assert.equal(0, support.stats(sim, "puffle").submissions)
    c:resume_submitting()
  end)

  it("maps a 404 on the status read to 'not_found'", function()
    support.fault(sim, { type = 404, provider = "puffle", method = "GET", path = "^/api/enrichment/[^/]+$" })
    local job = support.run_job(client(), { lead("ld_a") })
    assert.equal("failed", job.state)
    assert.equal("not_found", job.error.code)
  end)

  it("retries a start refused with 429, starting one run", function()
    support.fault(sim, { type = 429, provider = "puffle", method = "POST", path = "^/api/enrichment$", count = 2 })
    local job = support.run_job(client(), { lead("ld_a") })
    assert.equal("succeeded", job.state)
    local stats = support.stats(sim, "puffle")
    assert.equal(3, stats.requests[START])
    assert.equal(1, stats.submissions)
    assert.same({}, stats.duplicates)
  end)

  it("resends a start whose answer was a 5xx: the idempotency key reuses the run, charged once", function()
    -- after = true: the run is created and charged, then the answer is lost.
    support.fault(sim, { type = 500, provider = "puffle", method = "POST", path = "^/api/enrichment$",
                         after = true })
    local job = support.run_job(client(), { lead("ld_a"), lead("ld_b") })
    assert.equal("succeeded", job.state)
    local stats = support.stats(sim, "puffle")
    assert.equal(2, stats.requests[START])
    assert.equal(1, stats.submissions)
    assert.equal(1, stats.reused)
    assert.equal(1, stats.jobs)
    assert.same({}, stats.duplicates)
    assert.equal(4, stats.credits.charged)
    assert.equal(4, job.cost.credits)
  end)

  it("keeps polling through 5xx answers on the status and the items", function()
    support.fault(sim, {
      { type = 503, provider = "puffle", method = "GET", path = "^/api/enrichment/[^/]+$", count = 2 },
      { type = 502, provider = "puffle", method = "GET", path = "/items$", count = 1 } })
    local job = support.run_job(client(), { lead("ld_a") })
    assert.equal("succeeded", job.state)
    assert.equal("found", job.results[1].status)
    local requests = support.stats(sim, "puffle").requests
    assert.is_true(requests[STATUS] >= 4)
    assert.equal(2, requests[ITEMS])
  end)

  it("survives malformed bodies on the start, the status and the items", function()
    support.fault(sim, { { type = "malformed", provider = "puffle", method = "POST", path = "^/api/enrichment$" },
                         { type = "malformed", provider = "puffle", method = "GET", path = "^/api/enrichment/[^/]+$" },
                         { type = "malformed", provider = "puffle", method = "GET", path = "/items$" } })
    local job = support.run_job(client(), { lead("ld_a") })
    assert.equal("succeeded", job.state)
    local stats = support.stats(sim, "puffle")
    assert.equal(1, stats.submissions)
    assert.equal(1, stats.reused)
    assert.equal(2, stats.credits.charged)
  end)

  it("splits more than 500 leads into several runs, pages the items, keeps order", function()
    local inputs = {}
    for i = 1, 520 do inputs[i] = lead("ld_" .. i, tostring(i)) end
    local job = support.run_job(client(), inputs)
    assert.equal("succeeded", job.state)
    assert.equal(520, #job.results)
    for i = 1, 520 do
      assert.equal(tostring(i), job.results[i].custom.row)
      assert.equal("ld_" .. i, job.results[i].raw.leadId)
    end
    local stats = support.stats(sim, "puffle")
    assert.equal(2, stats.requests[START])
    assert.equal(6, stats.requests[ITEMS])             -- 5 pages of 100, then 1
    assert.same({}, stats.duplicates)
    assert.equal(1040, stats.credits.charged)
    assert.equal(1040, job.cost.credits)
  end)

  it("sends a lead listed twice once, and gives every job its own run", function()
    local c = client()
    local job = support.run_job(c, { lead("ld_a", "1"), lead("ld_a", "2") })
    assert.equal("succeeded", job.state)
    assert.equal(job.results[1].email, job.results[2].email)
    assert.equal(2, job.cost.credits)
    local again = support.run_job(c, { lead("ld_a") })
    assert.are_not.equal(job.id, again.id)
    local stats = support.stats(sim, "puffle")
    assert.equal(2, stats.submissions)
    assert.equal(0, stats.reused)
  end)

  it("never shows the key in errors or in the client", function()
    support.configure(sim, { revoke = "pk_live_secret_123" })
    local c = client({ api_key = "pk_live_secret_123" })
    local job = support.run_job(c, { lead("ld_a") })
    assert.is_nil(tostring(job.error):find("pk_live_secret_123", 1, true))
    assert.is_nil(tostring(c):find("pk_live_secret_123", 1, true))
  end)
end)
