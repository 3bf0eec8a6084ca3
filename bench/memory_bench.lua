-- `make bench`, memory per waiting job: N jobs submitted, accepted and polled
-- once (so each holds its last status body, as a waiting job does), each
-- waiting for its next poll (an hour away), measured as the growth of the
-- Lua heap after a full collection, divided by N. The inputs (the caller's
-- own tables) are made before the first measurement; the engine's copies of
-- them count. No transfer is in flight while measuring, so C holds nothing
-- per job.
-- usage: lua5.4 bench/memory_bench.lua SIM_URL N
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/5.4/?.so;" .. package.cpath
local enrich = require "enrich"
local control = require "bench.control"

local sim, n = arg[1], tonumber(arg[2])
assert(sim and n, "usage: memory_bench.lua SIM_URL N")
control.post(sim, "/_sim/reset")
control.post(sim, "/_sim/config", { tamtam = { polls = 1000000, rate_limit = false, credits = 1e12 } })

local client = assert(enrich.client("tamtam", {
  api_key = "bench-key", base_url = sim .. "/tamtam",
  -- First poll at once, the next an hour later.
  poll = { interval = 0.001, factor = 4e6, max_interval = 3600, jitter = 0, deadline = 7200 },
  rate = { per_second = 1e6, burst = 1e6 },
  coalesce = false,          -- one request per job: the engine's own path (3b measures coalescing)
}))
local inputs = {}
for i = 1, n do inputs[i] = { { first_name = "P" .. i, last_name = "Waiting" } } end
local jobs = {}
for i = 1, n do jobs[i] = false end          -- the bench's own array, sized before measuring

local function heap_kib()
  collectgarbage(); collectgarbage()
  return collectgarbage("count")
end

enrich.tick()                             -- the loop and its engine exist before we measure
local before = heap_kib()
for i = 1, n do jobs[i] = assert(client:submit(inputs[i])) end
-- Drive until every job has been accepted, polled once, and waits on its timer.
local sched = enrich.scheduler()
local limit = sched.now() + 600
local function settled()
  if sched:transfers() > 0 or sched:next_wakeup() == 0 then return false end
  for i = 1, n do if jobs[i].polls < 1 then return false end end
  return true
end
while not settled() do
  sched:step(0.05)
  if sched.now() > limit then error("jobs were not all accepted in time") end
end
local after = heap_kib()
local running = 0
for i = 1, n do if jobs[i].state == "running" and jobs[i].raw then running = running + 1 end end
print(string.format("jobs=%d waiting=%d heap_growth_kib=%.0f bytes_per_waiting_job=%.0f",
  n, running, after - before, (after - before) * 1024 / n))
for i = 1, n do jobs[i]:cancel() end
os.exit(running == n and 0 or 1)
