-- `make bench`, a 5xx storm: JOBS tamtam jobs are accepted, then every
-- status read answers 503 for SECONDS; how many requests reach the
-- provider meanwhile, with the retry budget per key (the default: 500
-- tokens, 5 a retry, one back per success) and without it (a budget too
-- large to run out). Then the storm ends and every job finishes.
-- usage: lua5.4 bench/retry_storm.lua SIM_URL [JOBS] [SECONDS]
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/5.4/?.so;" .. package.cpath
local enrich = require "enrich"
local control = require "bench.control"
local http = require "socket.http"

local sim, jobs_n, seconds = arg[1], tonumber(arg[2] or "300"), tonumber(arg[3] or "6")
assert(sim, "usage: retry_storm.lua SIM_URL [JOBS] [SECONDS]")

local function requests()
  local n = 0
  for _, c in pairs(control.get(sim, "/_sim/stats").providers.tamtam.requests) do n = n + c end
  return n
end

local function run(label, budget)
  control.post(sim, "/_sim/reset")
  control.post(sim, "/_sim/config", { tamtam = { polls = 1000000, rate_limit = false, credits = 1e9 } })
  local client = assert(enrich.client("tamtam", {
    api_key = "storm-" .. label, base_url = sim .. "/tamtam",
    poll = { interval = 2, factor = 1, jitter = 0.2, deadline = 120 },   -- tamtam advises 2 s
    retry = { attempts = 5, base = 0.05, cap = 0.4, budget = budget },
    rate = { per_second = 1e6, burst = 1e6 },
    coalesce = false,          -- one request per job: the engine's own path (3b measures coalescing)
  }))
  local jobs = {}
  for i = 1, jobs_n do jobs[i] = assert(client:submit({ { first_name = "S" .. i, last_name = "Storm" } })) end
  local sched = enrich.scheduler()
  local limit = sched.now() + 60
  repeat                                   -- accepted, and polled once at least
    enrich.sleep(0.05)
    local waiting = 0
    for i = 1, jobs_n do if jobs[i].polls >= 1 then waiting = waiting + 1 end end
  until waiting == jobs_n or sched.now() > limit
  control.post(sim, "/_sim/faults", { type = "503", provider = "tamtam", method = "GET", count = 10000000 })
  local before = requests()
  enrich.sleep(seconds)
  local during = requests() - before
  http.request { method = "DELETE", url = sim .. "/_sim/faults" }
  for i = 1, jobs_n do control.post(sim, "/_sim/jobs/tamtam/" .. jobs[i].id, { finish = true }) end
  local failed = 0
  for i = 1, jobs_n do
    jobs[i]:refresh()
    if not jobs[i]:wait(30) or jobs[i].state ~= "succeeded" then failed = failed + 1 end
  end
  return during, failed
end

local with, f1 = run("budget", nil)
local without, f2 = run("nobudget", 1e12)
print(string.format("jobs=%d storm_s=%d requests_with_budget=%d requests_without=%d ratio=%.2f unfinished=%d",
  jobs_n, seconds, with, without, with / without, f1 + f2))
