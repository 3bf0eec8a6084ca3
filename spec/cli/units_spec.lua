-- The command's pure parts: dedupe keys, budget arithmetic, progress lines,
-- the waterfall's outcome rules, argument checks.
local dedupe = require "enrich.cli.dedupe"
local budget = require "enrich.cli.budget"
local progress = require "enrich.cli.progress"
local waterfall = require "enrich.cli.waterfall"
local args = require "enrich.cli.args"

describe("dedupe", function()
  it("normalizes LinkedIn URLs, names and domains as DESIGN says", function()
    assert.equal("linkedin.com/in/ada", dedupe.linkedin(" HTTPS://www.LinkedIn.com/in/Ada/?trk=x "))
    assert.equal("linkedin.com/in/ada", dedupe.linkedin("linkedin.com/in/ada"))
    assert.equal("example.com", dedupe.domain(" WWW.Example.com "))
    assert.equal("zoë quinn", dedupe.names { first_name = "  Zoë ", last_name = "  Quinn " })
    assert.equal("ada de byron", dedupe.names { full_name = " Ada   de  Byron " })
  end)

  it("groups rows sharing any key, transitively, in order of first row", function()
    local groups, group_of = dedupe.group {
      { first_name = "Ada", last_name = "Byron", domain = "example.com" },
      { first_name = "Bob", last_name = "Smith", domain = "example.com" },
      { first_name = "ada", last_name = "byron", domain = "www.example.com", linkedin_url = "linkedin.com/in/ada" },
      { first_name = "A.", last_name = "B.", linkedin_url = "https://linkedin.com/in/ada/" },
      { lance_id = "X-1" }, { id = "x-1" }, { lance_id = "x-1" },
      {},
    }
    assert.equal(5, #groups)
    assert.same({ 1, 3, 4 }, groups[1].rows)
    assert.same({ 2 }, groups[2].rows)
    assert.same({ 5, 7 }, groups[3].rows)                  -- the same lance id; `id` is another column
    assert.same({ 6 }, groups[4].rows)
    assert.equal(group_of[4], groups[1])
  end)
end)

describe("budget", function()
  it("fits what the room allows and settles to the real charge", function()
    local b = budget.new(25)
    assert.equal(25, b:fit(100, 1))
    b:reserve(20)
    assert.equal(5, b:fit(100, 1))
    assert.equal(0, b:fit(10, 10))
    b:settle(20, 12, "tamtam")
    assert.equal(12, b.charged)
    assert.equal(0, b.reserved)
    assert.equal(13, b:fit(100, 1))
    assert.same({ tamtam = 12 }, b.by_provider)
    assert.equal(100, budget.new(nil):fit(100, 10))
  end)

  it("shares a job's reported credits over its billed items, or prices them", function()
    local job = { provider = "tamtam", state = "partial", cost = { credits = 2 },
                  results = { { status = "found" }, { status = "failed" }, { status = "not_found" } } }
    local per, total = budget.item_credits("tamtam", "email", job)
    assert.same({ 1, 0, 1 }, per)
    assert.equal(2, total)
    job = { provider = "lance", state = "succeeded", results = { { status = "found" }, { status = "not_found" } } }
    per, total = budget.item_credits("lance", "phone", job)
    assert.same({ 10, 0 }, per)
    assert.equal(10, total)
    job = { provider = "tamtam", state = "unknown", results = { { status = "failed" }, { status = "failed" } } }
    per, total = budget.item_credits("tamtam", "email", job)
    assert.same({ 1, 1 }, per)
    assert.equal(2, total)
  end)
end)

describe("waterfall outcome", function()
  local function o(tried) return waterfall.outcome { tried = tried } end
  it("keeps the provider that found, else the most telling end", function()
    assert.same({ status = "found", provider = "lance", email = "a@b", credits = 3 },
      o { { status = "not_found", provider = "tamtam", credits = 1 },
          { status = "found", provider = "lance", email = "a@b", credits = 2 } })
    assert.same({ status = "not_found", credits = 1 },
      o { { status = "failed", error = "server", credits = 0 }, { status = "not_found", credits = 1 } })
    assert.same({ status = "failed", error = "timeout", credits = 0 },
      o { { status = "skipped", error = "invalid", credits = 0 },
          { status = "failed", error = "timeout", credits = 0 } })
    assert.same({ status = "skipped", error = "budget", credits = 0 },
                o { { status = "skipped", error = "budget", credits = 0 } })
    assert.same({ status = "skipped", error = "invalid", credits = 0 },
                o { { status = "skipped", error = "invalid", credits = 0 } })
    assert.same({ status = "unknown", error = "unknown", credits = 1 }, o { { status = "unknown", credits = 1 } })
  end)
end)

describe("progress", function()
  local function sink()
    local s = { text = "" }
    function s:write(...) for _, x in ipairs { ... } do self.text = self.text .. x end end
    function s.flush() end
    return s
  end

  it("redraws one line in place on a terminal, with an ETA once known", function()
    local t = 0
    local out = sink()
    local p = progress.new { out = out, tty = true, now = function() return t end, limit = 500 }
    local stats = { rows = 100, done_rows = 0, found_rows = 0, requests = 0 }
    p:update(stats, 0)
    t, stats.done_rows, stats.found_rows, stats.requests = 10, 25, 20, 50
    p:update(stats, 12)
    assert.equal("\r\27[Krows 0/100 | found 0% | credits 0/500 | - req/s"
      .. "\r\27[Krows 25/100 | found 80% | credits 12/500 | 5.0 req/s | ETA 30s", out.text)
    p:update(stats, 12)                             -- too soon: nothing
    assert.matches("ETA 30s$", out.text)
    p:summary({ { status = "found" }, { status = "found" }, { status = "skipped" } }, { tamtam = 12 },
              { "tamtam", "lance" })
    assert.matches("\r\27%[Kenrich: 3 rows: found 2, skipped 1\nenrich: credits 12 of 500 %(tamtam 12, lance 0%)\n"
                   .. "enrich: elapsed 10s\n$", out.text)
  end)

  it("writes a plain line every few seconds when not on a terminal", function()
    local t = 0
    local out = sink()
    local p = progress.new { out = out, tty = false, now = function() return t end }
    local stats = { rows = 10, done_rows = 0, found_rows = 0, requests = 0 }
    for step = 1, 100 do t = step * 0.1; p:update(stats, 0) end   -- 10 s
    local _, lines = out.text:gsub("\n", "")
    assert.equal(2, lines)
    assert.is_nil(out.text:find("\r", 1, true))
    assert.matches("^enrich: rows 0/10 | found 0%% | credits 0 | ", out.text)
  end)
end)

describe("args", function()
  local function why(provider, ...)
    return select(2, args.parse { "run", "--provider", provider, "--in", "a.csv", "--out", "b", ... })
  end

  it("checks providers, kinds, numbers and formats", function()
    local o = assert(args.parse { "run", "--provider", "tamtam, lance", "--in", "a.CSV", "--out", "b.jsonl" })
    assert.same({ "tamtam", "lance" }, o.providers)
    assert.equal("csv", o.in_format)
    assert.equal("csv", o.out_format)
    assert.equal("sqlite:b.jsonl.state.db", o.store)
    assert.matches("named twice", why("tamtam,tamtam"))
    assert.matches("%-%-budget", why("tamtam", "--budget", "x"))
    assert.matches("%-%-poll%-interval", why("tamtam", "--poll-interval", "0"))
    assert.matches("%-%-store", why("tamtam", "--store", "x"))
    assert.matches("kind", why("tamtam", "--kind", "fax"))
  end)
end)

describe("records", function()
  local records = require "enrich.cli.records"
  it("reads a JSON number as the digits the line holds, never '12345.0' (Lua 5.4 floats)", function()
    local cjson = require "cjson"
    local data = { format = "jsonl", columns = { "puffle_id", "first_name", "last_name" }, rows = {
      cjson.decode('{"puffle_id":12345,"first_name":"Ada","last_name":7}'),
      cjson.decode('{"puffle_id":2.5}'),
    } }
    local recs = assert(records.extract(data, { "puffle" }))
    assert.equal("12345", recs[1].puffle_id)
    assert.equal("7", recs[1].last_name)
    assert.equal("2.5", recs[2].puffle_id)
  end)
end)
