-- `make bench`, coalescing and the adaptive rate (issue 16), against the
-- simulator with its documented limits on. Prints figures; asserts nothing.
--
--   lua5.4 bench/coalesce_bench.lua SIM_URL a [JOBS] [TASKS]
--     (a) JOBS (1,000) single-person tamtam jobs from TASKS (50) concurrent
--         tasks, each submitting its share one by one a few ms apart, then
--         waiting for them; tamtam's documented 10 requests/s per key on.
--         Once with coalescing (the default) and once with coalesce = false:
--         provider submit requests (target <= 1.3 x JOBS / 100), every
--         request, 429s, elapsed seconds.
--   lua5.4 bench/coalesce_bench.lua SIM_URL b [JOBS]
--     (b) a run bound by the rate: JOBS (1,000) single-profile instaview
--         jobs, the simulator on the documented Scale plan (600/min,
--         30,000/h, fixed windows, X-RateLimit-* headers on every answer),
--         the client on its defaults (0.5/s until the headers say more).
--         Elapsed seconds as a ratio of the minimum the plan's sustained
--         rate allows for the requests made (target <= 1.2), and 429s
--         (target 0).
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/5.4/?.so;" .. package.cpath
local enrich = require "enrich"
local core = require "enrich.core"
local control = require "bench.control"

local sim, mode = arg[1], arg[2]
assert(sim and (mode == "a" or mode == "b"), "usage: coalesce_bench.lua SIM_URL a|b [JOBS] [TASKS]")
local jobs_n = tonumber(arg[3]) or 1000
local tasks_n = tonumber(arg[4]) or 50

local function count(t)
  local n = 0
  for _, v in pairs(t or {}) do n = n + v end
  return n
end

-- Runs jobs_n single-input jobs of `client` from tasks_n tasks; `input(i)`
-- makes input i. Returns seconds, failed jobs.
local function run(client, input, opts)
  local failed, t0 = 0, core.now()
  enrich.run(function()
    local per = math.ceil(jobs_n / tasks_n)
    for t = 1, tasks_n do
      enrich.spawn(function()
        local mine = {}
        for i = (t - 1) * per + 1, math.min(t * per, jobs_n) do
          mine[#mine + 1] = assert(client:submit({ input(i) }, opts))
          enrich.sleep(math.random() * 0.005)    -- arrivals spread, as requests to a server
        end
        for _, job in ipairs(mine) do
          assert(job:wait(1200))
          if job.state ~= "succeeded" then failed = failed + 1 end
        end
      end)
    end
  end)
  return core.now() - t0, failed
end

local function person(i) return { first_name = "P" .. i, last_name = "Bench", domain = "example.com" } end

if mode == "a" then
  local function one(coalesce, key)
    control.post(sim, "/_sim/reset")
    control.post(sim, "/_sim/config", { tamtam = { polls = 1, credits = 1e9 } })   -- rate limit: documented
    local client = assert(enrich.client("tamtam", { api_key = key, base_url = sim .. "/tamtam", coalesce = coalesce }))
    local secs, failed = run(client, person, { kind = "email" })
    local s = control.get(sim, "/_sim/stats").providers.tamtam
    return secs, failed, s.requests["POST /v2/people/enrich"] or 0, count(s.requests), s.responses["429"] or 0
  end
  local on = { one(nil, "bench-a-on") }
  local off = { one(false, "bench-a-off") }
  local fmt = "  %-13s submits=%-5d requests=%-5d 429s=%-3d failed=%d elapsed=%.2f s"
  print(("(a) %d single-person tamtam jobs from %d tasks, tamtam's 10 req/s on:"):format(jobs_n, tasks_n))
  print(fmt:format("coalesced:", on[3], on[4], on[5], on[2], on[1]))
  print(fmt:format("not coalesced:", off[3], off[4], off[5], off[2], off[1]))
  print(("  submits %d vs target <= %.0f (1.3 x %d / 100); elapsed %.1fx shorter coalesced")
    :format(on[3], 1.3 * jobs_n / 100, jobs_n, off[1] / on[1]))
  -- Not coalesced, the run is bound by tamtam's 10/s (no rate headers: only
  -- 429s steer the bucket).
  print(("  not coalesced, bound by the rate: elapsed / (requests / 10 per s) = %.3f, 429s %d")
    :format(off[1] / (off[4] / 10), off[5]))
else
  control.post(sim, "/_sim/reset")
  local per_minute, per_hour = 600, 30000
  control.post(sim, "/_sim/config", { instaview = { polls = 1, credits = false,
                                                    rate_limit = { minute = per_minute, hour = per_hour } } })
  local client = assert(enrich.client("instaview", { api_key = "sk_bench_rate", base_url = sim .. "/instaview" }))
  local into_window = control.get(sim, "/_sim/stats").now % 60     -- the simulator's clock
  local secs, failed = run(client, function(i) return { id = "p_" .. i } end)
  local s = control.get(sim, "/_sim/stats").providers.instaview
  local requests, throttled = count(s.requests), s.responses["429"] or 0
  local least = requests / (per_minute / 60)
  print(("(b) rate-bound: %d single-profile instaview jobs, simulator on %d/min and %d/h (fixed windows, headers),")
    :format(jobs_n, per_minute, per_hour))
  print("    client on its defaults (0.5 req/s until the X-RateLimit-* headers say more):")
  print(("  requests=%d (submits %d) 429s=%d failed=%d elapsed=%.2f s; the sustained rate allows %.2f s:"
    .. " ratio %.3f (target <= 1.2)")
    :format(requests, s.requests["POST /sourcing/enrich"] or 0, throttled, failed, secs, least, secs / least))
  -- Fixed windows: what is left of the first minute may go at once; past
  -- it, each further minute carries per_minute. The least time the windows
  -- themselves allow, for context (the poll cadence adds its own).
  local windows = math.ceil(requests / per_minute) - 1
  local fixed = windows > 0 and (60 - into_window) + (windows - 1) * 60 or 0
  print(("  (the run began %.0f s into a minute window; fixed windows alone would allow %.1f s)")
    :format(into_window, fixed))
end
