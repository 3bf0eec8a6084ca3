-- The Redis store with direct calls: fake jobs on a real loop, against a
-- real redis-server (spec/support/redis.lua).
local scheduler = require "enrich.scheduler"
local estore = require "enrich.store"
local redis_server = require "support.redis"

local fake_job = require("store.support").fake_job

describe("enrich.store (redis)", function()
  local server, sched, n = nil, nil, 0
  setup(function()
    server = redis_server.start()
    sched = assert(scheduler.new())
  end)
  teardown(function() sched:close(); server:close() end)
  local function url(extra)
    n = n + 1
    return server.url .. "?ns=t" .. n .. (extra or "")
  end

  it("opens by URL through enrich.store.open and refuses wrong ones clearly", function()
    local s = assert(estore.open(url(), { sched = sched }))
    assert.matches("^enrich.store%(redis://127.0.0.1:%d+/0%?ns=t%d+%)$", tostring(s))
    s:close()
    local bad, err = estore.open("redis://127.0.0.1:notaport/0", { sched = sched })
    assert.is_nil(bad)
    assert.equals("store", err.code)
    local port = require("helper").free_port()
    bad, err = estore.open("redis://127.0.0.1:" .. port .. "/0", { sched = sched, retry_for = 0.2 })
    assert.is_nil(bad)
    assert.matches("cannot reach Redis", tostring(err))
  end)

  it("records intent, provider id, state changes and results; finished jobs are not taken", function()
    local u = url()
    sched:run(function()
      local s = assert(estore.open(u, { sched = sched }))
      local job = fake_job(sched, "j1", 2)
      assert.is_true(s:intent(job, job.parts[1]))
      job.parts[1].id = "P-1"; job.id = "P-1"; job.state = "running"
      assert.is_true(s:accepted(job, job.parts[1]))
      s:changed(job)
      assert.is_true(s:flush())
      local snap = s:job("j1")
      assert.equal("running", snap.state)
      assert.equal("P-1", snap.parts[1].id)
      assert.is_true(snap.parts[1].intent)
      assert.is_nil(snap.parts[2].intent)
      job.state, job.results = "succeeded", { { status = "found" } }
      s:finished(job)
      assert.is_true(s:flush())
      assert.same({ succeeded = 1 }, s:counts())
      s:close()
    end)
    -- A new worker finds nothing to take: the job is terminal.
    sched:run(function()
      local s = assert(estore.open(u, { sched = sched }))
      assert.same({}, s:jobs_unfinished())
      assert.equal("succeeded", s:job("j1").state)
      s:close()
    end)
  end)

  it("never stores the API key", function()
    local u = url()
    sched:run(function()
      local s = assert(estore.open(u, { sched = sched }))
      local job = fake_job(sched, "k1", 1)
      s:intent(job, job.parts[1])
      s:answer_put("tamtam\0email\0ada", { email = "a@x" })
      s:meta_put("fingerprint", "abc")
      s:flush()
      s:close()
    end)
    local keys = server:cli("KEYS", "*")
    for key in keys:gmatch("[^\n]+") do
      local t = server:cli("TYPE", key)
      local dump = t == "hash" and server:cli("HGETALL", key) or t == "set" and server:cli("SMEMBERS", key)
        or t == "zset" and server:cli("ZRANGE", key, "0", "-1") or server:cli("GET", key)
      assert.is_nil(dump:find("SECRET-KEY", 1, true), key)
    end
  end)

  it("keeps answers and meta, visible at once to the writer and later to others", function()
    local u = url()
    sched:run(function()
      local s = assert(estore.open(u, { sched = sched }))
      assert.is_nil(s:answer_get("nobody"))
      s:answer_put("tamtam\0email\0ada", { email = "ada@x", credits = 1 })
      assert.same({ email = "ada@x", credits = 1 }, s:answer_get("tamtam\0email\0ada"))
      s:meta_put("fingerprint", { rows = 3 })
      s:close()
      local s2 = assert(estore.open(u, { sched = sched }))
      assert.same({ email = "ada@x", credits = 1 }, s2:answer_get("tamtam\0email\0ada"))
      assert.same({ rows = 3 }, s2:meta_get("fingerprint"))
      s2:close()
    end)
  end)

  it("a job whose worker died is taken over once its lease runs out; the old worker is fenced out", function()
    local u = url("&lease=0.3")
    sched:run(function()
      local a = assert(estore.open(u, { sched = sched, worker = "A" }))
      local b = assert(estore.open(u, { sched = sched, worker = "B" }))
      local job = fake_job(sched, "t1", 1)
      assert.is_true(a:intent(job, job.parts[1]))
      job.parts[1].id, job.id, job.state = "P-9", "P-9", "running"
      assert.is_true(a:accepted(job, job.parts[1]))
      assert.same({}, b:jobs_unfinished())           -- A's lease holds
      -- A stops renewing (it "died"): its renew timer goes.
      sched:cancel_timer(a.renew_timer)
      a.renew_armed = true
      sched:sleep(0.5)
      local taken = b:jobs_unfinished()
      assert.equal(1, #taken)
      assert.equal("P-9", taken[1].parts[1].id)
      assert.is_true(taken[1].parts[1].intent)
      assert.is_nil(taken[1].parts[1].inputs)      -- polled by its id: its inputs are not needed
      -- A comes back to life and writes: refused.
      job.state = "running"
      local ok, err = a:accepted(job, job.parts[1])
      assert.is_nil(ok)
      assert.equal("lease_lost", err.reason)
      local lost_write = fake_job(sched, "t1", 1)
      lost_write.state = "succeeded"
      a.owned.t1 = "1"                                  -- as if it still believed it held it
      a:finished(lost_write)
      a:flush()
      assert.equal("lease_lost", a.error.reason)
      assert.equal("running", b:job("t1").state)
      -- B's lease is renewed while it runs: nobody takes the job from it.
      sched:sleep(0.5)
      local c = assert(estore.open(u, { sched = sched, worker = "C" }))
      assert.same({}, c:jobs_unfinished())
      job.state = "succeeded"
      b:finished(job)
      b:flush()
      assert.equal("succeeded", b:job("t1").state)
      a:close(); b:close(); c:close()
    end)
  end)

  it("a worker restarted under the same name takes its jobs back at once", function()
    local u = url("&lease=30")
    sched:run(function()
      local a = assert(estore.open(u, { sched = sched, worker = "same", release_on_close = false }))
      local job = fake_job(sched, "r1", 1)
      assert.is_true(a:intent(job, job.parts[1]))
      a:close()
      local a2 = assert(estore.open(u, { sched = sched, worker = "same" }))
      local back = a2:jobs_unfinished()
      assert.equal(1, #back)
      assert.equal("r1", back[1].uid)
      assert.same({ { first = "ada1" } }, back[1].parts[1].inputs)   -- no id: kept for a resend
      assert.same({}, a2:jobs_unfinished())        -- already held here: not taken twice
      a2:close()
      -- close let it go: another worker takes it at once.
      local b = assert(estore.open(u, { sched = sched, worker = "other" }))
      assert.equal(1, #b:jobs_unfinished())
      b:close()
    end)
  end)

  it("keeps what was written through a Redis restart (appendfsync always), and waits for Redis to come back", function()
    local u = url()
    sched:run(function()
      local s = assert(estore.open(u, { sched = sched, worker = "W" }))
      local job = fake_job(sched, "x1", 1)
      assert.is_true(s:intent(job, job.parts[1]))
      server:stop()
      sched:go(function() sched:sleep(0.3); server:start() end)
      job.parts[1].id, job.id = "P-X", "P-X"
      assert.is_true(s:accepted(job, job.parts[1]))   -- retried until Redis was back
      assert.equal("P-X", s:job("x1").parts[1].id)
      s:close()
    end)
  end)
end)
