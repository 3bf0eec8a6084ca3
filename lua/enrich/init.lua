-- lua-enrich: asynchronous enrichment jobs, one API for every provider.
--
--   local enrich = require "enrich"
--   local client = assert(enrich.client("tamtam", { api_key = key }))
--   local job = assert(client:submit(people, { kind = "email" }))
--   job:wait()
--
-- One loop per Lua state (per nginx worker in OpenResty), made on first use.
local scheduler = require "enrich.scheduler"
local client = require "enrich.client"
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

--- The loop every client and task of this Lua state shares.
function _M.scheduler()
  if not loop then
    -- In nginx (OpenResty) the host attaches first thing: a driver timer of
    -- this worker's own steps the loop (lua/enrich/hosts/openresty.lua).
    local in_nginx = ngx and ngx.get_phase and ngx.timer   -- luacheck: ignore 113
    if in_nginx and ngx.get_phase() == "init" then         -- luacheck: ignore 113
      require("enrich.hosts.openresty").attach(nil)           -- raises: the master forks
    end
    local l = assert(scheduler.new(loop_opts))
    if in_nginx then require("enrich.hosts.openresty").attach(l) end
    loop = l
  end
  return loop
end

local CONFIG = { io_thread = "boolean", per_host = "number", shared_dict = "string" }

--- Sets up the loop before its first use (a client, a task, a tick):
---   io_thread = true   libcurl runs on a thread of its own, so connects,
---                      sends and TLS never cost the thread that ticks;
---   per_host  = n      transfers in flight per host (default 32).
--- The loop is made at its first use, with these options: in OpenResty's
--- init_by_lua, each worker still makes its own after the fork.
--- Calls before the first use add up (the last value of an option wins).
--- Returns true, or nil and a message if the loop exists already.
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
  -- OpenResty: the lua_shared_dict every worker's rate limits share.
  if opts.shared_dict then require("enrich.ratelimit_shared").DICT = opts.shared_dict end
  if loop then return nil, "enrich.configure: the loop is already running; configure before the first use" end
  loop_opts = loop_opts or {}              -- a later call adds to an earlier one
  for k, v in pairs(opts) do loop_opts[k] = v end
  return true
end

function _M.client(name_or_spec, opts)
  return client.new(_M.scheduler(), name_or_spec, opts)
end

--- Runs fn(...) in a task; drives the loop until it and every task it
--- spawned finished. Returns fn's results; raises any of their errors.
function _M.run(fn, ...)
  local s = _M.scheduler()
  if s.host and not s:current() then return s.host.run(fn, ...) end
  return s:run(fn, ...)
end

--- Starts fn(...) as a task (inside run, or driven by tick/wait).
function _M.spawn(fn, ...)
  if type(fn) ~= "function" then error("enrich.spawn: a function is required", 2) end
  local s = _M.scheduler()
  if s.host then return s.host.spawn(fn, ...) end
  return s:go(fn, nil, ...)
end

--- Waits `seconds`: yields inside a task, drives the loop outside one.
function _M.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 then error("enrich.sleep: seconds must be >= 0", 2) end
  local s = _M.scheduler()
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
  local s = _M.scheduler()
  local live = s:step(0, budget or _M.TICK_BUDGET)
  s:check_failure(2)
  return live
end

return _M
