-- lance's mapping, table-driven over the sheet's example exchanges
-- (spec/fixtures/lance/*.json; abbreviated ids of the sheet written out).
local cjson = require "cjson"
local errors = require "enrich.errors"
local support = require "mapping.support"
local P = require "enrich.providers.lance"

local function fixture(name) return support.fixture("lance", name) end

local P1 = "1b0c6c0e-7e55-4a51-9c53-0a0a0a0a0a01"
local function id(n) return "1b0c6c0e-7e55-4a51-9c53-0a0a0a0a0a0" .. n end

-- A ctx answering from a table: answers["METHOD path"] = body or function(req).
local function fake_ctx(answers) return support.fake_ctx("lance", answers) end

describe("lance mapping", function()
  describe("prepare", function()
    local cases = {
      { "a person UUID v4, kind email", { id = P1 }, {}, { id = P1, field = "emails" } },
      { "kind phone", { id = P1 }, { kind = "phone" }, { id = P1, field = "phones" } },
      { "upper-case hex", { id = P1:upper() }, {}, { id = P1:upper(), field = "emails" } },
      { "spaces around", { id = " " .. P1 .. " " }, {}, { id = P1, field = "emails" } },
      { "no id", {}, {}, nil },
      { "a string instead of a table", P1, {}, nil },
      { "a number id", { id = 7 }, {}, nil },
      { "not a UUID", { id = "person-1" }, {}, nil },
      { "a UUID v1", { id = "1b0c6c0e-7e55-1a51-9c53-0a0a0a0a0a01" }, {}, nil },
      { "a UUID with a bad variant", { id = "1b0c6c0e-7e55-4a51-7c53-0a0a0a0a0a01" }, {}, nil },
      { "a path in the id", { id = P1 .. "/../../x" }, {}, nil },
      { "custom not a table", { id = P1, custom = "row" }, {}, nil },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local out, why = P.prepare(c[2], c[3])
        if c[4] then
          assert.same(c[4], out)
        else
          assert.is_nil(out)
          assert.is_string(why)
        end
      end)
    end
  end)

  describe("record_item: record status -> item", function()
    local query = fixture("batch_query_partial")
    local cases = {
      { "pending", fixture("record_pending"), "pending" },
      { "finished, dataFound true", fixture("record_finished_found"), "found" },
      { "finished, dataFound true (batch query)", query[1], "found" },
      { "finished, dataFound false", query[2], "not_found" },
      { "failed", query[3], "failed", "server", "All providers returned errors" },
      { "timeout", fixture("record_timeout"), "failed", "timeout", "Enrichment exceeded maximum processing time" },
      { "cancelled", fixture("record_cancelled"), "failed", "cancelled", "enrichment cancelled" },
      { "no record at all", nil, "failed", "not_found" },
      { "finished, dataFound still null", { status = "finished", dataFound = cjson.null }, "pending" },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " -> " .. c[3], function()
        local item = P.record_item(c[2])
        assert.equal(c[3], item.status)
        assert.equal(c[2], item.raw)
        if c[4] then
          assert.equal(c[4], item.error.code)
          assert.is_false(item.error.retryable)
          assert.equal("lance", item.error.provider)
        else
          assert.is_nil(item.error)
        end
        if c[5] then assert.equal(c[5], item.error.message) end
      end)
    end

    it("an undocumented status -> that item failed with 'protocol' (the others still count)", function()
      local item = P.record_item({ status = "queued" })
      assert.equal("failed", item.status)
      assert.equal("protocol", item.error.code)
      item = P.record_item({ status = "finished", dataFound = "yes" })
      assert.equal("protocol", item.error.code)
    end)
  end)

  describe("person_item: the person read after a finished record", function()
    local record = fixture("record_finished_found")
    it("emails are plain strings: status unknown, the first is the pick", function()
      local item = P.person_item(record, fixture("person_found"), "emails")
      assert.equal("found", item.status)
      assert.same({ { address = "rina.holloway@example.com", status = "unknown" } }, item.emails)
      assert.equal("rina.holloway@example.com", item.email)
      assert.same({}, item.phones)
      assert.equal(record, item.raw)
    end)
    it("phones: number as given, no region, blank entries dropped", function()
      local item = P.person_item(record, fixture("person_phones"), "phones")
      assert.equal("found", item.status)
      assert.same({ { number = "+1-555-010-0199" } }, item.phones)
      assert.equal("+1-555-010-0199", item.phone)
    end)
    it("data found but nothing for the field asked -> not_found", function()
      assert.equal("not_found", P.person_item(record, fixture("person_found"), "phones").status)
      assert.equal("not_found", P.person_item(record, { emails = cjson.null }, "emails").status)
    end)
  end)

  describe("error bodies -> code", function()
    local cases = {
      { 400, "error_validation", "invalid", "VALIDATION_ERROR", "field must be one of: phones, emails" },
      { 400, "error_org_missing", "auth", "VALIDATION_ERROR", "Organization ID is missing" },
      { 401, "error_unauthorized_validation", "auth", "VALIDATION_ERROR" },
      { 401, "error_unauthorized", "auth", "UNAUTHORIZED" },
      { 402, "error_insufficient_credits", "credits", "INSUFFICIENT_CREDITS",
        "Not enough credits for 2 phone enrichments" },
      { 404, "error_not_found", "not_found", "NOT_FOUND" },
      { 500, "error_internal", "server", "INTERNAL_ERROR" },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " " .. c[2] .. " -> " .. c[3], function()
        local msg, provider_code, fields = P.error({ status = c[1], json = fixture(c[2]), headers = {} })
        assert.equal(c[3], fields.code or errors.code_for_status(c[1]))
        assert.equal(c[4], provider_code)
        assert.is_string(msg)
        if c[5] then assert.equal(c[5], msg) end
      end)
    end
    it("a body that is not the envelope gives no message (the engine uses the HTTP status)", function()
      local msg, code, fields = P.error({ status = 502, body = "<html>", headers = {} })
      assert.is_nil(msg)
      assert.is_nil(code)
      assert.is_nil(fields.code)
    end)
  end)

  describe("submit and check over the sheet's exchanges", function()
    local function part_of(n, field)
      local part = { first = 1, inputs = {}, items = {} }
      for i = 1, n do part.inputs[i] = { id = id(i), field = field or "emails" } end
      return part
    end

    it("submits the distinct ids once, idempotently, and keeps the records", function()
      local ctx = fake_ctx({ ["POST /api/v1/operations/enrichment/batch"] = fixture("batch_submit") })
      local part = part_of(2)
      part.inputs[3] = { id = id(1), field = "emails" }
      local pid = assert(P.submit(ctx, part))
      assert.equal("e0000000-0000-4000-8000-000000000001", pid)
      local req = ctx.calls[1].req
      assert.is_true(req.idempotent)
      assert.same({ personIds = { id(1), id(2) }, field = "emails" }, req.json)
      assert.equal("pending", part.records[id(2)].status)
    end)

    it("refuses a submit answer without records", function()
      local ctx = fake_ctx({ ["POST /api/v1/operations/enrichment/batch"] = { error = "x" } })
      local pid, err = P.submit(ctx, part_of(1))
      assert.is_nil(pid)
      assert.equal("protocol", err.code)
    end)

    it("maps found / not found / failed / missing, reading the person only when found", function()
      local ctx = fake_ctx({
        ["POST /api/v1/operations/enrichment/batch/query"] = fixture("batch_query_partial"),
        ["GET /api/v1/entities/prospects/person/" .. id(1)] = fixture("person_found"),
      })
      local part = part_of(4)
      assert.is_true(P.check(ctx, part))
      assert.same({ "found", "not_found", "failed", "failed" },
        { part.items[1].status, part.items[2].status, part.items[3].status, part.items[4].status })
      assert.equal("rina.holloway@example.com", part.items[1].email)
      assert.equal("not_found", part.items[4].error.code)
      assert.equal(2, #ctx.calls)
      assert.is_true(ctx.calls[1].req.idempotent)
      assert.equal(4, #ctx.calls[1].req.json.tasks)
    end)

    it("keeps polling while a record is pending, asking only about open people", function()
      local answers = { ["POST /api/v1/operations/enrichment/batch/query"] = { fixture("record_pending") } }
      local ctx = fake_ctx(answers)
      local part = part_of(1)
      assert.is_false(P.check(ctx, part))
      assert.is_nil(part.items[1])
      answers["POST /api/v1/operations/enrichment/batch/query"] = fixture("batch_query_partial")
      answers["GET /api/v1/entities/prospects/person/" .. id(1)] = fixture("person_found")
      assert.is_true(P.check(ctx, part))
      assert.equal("found", part.items[1].status)
      -- Terminal people are not asked about again.
      assert.is_true(P.check(ctx, part))
      assert.equal(3, #ctx.calls)
    end)

    it("retries the person read at the next poll when it fails with a retryable error", function()
      local ctx = fake_ctx({
        ["POST /api/v1/operations/enrichment/batch/query"] = fixture("batch_query_partial"),
        ["GET /api/v1/entities/prospects/person/" .. id(1)] = function()
          return nil, errors.new("server", "down", { status = 503 })
        end,
      })
      local terminal, err = P.check(ctx, part_of(1))
      assert.is_nil(terminal)
      assert.equal("server", err.code)
    end)

    it("reports an undocumented record status as that item's protocol error", function()
      local ctx = fake_ctx({ ["POST /api/v1/operations/enrichment/batch/query"] = {
        { entityId = id(1), field = "emails", status = "queued" } } })
      local part = part_of(1)
      assert.is_true(P.check(ctx, part))
      assert.equal("failed", part.items[1].status)
      assert.equal("protocol", part.items[1].error.code)
    end)

    it("refuses a batch query answer that is not an array: 'protocol', never all not_found", function()
      local ctx = fake_ctx({ ["POST /api/v1/operations/enrichment/batch/query"] =
        { entityId = id(1), field = "emails", status = "finished", dataFound = true } })
      local terminal, err = P.check(ctx, part_of(1))
      assert.is_nil(terminal)
      assert.equal("protocol", err.code)
    end)
  end)
end)
