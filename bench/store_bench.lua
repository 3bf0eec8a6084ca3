-- `make bench`, the store: what recording jobs costs the host's thread.
--
-- usage: lua5.4 bench/store_bench.lua direct JOBS [SPREAD]
--   JOBS jobs go through the journal hooks as the engine calls them (intent,
--   accepted, two state changes, finished), each in a task of a real loop,
--   with no HTTP: the store's cost alone. Three runs: no store, the store
--   committing on its writer thread (the default), and the store committing
--   on the host's thread (thread = false). Prints per run the host thread's
--   CPU µs per job (CLOCK_THREAD_CPUTIME_ID: the writer thread's time is not
--   in it), wall seconds, commits and commits per second.
--
-- usage: lua5.4 bench/store_bench.lua engine SIM_URL JOBS
--   JOBS tamtam jobs end to end against the simulator (as engine_bench),
--   without and with a store: the host thread's CPU µs per job both ways.
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/5.4/?.so;" .. package.cpath
local core = require "enrich.core"
local scheduler = require "enrich.scheduler"
local estore = require "enrich.store"

local cpu, now = core.sqlite.thread_cpu, core.now
local mode = arg[1]

local function tmpdb()
  local path = os.tmpname()
  os.remove(path)
  return path
end
local function cleanup(path)
  for _, suffix in ipairs { "", "-wal", "-shm", ".lock" } do os.remove(path .. suffix) end
end

-- Counts the writer's commits, and the wall time the host's thread spends
-- in handing them over (with thread = false: in committing them).
local function count_commits(s)
  local real, n = s.w, { 0, 0, 0 }
  s.w = setmetatable({
    commit = function(_, ...)
      local t = now()
      local seq = real:commit(...)
      t = now() - t
      n[1], n[2], n[3] = n[1] + 1, n[2] + t, math.max(n[3], t)
      return seq
    end,
  }, { __index = function(_, k) return function(_, ...) return real[k](real, ...) end end })
  return n
end

local function fake_job(sched, i)
  local uid = "bench-" .. i
  local job = { uid = uid, provider = "tamtam", state = "queued", opts = { kind = "email" },
                client = { sched = sched }, updated_at = "2026-12-01T00:00:00Z",
                parts = { { uid = uid .. "/1", count = 1,
                            inputs = { { first = "P" .. i, last = "Bench", domain = "example.com" } } } } }
  function job.snapshot(j)
    local p = j.parts[1]
    return { v = 2, provider = j.provider, uid = j.uid, id = j.id, state = j.state, opts = j.opts,
             inputs = { { first_name = "P" .. i, last_name = "Bench", domain = "example.com" } },
             parts = { { uid = p.uid, count = p.count, id = p.id, done = p.done, inputs = p.inputs } },
             deadline = 600, polls = 0, results = j.results }
  end
  return job
end

local function direct(jobs_n, store_mode, spread)
  local sched = assert(scheduler.new())
  local path, s, commits = tmpdb(), nil, { 0, 0, 0 }
  if store_mode then
    s = assert(estore.open("sqlite:" .. path, { thread = store_mode == "thread" }))
    commits = count_commits(s)
  end
  local c0, t0 = cpu(), now()
  sched:run(function()
    for i = 1, jobs_n do
      sched:go(function()
        if spread > 0 then sched:sleep(spread * i / jobs_n) end    -- arrivals spread out
        local job = fake_job(sched, i)
        local part = job.parts[1]
        if s then assert(s:intent(job, part)) end
        part.id, job.id, job.state = "req-" .. i, "req-" .. i, "running"
        if s then assert(s:accepted(job, part)); s:changed(job) end
        sched:sleep(0.01)                                       -- a poll later
        part.done, job.state = true, "succeeded"
        job.results = { { index = 1, status = "found", email = "p" .. i .. ".bench@example.com",
                          emails = { { address = "p" .. i .. ".bench@example.com", status = "deliverable" } } } }
        if s then s:changed(job); s:finished(job) end
      end)
    end
  end)
  if s then assert(s:flush()) end
  local c1, t1 = cpu(), now()
  if s then
    local counts = s:counts()
    assert(counts.succeeded == jobs_n, "not every job recorded")
    s:close()
  end
  sched:close()
  cleanup(path)
  return (c1 - c0) / jobs_n * 1e6, t1 - t0, commits
