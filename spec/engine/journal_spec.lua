-- The journal's contract (PLAN.md): a client made with { store = s } calls
-- s:intent before the first byte of a part's submit is sent (after the rate
-- token and the host slot are held; it may yield, and nil, err stops the
-- submit), s:accepted once the provider id is read and before the first
-- poll, s:changed on every state change and s:finished once, at the end.
-- And job:snapshot() v2 comes back as a live job through
-- enrich.job_from_snapshot, for every provider.
local support = require "engine.support"
local enrich = require "enrich"
local cjson = require "cjson"

local unpack = table.unpack or unpack
local SUBMIT, POLL = "POST /v2/people/enrich", "GET /v2/people/enrich/{id}"

describe("the store hooks", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  local function requests(route) return support.stats(sim, "tamtam").requests[route] or 0 end

  -- A store that writes down each call and what the simulator had seen then.
  local function fake_store(log, opts)
    opts = opts or {}
    local s = {}
    function s:intent(job, part)
      assert(self == s)
      log[#log + 1] = "intent " .. part.uid
      log.submits_at_intent = requests(SUBMIT)
      log.uid = job.uid
      enrich.sleep(0.01)                   -- a group commit parks the task
      if opts.refuse then return nil, opts.refuse end
      return true
    end
    function s.accepted(_, job, part)
      log[#log + 1] = "accepted " .. part.uid .. " " .. tostring(part.id == job.id)
      log.polls_at_accepted = requests(POLL)
      return true
    end
    function s.changed(_, job) log[#log + 1] = "changed " .. job.state end
    function s.finished(_, job) log[#log + 1] = "finished " .. job.state .. " " .. tostring(job.results ~= nil) end
    return s
  end

  it("are called in order: intent before the submit is sent, accepted before the first poll", function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local log = {}
    local store = fake_store(log)
    local c = support.client(sim, "tamtam", { api_key = "journal-key", store = store })
    assert.equal(store, c.store)
    local job = support.run_job(c, { { first_name = "Ada", last_name = "Byron" } })
    assert.equal("succeeded", job.state)
    assert.is_string(job.uid)
    assert.equal(job.uid, log.uid)
    assert.same({
      "intent " .. job.uid .. "/1",
      "accepted " .. job.uid .. "/1 true",
      "changed running",
      "finished succeeded true",
    }, { unpack(log) })
    assert.equal(0, log.submits_at_intent)
    assert.equal(0, log.polls_at_accepted)
    assert.equal(1, requests(SUBMIT))
  end)

  it("send nothing when the intent cannot be recorded: the part fails with that error", function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local log = {}
    local refuse = require("enrich.errors").new("invalid", "journal full")
    local c = support.client(sim, "tamtam", { api_key = "journal-key-2", store = fake_store(log, { refuse = refuse }) })
    local job = support.run_job(c, { { first_name = "Ada", last_name = "Byron" } })
    assert.equal("failed", job.state)
    assert.equal(refuse, job.error)
    assert.equal(0, requests(SUBMIT))
    assert.same({ "intent " .. job.uid .. "/1", "finished failed true" }, { unpack(log) })
    -- A plain string is wrapped in the one error shape.
    log = {}
    c = support.client(sim, "tamtam", { api_key = "journal-key-3", store = fake_store(log, { refuse = "disk full" }) })
    job = support.run_job(c, { { first_name = "Ada", last_name = "Byron" } })
    assert.equal("failed", job.state)
    assert.is_table(job.error)
    assert.matches("disk full", job.error.message)
    assert.equal(0, requests(SUBMIT))
  end)

  it("give every part a uid under the job's, and never put the key on a job or a snapshot", function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local inputs = {}
    for i = 1, 230 do inputs[i] = { first_name = "P" .. i, last_name = "Parts" } end
    local c = support.fast_rate_client(sim, "tamtam", { api_key = "sk_live_never_shown" })
    local job = support.run_job(c, inputs)
    for k, part in ipairs(job.parts) do assert.equal(job.uid .. "/" .. k, part.uid) end
    local text = cjson.encode(job:snapshot())
    assert.is_nil(text:find("sk_live_never_shown", 1, true))
  end)

  it("refuse a submit through a closed store (misuse raises, coalesced or not)", function()
    local path = os.tmpname()
    local store = assert(require("enrich.store").open("sqlite:" .. path))
    store:close()
    for _, co in ipairs { {}, false } do
      local c = support.client(sim, "tamtam", { api_key = "journal-key-c", store = store, coalesce = co })
      local ok, err = pcall(function() c:submit({ { first_name = "Ada", last_name = "Byron" } }) end)
      assert.is_false(ok)
      assert.matches("^[^:]*journal_spec%.lua:%d+: submit: the client's store is closed "
                     .. "%(enrich%.store%(sqlite:.*, closed%)%)$", err)
    end
    assert.equal(0, requests(SUBMIT))
    for _, suffix in ipairs { "", "-wal", "-shm", ".lock" } do os.remove(path .. suffix) end
  end)

  it("turn a store closed under a live job, or a hook that raises, into code store without a Lua position",
    function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local inputs = { { first_name = "Ada", last_name = "Byron" } }
    for _, co in ipairs { { window = 0.01 }, false } do
      local path = os.tmpname()
      local store = assert(require("enrich.store").open("sqlite:" .. path))
      local c = support.client(sim, "tamtam", { api_key = "journal-key-l", store = store, coalesce = co })
      local job
      enrich.run(function()
        job = assert(c:submit(inputs))
        store:close()                      -- before the intent: nothing may be sent
        job:wait(20)
      end)
      assert.equal("failed", job.state)
      assert.equal("store", job.error.code)
      assert.equal("not sent: enrich.store: the store is closed", job.error.message)
      for _, suffix in ipairs { "", "-wal", "-shm", ".lock" } do os.remove(path .. suffix) end
    end
    assert.equal(0, requests(SUBMIT))
    -- Each hook raising: intent fails the job; the others leave job.store_error.
    for _, hook in ipairs { "intent", "accepted", "changed", "finished" } do
      for _, co in ipairs { { window = 0.01 }, false } do
        local log = {}
        local store = fake_store(log)
        store[hook] = function() error("the disk is on fire") end
        local c = support.client(sim, "tamtam", { api_key = "journal-key-h", store = store, coalesce = co })
        local job = support.run_job(c, inputs)
        local e = hook == "intent" and job.error or job.store_error
        assert.is_table(e, hook)
        assert.equal("store", e.code, hook)
        assert.is_nil(tostring(e):find("%.lua:%d+"), hook .. ": " .. tostring(e))
        assert.matches("the disk is on fire", e.message, nil, true)
        if hook == "intent" then assert.equal("failed", job.state) else assert.equal("succeeded", job.state) end
      end
    end
  end)

  it("accept only a table as the client's store", function()
    assert.has_error(function() enrich.client("tamtam", { api_key = "k", store = "sqlite:x.db" }) end,
      "enrich.client: 'store' must be a table")
  end)
end)

describe("job_from_snapshot", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  local function uuid(n) return string.format("1b0c6c0e-7e55-4a51-9c53-a%011x", n) end
  local CASES = {
    tamtam = { { first_name = "Ada", last_name = "Byron", domain = "example.com", custom = { row = "1" } },
               { first_name = "Alan", last_name = "Turing", domain = "example.com", custom = { row = "2" } } },
    instaview = { { id = "p_1", custom = { row = "1" } }, { id = "p_2" } },
    lance = { { id = uuid(1), custom = { row = "1" } }, { id = uuid(2) } },
    puffle = { { id = "ld_ada", custom = { row = "1" } }, { id = "ld_grace" } },
    parsetx = { "UBER TRIP", { text = "NETFLIX.COM", custom = { row = "2" } } },
  }

  for _, provider in ipairs { "tamtam", "instaview", "lance", "puffle", "parsetx" } do
    it("rebuilds a running " .. provider .. " job that polls on to the same end, without a second submit", function()
      support.configure(sim, { [provider] = { polls = 3, rate_limit = false } })
      local c = support.fast_rate_client(sim, provider)
      local job = assert(c:submit(CASES[provider]))
      for _ = 1, 400 do
        if job.id and job.polls >= 1 then break end
        enrich.sleep(0.005)
      end
      assert.equal("running", job.state)
      local snap = cjson.decode(cjson.encode(job:snapshot()))
      assert.equal(2, snap.v)
      assert.equal(job.uid, snap.uid)
      assert.is_number(snap.deadline)
      local again = enrich.job_from_snapshot(c, snap)
      assert.equal(job.uid, again.uid)
      assert.equal(job.id, again.id)
      assert(job:wait(20))
      assert(again:wait(20))
      assert.equal(job.state, again.state)
      assert.same(job.counts, again.counts)
      for i, r in ipairs(job.results) do
        local s = again.results[i]
        assert.equal(r.status, s.status)
        assert.equal(r.email, s.email)
        assert.equal(r.phone, s.phone)
        assert.same(r.merchant, s.merchant)
        assert.same(r.custom, s.custom)
      end
      assert.equal(1, support.stats(sim, provider).submissions)
      -- A terminal snapshot comes back terminal, with its results.
      local done = enrich.job_from_snapshot(c, cjson.decode(cjson.encode(again:snapshot())))
      assert.equal(again.state, done.state)
      assert.same(again.counts, done.counts)
      assert.equal(again.results[1].status, done.results[1].status)
      assert.equal(again.results[1].email, done.results[1].email)
    end)
  end

  it("leaves parts never sent to the caller: start() sends them, start{ resubmit = false } ends them unknown",
     function()
    support.configure(sim, { tamtam = { polls = 1, rate_limit = false } })
    local c = support.client(sim, "tamtam")
    local job = assert(c:submit({ { first_name = "Ada", last_name = "Byron" } }))
    local snap = cjson.decode(cjson.encode(job:snapshot()))   -- taken before the submit step ran
    job:cancel()
    assert.equal("queued", snap.state)
    assert.is_nil(snap.parts[1].id)
    local unsent = enrich.job_from_snapshot(c, snap)
    assert.equal("queued", unsent.state)
    enrich.sleep(0.05)
    assert.equal("queued", unsent.state)                     -- nothing happens until the caller says
    assert.equal(0, support.stats(sim, "tamtam").submissions)
    assert(unsent:start():wait(10))
    assert.equal("succeeded", unsent.state)
    assert.equal(1, support.stats(sim, "tamtam").submissions)

    local lost = enrich.job_from_snapshot(c, snap):start { resubmit = false }
    assert(lost:wait(10))
    assert.equal("unknown", lost.state)
    assert.equal("unknown", lost.error.code)
    assert.is_false(lost.error.retryable)
    assert.equal(1, support.stats(sim, "tamtam").submissions)
  end)
end)
