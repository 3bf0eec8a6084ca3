local support = require "sim.support"
local cjson = require "cjson"

local KEY = { authorization = "Bearer lnc_SIMTOKEN" }
local P1 = "1b0c6c0e-7e55-4a51-9c53-0a0a0a0a0a01"
local P2 = "1b0c6c0e-7e55-4a51-9c53-0a0a0a0a0a02"
local function coded(code) return "1b0c6c0e-7e55-4a51-9c53-00000000" .. code end

describe("sim lance", function()
  local sim, call
  before_each(function()
    sim = support.new_sim()
    call = support.client(sim, "/lance", KEY)
  end)

  local function trigger(person, field)
    return call("POST", "/api/v1/operations/enrichment/" .. person .. "?field=" .. (field or "emails"))
  end
  local function get(person, field)
    return call("GET", "/api/v1/operations/enrichment/" .. person .. "?field=" .. (field or "emails"))
  end

  it("creates a pending record with every documented field", function()
    local status, r = trigger(P1)
    assert.equal(200, status)
    assert.equal("pending", r.status)
    assert.equal(P1, r.entityId)
    assert.equal("person", r.entityType)
    assert.equal("emails", r.field)
    for _, k in ipairs { "error", "dataFound", "globalEnrichmentId", "creditTransactionId" } do
      assert.equal(cjson.null, r[k], k)
    end
    assert.matches("^user_", r.createdBy)
    assert.matches("^org_", r.orgId)
    assert.is_string(r.createdAt)
  end)

  it("finishes on the clock, charges, and puts the emails on the person", function()
    local _, before = call("GET", "/api/v1/entities/prospects/person/" .. P1)
    assert.equal(0, #before.emails)
    local _, first = trigger(P1)
    local _, r = get(P1)
    assert.equal("pending", r.status)
    _, r = get(P1)
    assert.equal("finished", r.status)
    assert.is_true(r.dataFound)
    assert.is_string(r.creditTransactionId)
    assert.equal(first.id, r.id)
    local _, person = call("GET", "/api/v1/entities/prospects/person/" .. P1)
    assert.equal(P1, person.id)
    assert.matches("@", person.emails[1])
    assert.equal(0, #person.phones)
    assert.equal(1, sim:stats().providers.lance.credits.charged)
  end)

  it("returns the existing pending or finished record on a repeated POST without charging", function()
    local _, a = trigger(P1)
    local _, b = trigger(P1)
    assert.equal(a.id, b.id)
    get(P1); get(P1)
    local _, c = trigger(P1)
    assert.equal(a.id, c.id)
    assert.equal("finished", c.status)
    local st = sim:stats().providers.lance
    assert.equal(1, st.jobs)
    assert.equal(2, st.reused)
    assert.equal(1, st.inputs[P1 .. "|emails"])
    assert.equal(1, st.credits.charged)
  end)

  local outcomes = {
    { "0404", "finished", false, cjson.null },
    { "0500", "failed", cjson.null, "All providers returned errors" },
    { "0408", "timeout", cjson.null, "Enrichment exceeded maximum processing time" },
    { "0410", "cancelled", cjson.null, "Enrichment cancelled" },
  }
  for _, o in ipairs(outcomes) do
    it("ends a person whose id ends in 00000000" .. o[1] .. " as " .. o[2], function()
      trigger(coded(o[1]))
      local _, r = support.poll_until(call, "/api/v1/operations/enrichment/" .. coded(o[1]) .. "?field=emails",
        function(_, b) return b.status ~= "pending" end)
      assert.equal(o[2], r.status)
      assert.equal(o[3], r.dataFound)
      assert.equal(o[4], r.error)
      assert.equal(cjson.null, r.creditTransactionId)
    end)
  end

  it("keeps a ...000000000102 record pending until the ceiling turns it into timeout", function()
    sim:configure { lance = { ceiling_ms = 5000 } }
    trigger(coded("0102"))
    for _ = 1, 5 do assert.equal("pending", select(2, get(coded("0102"))).status) end
    sim.test_clock.now = sim.test_clock.now + 6
    assert.equal("timeout", select(2, get(coded("0102"))).status)
  end)

  it("counts a repeated POST as a status read", function()
    trigger(P2)
    trigger(P2)
    local _, r = trigger(P2)
    assert.equal("finished", r.status)
  end)

  it("creates a fresh record (charged again) after a failed one", function()
    local p = coded("0500")
    local _, a = trigger(p)
    get(p); get(p)
    local _, b = trigger(p)
    assert.are_not.equal(a.id, b.id)
    assert.equal("pending", b.status)
  end)

  it("answers 404 NOT_FOUND for a person without a record", function()
    local status, body = get(P2, "phones")
    assert.equal(404, status)
    assert.equal("NOT_FOUND", body.error.code)
  end)

  describe("batch, bulk and batch query", function()
    it("triggers a batch and returns one record per person, reusing live ones", function()
      local _, existing = trigger(P1)
      local status, list = call("POST", "/api/v1/operations/enrichment/batch",
        { personIds = { P1, P2 }, field = "emails" })
      assert.equal(200, status)
      assert.equal(2, #list)
      assert.equal(existing.id, list[1].id)
      assert.equal(P2, list[2].entityId)
    end)

    it("triggers a manual bulk selection", function()
      local status, list = call("POST", "/api/v1/operations/enrichment/bulk",
        { selection = { mode = "manual", includedIds = { P1, P2 } }, field = "phones" })
      assert.equal(200, status)
      assert.equal("phones", list[2].field)
    end)

    it("answers a batch query only for tasks that have a record", function()
      call("POST", "/api/v1/operations/enrichment/batch", { personIds = { P1, coded("0404") }, field = "emails" })
      local tasks = {
        { entityId = P1, field = "emails" }, { entityId = coded("0404"), field = "emails", entityType = "person" },
        { entityId = P2, field = "emails" }, { entityId = P1, field = "summary", entityType = "company" },
      }
      local status, list = call("POST", "/api/v1/operations/enrichment/batch/query", { tasks = tasks })
      assert.equal(200, status)
      assert.equal(2, #list)
      status, list = call("POST", "/api/v1/operations/enrichment/batch/query", { tasks = tasks })
      assert.equal(200, status)
      assert.same({ true, false }, { list[1].dataFound, list[2].dataFound })
    end)

    it("answers an empty batch query result as []", function()
      local _, _, res = call("POST", "/api/v1/operations/enrichment/batch/query",
        { tasks = { { entityId = P2, field = "phones" } } })
      assert.equal("[]", res.body)
    end)

    it("refuses a batch the balance cannot pay with 402 and creates nothing", function()
      sim:configure { lance = { credits = 15 } }
      local status, body = call("POST", "/api/v1/operations/enrichment/batch",
        { personIds = { P1, P2 }, field = "phones" })
      assert.equal(402, status)
      assert.equal("INSUFFICIENT_CREDITS", body.error.code)
      assert.same({ required = 20, available = 15 }, body.error.details)
      assert.equal(0, sim:stats().providers.lance.jobs)
    end)
  end)

  describe("validation", function()
    local many, tasks = {}, {}
    for i = 1, 101 do many[i] = string.format("1b0c6c0e-7e55-4a51-9c53-%012d", i) end
    for i = 1, 201 do tasks[i] = { entityId = P1, field = "emails" } end
    local cases = {
      { "a bad field", "POST", "/api/v1/operations/enrichment/" .. P1 .. "?field=fax", nil,
        "field must be one of: phones, emails" },
      { "a person id that is not a UUID", "POST", "/api/v1/operations/enrichment/nope?field=emails", nil },
      { "101 person ids", "POST", "/api/v1/operations/enrichment/batch", { personIds = many, field = "emails" } },
      { "no person ids", "POST", "/api/v1/operations/enrichment/batch", { personIds = {}, field = "emails" } },
      { "a batch without field", "POST", "/api/v1/operations/enrichment/batch", { personIds = { P1 } } },
      { "201 query tasks", "POST", "/api/v1/operations/enrichment/batch/query", { tasks = tasks } },
      { "a bad task field", "POST", "/api/v1/operations/enrichment/batch/query",
        { tasks = { { entityId = P1, field = "fax" } } } },
      { "a filter bulk selection", "POST", "/api/v1/operations/enrichment/bulk",
        { selection = { mode = "filter" }, field = "emails" } },
      { "invalid JSON", "POST", "/api/v1/operations/enrichment/batch", "{" },
    }
    for _, c in ipairs(cases) do
      it("answers 400 VALIDATION_ERROR to " .. c[1], function()
        local status, body = call(c[2], c[3], c[4])
        assert.equal(400, status)
        assert.equal("VALIDATION_ERROR", body.error.code)
        if c[5] then assert.equal(c[5], body.error.message) end
      end)
    end
  end)

  describe("auth", function()
    it("answers 401 without a Bearer token", function()
      local status, body = trigger(P1, "emails") -- with the token: fine
      assert.equal(200, status)
      assert.equal("pending", body.status)
      status, body = call("POST", "/api/v1/operations/enrichment/" .. P1 .. "?field=emails", nil,
        { authorization = "" })
      assert.equal(401, status)
      assert.equal("VALIDATION_ERROR", body.error.code)
    end)

    it("answers 400 'Organization ID is missing' for a token without organisation", function()
      local status, body = call("POST", "/api/v1/operations/enrichment/batch/query",
        { tasks = { { entityId = P1, field = "emails" } } }, { authorization = "Bearer lnc_noorg" })
      assert.equal(400, status)
      assert.equal("Organization ID is missing", body.error.message)
    end)

    it("serves the person record without a token", function()
      assert.equal(200, (call("GET", "/api/v1/entities/prospects/person/" .. P1, nil, { authorization = "" })))
    end)

    it("answers 401 UNAUTHORIZED for a revoked token", function()
      sim:configure { revoked_keys = { "lnc_SIMTOKEN" } }
      local status, body = trigger(P1)
      assert.equal(401, status)
      assert.equal("UNAUTHORIZED", body.error.code)
    end)
  end)
end)
