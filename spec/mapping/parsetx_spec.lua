-- parsetx's pure mappings over the sheet's example exchanges
-- (spec/fixtures/parsetx/*.json): job status -> state, result items ->
-- items and merchants, error bodies -> codes.
local errors = require "enrich.errors"
local support = require "mapping.support"
local P = require "enrich.providers.parsetx"

local function fixture(name) return support.fixture("parsetx", name) end

-- A ctx that answers every call with `res` (or `nil, err`) and records it
-- (ctx.calls[i].req).
local function fake_ctx(res, err)
  return support.fake_ctx("parsetx", function() return res, err end)
end

local function part_of(texts) return { id = "job-1", first = 1, inputs = texts, items = {} } end

local PARTIAL = { "EXMPL COFFEE #0042 SPRINGFIELD", "STREAMFLIX.EXAMPLE MONTHLY", "00012345678 9988" }

-- What the engine makes of an error answer: spec.error, then the status.
local function outcome(status, body)
  local msg, pcode, fields = P.error({ status = status, json = body, headers = {} })
  fields = fields or {}
  local code = fields.code or errors.code_for_status(status)
  local retryable = fields.retryable
  if retryable == nil then retryable = errors.CODES[code] end
  return { code = code, message = msg, provider_code = pcode, retryable = retryable,
           retry_after = fields.retry_after }
end

describe("parsetx mapping", function()
  it("declares the async batch cap, X-API-Key auth and no options", function()
    assert.equal(500, P.batch_size)
    assert.same({ ["X-API-Key"] = "pt_live_k" }, P.auth("pt_live_k"))
    assert.same({}, P.options)
    assert.is_false(P.idempotent_submit)
    assert.same({ interval = 1, factor = 2, max_interval = 5, deadline = 600 }, P.poll)
  end)

  describe("prepare", function()
    local cases = {
      { "SQ *SOME CAFE CITY ST", "SQ *SOME CAFE CITY ST" },
      { "  UBER TRIP  ", "  UBER TRIP  " },          -- sent as given: parsetx echoes the raw string
      { { text = "AMZN MKTP US", custom = { row = 2 } }, "AMZN MKTP US" },
      { "", nil }, { "   ", nil }, { 42, nil }, { true, nil },
      { {}, nil }, { { text = "" }, nil }, { { text = 7 }, nil },
      { { text = "UBER", custom = "row" }, nil },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. (c[2] and " is accepted" or " is refused with a reason"), function()
        local out, why = P.prepare(c[1], {})
        assert.equal(c[2], out)
        if not c[2] then assert.is_string(why) end
      end)
    end
  end)

  it("submits to the async endpoint once, without claiming the POST is idempotent", function()
    local ctx = fake_ctx({ status = 202, json = fixture("submit_accepted") })
    assert.equal("6a1f3c2e-9b7d-4e10-8c55-0123456789ab", P.submit(ctx, part_of(PARTIAL)))
    local req = ctx.calls[1].req
    assert.equal("POST", req.method)
    assert.equal("/v1/enrich/async", req.path)
    assert.same({ transactions = PARTIAL }, req.json)
    assert.is_nil(req.idempotent)
  end)

  it("refuses a submit answer without job_id as a protocol error", function()
    local id, err = P.submit(fake_ctx({ status = 202, json = { status = "queued" } }), part_of(PARTIAL))
    assert.is_nil(id)
    assert.equal("protocol", err.code)
  end)

  describe("state", function()
    local cases = {
      { "queued", false }, { "processing", false }, { "partial", true },
      { "completed", true }, { "failed", true },
      { { status = "done" }, nil }, { { results = {} }, nil }, { "garbage", nil },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. " -> " .. tostring(c[2]), function()
        local body = c[1]
        if type(body) == "string" and body ~= "garbage" then body = fixture(body) end
        local done, why = P.state(body)
        assert.equal(c[2], done)
        if c[2] == nil then assert.is_string(why) end
      end)
    end
  end)

  describe("check over the example exchanges", function()
    it("keeps polling while queued (no item_count) or processing, the id escaped", function()
      for _, name in ipairs({ "queued", "processing" }) do
        local ctx = fake_ctx({ status = 200, json = fixture(name) })
        local part = part_of(PARTIAL)
        part.id = "a/b"
        assert.is_false(P.check(ctx, part))
        assert.equal("/v1/enrich/jobs/a%2Fb", ctx.calls[1].req.path)
        assert.is_nil(next(part.items))
      end
    end)

    it("maps complete, retry and rejected items (the documented partial mix)", function()
      local part = part_of(PARTIAL)
      assert.is_true(P.check(fake_ctx({ status = 200, json = fixture("partial") }), part))
      local a, b, c = part.items[1], part.items[2], part.items[3]
      assert.equal("found", a.status)
      assert.same({ name = "Example Coffee", domain = "examplecoffee.example", category = "Food & Drink",
                    mcc = "5814", subscription = false, confidence = 0.93 }, a.merchant)
      assert.equal("llm", a.fields.source)
      assert.equal("failed", b.status)
      assert.equal("server", b.error.code)
      assert.is_true(b.error.retryable)
      assert.equal("retry", b.error.provider_code)
      assert.equal("failed", c.status)
      assert.equal("invalid", c.error.code)
      assert.is_false(c.error.retryable)
      assert.equal(1, part.credits)                  -- one cache miss billed
    end)

    it("maps JSON null domain and MCC to nil and counts cache hits as free", function()
      local part = part_of({ "STREAMFLIX.EXAMPLE MONTHLY", "BANK FEE OVERDRAFT" })
      assert.is_true(P.check(fake_ctx({ status = 200, json = fixture("completed") }), part))
      assert.same({ name = "Streamflix", domain = "streamflix.example", category = "Entertainment",
                    mcc = "4899", subscription = true, confidence = 1 }, part.items[1].merchant)
      assert.equal("cache", part.items[1].fields.source)
      assert.is_nil(part.items[2].merchant.domain)
      assert.is_nil(part.items[2].merchant.mcc)
      assert.equal(1, part.credits)
    end)

    it("maps a failed job to a part error", function()
      local part = part_of(PARTIAL)
      assert.is_true(P.check(fake_ctx({ status = 200, json = fixture("failed") }), part))
      assert.equal("server", part.error.code)
      assert.equal("failed", part.error.provider_code)
      assert.is_nil(next(part.items))
    end)

    it("correlates by the echoed input when results come out of order", function()
      local body = fixture("partial")
      body.results = { body.results[3], body.results[1], body.results[2] }
      local part = part_of(PARTIAL)
      assert.is_true(P.check(fake_ctx({ status = 200, json = body }), part))
      assert.same({ "found", "failed", "failed" },
        { part.items[1].status, part.items[2].status, part.items[3].status })
      assert.equal("invalid", part.items[3].error.code)
      assert.equal("server", part.items[2].error.code)
    end)

    it("keeps duplicates of one string apart by position", function()
      local body = fixture("partial")
      body.results = { body.results[1], body.results[1] }
      local part = part_of({ PARTIAL[1], PARTIAL[1] })
      assert.is_true(P.check(fake_ctx({ status = 200, json = body }), part))
      assert.equal("found", part.items[1].status)
      assert.equal("found", part.items[2].status)
    end)

    it("fails an unknown status as a protocol error", function()
      local done, err = P.check(fake_ctx({ status = 200, json = { status = "done" } }), part_of(PARTIAL))
      assert.is_nil(done)
      assert.equal("protocol", err.code)
    end)
  end)

  describe("item", function()
    local cases = {
      { { input = "X", status = "complete", merchant = "X", category = "Unknown" }, "found" },
      { { input = "X", status = "rejected" }, "failed", "invalid", false },
      { { input = "X", status = "retry" }, "failed", "server", true },
      { { input = "X", status = "exploded" }, "failed", "protocol", false },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. " -> " .. c[2], function()
        local item = P.item(c[1])
        assert.equal(c[2], item.status)
        assert.equal(c[1], item.raw)
        if c[3] then
          assert.equal(c[3], item.error.code)
          assert.equal(c[4], item.error.retryable)
        end
      end)
    end
  end)

  describe("error bodies", function()
    local now = 1780272000 + 3600 * 20 + 15       -- 2026-06-01T20:00:15Z
    local saved
    before_each(function() saved = P.clock; P.clock = function() return now end end)
    after_each(function() P.clock = saved end)

    local cases = {
      { 401, "error_401_missing", "auth", false, "Missing API key. Provide your key via the X-API-Key header." },
      { 401, "error_401_revoked", "auth", false, "Invalid or revoked API key." },
      { 404, "error_404", "not_found", false, "Job not found." },
      { 429, "error_429_monthly", "credits", false, "Monthly quota exceeded." },
      { 429, "error_429_daily", "rate_limited", true,
        "Daily token budget exceeded. Your quota resets at midnight UTC.", 4 * 3600 - 15 },
      { 500, "error_500", "server", true, "Internal Server Error" },
      { 400, nil, "invalid", false },
      { 429, nil, "rate_limited", true },
    }
    for _, c in ipairs(cases) do
      it("HTTP " .. c[1] .. " " .. tostring(c[2]) .. " -> " .. c[3], function()
        local o = outcome(c[1], c[2] and fixture(c[2]) or nil)
        assert.equal(c[3], o.code)
        assert.equal(c[4], o.retryable)
        assert.equal(c[5], o.message)
        assert.equal(c[6], o.retry_after)
      end)
    end

    it("tells the quotas apart by their fields when the message changes", function()
      assert.equal("credits", outcome(429, { usage = 1, limit = 1 }).code)
      assert.equal(4 * 3600 - 15, outcome(429, { token_usage = 1, token_limit = 1 }).retry_after)
    end)

    it("counts the seconds to the next 00:00 UTC", function()
      assert.equal(86400, P.until_midnight(1780272000))
      assert.equal(1, P.until_midnight(1780272000 + 86399))
      assert.equal(86400 - 61, P.until_midnight(1780272000 + 61.5))
    end)
  end)

  describe("odd values in a complete item (found by the fuzzer)", function()
    local cjson = require "cjson"
    local base = { input = "X", status = "complete", merchant = "Uber", source = "cache" }
    local function with(k, v)
      local r = {}
      for a, b in pairs(base) do r[a] = b end
      r[k] = v
      return r
    end
    it("reads an MCC given as a number, and drops one too large to be a code", function()
      assert.equal("5814", P.item(with("mcc_code", 5814)).merchant.mcc)
      assert.is_nil(P.item(with("mcc_code", 1e308)).merchant.mcc)
      assert.is_nil(P.item(with("mcc_code", -1 / 0)).merchant.mcc)
    end)
    it("fails with 'protocol' a complete item without a merchant name", function()
      for _, v in ipairs({ cjson.null, 5, "", {} }) do
        local item = P.item(with("merchant", v))
        assert.equal("failed", item.status)
        assert.equal("protocol", item.error.code)
      end
    end)
    it("keeps only documented types: confidence a finite number, subscription a boolean", function()
      local m = P.item(with("confidence", "0.9")).merchant
      assert.is_nil(m.confidence)
      m = P.item(with("is_subscription", "yes")).merchant
      assert.is_nil(m.subscription)
      assert.is_false(P.item(with("is_subscription", false)).merchant.subscription)
    end)
  end)
end)
