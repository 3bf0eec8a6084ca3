-- Issue 11, parts 3 and 4: answers and inputs as they come in the field,
-- end to end against the simulator. Each `it` here started as an example
-- that failed (see the issue); the fuzz spec keeps the kinds closed.
local support = require "engine.support"
local enrich = require "enrich"

local function stats(sim, provider) return support.stats(sim, provider) end

describe("answers from the field", function()
  local sim

  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  local function client(provider, opts) return support.fast_rate_client(sim, provider, opts) end

  describe("JSON null where an object is expected", function()
    it("parsetx results [item, null, item]: item 2 failed with 'protocol', never silently pending", function()
      local item = '{"input":"%s","status":"complete","source":"cache","merchant":"Uber",'
        .. '"domain":"uber.com","category":"Transportation","mcc_code":"4121",'
        .. '"is_subscription":false,"confidence":1}'
      local body = '{"id":"j","status":"complete","item_count":3,"results":['
        .. item:format("UBER TRIP 1") .. ',null,' .. item:format("UBER TRIP 3") .. ']}'
      support.fault(sim, { type = "status", status = 200, body = body, provider = "parsetx",
                           method = "GET", path = "^/v1/enrich/jobs/" })
      local job = support.run_job(client("parsetx"), { "UBER TRIP 1", "UBER TRIP 2", "UBER TRIP 3" })
      assert.equal("partial", job.state)
      assert.same({ total = 3, found = 2, not_found = 0, failed = 1, pending = 0 }, job.counts)
      assert.equal("failed", job.results[2].status)
      assert.equal("protocol", job.results[2].error.code)
      assert.equal("Uber", job.results[3].merchant.name)
    end)

    it("tamtam results with a null entry and a null email: the rest is read, the gap is 'protocol'", function()
      local body = '{"request_id":"r","status":"COMPLETED","item_count":3,"results":['
        .. '{"status":"COMPLETED","enrichment_type":"email",'
        .. '"emails":[null,{"email":"a@x.example","status":"DELIVERABLE"}],'
        .. '"phones":null,"most_probable_email":null,"custom":{"row":"1"},"error":null},'
        .. 'null,'
        .. '{"status":"COMPLETED","enrichment_type":"email","emails":null,"phones":[null],'
        .. '"most_probable_email":"","custom":null,"error":""}]}'
      support.fault(sim, { type = "status", status = 200, body = body, provider = "tamtam",
                           method = "GET", path = "^/v2/people/enrich/" })
      local job = support.run_job(client("tamtam"), {
        { first_name = "Ada", last_name = "Byron" }, { first_name = "Grace", last_name = "Hopper" },
        { first_name = "Alan", last_name = "Turing" } })
      assert.equal("partial", job.state)
      assert.equal("a@x.example", job.results[1].email)
      assert.equal("failed", job.results[2].status)
      assert.equal("protocol", job.results[2].error.code)
      assert.equal("not_found", job.results[3].status)
    end)
  end)

  describe("paging follows what the provider returns", function()
    it("puffle serving 50 items a page while we ask for 100: a 400-lead run reads all 8 pages", function()
      support.configure(sim, { puffle = { page_max = 50 } })
      local inputs = {}
      for i = 1, 400 do inputs[i] = { id = "ld_" .. i } end
      local job = support.run_job(client("puffle"), inputs)
      assert.equal("succeeded", job.state)
      assert.equal(400, job.counts.found)
      for i = 1, 400 do assert.equal("ld_" .. i, job.results[i].raw.leadId) end
      assert.equal(8, stats(sim, "puffle").requests["GET /api/enrichment/{id}/items"])
    end)

    it("puffle hasMore without nextCursor: the documented cursor (the last item id) carries on", function()
      local page1 = '{"items":[{"id":"it_00000001","leadId":"ld_a","status":"completed",'
        .. '"result":{"email":"a@a.example"}}],'
        .. '"page":{"limit":1,"nextCursor":null,"hasMore":true}}'
      support.fault(sim, { type = "status", status = 200, body = page1, provider = "puffle",
                           method = "GET", path = "/items$" })
      local job = support.run_job(client("puffle"), { { id = "ld_a" }, { id = "ld_b" } })
      assert.equal("succeeded", job.state)
      assert.equal(2, job.counts.found)
    end)
  end)

  describe("a 2xx without a body", function()
    local function polled(job, n)
      for _ = 1, 300 do
        if job.polls >= n then return end
        enrich.sleep(0.01)
      end
      error("job did not poll " .. n .. " times")
    end

    it("puffle cancel answered 204 No Content: one POST, cancelled, the finished lead kept", function()
      support.configure(sim, { puffle = { polls = 1000 } })
      local c = client("puffle", { poll = { interval = 0.02, factor = 1, jitter = 0, deadline = 5 } })
      local job = assert(c:submit({ { id = "ld_jobhang_a" }, { id = "ld_b" }, { id = "ld_c" } }))
      polled(job, 2)                                   -- running, its first item too
      support.fault(sim, { type = "status", status = 204, body = "", after = true, provider = "puffle",
                           method = "POST", path = "/cancel$" })
      job:cancel()
      assert.equal("cancelled", job.state)
      assert.is_nil(job.parts[1].cancel_error)
      assert.equal(1, stats(sim, "puffle").requests["POST /api/enrichment/{id}/cancel"])
      assert.equal("found", job.results[1].status)     -- finished (and paid): kept
      assert.equal("cancelled", job.results[2].error.code)
    end)

    it("instaview 202 with an empty body is 'still processing'", function()
      support.fault(sim, { type = "status", status = 202, body = "", provider = "instaview",
                           method = "GET", path = "/results$", count = 2 })
      local job = support.run_job(client("instaview"), { { id = "p_ada" } })
      assert.equal("succeeded", job.state)
      -- two empty 202s, then the simulator's own "processing", then done
      assert.equal(4, stats(sim, "instaview").requests["GET /sourcing/enrich/{id}/results"])
    end)
  end)

  describe("text that is not UTF-8 is refused before sending", function()
    it("tamtam: a Latin-1 last name among three people -> 'invalid', naming input 2 and last_name", function()
      local job, err = client("tamtam"):submit({
        { first_name = "Ada", last_name = "Byron" },
        { first_name = "Hans", last_name = "M\252ller" },
        { first_name = "Zo\195\171", last_name = "Ng" } })
      assert.is_nil(job)
      assert.equal("invalid", err.code)
      assert.equal(2, err.index)
      assert.matches("input 2", err.message, 1, true)
      assert.matches("last_name", err.message, 1, true)
      assert.same({}, stats(sim, "tamtam").requests)
    end)

    it("every sent field of every provider, and valid accents, CJK and emoji pass untouched", function()
      local bad = {
        tamtam = { { first_name = "Ada", last_name = "Byron", company = "Caf\233" }, "company" },
        instaview = { { id = "p_\255" }, "id" },
        lance = { { id = "1b0c6c0e-7e55-4a51-9c53-0a0a0a0a0a0\192" }, "id" },
        puffle = { { id = "ld_\237\160\128" }, "id" },           -- a surrogate
        parsetx = { "CAF\201 PARIS", "text" },
      }
      for provider, case in pairs(bad) do
        local job, err = client(provider):submit({ case[1] })
        assert.is_nil(job, provider)
        assert.equal("invalid", err.code, provider)
        assert.equal(1, err.index, provider)
        assert.matches(case[2], err.message, 1, true)
      end
      for provider in pairs(bad) do assert.same({}, stats(sim, provider).requests, provider) end

      local names = { "Zo\195\171 \195\156nal", "\230\157\142\229\176\143\233\190\141", "Ada \240\159\152\128" }
      local inputs = {}
      for i, n in ipairs(names) do inputs[i] = { first_name = n, last_name = "Byron" } end
      local job = support.run_job(client("tamtam"), inputs)
      assert.equal("succeeded", job.state)
      local seen = stats(sim, "tamtam").inputs
      for _, n in ipairs(names) do
        local hit = false
        for k in pairs(seen) do if k:find("|" .. n:lower() .. "|", 1, true) then hit = true end end
        assert.is_true(hit, n)
      end
      local tx = support.run_job(client("parsetx"), { "CAF\195\137 PARIS \240\159\141\181" })
      assert.equal("CAF\195\137 PARIS \240\159\141\181", tx.results[1].raw.input)
    end)
  end)
end)
