-- The SQLite store with direct calls: fake jobs and parts on a real loop.
local helper = require "helper"
local scheduler = require "enrich.scheduler"
local estore = require "enrich.store"
local store_support = require "store.support"

local tmpdb, cleanup, fake_job = store_support.tmpdb, store_support.cleanup, store_support.fake_job

-- Runs fn in a task of a fresh loop, with a store on `path`.
local function in_loop(path, fn, opts)
  local sched = assert(scheduler.new())
  local s = assert(estore.open("sqlite:" .. path, opts))
  local ok, err = pcall(sched.run, sched, fn, sched, s)
  s:close()
  sched:close()
  assert(ok, err)
end

-- A child process: lua -e CODE with the spec's paths.
local function child(code, prefix)
  local cmd = (prefix or "") .. helper.server_lua .. " -e " .. helper.shell_quote(
    "package.path='lua/?.lua;lua/?/init.lua;'..package.path; package.cpath='build/5.4/?.so;'..package.cpath; "
    .. code) .. " 2>&1"
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

describe("enrich.store (sqlite)", function()
  local path
  before_each(function() path = tmpdb() end)
  after_each(function() cleanup(path) end)

  for _, threaded in ipairs { true, false } do
    it("records intent, provider id, state changes and results" .. (threaded and "" or " (inline commits)"), function()
      in_loop(path, function(sched, s)
        local job = fake_job(sched, "j1", 2)
        assert.is_true(s:intent(job, job.parts[1]))
        job.parts[1].id = "P-1"; job.id = "P-1"; job.state = "running"
        assert.is_true(s:accepted(job, job.parts[1]))
        s:changed(job)
        -- Durable at once: another connection sees them.
        local snap = s:job("j1")
        assert.equal("running", snap.state)
        assert.equal("P-1", snap.parts[1].id)
        local open = s:jobs_unfinished()
        assert.equal(1, #open)
        assert.is_true(open[1].parts[1].intent)
        assert.is_nil(open[1].parts[2].intent)
        -- A part with a provider id is polled by it: the intent's inputs
        -- stay out (a coalesced member is read by its offset, not by them).
        assert.is_nil(open[1].parts[1].inputs)
        job.state, job.results = "succeeded", { { status = "found" } }
        s:finished(job)
      end, { thread = threaded })
      local s = assert(estore.open("sqlite:" .. path))
      assert.same({}, s:jobs_unfinished())
      assert.equal("succeeded", s:job("j1").state)
      assert.equal("found", s:job("j1").results[1].status)
      s:close()
    end)
  end

  it("job() and counts() outside the loop see what its last turn wrote", function()
    local sched = assert(scheduler.new())
    local s = assert(estore.open("sqlite:" .. path))
    sched:run(function()
      local job = fake_job(sched, "j1")
      assert.is_true(s:intent(job, job.parts[1]))
      job.parts[1].id = "P-1"; job.id = "P-1"; job.state = "running"
      assert.is_true(s:accepted(job, job.parts[1]))
      job.state, job.results = "succeeded", { { status = "found" } }
      s:finished(job)                       -- queued for the loop's next commit
    end)
    -- The loop is over (as after enrich.run): the reads must not be stale.
    assert.same({ succeeded = 1 }, s:counts())
    assert.equal("succeeded", s:job("j1").state)
    s:close()
    sched:close()
  end)

  it("gives many tasks' intents of one turn one commit", function()
    local commits = 0
    in_loop(path, function(sched, s)
      local real = s.w
      s.w = setmetatable({ commit = function(_, ...) commits = commits + 1; return real:commit(...) end },
                         { __index = function(_, k) return function(_, ...) return real[k](real, ...) end end })
      local done = 0
      for i = 1, 50 do
        sched:go(function()
          local job = fake_job(sched, "j" .. i)
          assert.is_true(s:intent(job, job.parts[1]))
          done = done + 1
        end)
      end
      while done < 50 do sched:sleep(0.001) end
      assert.equal(50, #s:jobs_unfinished())
    end)
    -- One for the 50 intents (maybe one more for the sleeper's turn), one by
    -- jobs_unfinished's flush.
    assert.is_true(commits <= 3, "commits: " .. commits)
  end)

  for _, threaded in ipairs { true, false } do
    it("intents(list): one task's intents of many jobs in ONE commit" .. (threaded and "" or " (inline commits)"),
       function()
      local commits = 0
      in_loop(path, function(sched, s)
        local real = s.w
        s.w = setmetatable({ commit = function(_, ...) commits = commits + 1; return real:commit(...) end },
                           { __index = function(_, k) return function(_, ...) return real[k](real, ...) end end })
        local list = {}
        for i = 1, 20 do
          local job = fake_job(sched, "g" .. i)
          list[i] = { job = job, part = job.parts[1] }
        end
        local two = fake_job(sched, "g21", 2)            -- a job twice: its snapshot goes once
        list[21], list[22] = { job = two, part = two.parts[1] }, { job = two, part = two.parts[2] }
        assert.is_true(s:intents(list))
        assert.equal(1, commits)                         -- durable on return, after one commit
        assert.is_true(s:intents({}))
        assert.equal(1, commits)
        s.w = real
        local open = s:jobs_unfinished()
        assert.equal(21, #open)
        assert.is_true(open[21].parts[1].intent and open[21].parts[2].intent)
        assert.same({ first = "ada1" }, open[1].parts[1].inputs[1])
        -- One member that cannot be encoded refuses the whole list: nothing queued.
        local bad, good = fake_job(sched, "bad"), fake_job(sched, "good")
        bad.opts = { kind = function() end }
        local ok, err = s:intents({ { job = good, part = good.parts[1] }, { job = bad, part = bad.parts[1] } })
        assert.is_nil(ok)
        assert.equal("encode", err.reason)
        assert.is_nil(s:job("good"))
        assert.equal(0, s.queued)
      end, { thread = threaded })
    end)
  end

  it("goes on with a new loop after the one it was used on is closed", function()
    local s = assert(estore.open("sqlite:" .. path))
    local old = assert(scheduler.new())
    local job = fake_job(old, "a1")
    s:changed(job)                          -- a commit is armed on `old`, which never turns again
    old:close()
    local new = assert(scheduler.new())
    new:run(function()
      local j = fake_job(new, "b1")
      assert.is_true(s:intent(j, j.parts[1]))
    end)
    assert.equal(1, #s:jobs_unfinished())
    s:close()
    new:close()
  end)

  it("never stores the API key", function()
    in_loop(path, function(sched, s)
      local job = fake_job(sched, "k1")
      assert(s:intent(job, job.parts[1]))
    end)
    local f = assert(io.open(path, "rb"))
    local bytes = f:read("*a")
    f:close()
    local wal = io.open(path .. "-wal", "rb")
    if wal then bytes = bytes .. wal:read("*a"); wal:close() end
    assert.is_nil(bytes:find("SECRET-KEY", 1, true))
  end)

  it("keeps answers and meta across reopen; a get sees a put at once", function()
    in_loop(path, function(_, s)
      assert.is_nil(s:answer_get("tamtam\0email\0ada"))
      assert(s:answer_put("tamtam\0email\0ada", { email = "ada@example.com" }))
      assert.same({ email = "ada@example.com" }, s:answer_get("tamtam\0email\0ada"))
      assert(s:meta_put("fingerprint", "abc"))
      assert.equal("abc", s:meta_get("fingerprint"))
    end)
    local s = assert(estore.open("sqlite:" .. path))
    assert.same({ email = "ada@example.com" }, s:answer_get("tamtam\0email\0ada"))
    assert.is_nil(s:answer_get("tamtam\0email\0bob"))
    assert.equal("abc", s:meta_get("fingerprint"))
    s:close()
  end)

  it("refuses a file that is not ours, with a clear error, and leaves it alone", function()
    local f = assert(io.open(path, "wb"))
    f:write(("hello\n"):rep(1000))
    f:close()
    local s, err = estore.open("sqlite:" .. path)
    assert.is_nil(s)
    assert.equal("store", err.code)
    assert.equal("not_ours", err.reason)
    assert.matches("not a lua%-enrich store", tostring(err))
    f = assert(io.open(path, "rb"))
    assert.equal(("hello\n"):rep(1000), f:read("*a"))
    f:close()
    -- Another application's SQLite database.
    cleanup(path)
    local db = assert(require("enrich.core").sqlite.open(path))
    assert(db:exec("CREATE TABLE theirs (x)"))
    db:close()
    s, err = estore.open("sqlite:" .. path)
    assert.is_nil(s)
    assert.equal("not_ours", err.reason)
  end)

  it("refuses a store written by a newer version", function()
    local s = assert(estore.open("sqlite:" .. path))
    s:close()
    local db = assert(require("enrich.core").sqlite.open(path))
    assert(db:exec("PRAGMA user_version = 99"))
    db:close()
    local err
    s, err = estore.open("sqlite:" .. path)
    assert.is_nil(s)
    assert.equal("newer", err.reason)
    assert.matches("newer lua%-enrich %(store schema 99; this one reads up to 1%)", tostring(err))
  end)

  it("fails to open an unwritable path with a clear error", function()
    local s, err = estore.open("sqlite:/nonexistent-dir/jobs.db")
    assert.is_nil(s)
    assert.equal("store", err.code)
    assert.matches("sqlite:/nonexistent%-dir/jobs.db: cannot open", tostring(err))
    s, err = estore.open("mysql://x")
    assert.is_nil(s)
    assert.matches("unknown store URL", tostring(err))
    assert.has_error(function() estore.open("sqlite:" .. path, { threads = 2 }) end,
                     "enrich.store.open: unknown option 'threads' for sqlite")
  end)

  it("refuses a second process on the same file, naming the first one's pid", function()
    local s = assert(estore.open("sqlite:" .. path))
    local out = child(([[
      local s, err = require("enrich.store").open("sqlite:%s")
      print(s and "opened" or tostring(err), err and err.reason)]]):format(path))
    assert.matches("in use by another process %(pid %d+", out)
    assert.matches("locked", out)
    s:close()
    out = child(([[
      local s, err = require("enrich.store").open("sqlite:%s")
      print(s and "opened" or tostring(err)); if s then s:close() end]]):format(path))
    assert.matches("^opened", out)
  end)

  it("on a full disk: a clear error, nothing half-written, the jobs recorded before intact", function()
    -- Two jobs recorded, then a child with a file-size limit tries to write
    -- big intents: each commit fails cleanly (SIGXFSZ ignored -> EFBIG).
    in_loop(path, function(sched, s)
      for i = 1, 2 do
        local job = fake_job(sched, "ok" .. i)
        assert(s:intent(job, job.parts[1]))
      end
    end)
    local size = 0
    for _, suffix in ipairs { "", "-wal" } do
      local f = io.open(path .. suffix, "rb")
      if f then size = size + f:seek("end"); f:close() end
    end
    local blocks = math.ceil((size + 256 * 1024) / 512)    -- sh's ulimit -f counts 512-byte blocks
    local out = child(([[
      local sched = require("enrich.scheduler").new()
      local s = assert(require("enrich.store").open("sqlite:%s"))
      sched:run(function()
        for i = 1, 3 do
          local job = { uid = "big" .. i, provider = "tamtam", state = "queued", client = { sched = sched },
                        parts = { { uid = "big" .. i .. "/1", count = 1 } } }
          job.parts[1].inputs = { string.rep("x", 1200000) }
          function job.snapshot(j)
            return { v = 2, uid = j.uid, state = j.state, parts = { { uid = j.parts[1].uid } } }
          end
          local ok, err = s:intent(job, job.parts[1])
          print("intent", tostring(ok), err and err.code, err and err.reason, err and tostring(err))
        end
      end)
      print("closed", s:close())]]):format(path), "trap '' XFSZ; ulimit -f " .. blocks .. "; ")
    assert.matches("intent\tnil\tstore\tfull", out)
    assert.matches("commit failed", out)
    local s = assert(estore.open("sqlite:" .. path))
    local open = s:jobs_unfinished()
    assert.equal(2, #open)
    assert.equal("ok1", open[1].uid)
    local db = s.db
    local q = assert(db:prepare("PRAGMA integrity_check"))
    assert(q:step())
    assert.equal("ok", q:row()[1])
    q:finalize()
    s:close()
  end)

  it("refuses use after close; close is idempotent", function()
    local s = assert(estore.open("sqlite:" .. path))
    assert.is_true(s:close())
    assert.is_true(s:close())
    assert.has_error(function() s:answer_get("x") end, "enrich.store: the store is closed")
  end)
end)
