-- The OpenResty host: one light thread per nginx worker (an ngx.timer)
-- drives the loop with non-blocking steps and ngx.sleep; request handlers
-- that wait on a job sleep on an ngx.semaphore, so nothing ever blocks the
-- worker.
--
--   init_worker_by_lua_block { require("enrich.hosts.openresty").start() }
--   content_by_lua_block {
--     local enrich = require "enrich"
--     local job = assert(client:submit(people))
--     job:wait(30)            -- yields this request only
--   }
-- luacheck: read_globals ngx
local enrich = require "enrich"
local jobs = require "enrich.job"
local semaphore = require "ngx.semaphore"

local ngx = ngx
local min, max, pairs, tostring = math.min, math.max, pairs, tostring

local _M = { _VERSION = "0.1.0" }

-- How long the driver sleeps between steps, in seconds. While transfers are
-- in flight libcurl's sockets need a look every `busy`; otherwise it sleeps
-- until the next timer, at most `idle`.
_M.DEFAULTS = { busy = 0.001, idle = 0.05 }

local running = false

local function driver(premature, opts)
  if premature then running = false return end
  local sched = enrich.scheduler()
  while not ngx.worker.exiting() do
    local ok, err = pcall(sched.step, sched, 0)
    if not ok then ngx.log(ngx.ERR, "enrich: loop step failed: ", err) end
    local failure = sched.failure
    if failure then
      sched.failure = nil
      ngx.log(ngx.ERR, "enrich: task failed: ", failure)
    end
    local pause = opts.idle
    if sched:transfers() > 0 then
      pause = opts.busy
    else
      local wake = sched:next_wakeup()
      if wake then pause = max(min(wake, opts.idle), opts.busy) end
    end
    ngx.sleep(pause)
  end
  running = false
end

-- job:wait and friends from a request: park this request's coroutine on a
-- semaphore that the job posts when it finishes (or its check is over).
local function host_wait(job, list, pred, deadline)
  local now = enrich.scheduler().now      -- the loop's monotonic clock, as deadline is
  local sema = semaphore.new()
  local function post() sema:post(1) end
  while not pred() do
    local left = deadline and deadline - now() or 3600
    if left <= 0 then
      jobs.remove_waiter(job, list, post)
      return pred()
    end
    jobs.add_waiter(job, list, post)       -- again after each wake: waking empties the list
    sema:wait(left)
  end
  return true
end

--- Installs the host hooks and starts this worker's driver (idempotent).
--- Call from init_worker_by_lua*; opts override DEFAULTS.
function _M.start(opts)
  local o = {}
  for k, v in pairs(_M.DEFAULTS) do o[k] = (opts and opts[k]) or v end
  local sched = enrich.scheduler()
  sched.host_wait = host_wait
  sched.host_sleep = ngx.sleep
  if running then return true end
  local ok, err = ngx.timer.at(0, driver, o)
  if not ok then return nil, "enrich: could not start the driver: " .. tostring(err) end
  running = true
  return true
end

return _M
