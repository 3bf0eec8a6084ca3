local cjson = require "cjson"
-- puffle's mapping, table-driven over the sheet's example exchanges
-- (spec/fixtures/puffle/*.json).
local errors = require "enrich.errors"
local support = require "mapping.support"
local P = require "enrich.providers.puffle"

local function fixture(name) return support.fixture("puffle", name) end

local RUN = "run_9f2e0000example"

-- A ctx answering from a table: answers["METHOD path"] = body or function(req).
local function fake_ctx(answers) return support.fake_ctx("puffle", answers) end

local function part_of(leads, kind)
  local part = { first = 1, inputs = {}, items = {}, id = RUN }
  for i, l in ipairs(leads) do
    part.inputs[i] = { id = l, slug = kind == "phone" and "phone_number" or "work_email", kind = kind or "email" }
  end
  return part
end

describe("puffle mapping", function()
  describe("prepare", function()
    local cases = {
      { "a lead, default kind", { id = "ld_01" }, {}, { id = "ld_01", slug = "work_email", kind = "email" } },
      { "kind phone -> phone_number", { id = "ld_01" }, { kind = "phone" },
        { id = "ld_01", slug = "phone_number", kind = "phone" } },
      { "any catalog slug", { id = "co_1" }, { enrichment = "website_overview" },
        { id = "co_1", slug = "website_overview" } },
      { "a slug wins over kind", { id = "ld_01" }, { kind = "phone", enrichment = "work_email" },
        { id = "ld_01", slug = "work_email", kind = "email" } },
      { "a numeric id", { id = 42 }, {}, { id = "42", slug = "work_email", kind = "email" } },
      { "no id", {}, {}, nil },
      { "an empty id", { id = "  " }, {}, nil },
      { "a string instead of a table", "ld_01", {}, nil },
      { "a slug that is not a string", { id = "ld_01" }, { enrichment = 5 }, nil },
      { "custom not a table", { id = "ld_01", custom = 1 }, {}, nil },
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

  describe("item: item status -> normalized item", function()
    local completed = fixture("items_completed").items[1]
    local failed = fixture("items_failed").items[1]
    local cancelled = fixture("items_cancelled").items
    local cases = {
      { "completed with an email", completed, "email", "found" },
      { "completed with null result", fixture("items_page1").items[2], "email", "not_found" },
      { "completed, email asked, only a phone", { status = "completed", result = { phone = "+1" } }, "email",
        "not_found" },
      { "completed with a phone", { status = "completed", result = { phone = "+15550100" } }, "phone", "found" },
      { "completed with a number", { status = "completed", result = { number = "+15550100" } }, "phone", "found" },
      { "completed, another contract", { status = "completed", result = { overview = "x" } }, nil, "found" },
      { "completed, another contract, empty", { status = "completed", result = {} }, nil, "not_found" },
      { "failed", failed, "email", "failed", "server", "No work email found" },
      { "skipped after a cancel", cancelled[3], "email", "failed", "cancelled" },
      { "skipped for another reason", { status = "skipped", skippedReason = "subject_mismatch" }, "email",
        "failed", "invalid" },
      { "running", cancelled[2], "email", "pending" },
      { "pending", { status = "pending" }, "email", "pending" },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " -> " .. c[4], function()
        local item = P.item(c[2], c[3])
        assert.equal(c[4], item.status)
        assert.equal(c[2], item.raw)
        if c[5] then
          assert.equal(c[5], item.error.code)
          assert.is_false(item.error.retryable)
        else
          assert.is_nil(item.error)
        end
        if c[6] then assert.equal(c[6], item.error.message) end
      end)
    end

    it("puts the result in fields and the email in email/emails", function()
      local item = P.item(completed, "email")
      assert.same({ email = "nell.ortega@example.com" }, item.fields)
      assert.equal("nell.ortega@example.com", item.email)
      assert.same({ { address = "nell.ortega@example.com", status = "unknown" } }, item.emails)
    end)

    it("an undocumented status, or an item that is not an object -> failed with 'protocol'", function()
      for _, it_ in ipairs({ { status = "queued" }, cjson.null, "it_1", { status = cjson.null } }) do
        local item = P.item(it_, "email")
        assert.equal("failed", item.status)
        assert.equal("protocol", item.error.code)
      end
    end)
  end)

  describe("credits", function()
    local cases = {
      { "preview while running", fixture("run_running").run, 6 },
      { "actual once there", fixture("run_cancelled").run, 6 },
      { "actual wins", { cost = { preview = { credits = 6 }, actual = { credits = 4 } } }, 4 },
      { "no cost", fixture("run_completed").run, nil },
    }
    for _, c in ipairs(cases) do
      it(c[1], function() assert.equal(c[3], P.credits(c[2])) end)
    end
  end)

  describe("error bodies -> code", function()
    local cases = {
      { 402, "error_insufficient_credits", "credits", nil, "needs 6 credits, balance 2" },
      { 409, "error_not_cancellable", "invalid", "run_not_cancellable", "run_not_cancellable" },
      { 409, "error_status_changed", "invalid", "run_status_changed", "run_status_changed" },
      { 404, "error_generic", "not_found", "Enrichment not found: work_mail", "Enrichment not found: work_mail" },
      { 500, "error_message", "server", nil, "Internal server error" },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " " .. c[2] .. " -> " .. c[3], function()
        local msg, provider_code, fields = P.error({ status = c[1], json = fixture(c[2]), headers = {} })
        assert.equal(c[3], fields.code or errors.code_for_status(c[1]))
        assert.equal(c[4], provider_code)
        assert.equal(c[5], msg)
      end)
    end
  end)

  describe("submit", function()
    it("sends explicit leads once each, persisted, with one idempotency key per part", function()
      local ctx = fake_ctx({ ["POST /api/enrichment"] = fixture("start") })
      local part = part_of({ "ld_01example", "ld_02example", "ld_01example" })
      part.id = nil
      assert.equal(RUN, P.submit(ctx, part))
      local key = part.idempotency_key
      assert.is_string(key)
      local req = ctx.calls[1].req
      assert.is_true(req.idempotent)
      assert.same({ enrichmentId = "work_email", mode = "persisted", idempotencyKey = key,
                    scope = { type = "explicit_leads", leadIds = { "ld_01example", "ld_02example" } } }, req.json)
      P.submit(ctx, part)                        -- a resend keeps the key
      assert.equal(key, ctx.calls[2].req.json.idempotencyKey)
    end)

    it("makes a new key for every part", function()
      local seen = {}
      for _ = 1, 200 do
        local k = P.new_key()
        assert.is_nil(seen[k])
        seen[k] = true
      end
    end)

    it("refuses a start answer without a run id", function()
      local ctx = fake_ctx({ ["POST /api/enrichment"] = { status = "pending" } })
      local id, err = P.submit(ctx, part_of({ "ld_01" }))
      assert.is_nil(id)
      assert.equal("protocol", err.code)
    end)
  end)

  describe("check", function()
    local STATUS, ITEMS = "GET /api/enrichment/" .. RUN, "GET /api/enrichment/" .. RUN .. "/items"

    it("is not terminal while the run is running, and keeps the preview credits", function()
      local ctx = fake_ctx({ [STATUS] = fixture("run_running") })
      local part = part_of({ "ld_01example" })
      assert.is_false(P.check(ctx, part))
      assert.equal(6, part.credits)
      assert.equal(1, #ctx.calls)
    end)

    it("pages the items of a completed run by cursor and maps them by leadId", function()
      local ctx = fake_ctx({
        [STATUS] = fixture("run_partial"),
        [ITEMS] = function(req)
          return { status = 200, headers = {},
                   json = fixture(req.query.cursor == "it_002" and "items_page2" or "items_page1") }
        end,
      })
      local part = part_of({ "ld_03example", "ld_01example", "ld_02example", "ld_unknown" })
      assert.is_true(P.check(ctx, part))
      assert.is_nil(part.error)
      assert.same({ "failed", "found", "not_found", "failed" },
        { part.items[1].status, part.items[2].status, part.items[3].status, part.items[4].status })
      assert.equal("not_found", part.items[4].error.code)
      assert.equal(3, #ctx.calls)
      assert.equal(100, ctx.calls[2].req.query.limit)
      assert.is_nil(ctx.calls[2].req.query.cursor)
      assert.equal("it_002", ctx.calls[3].req.query.cursor)
    end)

    it("stops paging at a bound when the cursor never ends", function()
      local n = 0
      local ctx = fake_ctx({
        [STATUS] = fixture("run_completed"),
        [ITEMS] = function()
          n = n + 1
          return { status = 200, headers = {},
                   json = { items = {}, page = { hasMore = true, nextCursor = "it_" .. n } } }
        end,
      })
      local terminal, err = P.check(ctx, part_of({ "ld_01example" }))
      assert.is_nil(terminal)
      assert.equal("protocol", err.code)
      assert.is_true(n <= 3)
    end)

    it("follows what the pages hold, not the limit asked: 50 a page for 120 leads is 3 pages", function()
      local leads = {}
      for i = 1, 120 do leads[i] = ("ld_%03d"):format(i) end
      local ctx = fake_ctx({
        [STATUS] = fixture("run_completed"),
        [ITEMS] = function(req)
          local from = req.query.cursor and tonumber(req.query.cursor:match("%d+")) + 1 or 1
          local items = {}
          for i = from, math.min(from + 49, 120) do
            items[#items + 1] = { id = ("it_%03d"):format(i), leadId = leads[i], status = "completed",
                                  result = { email = i .. "@example.com" } }
          end
          local more = from + 49 < 120
          return { status = 200, json = { items = items,
                   page = { limit = 50, hasMore = more, nextCursor = more and items[#items].id or cjson.null } } }
        end,
      })
      local part = part_of(leads)
      assert.is_true(P.check(ctx, part))
      for i = 1, 120 do assert.equal("found", part.items[i].status) end
      assert.equal(4, #ctx.calls)                      -- the status, then 3 pages
    end)

    it("stops at n + 2 pages when every page brings an item and says hasMore", function()
      local n = 0
      local ctx = fake_ctx({
        [STATUS] = fixture("run_completed"),
        [ITEMS] = function()
          n = n + 1
          return { status = 200, json = { items = { { id = "it_" .. n, leadId = "ld_x" .. n, status = "completed" } },
                                          page = { hasMore = true, nextCursor = "it_" .. n } } }
        end,
      })
      local terminal, err = P.check(ctx, part_of({ "ld_01example", "ld_02example" }))
      assert.is_nil(terminal)
      assert.equal("protocol", err.code)
      assert.equal(4, n)
    end)

    it("fails the part of a failed run with the run's message", function()
      local ctx = fake_ctx({ [STATUS] = fixture("run_failed") })
      local part = part_of({ "ld_01example" })
      assert.is_true(P.check(ctx, part))
      assert.equal("server", part.error.code)
      assert.equal("Worker crashed while calling provider", part.error.message)
      assert.equal("upstream_timeout", part.error.provider_code)
    end)

    it("fails the part of a run cancelled at puffle with 'cancelled', items as reported", function()
      local ctx = fake_ctx({ [STATUS] = fixture("run_cancelled"), [ITEMS] = fixture("items_cancelled") })
      local part = part_of({ "ld_01example", "ld_02example", "ld_03example" })
      assert.is_true(P.check(ctx, part))
      assert.equal("cancelled", part.error.code)
      assert.same({ "found", "pending", "failed" },
        { part.items[1].status, part.items[2].status, part.items[3].status })
      assert.equal("cancelled", part.items[3].error.code)
      assert.equal(6, part.credits)
    end)

    it("reports an undocumented run status as a protocol error", function()
      local ctx = fake_ctx({ [STATUS] = { run = { status = "paused" } } })
      local terminal, err = P.check(ctx, part_of({ "ld_01example" }))
      assert.is_nil(terminal)
      assert.equal("protocol", err.code)
    end)
  end)

  describe("cancel", function()
    local CANCEL = "POST /api/enrichment/" .. RUN .. "/cancel"
    local STATUS, ITEMS = "GET /api/enrichment/" .. RUN, "GET /api/enrichment/" .. RUN .. "/items"
    local function conflict(reason)
      return function()
        return nil, errors.new("invalid", reason, { status = 409, provider_code = reason })
      end
    end

    it("cancels, then reads the items once so finished ones are kept", function()
      local ctx = fake_ctx({ [CANCEL] = fixture("cancel"), [STATUS] = fixture("run_cancelled"),
                             [ITEMS] = fixture("items_cancelled") })
      local part = part_of({ "ld_01example", "ld_02example", "ld_03example" })
      assert.is_true(P.cancel(ctx, part))
      assert.same({ "found", "pending", "failed" },
        { part.items[1].status, part.items[2].status, part.items[3].status })
      assert.equal("cancelled", part.items[3].error.code)
      assert.equal(6, part.credits)
      assert.equal(CANCEL, ctx.calls[1].key)
    end)

    it("treats 409 run_not_cancellable as done", function()
      local ctx = fake_ctx({ [CANCEL] = conflict("run_not_cancellable"), [ITEMS] = fixture("items_completed") })
      local part = part_of({ "ld_01example" })
      assert.is_true(P.cancel(ctx, part))
      assert.equal("found", part.items[1].status)
    end)

    it("tries once more after run_status_changed, then gives up", function()
      local ctx = fake_ctx({ [CANCEL] = conflict("run_status_changed") })
      local ok, err = P.cancel(ctx, part_of({ "ld_01example" }))
      assert.is_nil(ok)
      assert.is_table(err)
      assert.equal(2, #ctx.calls)
    end)

    it("passes other errors on", function()
      local ctx = fake_ctx({ [CANCEL] = function() return nil, errors.new("auth", "revoked", { status = 401 }) end })
      local ok, err = P.cancel(ctx, part_of({ "ld_01example" }))
      assert.is_nil(ok)
      assert.equal("auth", err.code)
    end)
  end)
end)
