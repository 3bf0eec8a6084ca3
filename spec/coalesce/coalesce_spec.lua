-- Coalescing (enrich.coalesce, issue 16) end to end against the simulator:
-- single submits gathered into one provider request per batch, each caller
-- still with its own job, results, order and custom. The simulator's
-- counters prove the point (one submit request for N jobs).
local support = require "engine.support"
local enrich = require "enrich"

local function submits(sim, provider, route)
  return support.stats(sim, provider).requests[route] or 0
end
local TAMTAM_POST, INSTAVIEW_POST, PARSETX_POST =
  "POST /v2/people/enrich", "POST /sourcing/enrich", "POST /v1/enrich/async"

local function person(first, last, row)
  return { first_name = first, last_name = last, domain = "example.com", custom = { row = row } }
end

-- Submits every input list as its own job inside one run; returns the jobs
-- once all have ended.
local function run_all(client, lists, opts)
  local jobs = {}
  enrich.run(function()
    for i, inputs in ipairs(lists) do jobs[i] = assert(client:submit(inputs, opts)) end
    for i = 1, #lists do assert(jobs[i]:wait(20), "job " .. i .. " did not finish") end
  end)
  return jobs
end

describe("coalescing", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function()
    support.reset(sim)
    support.configure(sim, { all = { polls = 1 } })
  end)

  describe("routes each job its own results, in order, under one provider request", function()
    it("tamtam", function()
      local c = support.fast_rate_client(sim, "tamtam")
      local lists = {}
      for i = 1, 30 do lists[i] = { person("P" .. i, "Single", tostring(i)) } end
      lists[31] = { person("Ada", "Byron", "a"), person("Grace", "Hopper", "b"), person("Alan", "Turing", "c") }
      local jobs = run_all(c, lists, { kind = "email" })
      assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
      for i = 1, 30 do
        local j = jobs[i]
        assert.equal("succeeded", j.state)
        assert.equal(1, #j.results)
        assert.equal(lists[i][1], j.results[1].input)
        assert.equal(tostring(i), j.results[1].custom.row)          -- the caller's custom, untouched
        assert.matches("^p" .. i .. "%.", j.results[1].email)       -- this person's answer
        assert.same({ credits = 1 }, j.cost)                        -- its own share
        assert.equal(jobs[1].id, j.id)                              -- the shared request's id
      end
      local three = jobs[31]
      assert.same({ "a", "b", "c" }, { three.results[1].custom.row, three.results[2].custom.row,
                                       three.results[3].custom.row })
      assert.matches("^ada", three.results[1].email)
      assert.matches("^grace", three.results[2].email)
      assert.matches("^alan", three.results[3].email)
      assert.same({ 1, 2, 3 }, { three.results[1].index, three.results[2].index, three.results[3].index })
      assert.equal(3, three.cost.credits)
    end)

    it("instaview", function()
      local c = support.fast_rate_client(sim, "instaview")
      local lists = {}
      for i = 1, 7 do lists[i] = { { id = "p_single" .. i, custom = { n = i } } } end
      lists[8] = { { id = "p_pair_a" }, { id = "p_pair_b", custom = { n = "b" } } }
      local jobs = run_all(c, lists)
      assert.equal(1, submits(sim, "instaview", INSTAVIEW_POST))
      for i = 1, 7 do
        assert.equal("succeeded", jobs[i].state)
        assert.equal("p_single" .. i, jobs[i].results[1].raw.profileId)
        assert.equal(i, jobs[i].results[1].custom.n)
      end
      assert.equal("p_pair_a", jobs[8].results[1].raw.profileId)
      assert.equal("p_pair_b", jobs[8].results[2].raw.profileId)
      assert.equal("b", jobs[8].results[2].custom.n)
    end)

    it("instaview, past its batch size of 10: full requests, then the rest", function()
      local c = support.fast_rate_client(sim, "instaview")
      local lists = {}
      for i = 1, 25 do lists[i] = { { id = "p_many" .. i } } end
      local jobs = run_all(c, lists)
      assert.equal(3, submits(sim, "instaview", INSTAVIEW_POST))   -- 10 + 10 + 5
      for i = 1, 25 do assert.equal("p_many" .. i, jobs[i].results[1].raw.profileId) end
      local s = c.spec.coalescing.stats
      assert.same({ batches = 3, inputs = 25 }, { batches = s.batches, inputs = s.inputs })
    end)

    it("parsetx", function()
      local c = support.fast_rate_client(sim, "parsetx")
      local lists = {}
      for i = 1, 12 do lists[i] = { { text = "AMZN MKTP US*" .. i .. " SEATTLE", custom = { i = i } } } end
      lists[13] = { "NETFLIX.COM 866-579-7172", "SPOTIFY P1234 STOCKHOLM", "UBER *TRIP 8005928996" }
      local jobs = run_all(c, lists)
      assert.equal(1, submits(sim, "parsetx", PARSETX_POST))
      for i = 1, 12 do
        assert.equal("succeeded", jobs[i].state)
        assert.equal("AMZN MKTP US*" .. i .. " SEATTLE", jobs[i].results[1].raw.input)
        assert.equal(i, jobs[i].results[1].custom.i)
      end
      for k = 1, 3 do assert.equal(lists[13][k], jobs[13].results[k].raw.input) end
    end)
  end)

  it("gathers the submits of every client with the same key and base URL (a client per request)", function()
    local jobs = {}
    enrich.run(function()
      for i = 1, 6 do
        local c = support.fast_rate_client(sim, "tamtam")          -- a fresh client each time
        jobs[i] = assert(c:submit({ person("H" .. i, "Handler", tostring(i)) }))
      end
      for i = 1, 6 do assert(jobs[i]:wait(20)) end
    end)
    assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
    for i = 1, 6 do assert.matches("^h" .. i .. "%.", jobs[i].results[1].email) end
  end)

  it("keeps options apart: email and phone jobs go in separate requests", function()
    local c = support.fast_rate_client(sim, "tamtam")
    local jobs = {}
    enrich.run(function()
      for i = 1, 4 do
        jobs[#jobs + 1] = assert(c:submit({ person("E" .. i, "Mail") }, { kind = "email" }))
        jobs[#jobs + 1] = assert(c:submit({ person("T" .. i, "Phone") }, { kind = "phone" }))
      end
      for _, j in ipairs(jobs) do assert(j:wait(20)) end
    end)
    assert.equal(2, submits(sim, "tamtam", TAMTAM_POST))
    for i = 1, 8, 2 do
      assert.matches("@", jobs[i].results[1].email)
      assert.matches("^%+", jobs[i + 1].results[1].phone)
      assert.equal(10, jobs[i + 1].cost.credits)
    end
  end)

  it("is off with coalesce = false, and on for window = 0 within one turn", function()
    local off = support.fast_rate_client(sim, "tamtam", { coalesce = false })
    run_all(off, { { person("A", "One") }, { person("B", "Two") }, { person("C", "Three") } })
    assert.equal(3, submits(sim, "tamtam", TAMTAM_POST))
    support.reset(sim)
    local now = support.fast_rate_client(sim, "tamtam", { coalesce = { window = 0 }, api_key = "w0" })
    run_all(now, { { person("A", "One") }, { person("B", "Two") }, { person("C", "Three") } })
    assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
  end)

  it("refuses a bad input at submit, before it joins a batch", function()
    local c = support.fast_rate_client(sim, "tamtam")
    local good, bad, err
    enrich.run(function()
      good = assert(c:submit({ person("Ada", "Byron") }))
      bad, err = c:submit({ { custom = { row = "nothing to look up" } } })
      assert(good:wait(20))
    end)
    assert.is_nil(bad)
    assert.equal("invalid", err.code)
    assert.equal("succeeded", good.state)
    assert.equal(1, support.stats(sim, "tamtam").jobs)
  end)

  it("options are checked: coalesce must be false or { window = seconds }", function()
    for _, bad in ipairs({ 5, true, { window = -1 }, { window = "soon" }, { size = 3 } }) do
      assert.has_error(function() enrich.client("tamtam", { api_key = "k", coalesce = bad }) end)
    end
    local c = assert(enrich.client("tamtam", { api_key = "k", coalesce = { window = 0.2 } }))
    assert.equal(0.2, c.spec.coalescing.window)
    assert.is_nil(assert(enrich.client("tamtam", { api_key = "k", coalesce = false })).spec.coalescing)
    assert.is_nil(assert(enrich.client("puffle", { api_key = "k" })).spec.coalescing)   -- not by default
    assert.is_table(assert(enrich.client("puffle", { api_key = "k", coalesce = {} })).spec.coalescing)
  end)

  describe("failures of a shared request", function()
    it("item failures stay with their own jobs", function()
      local c = support.fast_rate_client(sim, "tamtam")
      local jobs = run_all(c, { { person("Ada", "Byron") }, { person("Bad", "Itemfail") },
                                { person("Nobody", "Notfound") },
                                { person("Grace", "Hopper"), person("Bad", "Itemfail") } })
      assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
      assert.equal("succeeded", jobs[1].state)
      assert.equal("partial", jobs[2].state)
      assert.equal("failed", jobs[2].results[1].status)
      assert.equal("succeeded", jobs[3].state)
      assert.equal("not_found", jobs[3].results[1].status)
      assert.equal("partial", jobs[4].state)
      assert.same({ "found", "failed" }, { jobs[4].results[1].status, jobs[4].results[2].status })
      assert.equal(1, jobs[1].cost.credits)
    end)

    it("a failed request fails every job in it, with its error", function()
      local c = support.fast_rate_client(sim, "tamtam")
      local jobs = run_all(c, { { person("Ada", "Byron") }, { person("Zed", "Jobfail") },
                                { person("Grace", "Hopper") } })
      assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
      for _, j in ipairs(jobs) do
        assert.equal("failed", j.state)
        assert.equal("server", j.error.code)
        assert.equal(jobs[1].error, j.error)
        assert.equal("failed", j.results[1].status)
      end
    end)

    it("a refused submit fails every job in it, with its error", function()
      support.fault(sim, { provider = "tamtam", method = "POST", type = 422, count = 1 })
      local c = support.fast_rate_client(sim, "tamtam")
      local jobs = run_all(c, { { person("Ada", "Byron") }, { person("Grace", "Hopper") } })
      assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
      for _, j in ipairs(jobs) do
        assert.equal("failed", j.state)
        assert.equal("invalid", j.error.code)
        assert.is_nil(j.id)
      end
    end)
  end)

  describe("cancel of one job", function()
    it("while the batch gathers: it is left out of the request", function()
      local c = support.fast_rate_client(sim, "tamtam", { coalesce = { window = 0.1 } })
      local jobs = {}
      enrich.run(function()
        for i = 1, 3 do jobs[i] = assert(c:submit({ person("C" .. i, "Gather") })) end
        jobs[2]:cancel()
        for i = 1, 3 do assert(jobs[i]:wait(20)) end
      end)
      assert.same({ "succeeded", "cancelled", "succeeded" }, { jobs[1].state, jobs[2].state, jobs[3].state })
      assert.equal(2, c.spec.coalescing.stats.inputs)
      assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
    end)

    it("once sent: locally; the others still get their results", function()
      support.configure(sim, { tamtam = { polls = 3 } })
      local c = support.fast_rate_client(sim, "tamtam")
      local jobs = {}
      enrich.run(function()
        for i = 1, 3 do jobs[i] = assert(c:submit({ person("K" .. i, "Sent") })) end
        for _ = 1, 200 do if jobs[2].state == "running" then break end enrich.sleep(0.005) end
        assert.equal("running", jobs[2].state)
        jobs[2]:cancel()
        for i = 1, 3 do assert(jobs[i]:wait(20)) end
      end)
      assert.same({ "succeeded", "cancelled", "succeeded" }, { jobs[1].state, jobs[2].state, jobs[3].state })
      assert.matches("^k3%.", jobs[3].results[1].email)
      assert.equal("pending", jobs[2].results[1].status)
    end)

    it("at the provider only when no other job shares the request (puffle, coalesce on)", function()
      support.configure(sim, { puffle = { polls = 1000 } })
      local c = support.fast_rate_client(sim, "puffle", { coalesce = { window = 0.02 } })
      local cancel_route = "POST /api/enrichment/{id}/cancel"
      local jobs = {}
      enrich.run(function()
        for i = 1, 3 do jobs[i] = assert(c:submit({ { id = "lead_" .. i } })) end
        for _ = 1, 200 do if jobs[3].state == "running" then break end enrich.sleep(0.005) end
        jobs[1]:cancel()
        jobs[2]:cancel()
        assert.equal(0, support.stats(sim, "puffle").requests[cancel_route] or 0)
        jobs[3]:cancel()
      end)
      local stats = support.stats(sim, "puffle")
      assert.equal(1, stats.requests["POST /api/enrichment"])
      assert.equal(1, stats.requests[cancel_route])
      for i = 1, 3 do assert.equal("cancelled", jobs[i].state) end
    end)
  end)

  it("with a store: every job's intent is recorded before the shared submit goes out", function()
    local log = {}
    local store = {
      intent = function(_, job, part)
        log[#log + 1] = "intent " .. job.uid .. " " .. part.uid .. " @" .. tostring(part.offset)
        enrich.sleep(0.001)                          -- a store may yield (group commit)
        return true
      end,
      accepted = function(_, job, part) log[#log + 1] = "accepted " .. job.uid .. " " .. part.id; return true end,
      changed = function(_, job) log[#log + 1] = "changed " .. job.uid .. " " .. job.state end,
      finished = function(_, job)
        log[#log + 1] = "finished " .. job.uid .. " " .. job.state .. " " .. #job.results
        return true
      end,
    }
    local sched = enrich.scheduler()
    local unwatch = support.watch_engine(sched, { submit = function(real, req)
      if req.method == "POST" then log[#log + 1] = "POST " .. #(req.body or "") end
      return real:submit(req)
    end })
    local jobs
    local ok, err = pcall(function()
      local c = support.fast_rate_client(sim, "tamtam", { store = store })
      jobs = run_all(c, { { person("S1", "Store") }, { person("S2", "Store"), person("S3", "Store") },
                          { person("S4", "Store") } })
    end)
    unwatch()
    assert(ok, err)
    local post
    for i, line in ipairs(log) do if line:match("^POST") then assert.is_nil(post); post = i end end
    assert.is_number(post, "the shared submit was sent")
    -- every job's intent, with its offset in the shared request, before it
    local before = {}
    for i = 1, post - 1 do
      local uid, offset = log[i]:match("^intent (%S+) %S+ @(%d+)$")
      if uid then before[uid] = tonumber(offset) end
    end
    assert.same({ [jobs[1].uid] = 0, [jobs[2].uid] = 1, [jobs[3].uid] = 3 }, before)
    -- then each job's own accepted, changes and results
    local seen = {}
    for i = post + 1, #log do
      local what, uid = log[i]:match("^(%a+) (%S+)")
      seen[what .. " " .. uid] = log[i]
    end
    for k, j in ipairs(jobs) do
      assert.equal("accepted " .. j.uid .. " " .. j.id, seen["accepted " .. j.uid])
      assert.equal("finished " .. j.uid .. " succeeded " .. (k == 2 and 2 or 1), seen["finished " .. j.uid])
    end
    assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
  end)

  it("a store that refuses an intent stops the shared submit: every job fails, nothing is sent", function()
    local store = {
      intent = function(_, job) if job.inputs[1].first_name == "R2" then return nil, "disk full" end return true end,
    }
    local c = support.fast_rate_client(sim, "tamtam", { store = store })
    local jobs = run_all(c, { { person("R1", "Refused") }, { person("R2", "Refused") } })
    assert.equal(0, submits(sim, "tamtam", TAMTAM_POST))
    for _, j in ipairs(jobs) do assert.equal("failed", j.state) end
  end)

  it("with a SQLite store: the 20 members' intents go in ONE commit, durable before the shared submit", function()
    -- A batch of N jobs must not cost N commits (N fsyncs, one after the
    -- other) before it is sent: the members' intents share one commit,
    -- as every write of a loop turn does (group commit).
    local sqlite = require "enrich.store.sqlite"
    local path = os.tmpname()
    os.remove(path)
    local s = assert(require("enrich.store").open("sqlite:" .. path))
    -- The store's writer, watched: what each commit carries (intents are
    -- the parts' rows), and the simulator's submit count when it is handed.
    local real, queued, commits = s.w, 0, {}
    s.w = setmetatable({
      add = function(_, k, ...)
        if k == sqlite.STATEMENT.part then queued = queued + 1 end
        return real:add(k, ...)
      end,
      commit = function(_, ...)
        local seq = real:commit(...)
        if queued > 0 then
          commits[#commits + 1] = { seq = seq, intents = queued, posts = submits(sim, "tamtam", TAMTAM_POST) }
        end
        queued = 0
        return seq
      end,
    }, { __index = function(_, k) return function(_, ...) return real[k](real, ...) end end })
    local at_post                                     -- the intent commits and the durable one, at the POST
    local unwatch = support.watch_engine(enrich.scheduler(), { submit = function(eng, req)
      if req.method == "POST" and not at_post then at_post = { commits = #commits, done = s.done } end
      return eng:submit(req)
    end })
    local jobs
    local ok, err = pcall(function()
      local c = support.fast_rate_client(sim, "tamtam", { store = s })
      local lists = {}
      for i = 1, 20 do lists[i] = { person("G" .. i, "Group", tostring(i)) } end
      jobs = run_all(c, lists, { kind = "email" })
    end)
    unwatch()
    s.w = real
    s:flush()
    local counts = s:counts()
    s:close()
    for _, suffix in ipairs { "", "-wal", "-shm", ".lock" } do os.remove(path .. suffix) end
    assert(ok, err)
    assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
    for i = 1, 20 do assert.equal("succeeded", jobs[i].state) end
    assert.same({ succeeded = 20 }, counts)
    assert.is_table(at_post, "the shared submit was sent")
    -- ONE commit carried the 20 intents, handed over before any submit
    -- reached the simulator, and durable when the submit went out.
    assert.equal(1, at_post.commits, "commits carrying intents before the submit")
    assert.same({ intents = 20, posts = 0 }, { intents = commits[1].intents, posts = commits[1].posts })
    assert.is_true(at_post.done >= commits[1].seq, "the intents' commit was durable before the submit")
    assert.equal(1, #commits)                                  -- and no intent was written again after it
  end)

  it("a store with intents() gets the batch's members in one call; its refusal stops the shared submit", function()
    local calls = {}
    local store = {
      intents = function(_, list)
        local names = {}
        for i, e in ipairs(list) do names[i] = e.job.inputs[1].first_name .. "@" .. tostring(e.part.offset) end
        calls[#calls + 1] = table.concat(names, " ")
        return nil, "disk full"
      end,
      intent = function() error("intent() called: intents() should have taken the batch") end,
    }
    local c = support.fast_rate_client(sim, "tamtam", { store = store })
    local jobs = run_all(c, { { person("I1", "Intents") }, { person("I2", "Intents"), person("I3", "Intents") },
                              { person("I4", "Intents") } })
    assert.same({ "I1@0 I2@1 I4@3" }, calls)
    assert.equal(0, submits(sim, "tamtam", TAMTAM_POST))
    for _, j in ipairs(jobs) do
      assert.equal("failed", j.state)
      assert.matches("disk full", tostring(j.error and j.error.message))
    end
  end)

  it("a member resumed from its snapshot reads its own slice of the shared request", function()
    support.configure(sim, { tamtam = { polls = 3 } })
    local c = support.fast_rate_client(sim, "tamtam")
    local snap
    enrich.run(function()
      local jobs = {}
      for i = 1, 4 do jobs[i] = assert(c:submit({ person("M" .. i, "Resumed", tostring(i)) })) end
      for _ = 1, 200 do if jobs[3].state == "running" then break end enrich.sleep(0.005) end
      snap = require("cjson").decode(require("cjson").encode(jobs[3]:snapshot()))
      for i = 1, 4 do jobs[i]:cancel() end
    end)
    assert.equal(2, snap.parts[1].offset)
    assert.equal(4, snap.parts[1].batch_count)
    local again = support.fast_rate_client(sim, "tamtam", { api_key = "spec-key-2" })
    local job = enrich.job_from_snapshot(again, snap)
    assert(job:wait(20))
    assert.equal("succeeded", job.state)
    assert.matches("^m3%.", job.results[1].email)
    assert.equal("3", job.results[1].custom.row)
  end)

  it("a resumed tamtam member reads its slice by position even when its snapshot carries inputs", function()
    -- A store may hand back the intent's inputs with a part (the prepared
    -- person): tamtam's answers follow the shared request's order, so the
    -- member must still be read at its offset, not from the request's start.
    support.configure(sim, { tamtam = { polls = 3 } })
    local c = support.fast_rate_client(sim, "tamtam")
    local snap, prepared
    enrich.run(function()
      local jobs = {}
      for i = 1, 4 do jobs[i] = assert(c:submit({ person("N" .. i, "Resumed", tostring(i)) })) end
      for _ = 1, 200 do if jobs[3].state == "running" then break end enrich.sleep(0.005) end
      snap = require("cjson").decode(require("cjson").encode(jobs[3]:snapshot()))
      prepared = c.spec.prepare(person("N3", "Resumed", "3"), { kind = "email" })
      for i = 1, 4 do jobs[i]:cancel() end
    end)
    snap.parts[1].inputs = { require("cjson").decode(require("cjson").encode(prepared)) }
    local job = enrich.job_from_snapshot(support.fast_rate_client(sim, "tamtam", { api_key = "spec-key-3" }), snap)
    assert(job:wait(20))
    assert.equal("succeeded", job.state)
    assert.matches("^n3%.", job.results[1].email)
  end)

  it("a resumed instaview member (its inputs kept) reads its own profiles and a share of the credits", function()
    support.configure(sim, { instaview = { polls = 3 } })
    local c = support.fast_rate_client(sim, "instaview")
    local snap
    enrich.run(function()
      local jobs = {}
      for i = 1, 5 do jobs[i] = assert(c:submit({ { id = "p_res" .. i, custom = { i = i } } })) end
      for _ = 1, 200 do if jobs[4].state == "running" then break end enrich.sleep(0.005) end
      snap = require("cjson").decode(require("cjson").encode(jobs[4]:snapshot()))
      for i = 1, 5 do jobs[i]:cancel() end
    end)
    assert.same({ 3, 5 }, { snap.parts[1].offset, snap.parts[1].batch_count })
    local job = enrich.job_from_snapshot(support.fast_rate_client(sim, "instaview"), snap)
    assert(job:wait(20))
    assert.equal("succeeded", job.state)
    assert.equal("p_res4", job.results[1].raw.profileId)
    assert.equal(4, job.results[1].custom.i)
    assert.equal(1, job.cost.credits)
  end)

  it("a loop that refuses a submit (a host's, in nginx's master) leaves no batch behind", function()
    -- OpenResty's host refuses every scheduling in init_by_lua; the batch
    -- opened for that submit must not stay open without its window timer
    -- (forked into the workers, it swallowed their next submit).
    local c = support.fast_rate_client(sim, "tamtam")
    local sched = c.sched
    sched.at = function() error("refused here", 2) end
    local ok, err = pcall(c.submit, c, { person("Refused", "Once", "r") }, { kind = "email" })
    sched.at = nil                                       -- the scheduler's own again
    assert.is_false(ok)
    assert.matches("refused here", tostring(err))
    assert.is_nil(next(c.spec.coalescing.open))
    local jobs = run_all(c, { { person("After", "Refusal", "a") } }, { kind = "email" })
    assert.equal("succeeded", jobs[1].state)
    assert.equal(1, submits(sim, "tamtam", TAMTAM_POST))
  end)
end)
