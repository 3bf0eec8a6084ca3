-- One worker of a scale-out run, for spec/store/scaleout_spec.lua and
-- bench/scaleout.sh: takes chunks of a run of generated people through
-- tamtam on the simulator, then writes the whole run's answers.
--   lua5.4 spec/support/scaleout_worker.lua REDIS_URL RUN SIM_URL ROWS OUT [LEASE] [CHUNK] [POLL] [RATE]
-- Prints "worker NAME done_here N taken_over N resumed N round_trips N
-- retries N rate_waits N" at the end. RATE (optional): the key's rate. ENRICH_CRASH_AT kills it where asked.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("ENRICH_CORE_DIR") or "build/5.4") .. "/?.so;" .. package.cpath
local enrich = require "enrich"
local scaleout = require "enrich.scaleout"
local shared_rate = require "enrich.ratelimit_redis"

local url, name, sim, nrows, out = arg[1], arg[2], arg[3], tonumber(arg[4]), arg[5]
local lease, chunk_size, poll = tonumber(arg[6] or "2"), tonumber(arg[7] or "25"), tonumber(arg[8] or "0.05")
local rate = tonumber(arg[9] or "")     -- requests/s per key (bench: above the provider's, simulator limits off)
assert(url and name and sim and nrows and out,
       "usage: scaleout_worker.lua REDIS_URL RUN SIM_URL ROWS OUT [LEASE] [CHUNK] [POLL] [RATE]")

local function person(i)
  return { first_name = "Ada" .. i, last_name = "Byron", domain = "example.com", custom = { row = i } }
end

local run = assert(scaleout.open(url, name, { lease = lease }))
local client = assert(enrich.client("tamtam", {
  api_key = "spec-key", base_url = sim .. "/tamtam", store = run.store,
  poll = { interval = poll, factor = 1, max_interval = poll, jitter = 0, deadline = 60 },
  rate = rate and { per_second = rate, burst = rate } or nil,
}))
local bucket = assert(shared_rate.attach(client, run.store, { key = "spec-key", burst = rate }))
assert(run:load(nrows, "generated:" .. nrows, chunk_size))

assert(run:work(function(chunk)
  local inputs = {}
  for row = chunk.first, chunk.last do inputs[#inputs + 1] = person(row) end
  local job = assert(run:submit(chunk, client, inputs, { kind = "email" }, "tamtam"))
  job:wait(120)
  local answers = {}
  for k, item in ipairs(job.results or {}) do
    answers[chunk.first + k - 1] = { status = item.status, email = item.email or "", state = job.state,
                                     row = item.custom and item.custom.row }
  end
  return answers
end))

local answers = assert(run:answers())
local f = assert(io.open(out, "w"))
for row = 1, nrows do
  local a = answers[row]
  local echo = a and a.row and string.format("%d", a.row) or "-"
  f:write(row, "\t", a and a.status or "-", "\t", a and a.email or "-", "\t", echo, "\n")
end
f:close()
print(("worker %s done_here %d taken_over %d resumed %d round_trips %d retries %d rate_waits %d"):format(
  run.worker, run.done_here, run.taken_over, run.resumed_jobs, run.r.round_trips, run.r.retries, bucket.waited))
run:close()
