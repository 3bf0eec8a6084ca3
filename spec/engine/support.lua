-- Shared by the engine's end-to-end specs: one simulator process per spec
-- file (bin/enrich-sim on a free loopback port), its control API, and
-- clients with a fast poll cadence so the specs stay quick.
local enrich = require "enrich"
local simulator = require "support.sim"

local support = {}

-- scripts/run-tests runs these specs once more with libcurl on the engine's
-- own I/O thread (enrich.configure), before any spec makes the loop.
if os.getenv("ENRICH_SPEC_IO_THREAD") == "1" then assert(enrich.configure { io_thread = true }) end

support.start = simulator.start
support.control = simulator.control

-- With an I/O thread, the transfers a test handed over go on by themselves
-- and could reach the simulator after the next test reset it: the loop is
-- driven (2 s at most) until each of those has ended. Without one, nothing
-- moves unless the loop is driven, and this returns at once.
local function settle()
  local sched = enrich.loop()             -- makes nothing (see lazy_loop_spec)
  if not (sched and sched.threaded and sched.engine) then return end
  local ids = {}
  for id in pairs(sched.waiting) do ids[#ids + 1] = id end
  local function open()
    for _, id in ipairs(ids) do if sched.waiting[id] then return true end end
    return false
  end
  local deadline = sched.now() + 2
  while open() and sched.now() < deadline do
    pcall(enrich.tick)                     -- a failure is the test's own business
    require("socket").sleep(0.002)
  end
end

--- Puts a proxy in front of the loop's engine: hooks[name](real, ...) runs
--- in place of real:name(...), every other method passes through. Returns
--- a function that puts the real engine back.
function support.watch_engine(sched, hooks)
  local real = sched.engine
  sched.engine = setmetatable({}, { __index = function(_, k)
    local hook = hooks[k]
    if hook then return function(_, ...) return hook(real, ...) end end
    return function(_, ...) return real[k](real, ...) end
  end })
  return function() sched.engine = real end
end

function support.reset(sim)
  settle()
  return simulator.reset(sim)
end
support.configure, support.fault, support.stats = simulator.configure, simulator.fault, simulator.stats

-- Fast cadence for specs: polls every few milliseconds, short deadlines.
support.FAST = {
  poll = { interval = 0.01, factor = 1, max_interval = 0.05, jitter = 0, deadline = 5 },
  retry = { attempts = 4, base = 0.01, cap = 0.05 },
}

--- A client of `provider` on the simulator; opts override the defaults.
function support.client(sim, provider, opts)
  local o = { api_key = "spec-key", base_url = sim.url .. "/" .. provider,
              poll = support.FAST.poll, retry = support.FAST.retry }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(enrich.client(provider, o))
end

--- support.client with the client-side rate lifted (for specs whose requests
-- are many and quick); opts override it too.
function support.fast_rate_client(sim, provider, opts)
  local o = { rate = { per_second = 1000, burst = 1000 } }
  for k, v in pairs(opts or {}) do o[k] = v end
  return support.client(sim, provider, o)
end

--- Submits and waits (bounded); returns the finished job.
function support.run_job(client, inputs, opts)
  local job = assert(client:submit(inputs, opts))
  assert(job:wait(20), "job did not finish")
  return job
end

return support
