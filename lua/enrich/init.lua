-- lua-enrich: asynchronous enrichment jobs, one API for every provider.
--
--   local enrich = require "enrich"
--   local client = assert(enrich.client("tamtam", { api_key = key }))
--   local job = assert(client:submit(people, { kind = "email" }))
--   job:wait()
--
-- One loop per Lua state (per nginx worker in OpenResty), made on first use;
-- its engine (libcurl, an epoll set) at the first turn or transfer, so a
-- client made before a fork() leaves nothing of libcurl in the parent.
--
-- Lua 5.4, 5.3 and LuaJIT 2.1 (OpenResty). PUC Lua 5.1 and 5.2 cannot
-- yield across pcall, which every engine step does; refuse them clearly.
if _VERSION == "Lua 5.1" and not jit or _VERSION == "Lua 5.2" then
  error("lua-enrich needs Lua 5.3, 5.4 or LuaJIT 2.1 (OpenResty); " .. _VERSION
    .. " cannot yield across pcall, which the engine relies on", 2)
end
local scheduler = require "enrich.scheduler"
local client = require "enrich.client"
local snapshot = require "enrich.snapshot"
local errors = require "enrich.errors"
local policy = require "enrich.policy"
local providers = require "enrich.providers"
local request = require "enrich.request"

local _M = {
  _NAME = "enrich",
  _VERSION = "0.1.0",
  providers = providers,
  errors = errors,
  null = request.null,
  DEFAULT_POLL = policy.DEFAULT_POLL,
  DEFAULT_RETRY = policy.DEFAULT_RETRY,
}

local loop, loop_opts

-- The loop, made at its first use (its engine later still: see core()).
-- In nginx (OpenResty) the host attaches at the first use in each worker:
-- a driver timer of the worker's own steps the loop (enrich.hosts.openresty).
local ngx_host = ngx and ngx.get_phase and ngx.timer and "enrich.hosts.openresty"   -- luacheck: ignore 113
local function get_loop()
  if not loop then loop = scheduler.new(loop_opts) end
  if ngx_host and not loop.host then require(ngx_host).attach(loop) end
  return loop
end

--- The loop if it was made, else nil (makes nothing: for hosts and specs).
function _M.loop() return loop end

--- The loop every client and task of this Lua state shares (its engine is
--- made here too: callers of this function read sched.engine).
function _M.scheduler()
  local l = get_loop()
  l:core()
  return l
end

local CONFIG = { io_thread = "boolean", per_host = "number", shared_dict = "string" }

--- Sets up the loop before its first use (a client, a task, a tick):
---   io_thread = true   libcurl runs on a thread of its own, so connects,
---                      sends and TLS never cost the thread that ticks;
---   per_host  = n      transfers in flight per host (default 32);
---   shared_dict = name OpenResty: the lua_shared_dict in which every worker
---                      shares each key's rate limit (default "enrich").
--- The loop is made at its first use, with these options: in OpenResty's
--- init_by_lua, each worker still makes its own after the fork.
--- Calls before the first use add up (the last value of an option wins).
--- Returns true; raises once the loop exists (a misuse like any other).
function _M.configure(opts)
  if type(opts) ~= "table" then error("enrich.configure: an options table is required", 2) end
  for k, v in pairs(opts) do
    if not CONFIG[k] then error("enrich.configure: unknown option '" .. tostring(k) .. "'", 2) end
    if type(v) ~= CONFIG[k] then error("enrich.configure: '" .. k .. "' must be a " .. CONFIG[k], 2) end
  end
  local n = opts.per_host
  if n and (n ~= math.floor(n) or n < 1 or n > 10000) then
    error("enrich.configure: 'per_host' must be a whole number from 1 to 10000", 2)
  end
  if opts.shared_dict then require("enrich.ratelimit_shared").DICT = opts.shared_dict end
  if loop then error("enrich.configure: the loop is already running; configure before the first use", 2) end
  loop_opts = loop_opts or {}              -- a later call adds to an earlier one
  for k, v in pairs(opts) do loop_opts[k] = v end
  return true
end

function _M.client(name_or_spec, opts)
  -- Not a tail call: the misuse errors of client.new point at our caller.
  local c, err = client.new(get_loop(), name_or_spec, opts)
  return c, err
end

--- A live job from job:snapshot() (see enrich.snapshot).
function _M.job_from_snapshot(c, snap)
  if getmetatable(c) ~= client.client_mt then error("enrich.job_from_snapshot: a client is required", 2) end
  return snapshot.from_snapshot(c, snap)
end

--- enrich.store.open(url) -> store | nil, err (see enrich.store), and
--- enrich.resume(store, clients [, opts]) -> jobs: the durable jobs.
_M.store = require "enrich.store"
function _M.resume(store, clients, opts) return require("enrich.resume").resume(store, clients, opts) end

--- For foreign event loops: the descriptor to watch for readability (nil
--- on the portable core), and the seconds until the loop wants a tick
--- anyway (nil: nothing scheduled). Wait for either, then enrich.tick().
function _M.fd() return _M.scheduler().engine:fd() end
function _M.timeout() return _M.scheduler():timeout() end

--- Ends the loop: closes its engine (transfers in flight end unanswered,
--- live jobs stay where they are) and forgets it; the next use makes a new
--- one, and enrich.configure may be called again before it.
function _M.close()
  if loop then loop:close() end
  loop = nil
end

--- Runs fn(...) in a task; drives the loop until it and every task it
--- spawned finished. Returns fn's results; raises the first error of one
--- of them (its other tasks are then abandoned; tasks of other runs, and
--- those spawned outside any run, go on).
function _M.run(fn, ...)
  local s = get_loop()
  if s.host and not s:current() then return s.host.run(fn, ...) end   -- OpenResty
  return s:run(fn, ...)
end

--- Starts fn(...) as a task (inside run: one of that run's; outside any,
--- driven by tick/wait/sleep, which raise its error).
function _M.spawn(fn, ...)
  if type(fn) ~= "function" then error("enrich.spawn: a function is required", 2) end
  local s = get_loop()
  if s.host then return s.host.spawn(fn, ...) end                     -- OpenResty
  return s:go(fn, nil, ...)
end

--- Waits `seconds`: yields inside a task, drives the loop outside one.
function _M.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 then error("enrich.sleep: seconds must be >= 0", 2) end
  local s = get_loop()
  if s:current() then return s:sleep(seconds) end
  if s.host_sleep then return s.host_sleep(seconds) end
  local deadline = s.now() + seconds
  repeat
    s:step(math.max(deadline - s.now(), 0))
    s:check_failure(2)
  until s.now() >= deadline
end

-- Seconds of work one tick() may start (nil: no bound). A frame-paced host
-- sets it (or passes one to tick) so that a burst of completions spreads
-- over several frames instead of stalling one.
_M.TICK_BUDGET = nil

--- One non-blocking step for host loops; returns the live jobs and tasks.
--- `budget` (seconds, default TICK_BUDGET) bounds the work started.
function _M.tick(budget)
  if budget ~= nil and (type(budget) ~= "number" or budget <= 0) then
    error("enrich.tick: budget must be a positive number of seconds", 2)
  end
  local s = get_loop()
  budget = budget or _M.TICK_BUDGET
  local live
  if budget then live = s:tick(budget) else live = s:step(0) end
  s:check_failure(2)
  return live
end

return _M
