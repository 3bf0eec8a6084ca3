-- `make bench`, the ceiling for any Lua engine on enrich.core: the requests
-- of JOBS one-person tamtam jobs (the same as bench/curl_flow_baseline.c and
-- bench/engine_bench.lua: a POST on a fresh connection, then GETs 20 ms
-- apart until COMPLETED, 32 in flight) driven by a bare Lua loop straight
-- on the core, bodies JSON-decoded by the core, nothing else: no jobs, no
-- coroutines, no policies, no normalized results.
-- usage: lua5.4 bench/core_flow.lua SIM_URL JOBS
-- The core built for this interpreter (make build: build/5.4, build/luajit).
package.cpath = "build/" .. ((jit and "luajit") or _VERSION:match("%d+%.%d+")) .. "/?.so;" .. package.cpath
local core = require "enrich.core"
local cjson = require "cjson"

local sim, total = arg[1], tonumber(arg[2])
assert(sim and total, "usage: core_flow.lua SIM_URL JOBS")
local base = sim .. "/tamtam"
local CONC, INTERVAL = 32, 0.02

local engine = assert(core.new { max_host_connections = CONC, timings = false })
local post_headers = { Authorization = "bench-key", Accept = "application/json",
                       ["Content-Type"] = "application/json" }
local get_headers = { Authorization = "bench-key", Accept = "application/json" }

local by_id = {}                          -- transfer id -> job
local due, due_head, due_tail = {}, 1, 0  -- jobs waiting for their next GET (FIFO: equal delays)
local in_flight, next_job, done, failed, requests = 0, 1, 0, 0, 0

local function submit(i)
  local body = cjson.encode { requests = { { enrichment_type = "email", first_name = "P" .. i,
    last_name = "Bench", company_domain = "example.com", custom = { row = "1" } } } }
  local id = engine:submit { method = "POST", url = base .. "/v2/people/enrich",
                             headers = post_headers, body = body, fresh_connect = true }
  by_id[id] = {}
  in_flight = in_flight + 1
end

local function poll(job)
  local id = engine:submit { url = base .. "/v2/people/enrich/" .. job.id, headers = get_headers }
  by_id[id] = job
  in_flight = in_flight + 1
end

local t0 = core.now()
local limit = t0 + 300
while done + failed < total and core.now() < limit do
  local now = core.now()
  while due_head <= due_tail and due[due_head].at <= now and in_flight < CONC do
    poll(due[due_head])
    due[due_head] = nil
    due_head = due_head + 1
  end
  while next_job <= total and in_flight < CONC do
    submit(next_job)
    next_job = next_job + 1
  end
  local wait = 0.005
  if due_head <= due_tail then wait = math.max(0, math.min(wait, due[due_head].at - now)) end
  for _, c in ipairs(engine:poll(wait)) do
    in_flight, requests = in_flight - 1, requests + 1
    local job = by_id[c.id]
    by_id[c.id] = nil
    local j = c.json
    if type(j) ~= "table" or c.status >= 300 then
      failed = failed + 1
    elseif not job.id then
      job.id = j.request_id
    elseif j.status == "COMPLETED" then
      done, job = done + 1, nil
    end
    if job and job.id then
      job.at = core.now() + INTERVAL
      due_tail = due_tail + 1
      due[due_tail] = job
    end
  end
end
local secs = core.now() - t0
print(string.format("jobs=%d failed=%d requests=%d seconds=%.3f rps=%.0f", total, failed, requests, secs,
  requests / secs))
os.exit(failed == 0 and done == total and 0 or 1)
