-- enrich.testing: the fake ctx a user tests a provider file with, and
-- verify, which says whether a step's outcome is one the engine documents.
local testing = require "enrich.testing"
local errors = require "enrich.errors"

local spec = {
  name = "mine", base_url = "http://x",
  prepare = function(i) return i end, submit = function() end, check = function() end,
  error = function(c) return c.json and c.json.msg, "E1", c.status == 418 and { code = "credits" } or nil end,
}

describe("enrich.testing", function()
  describe("ctx", function()
    it("answers a JSON body with 200, records the call, escapes and tags errors", function()
      local ctx = testing.ctx { provider = spec, opts = { kind = "email" },
                                answers = { ["POST /jobs"] = { id = "j1" } } }
      local res = assert(ctx:call { method = "POST", path = "/jobs", json = { a = 1 } })
      assert.equal(200, res.status)
      assert.equal("j1", res.json.id)
      assert.equal("POST /jobs", ctx.calls[1].key)
      assert.same({ a = 1 }, ctx.calls[1].req.json)
      assert.equal("email", ctx.opts.kind)
      assert.equal("a%2Fb", ctx.escape("a/b"))
      assert.equal("mine", ctx:error("invalid", "x").provider)
    end)

    it("reads non-2xx answers through the provider's error(), Retry-After included", function()
      local ctx = testing.ctx { provider = spec, answers = {
        ["GET /a"] = testing.answer(429, { msg = "slow down" }, { ["Retry-After"] = "7" }),
        ["GET /b"] = testing.answer(418, { msg = "pay" }),
      } }
      local res, err = ctx:call { path = "/a" }
      local _
      assert.is_nil(res)
      assert.equal("rate_limited", err.code)
      assert.equal("slow down", err.message)
      assert.equal("E1", err.provider_code)
      assert.equal(7, err.retry_after)
      assert.is_true(err.unprocessed)
      _, err = ctx:call { path = "/b" }
      assert.equal("credits", err.code)
      _, err = ctx:call { path = "/nowhere" }
      assert.equal("not_found", err.code)
      assert.equal(404, err.status)
    end)

    it("takes a 2xx without a JSON body only where the request expects none", function()
      local ctx = testing.ctx { provider = spec, answers = {
        ["POST /cancel"] = testing.answer(204, ""), ["GET /cut"] = '{"items": [1, 2',
      } }
      local res = assert(ctx:call { method = "POST", path = "/cancel", expect_json = false })
      assert.equal(204, res.status)
      local _, err = ctx:call { method = "POST", path = "/cancel" }
      assert.equal("protocol", err.code)
      assert.is_true(err.retryable)
      _, err = ctx:call { path = "/cut" }
      assert.equal("protocol", err.code)
      ctx.answers["GET /bom"] = "\239\187\191{\"id\": \"j1\"}"         -- RFC 8259 lets a reader skip it
      assert.equal("j1", ctx:call({ path = "/bom" }).json.id)
    end)

    it("gives transport failures, sequences, function answers", function()
      local ctx = testing.ctx { provider = spec, answers = {
        ["GET /t"] = testing.transport("timeout"),
        ["GET /s"] = testing.sequence({ n = 1 }, { n = 2 }),
        ["GET /f"] = function(req) return { path = req.path } end,
        ["GET /e"] = function() return nil, errors.new("server", "down") end,
      } }
      local _, err = ctx:call { path = "/t" }
      assert.equal("timeout", err.code)
      assert.equal(1, ctx:call({ path = "/s" }).json.n)
      assert.equal(2, ctx:call({ path = "/s" }).json.n)
      assert.equal(2, ctx:call({ path = "/s" }).json.n)        -- the last one repeats
      assert.equal("/f", ctx:call({ path = "/f" }).json.path)
      _, err = ctx:call { path = "/e" }
      assert.equal("server", err.code)
    end)

    it("raises once a mapping calls more than max_calls times (a loop that does not end)", function()
      local ctx = testing.ctx { provider = spec, max_calls = 3, answers = function() return {} end }
      for _ = 1, 3 do ctx:call { path = "/x" } end
      assert.has_error(function() ctx:call { path = "/x" } end)
    end)

    it("loads a built-in provider by name", function()
      local ctx = testing.ctx { provider = "parsetx", answers = {
        ["GET /v1/enrich/jobs/j"] = testing.answer(429, { error = "Monthly quota exceeded." }) } }
      local _, err = ctx:call { path = "/v1/enrich/jobs/j" }
      assert.equal("credits", err.code)
      assert.equal("parsetx", err.provider)
    end)
  end)

  describe("verify", function()
    local function part(items, count) return { count = count or 2, items = items } end

    it("accepts documented outcomes", function()
      assert.is_nil(testing.verify("submit", {}, "id-1"))
      assert.is_nil(testing.verify("submit", {}, nil, errors.new("protocol", "x")))
      assert.is_nil(testing.verify("check", part({}), false))
      assert.is_nil(testing.verify("check", part({ { status = "found", email = "a@b" },
        { status = "failed", error = errors.new("server", "x") } }), true))
      assert.is_nil(testing.verify("check", { count = 2, items = {}, error = errors.new("server", "x") }, true))
      assert.is_nil(testing.verify("cancel", part({}), true))
    end)

    it("refuses what the engine does not document", function()
      assert.matches("non%-string id", testing.verify("submit", {}, 5))
      assert.matches("not an enrich error", testing.verify("submit", {}, nil, "boom"))
      assert.matches("unset", testing.verify("check", part({ { status = "found" } }), true))
      assert.matches("pending", testing.verify("check", part({ { status = "found" }, { status = "pending" } }), true))
      assert.matches("outside", testing.verify("check", part({ [3] = { status = "found" } }), false))
      assert.matches("undocumented item status", testing.verify("check", part({ { status = "ok" } }), false))
      assert.matches("failed item", testing.verify("check", part({ { status = "failed" } }), false))
      assert.matches("credits", testing.verify("check", { count = 0, items = {}, credits = -1 }, false))
      assert.matches("boolean", testing.verify("check", part({}), "yes"))
    end)
  end)
end)
