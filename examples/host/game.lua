-- The script a ticking host (examples/host/host.c) runs: it submits JOBS
-- tamtam jobs of one person each (PER_FRAME per frame, or all in the first
-- frame when PER_FRAME is 0), as a game or a tool would from its update
-- step, and checks every result once the jobs are done. The host calls
-- enrich.tick() once per frame; nothing here waits or blocks.
--
-- Called as a chunk with (SIM_URL, JOBS, PER_FRAME); returns the game:
--   update(frame) -> jobs still to submit
--   summary()     -> "jobs=N succeeded=N wrong=N ...", true when all correct
local enrich = require "enrich"

local sim_url, jobs_n, per_frame = ...
jobs_n = math.tointeger(jobs_n) or 50
per_frame = math.tointeger(per_frame) or 0
if per_frame <= 0 then per_frame = jobs_n end

-- Against the simulator: polls ENRICH_POLL_INTERVAL seconds apart (0.05 by
-- default, so a job takes a few polls in a few frames); against a real
-- provider keep the provider's cadence (seconds apart).
local interval = tonumber(os.getenv("ENRICH_POLL_INTERVAL")) or 0.05

-- A game sends and receives on a thread of libcurl's own, so no connect,
-- send or TLS handshake lands inside a frame; tick() only hands requests
-- over and turns answers into results. ENRICH_IO_THREAD=0: all in tick().
assert(enrich.configure { io_thread = os.getenv("ENRICH_IO_THREAD") ~= "0" })
-- ENRICH_STORE=sqlite:PATH records every job in a store (README, "Durable
-- jobs"): its commits run on the store's own thread, not in tick().
local store_url = os.getenv("ENRICH_STORE")
local store = store_url and store_url ~= "" and assert(enrich.store.open(store_url)) or nil
local client = assert(enrich.client("tamtam", {
  store = store,
  api_key = os.getenv("TAMTAM_API_KEY") or "host-key",
  base_url = sim_url and (sim_url .. "/tamtam") or nil,
  poll = sim_url and { interval = interval, factor = 1.2, max_interval = 4 * interval, jitter = 0.2, deadline = 60 }
    or nil,
  rate = sim_url and { per_second = 1e6, burst = 1e6 } or nil,   -- the simulator runs with limits off
}))

-- A frame-paced host bounds the work one tick may start (seconds); the
-- rest waits for the next frame. ENRICH_TICK_BUDGET=0 turns it off.
local budget = tonumber(os.getenv("ENRICH_TICK_BUDGET") or "0.0004")
enrich.TICK_BUDGET = budget and budget > 0 and budget or nil

-- The collector, too, works in small steps: a frame must not pay for a big
-- one. ENRICH_GC=generational|incremental|default.
local gc = os.getenv("ENRICH_GC") or "incremental"
if gc == "generational" then collectgarbage("generational")
elseif gc == "incremental" then collectgarbage("incremental", 150, 200, 10) end  -- pause, step multiplier, 1 KiB steps

local jobs, submitted = {}, 0

local function person(i)
  return { first_name = "Player" .. i, last_name = "Host", domain = "example.com", custom = { row = i } }
end

local game = {}

function game.update()
  local last = math.min(submitted + per_frame, jobs_n)
  for i = submitted + 1, last do
    jobs[i] = assert(client:submit({ person(i) }, { kind = "email" }))
  end
  submitted = last
  return jobs_n - submitted
end

-- Every job succeeded with the address the simulator derives from the input.
function game.summary()
  local counts = { succeeded = 0, wrong = 0, unfinished = 0 }
  for i = 1, jobs_n do
    local job = jobs[i]
    if not (job and job:done()) then
      counts.unfinished = counts.unfinished + 1
    else
      local r = job.results[1]
      local want = ("player%d.host@example.com"):format(i)
      if job.state == "succeeded" and r.status == "found" and r.email == want and r.custom.row == i then
        counts.succeeded = counts.succeeded + 1
      else
        counts.wrong = counts.wrong + 1
        if counts.wrong <= 3 then
          io.stderr:write(("game: job %d: state %s, email %s, error %s\n"):format(
            i, job.state, tostring(r and r.email), tostring(job.error)))
        end
      end
    end
  end
  return ("jobs=%d succeeded=%d wrong=%d unfinished=%d io_thread=%d"):format(
    jobs_n, counts.succeeded, counts.wrong, counts.unfinished, enrich.scheduler().threaded and 1 or 0),
    counts.succeeded == jobs_n
end

return game