end

if mode == "direct" then
  -- SPREAD: the jobs start over that many seconds (0: all in one turn).
  local jobs_n, spread = tonumber(arg[2]) or 10000, tonumber(arg[3]) or 0
  local base_us, base_wall = direct(jobs_n, nil, spread)
  print(string.format("store direct jobs=%d spread=%gs no store:        host_cpu_us_per_job=%.1f wall_s=%.2f",
                      jobs_n, spread, base_us, base_wall))
  for _, m in ipairs { "thread", "inline" } do
    local us, wall, c = direct(jobs_n, m, spread)
    print(string.format("store direct jobs=%d spread=%gs store (%s): host_cpu_us_per_job=%.1f (+%.1f) wall_s=%.2f "
                        .. "commits=%d commits_per_s=%.0f host_ms_per_commit=%.3f worst=%.3f",
                        jobs_n, spread, m, us, us - base_us, wall, c[1], c[1] / wall, c[2] / c[1] * 1e3, c[3] * 1e3))
  end
elseif mode == "engine" then
  local enrich = require "enrich"
  local control = require "bench.control"
  local sim, jobs_n = arg[2], tonumber(arg[3])
  assert(sim and jobs_n, "usage: store_bench.lua engine SIM_URL JOBS")
  local function run(with_store)
    control.post(sim, "/_sim/reset")
    control.post(sim, "/_sim/config", { tamtam = { polls = 1, rate_limit = false, credits = 1e9 } })
    local path, s, commits = tmpdb(), nil, { 0 }
    if with_store then
      s = assert(estore.open("sqlite:" .. path))
      commits = count_commits(s)
    end
    local client = assert(enrich.client("tamtam", {
      api_key = "bench-key", base_url = sim .. "/tamtam", store = s,
      poll = { interval = 0.02, factor = 1, jitter = 0, deadline = 300 },
      rate = { per_second = 1e6, burst = 1e6 },
      coalesce = false,        -- one request per job, as engine_bench: the store's cost per job, not per batch
    }))
    local c0, t0 = cpu(), now()
    local failed = 0
    enrich.run(function()
      local jobs = {}
      for i = 1, jobs_n do
        jobs[i] = assert(client:submit({ { first_name = "P" .. i, last_name = "Bench", domain = "example.com" } }))
      end
      for i = 1, jobs_n do
        assert(jobs[i]:wait(300))
        if jobs[i].state ~= "succeeded" then failed = failed + 1 end
      end
    end)
    if s then assert(s:flush()) end
    local c1, t1 = cpu(), now()
    if s then s:close() end
    cleanup(path)
    return (c1 - c0) / jobs_n * 1e6, t1 - t0, commits[1], failed
  end
  local base_us, base_wall, _, f0 = run(false)
  print(string.format("store engine jobs=%d no store: host_cpu_us_per_job=%.1f wall_s=%.2f jobs_per_s=%.0f failed=%d",
                      jobs_n, base_us, base_wall, jobs_n / base_wall, f0))
  local us, wall, commits, f1 = run(true)
  print(string.format("store engine jobs=%d store:    host_cpu_us_per_job=%.1f (+%.1f) wall_s=%.2f jobs_per_s=%.0f "
                      .. "commits=%d commits_per_s=%.0f failed=%d",
                      jobs_n, us, us - base_us, wall, jobs_n / wall, commits, commits / wall, f1))
else
  error("usage: store_bench.lua direct JOBS | engine SIM_URL JOBS")
end
