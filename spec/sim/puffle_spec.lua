local support = require "sim.support"
local cjson = require "cjson"

local KEY = { authorization = "Bearer pk_live_SIMKEY" }

local function leads(n, prefix)
  local t = {}
  for i = 1, n do t[i] = (prefix or "ld_") .. i end
  return t
end

describe("sim puffle", function()
  local sim, call
  before_each(function()
    sim = support.new_sim()
    call = support.client(sim, "/puffle", KEY)
  end)

  local function start(ids, extra)
    local body = { enrichmentId = "work_email", scope = { type = "explicit_leads", leadIds = ids } }
    for k, v in pairs(extra or {}) do body[k] = v end
    return call("POST", "/api/enrichment", body)
  end

  it("lists the catalog, filtered by id or text", function()
    local status, body = call("GET", "/api/enrichments")
    assert.equal(200, status)
    local slugs = {}
    for _, c in ipairs(body.enrichments) do slugs[#slugs + 1] = c.slug end
    assert.same({ "work_email", "phone_number", "website_overview" }, slugs)
    assert.equal("EMAIL_LOOKUP", body.enrichments[1].costModel.creditAction)
    status, body = call("GET", "/api/enrichments?id=phone_number")
    assert.equal(200, status)
    assert.equal(1, #body.enrichments)
    local _, _, res = call("GET", "/api/enrichments?q=nothing-like-this")
    assert.is_true(support.has_empty_array(res.body, "enrichments"))
  end)

  it("starts a run, charges leadCount x cost up front and reports pending", function()
    local status, body = start(leads(3))
    assert.equal(200, status)
    assert.matches("^run_", body.enrichmentRunId)
    assert.equal(body.enrichmentRunId, body.runId)
    assert.equal("pending", body.status)
    assert.equal(3, body.leadCount)
    assert.matches("^trg_", body.triggerRunId)
    assert.is_false(body.reusedExistingRun)
    assert.equal(6, sim:stats().providers.puffle.credits.charged)
  end)

  it("moves pending -> running -> completed with live counts", function()
    sim:configure { puffle = { polls = 3 } }
    local _, s = start(leads(4))
    local path = "/api/enrichment/" .. s.runId
    local seen = {}
    for i = 1, 4 do
      local _, b = call("GET", path)
      seen[i] = b.run.status .. ":" .. math.floor(b.run.scope.counts.completed)
    end
    assert.same({ "pending:0", "running:1", "running:2", "completed:4" }, seen)
    local _, b = call("GET", path)
    assert.equal(4, b.run.scope.resolvedCount)
    assert.is_string(b.run.timing.completedAt)
    assert.same({ credits = 8 }, b.run.cost.actual)
    assert.equal(cjson.null, b.run.error)
  end)

  it("reuses the run for the same idempotencyKey without charging again", function()
    local _, a = start(leads(2), { idempotencyKey = "job-1" })
    local status, b = start(leads(2), { idempotencyKey = "job-1" })
    assert.equal(200, status)
    assert.equal(a.runId, b.runId)
    assert.is_true(b.reusedExistingRun)
    local st = sim:stats().providers.puffle
    assert.equal(4, st.credits.charged)
    assert.equal(1, st.jobs)
    assert.equal(1, st.reused)
    assert.equal(1, st.inputs["ld_1|work_email"])
  end)

  it("charges nothing in preview mode", function()
    assert.equal(200, (start(leads(2), { mode = "preview" })))
    assert.equal(0, sim:stats().providers.puffle.credits.charged)
  end)

  it("answers 402 {required, balance} and creates nothing when the balance is short", function()
    sim:configure { puffle = { credits = 5 } }
    local status, body = start(leads(3))
    assert.equal(402, status)
    assert.same({ required = 6, balance = 5 }, body)
    assert.equal(0, sim:stats().providers.puffle.jobs)
  end)

  it("runs over a configured list scope", function()
    sim:configure { puffle = { lists = { lst_1 = { "ld_a", "ld_b" } } } }
    local status, body = call("POST", "/api/enrichment",
      { enrichmentId = "phone_number", scope = { type = "list", listId = "lst_1" } })
    assert.equal(200, status)
    assert.equal(2, body.leadCount)
    assert.equal(16, sim:stats().providers.puffle.credits.charged)
  end)

  describe("items", function()
    local function finished_run(ids)
      local _, s = start(ids)
      call("GET", "/api/enrichment/" .. s.runId)
      call("GET", "/api/enrichment/" .. s.runId)
      return "/api/enrichment/" .. s.runId .. "/items"
    end

    it("pages 120 items 50 at a time by default with a stable cursor", function()
      local path = finished_run(leads(120))
      local got, cursor, pages = {}, nil, 0
      repeat
        local _, b = call("GET", path .. (cursor and ("?cursor=" .. cursor) or ""))
        pages = pages + 1
        assert.equal(50, b.page.limit)
        for _, it in ipairs(b.items) do got[#got + 1] = it.leadId end
        cursor = b.page.hasMore and b.page.nextCursor or nil
      until not cursor or pages > 5
      assert.equal(3, pages)
      assert.equal(120, #got)
      assert.equal("ld_1", got[1])
      assert.equal("ld_120", got[120])
    end)

    it("gives per-lead results and filters by status and leadId", function()
      local path = finished_run { "ld_1", "ld_notfound", "ld_itemfail" }
      local _, b = call("GET", path .. "?limit=100")
      assert.equal(100, b.page.limit)
      assert.equal(cjson.null, b.page.nextCursor)
      assert.is_false(b.page.hasMore)
      assert.equal("completed", b.items[1].status)
      assert.matches("@", b.items[1].result.email)
      assert.equal("completed", b.items[2].status)
      assert.equal(cjson.null, b.items[2].result)
      assert.equal("failed", b.items[3].status)
      assert.is_string(b.items[3].error.message)
      _, b = call("GET", path .. "?status=failed")
      assert.equal(1, #b.items)
      _, b = call("GET", path .. "?leadId=ld_notfound")
      assert.equal("ld_notfound", b.items[1].leadId)
    end)

    local bad = { "limit=101", "limit=0", "limit=abc", "status=weird" }
    for _, q in ipairs(bad) do
      it("answers 400 to ?" .. q, function()
        local path = finished_run(leads(1))
        local status, body = call("GET", path .. "?" .. q)
        assert.equal(400, status)
        assert.is_string(body.error)
      end)
    end
  end)

  describe("cancel", function()
    it("cancels a running run: done items stay, the running one finishes, the rest skip", function()
      sim:configure { puffle = { polls = 4 } }
      local _, s = start(leads(5))
      local base = "/api/enrichment/" .. s.runId
      call("GET", base); call("GET", base); call("GET", base)   -- 2 of 5 done, 3rd running
      local status, body = call("POST", base .. "/cancel")
      assert.equal(200, status)
      assert.equal("cancelled", body.run.status)
      assert.is_string(body.run.cancelledAt)
      local _, r = call("GET", base)
      assert.equal("cancelled", r.run.status)
      assert.same({ pending = 0, running = 0, completed = 3, skipped = 2, failed = 0 }, r.run.scope.counts)
      local _, items = call("GET", base .. "/items?status=skipped")
      assert.equal("run_cancelled", items.items[1].skippedReason)
      assert.equal(10, sim:stats().providers.puffle.credits.charged)  -- no refund
    end)

    it("answers 409 run_not_cancellable once the run is terminal", function()
      local _, s = start(leads(1))
      local base = "/api/enrichment/" .. s.runId
      call("GET", base); call("GET", base)
      local status, body = call("POST", base .. "/cancel")
      assert.equal(409, status)
      assert.equal("run_not_cancellable", body.reason)
    end)

    it("answers 409 run_not_cancellable to a second cancel", function()
      local _, s = start(leads(2))
      local base = "/api/enrichment/" .. s.runId
      assert.equal(200, (call("POST", base .. "/cancel")))
      assert.equal(409, (call("POST", base .. "/cancel")))
    end)
  end)

  it("fails a 'jobfail' run with run.error and every item failed", function()
    local _, s = start { "ld_1", "ld_jobfail" }
    local base = "/api/enrichment/" .. s.runId
    call("GET", base)
    local _, r = call("GET", base)
    assert.equal("failed", r.run.status)
    assert.is_string(r.run.error.message)
    assert.equal(2, r.run.scope.counts.failed)
  end)

  it("cancels a 'jobcancel' run on the provider side", function()
    local _, s = start { "ld_jobcancel" }
    local base = "/api/enrichment/" .. s.runId
    call("GET", base)
    local _, r = call("GET", base)
    assert.equal("cancelled", r.run.status)
    assert.equal(1, r.run.scope.counts.skipped)
  end)

  describe("errors", function()
    local EXPLICIT = { type = "explicit_leads", leadIds = { "a" } }
    local cases = {
      { "invalid JSON", "{", 400 },
      { "a missing enrichmentId", { scope = { type = "explicit_leads", leadIds = { "a" } } }, 400 },
      { "an unknown enrichment", { enrichmentId = "nope", scope = EXPLICIT }, 404 },
      { "a missing scope", { enrichmentId = "work_email" }, 400 },
      { "an empty lead list", { enrichmentId = "work_email", scope = { type = "explicit_leads", leadIds = {} } }, 400 },
      { "501 leads", { enrichmentId = "work_email", scope = { type = "explicit_leads", leadIds = leads(501) } }, 400 },
      { "a filtered_list scope", { enrichmentId = "work_email", scope = { type = "filtered_list", listId = "l" } },
        400 },
      { "an unknown list", { enrichmentId = "work_email", scope = { type = "list", listId = "nope" } }, 404 },
      { "a bad mode", { enrichmentId = "work_email", mode = "x", scope = EXPLICIT }, 400 },
    }
    for _, c in ipairs(cases) do
      it("answers " .. c[3] .. " {error} to " .. c[1], function()
        local status, body = call("POST", "/api/enrichment", c[2])
        assert.equal(c[3], status)
        assert.is_string(body.error)
      end)
    end

    it("hides another key's run with 404", function()
      local _, s = start(leads(1))
      assert.equal(404, (call("GET", "/api/enrichment/" .. s.runId, nil, { authorization = "Bearer pk_other" })))
    end)

    it("answers 401 without Bearer and for a revoked key", function()
      assert.equal(401, (call("GET", "/api/enrichments", nil, { authorization = "pk_live_SIMKEY" })))
      sim:configure { revoke = "pk_live_SIMKEY" }
      assert.equal(401, (call("GET", "/api/enrichments")))
    end)
  end)
end)
