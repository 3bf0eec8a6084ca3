-- instaview's pure mappings over the sheet's example exchanges
-- (spec/fixtures/instaview/*.json): run status -> state, data entries ->
-- items, error bodies -> codes.
local cjson = require "cjson"
local errors = require "enrich.errors"
local support = require "mapping.support"
local P = require "enrich.providers.instaview"

local function fixture(name) return support.fixture("instaview", name) end

-- A ctx that answers every call with `res` (or `nil, err`) and records it
-- (ctx.calls[i].req).
local function fake_ctx(res, err)
  return support.fake_ctx("instaview", function() return res, err end)
end

local function part_of(ids) return { id = "enr_x", first = 1, inputs = ids, items = {} } end

-- What the engine makes of an error answer: spec.error, then the status.
local function code_of(status, body, headers)
  local msg, pcode, fields = P.error({ status = status, json = body, headers = headers or {} })
  return (fields and fields.code) or errors.code_for_status(status), msg, pcode, fields or {}
end

describe("instaview mapping", function()
  it("declares the documented batch, Bearer auth, no options and a conservative rate", function()
    assert.equal(10, P.batch_size)
    assert.is_nil(P.auth)                         -- the engine's default: Authorization: Bearer <key>
    assert.same({}, P.options)
    assert.is_false(P.idempotent_submit)
    assert.is_true(P.rate.burst + 60 * P.rate.per_second <= 60)
    assert.is_true(P.rate.burst + 3600 * P.rate.per_second <= 2000)
    assert.equal(180, P.poll.deadline)
    assert.is_true(P.poll.interval >= 2 and P.poll.max_interval <= 3)
  end)

  describe("prepare", function()
    local cases = {
      { { id = "p_7f31aa" }, "p_7f31aa" },
      { { id = "  p_7f31aa " }, "p_7f31aa" },
      { { id = "p_1", custom = { row = 1 } }, "p_1" },
      { {}, nil },
      { { id = "" }, nil },
      { { id = 42 }, nil },
      { "p_7f31aa", nil },
      { { id = "p_1", custom = "row" }, nil },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. (c[2] and (" -> " .. c[2]) or " is refused with a reason"), function()
        local out, why = P.prepare(c[1], {})
        assert.equal(c[2], out)
        if not c[2] then assert.is_string(why) end
      end)
    end
  end)

  it("submits the profile ids once, without claiming the POST is idempotent", function()
    local ctx = fake_ctx({ status = 202, json = fixture("submit_accepted") })
    assert.equal("enr_0b5e2f4c-1a2b-4c3d-8e9f-aaaabbbbcccc", P.submit(ctx, part_of({ "p_1", "p_2" })))
    local req = ctx.calls[1].req
    assert.equal("POST", req.method)
    assert.equal("/sourcing/enrich", req.path)
    assert.same({ profileIds = { "p_1", "p_2" } }, req.json)
    assert.is_nil(req.idempotent)
  end)

  it("refuses a submit answer without requestId as a protocol error", function()
    local id, err = P.submit(fake_ctx({ status = 202, json = { success = true } }), part_of({ "p_1" }))
    assert.is_nil(id)
    assert.equal("protocol", err.code)
  end)

  describe("state", function()
    local cases = {
      { 202, "processing", false },
      { 202, nil, false },                      -- 202 alone is "still processing"
      { 202, "garbage", false },
      { 202, { status = "whatever" }, false },
      { 200, "completed", true },
      { 200, "partial", true },
      { 200, "failed", true },
      { 200, { status = "processing" }, false },
      { 200, { status = "exploded" }, nil },
      { 200, nil, nil },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. ": HTTP " .. c[1] .. " -> " .. tostring(c[3]), function()
        local body = type(c[2]) == "string" and c[2] ~= "garbage" and fixture(c[2]) or c[2]
        local done, why = P.state(c[1], body)
        assert.equal(c[3], done)
        if c[3] == nil then assert.is_string(why) end
      end)
    end
  end)

  describe("check over the example exchanges", function()
    it("keeps polling on 202 and reads the path with the id escaped", function()
      local ctx = fake_ctx({ status = 202, json = fixture("processing") })
      local part = part_of({ "p_1" })
      part.id = "enr_a/b c"
      assert.is_false(P.check(ctx, part))
      assert.equal("/sourcing/enrich/enr_a%2Fb%20c/results", ctx.calls[1].req.path)
      assert.is_nil(next(part.items))
    end)

    it("maps a completed run: found with emails, not_found without, credits", function()
      local part = part_of({ "p_7f31aa", "p_82c0de", "p_93bb11" })
      assert.is_true(P.check(fake_ctx({ status = 200, json = fixture("completed") }), part))
      assert.same({ "found", "not_found", "found" },
        { part.items[1].status, part.items[2].status, part.items[3].status })
      assert.equal("ilse.marrow@example.com", part.items[1].email)
      assert.same({ { address = "ilse.marrow@example.com", status = "unknown" } }, part.items[1].emails)
      assert.equal("Ilse Marrow", part.items[1].fields.name)
      assert.equal(82, part.items[1].fields.matchScore)
      assert.is_nil(part.items[2].email)
      assert.same({}, part.items[2].emails)
      assert.equal(3, part.credits)
      assert.is_nil(part.error)
    end)

    it("maps a partial run: the failed profile carries a retryable error", function()
      local part = part_of({ "p_7f31aa", "p_82c0de", "p_93bb11" })
      assert.is_true(P.check(fake_ctx({ status = 200, json = fixture("partial") }), part))
      assert.same({ "found", "failed", "found" },
        { part.items[1].status, part.items[2].status, part.items[3].status })
      local e = part.items[2].error
      assert.equal("server", e.code)
      assert.equal("Profile enrichment timed out", e.message)
      assert.is_true(e.retryable)
      assert.equal(2, part.credits)
    end)

    it("maps a failed run to a part error with the provider's code", function()
      local part = part_of({ "p_7f31aa", "p_82c0de", "p_93bb11" })
      assert.is_true(P.check(fake_ctx({ status = 200, json = fixture("failed") }), part))
      assert.equal("server", part.error.code)
      assert.equal("INTERNAL_ERROR", part.error.provider_code)
      assert.equal("Upstream index unavailable", part.error.message)
      assert.equal(0, part.credits)
      assert.is_nil(next(part.items))
    end)

    it("correlates entries by profileId, whatever their order, duplicates included", function()
      local body = fixture("partial")
      body.data = { body.data[3], body.data[2], body.data[1] }
      local part = part_of({ "p_7f31aa", "p_82c0de", "p_93bb11", "p_7f31aa" })
      body.data[4] = body.data[3]
      assert.is_true(P.check(fake_ctx({ status = 200, json = body }), part))
      assert.same({ "found", "failed", "found", "found" },
        { part.items[1].status, part.items[2].status, part.items[3].status, part.items[4].status })
      assert.equal("ada@example.org", part.items[3].email)
      assert.equal("ilse.marrow@example.com", part.items[4].email)
    end)

    it("turns a 200 that is not JSON into a retryable protocol error", function()
      local done, err = P.check(fake_ctx({ status = 200, body = "<html>" }), part_of({ "p_1" }))
      assert.is_nil(done)
      assert.equal("protocol", err.code)
      assert.is_true(err.retryable)
    end)

    it("passes a failed request through", function()
      local e = errors.new("auth", "nope")
      local done, err = P.check(fake_ctx(nil, e), part_of({ "p_1" }))
      assert.is_nil(done)
      assert.equal(e, err)
    end)
  end)

  describe("item", function()
    local cases = {
      { { profileId = "a", success = true, candidate = { emails = { "x@y.z", "w@y.z" } } }, "found", "x@y.z" },
      { { profileId = "a", success = true, candidate = { emails = {} } }, "not_found" },
      { { profileId = "a", success = true, candidate = { emails = cjson.null } }, "not_found" },
      -- success without its candidate: billed, yet unreadable (issue 11)
      { { profileId = "a", success = true }, "failed" },
      { { profileId = "a", success = true, candidate = cjson.null }, "failed" },
      { { profileId = "a", success = cjson.null, candidate = {} }, "failed" },
      { { profileId = "a", success = false, error = "boom" }, "failed" },
      { { profileId = "a", success = false, error = { code = "TIMEOUT", message = "late" } }, "failed" },
      { { profileId = "a", success = false }, "failed" },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. " -> " .. c[2], function()
        local item = P.item(c[1])
        assert.equal(c[2], item.status)
        assert.equal(c[3], item.email)
        assert.equal(c[1], item.raw)
        if c[2] == "failed" then assert.is_truthy(item.error.message) end
      end)
    end

    it("keeps a structured item error's code", function()
      local item = P.item({ success = false, error = { code = "TIMEOUT", message = "late" } })
      assert.equal("TIMEOUT", item.error.provider_code)
    end)
  end)

  describe("error bodies", function()
    local cases = {
      { 400, "error_400", "invalid", "VALIDATION_ERROR", "profileIds must contain at most 10 ids" },
      { 401, "error_401", "auth", "INVALID_API_KEY", "API key is invalid, revoked or expired" },
      { 402, "error_402", "credits", "INSUFFICIENT_CREDITS", "Balance 1 is below the 3 credits required" },
      { 404, "error_404", "not_found", "RESOURCE_NOT_FOUND", "Enrichment request not found" },
      { 429, "error_429", "rate_limited", "Too Many Requests", "Rate limit exceeded", 30 },
      { 500, nil, "server" },
    }
    for _, c in ipairs(cases) do
      it("HTTP " .. c[1] .. " -> " .. c[3], function()
        local code, msg, pcode, fields = code_of(c[1], c[2] and fixture(c[2]) or nil)
        assert.equal(c[3], code)
        assert.equal(c[4], pcode)
        assert.equal(c[5], msg)
        assert.equal(c[6], fields.retry_after)
      end)
    end

    it("reads insufficient credits as 'credits' whatever the status", function()
      assert.equal("credits", (code_of(400, fixture("error_402"))))
    end)
  end)
end)
