-- The store with the engine, end to end against the simulator.
local support = require "engine.support"
local enrich = require "enrich"
local store_support = require "store.support"

local tmpdb, cleanup = store_support.tmpdb, store_support.cleanup

-- Runs the crash child to its end; -> its output.
local function child(sim, db, provider, phase, crash_at, extra)
  return (store_support.finish(store_support.child(sim, db, provider, phase, crash_at, extra)))
end

describe("durable jobs end to end", function()
  local sim, db
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function()
    support.reset(sim)
    support.configure(sim, { all = { polls = 1 }, tamtam = { rate_limit = false } })
    db = tmpdb()
  end)
  after_each(function() cleanup(db) end)

  local function client(provider, store)
    local opts = { api_key = "k", base_url = sim.url .. "/" .. provider, store = store }
    for k, v in pairs(support.FAST) do opts[k] = v end
    return assert(enrich.client(provider, opts))
  end

  it("records every job of a client, with its results, and leaves none unfinished", function()
    local store = assert(enrich.store.open("sqlite:" .. db))
    local c = client("tamtam", store)
    local jobs = enrich.run(function()
      local a = assert(c:submit({ { first_name = "Ada", last_name = "Byron", domain = "example.com",
                                    custom = { row = 1 } } }, { kind = "email" }))
      local b = assert(c:submit({ { first_name = "Bob", last_name = "notfound", domain = "example.com" } },
                                { kind = "email" }))
      a:wait(); b:wait()
      return { a, b }
    end)
    assert(store:close())
    store = assert(enrich.store.open("sqlite:" .. db))
    assert.same({}, store:jobs_unfinished())
    local a = store:job(jobs[1].uid)
    assert.equal("succeeded", a.state)
    assert.equal(jobs[1].id, a.id)
    assert.equal("ada.byron@example.com", a.results[1].email)
    assert.equal(1, a.results[1].custom.row)
    assert.equal("not_found", store:job(jobs[2].uid).results[1].status)
    -- A terminal job comes back terminal, results and all.
    local again = enrich.job_from_snapshot(client("tamtam", store), a)
    assert.is_true(again:done())
    assert.equal("ada.byron@example.com", again.results[1].email)
    store:close()
  end)

  it("raises on clients that are not a table of clients by provider name (misuse)", function()
    local store = assert(enrich.store.open("sqlite:" .. db))
    local c = client("tamtam", store)
    assert.has_error(function() enrich.resume(store, { c }) end,
                     "enrich.resume: clients must be a table of clients by provider name (found key '1')")
    assert.has_error(function() enrich.resume(store, { tamtam = "c" }) end,
                     "enrich.resume: clients.tamtam is not a client")
    local jobs = assert(enrich.resume(store, { tamtam = c }))
    assert.same({}, jobs)
    store:close()
  end)

  it("sends nothing when the intent cannot be committed: the part fails with code store", function()
    local store = assert(enrich.store.open("sqlite:" .. db))
    -- Every commit fails as a full disk would.
    local real = store.w
    local failed = {}
    local function report(d)
      local out
      for seq in pairs(failed) do
        if seq <= d then
          failed[seq] = nil
          out = out or {}
          out[#out + 1] = { seq = seq, message = "database or disk is full", code = "full" }
        end
      end
      return d, out
    end
    store.w = setmetatable({
      commit = function(_, ...) local seq = real:commit(...); failed[seq] = true; return seq end,
      done = function() return report((real:done())) end,
      wait = function(_, seq) return report((real:wait(seq))) end,
    }, { __index = function(_, k) return function(_, ...) return real[k](real, ...) end end })
    local c = client("tamtam", store)
    local job = enrich.run(function()
      local j = assert(c:submit({ { first_name = "Ada", last_name = "Byron", domain = "example.com" } },
                                { kind = "email" }))
      j:wait()
      return j
    end)
    assert.equal("failed", job.state)
    assert.equal("store", job.error.code)
    assert.equal("full", job.error.reason)
    assert.equal(0, support.stats(sim, "tamtam").submissions)
    store.w = real
    store:close()
  end)

  it("resends an unknown submit only when asked (resubmit_unknown): then it pays twice", function()
    local out = child(sim, db, "tamtam", "run", "request_sent:1")
    assert.is_nil(out:find("DONE", 1, true))
    out = child(sim, db, "tamtam", "resume", nil, "resubmit")
    assert.matches("DONE", out)
    for state in out:gmatch("JOB %S+ (%S+)") do assert.equal("succeeded", state) end
    assert.is_true(#support.stats(sim, "tamtam").duplicates > 0)
  end)

  it("leaves jobs of a provider without a client where they are", function()
    child(sim, db, "tamtam", "run", "id_committed:1")
    local store = assert(enrich.store.open("sqlite:" .. db))
    local jobs, skipped = enrich.resume(store, { puffle = client("puffle", store) })
    assert.same({}, jobs)
    assert.is_true(#skipped > 0)
    assert.equal("tamtam", skipped[1].provider)
    assert.is_true(#store:jobs_unfinished() > 0)
    store:close()
  end)

  it("a put inside enrich.run rides along with the loop's commits; close writes it", function()
    local store = assert(enrich.store.open("sqlite:" .. db))
    local commits = 0
    local real = store.w
    store.w = setmetatable({ commit = function(_, ...) commits = commits + 1; return real:commit(...) end },
                           { __index = function(_, k) return function(_, ...) return real[k](real, ...) end end })
    enrich.run(function()
      for i = 1, 100 do assert(store:answer_put("k" .. i, { n = i })) end
      assert.same({ n = 7 }, store:answer_get("k7"))
      enrich.sleep(0.01)
    end)
    assert.is_true(commits <= 2, "commits: " .. commits)
    store.w = real
    assert(store:close())
    store = assert(enrich.store.open("sqlite:" .. db))
    assert.same({ n = 100 }, store:answer_get("k100"))
    store:close()
  end)

  it("never makes a second live job of one already live in this process", function()
    child(sim, db, "tamtam", "run", "id_committed:1")
    local store = assert(enrich.store.open("sqlite:" .. db))
    local c = client("tamtam", store)
    local first = assert(enrich.resume(store, { tamtam = c }))
    local again = assert(enrich.resume(store, { tamtam = c }))
    assert.equal(#first, #again)
    for i = 1, #first do assert.equal(first[i], again[i]) end
    enrich.run(function() for _, j in ipairs(first) do j:wait(5) end end)
    local polls = support.stats(sim, "tamtam").requests["GET /v2/people/enrich/{id}"] or 0
    assert.is_true(polls <= #first * 3, "polls: " .. polls)
    store:close()
  end)

  it("refuses misuse of resume", function()
    local store = assert(enrich.store.open("sqlite:" .. db))
    assert.has_error(function() enrich.resume(nil, {}) end)
    assert.has_error(function() enrich.resume(store, nil) end)
    assert.has_error(function() enrich.resume(store, {}, { nope = true }) end)
    store:close()
  end)
end)
