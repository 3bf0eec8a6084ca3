-- tamtam's check reads only part.count (keep_inputs = false): the engine
-- drops a part's prepared people once they are sent, so check must place
-- results by row marker within 1..count without looking at them.
local cjson = require "cjson"
local support = require "mapping.support"
local P = require "enrich.providers.tamtam"

-- A waiting part as the engine keeps it after submit: no inputs.
local function sent_part(count) return { id = "req-1", count = count, items = {} } end

local function result(row, email)
  return { status = "COMPLETED", custom = row and { row = row } or cjson.null, error = "",
           emails = { { email = email, status = "DELIVERABLE" } }, phones = {}, most_probable_email = email }
end

local function answer(status, results)
  return support.fake_ctx("tamtam", {
    ["GET /v2/people/enrich/req-1"] = { request_id = "req-1", status = status, results = results or cjson.null },
  })
end

describe("tamtam mapping", function()
  it("prepares only a person tamtam takes: linkedin_url, or a first and a last name", function()
    -- tamtam answers 422 for the whole request when one item has neither:
    -- one such person would sink the 99 others of its batch.
    for _, bad in ipairs { { first_name = "Ada" }, { last_name = "Byron", domain = "example.com" },
                           { full_name = "Ada" }, { first_name = "Ada", last_name = "  " } } do
      local out, why = P.prepare(bad)
      assert.is_nil(out)
      assert.matches("linkedin_url", why)
    end
    assert.same({ first_name = "Ada", last_name = "Byron" }, P.prepare { first_name = "Ada", last_name = "Byron" })
    assert.same({ first_name = "Ada", last_name = "Byron" }, P.prepare { full_name = " Ada Byron " })
    assert.same({ first_name = "Ada", last_name = "Byron" }, P.prepare { first_name = "Ada", full_name = "Ada Byron" })
    assert.same({ linkedin_url = "https://www.linkedin.com/in/ada" },
                P.prepare { linkedin_url = "https://www.linkedin.com/in/ada" })
  end)

  it("declares that its check and cancel need only the part's count", function()
    assert.is_false(P.keep_inputs)
    assert.is_nil(P.cancel)
  end)

  it("keeps waiting on PROCESSING without touching items", function()
    local part = sent_part(2)
    assert.is_false(P.check(answer("PROCESSING"), part))
    assert.is_nil(next(part.items))
    assert.equal("PROCESSING", part.raw.status)
  end)

  it("places results by row marker, within the part's count, with no inputs at hand", function()
    local part = sent_part(3)
    local ctx = answer("COMPLETED", {
      result("3", "c@example.com"), result("1", "a@example.com"),
      result("4", "beyond@example.com"),                 -- no such row in this part
      result("0", "zero@example.com"), result("1.5", "half@example.com"),
      result(nil, "b@example.com"),                      -- no marker: its position (6) is out of range
    })
    assert.is_true(P.check(ctx, part))
    assert.equal("a@example.com", part.items[1].email)
    -- no result names row 2: a final answer leaves no gap (issue 11)
    assert.equal("failed", part.items[2].status)
    assert.equal("protocol", part.items[2].error.code)
    assert.equal("c@example.com", part.items[3].email)
    for k in pairs(part.items) do assert.is_true(k >= 1 and k <= 3) end
    assert.equal(2, part.credits)
  end)

  it("falls back to the position when a result has no row marker", function()
    local part = sent_part(2)
    assert.is_true(P.check(answer("COMPLETED", { result(nil, "a@example.com"), result(nil, "b@example.com") }), part))
    assert.equal("a@example.com", part.items[1].email)
    assert.equal("b@example.com", part.items[2].email)
  end)
end)
