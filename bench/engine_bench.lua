-- `make bench`, the engine end to end: JOBS tamtam jobs of one person each
-- (submit, polls, results) through `require "enrich"` against the simulator
-- under nginx. Prints jobs/s and HTTP requests/s (counted by the simulator).
-- usage: lua5.4 bench/engine_bench.lua SIM_URL JOBS
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
-- The core built for this interpreter (make build: build/5.4, build/luajit).
package.cpath = "build/" .. ((jit and "luajit") or _VERSION:match("%d+%.%d+")) .. "/?.so;" .. package.cpath
local enrich = require "enrich"
local core = require "enrich.core"
local control = require "bench.control"

local sim, jobs_n = arg[1], tonumber(arg[2])
assert(sim and jobs_n, "usage: engine_bench.lua SIM_URL JOBS")

control.post(sim, "/_sim/reset")
control.post(sim, "/_sim/config", { tamtam = { polls = 1, rate_limit = false, credits = 1e9 } })

local client = assert(enrich.client("tamtam", {
  api_key = "bench-key", base_url = sim .. "/tamtam",
  poll = { interval = 0.02, factor = 1, jitter = 0, deadline = 300 },
  rate = { per_second = 1e6, burst = 1e6 },
  coalesce = false,          -- one request per job: the engine's own path (3b measures coalescing)
}))

local t0 = core.now()
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
local secs = core.now() - t0
local stats = control.get(sim, "/_sim/stats").providers.tamtam
local requests = 0
for _, n in pairs(stats.requests) do requests = requests + n end
print(string.format("jobs=%d failed=%d requests=%d seconds=%.3f jobs_per_s=%.0f rps=%.0f",
  jobs_n, failed, requests, secs, jobs_n / secs, requests / secs))
os.exit(failed == 0 and 0 or 1)
