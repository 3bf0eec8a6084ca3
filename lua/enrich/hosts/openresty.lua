-- The OpenResty host. In nginx the plain API is enough: the first use of
-- enrich in a worker (after the fork) attaches this host, which starts a
-- driver of the worker's own: one ngx.timer whose light thread is the only
-- one that steps the loop, and so the only one that makes and resumes the
-- loop's coroutines. A request never steps the loop:
--
--   job:wait, job:refresh, job:cancel   park the request on an ngx.semaphore
--                                       that the job posts
--   enrich.sleep                        ngx.sleep
--   enrich.spawn                        hands the function to the driver,
--                                       which makes the task's coroutine
--   enrich.run(fn, ...)                 runs fn in the request itself (its
--                                       waits park the request), then parks
--                                       until every task it spawned ended
--   enrich.tick, stepping the loop      raise: the driver owns the loop
--
-- Why it matters: lua-nginx-module keeps each coroutine's context in the
-- request (or timer) that created it, and finds it again from the
-- coroutine itself (OpenResty's LuaJIT keeps the pointer in the thread). A
-- coroutine made in one request and resumed from another uses the first
-- one's context after nginx freed it: the worker dies with signal 11.
--
-- Where waiting is impossible (init_by_lua, init_worker_by_lua,
-- set_by_lua, header_filter, body_filter, log, balancer) a wait raises a
-- clear error, which is also logged. Submitting works in every phase but
-- init_by_lua (nginx's master, which forks: the work would be copied into
-- every worker); clients may be made there.
--
--   require("enrich.hosts.openresty").start(opts)   -- optional, for tuning
-- luacheck: read_globals ngx
local jobs = require "enrich.job"

local ngx = ngx
local co_running = coroutine.running
local traceback = debug.traceback
local unpack = table.unpack or unpack   -- luacheck: ignore 143
local min, max, pairs, ipairs, select, tostring, type, error, pcall, xpcall =
  math.min, math.max, pairs, ipairs, select, tostring, type, error, pcall, xpcall

local _M = { _VERSION = "0.2.0" }

-- The shortest sleep the driver and enrich.sleep ask nginx for (seconds).
local MIN_SLEEP = 0.001

-- How the driver waits between steps, in seconds:
--   busy      while transfers are in flight, the first look at libcurl's
--             sockets after a step that moved (nginx cannot watch them for
--             us); each step that finds nothing doubles the pause ...
--   busy_max  ... up to this, and never past libcurl's own timeout or the
--             loop's next timer;
--   idle      with nothing in flight: sleep until the next timer, at most
--             this (new work from a request wakes the driver at once);
--   recycle   a driver older than this hands over to a fresh timer the next
--             time the loop has no coroutine alive: nginx frees a timer's
--             memory (one context per coroutine it made) only when it ends.
_M.DEFAULTS = { busy = 0.001, busy_max = 0.02, idle = 1, recycle = 60 }

-- Phases whose Lua may yield (ngx.sleep, ngx.semaphore:wait).
local YIELDABLE = { rewrite = true, access = true, content = true, timer = true,
                    ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true }

local state = nil        -- the attached loop's host state (one per worker)

local function log_err(...) ngx.log(ngx.ERR, ...) end

-- Raises `msg` at the caller's caller and logs it: a misuse in a phase that
-- cannot wait must show up in the error log even if the caller drops it.
local function refuse(msg, level)
  log_err(msg)
  error(msg, (level or 1) + 1)
end

local function phase()
  return ngx.get_phase and ngx.get_phase() or "content"
end

local function check_yieldable(what)
  local p = phase()
  if not YIELDABLE[p] then
    refuse("enrich: " .. what .. " cannot wait in " .. p .. " (nginx does not let this phase yield);"
           .. " wait from rewrite, access or content, or a timer", 3)
  end
end

--- True when the running coroutine is the driver's own light thread.
local function in_driver(s)
  return s.driver_co ~= nil and co_running() == s.driver_co
end

-- Wakes the driver at once (it sleeps on a semaphore between steps).
local function kick(s)
  if s.kicked then return end
  s.kicked = true
  s.sema:post(1)
end

-- Task groups (enrich.run in a request): the scheduler counts a group's
-- live tasks (tasks_live) and keeps its first error (failure); the group
-- here is a proxy that posts the parked request when either moves to an
-- end. `queued` counts its spawns not yet started by the driver.
local function new_group(sema)
  local store = { tasks_live = 0, queued = 0 }
  return setmetatable({}, {
    __index = store,
    __newindex = function(_, k, v)
      store[k] = v
      if k == "failure" or (k == "tasks_live" and v == 0) then sema:post(1) end
    end,
  })
end

-- Starts the spawns requests handed over (in the driver: their coroutines
-- belong to its context).
local function drain_spawns(s)
  local q = s.spawns
  if q[1] == nil then return end
  s.spawns = {}
  for i = 1, #q do
    local sp = q[i]
    local g = sp.group
    if g then g.queued = g.queued - 1 end
    s.go(s.sched, sp.fn, g and { group = g } or nil, unpack(sp.args, 1, sp.args.n))
  end
end

local driver                             -- below

local function start_driver(s)
  local ok, err = ngx.timer.at(0, driver, s)
  if not ok then return nil, "enrich: could not start the driver timer: " .. tostring(err) end
  s.running = true
  s.generation = s.generation + 1
  return true
end

-- The driver: steps the loop, then waits on its semaphore for as long as
-- nothing is due (a request that adds work posts it).
function driver(premature, s)
  if premature then s.running = false return end
  local sched, o = s.sched, s.opts
  s.driver_co = co_running()
  local engine = sched:core()            -- made here, in this worker, if not yet
  local born = ngx.now()
  local pause = o.busy
  local last_pending = -1
  while not ngx.worker.exiting() and not sched.closed do
    s.kicked = false
    drain_spawns(s)
    local ok, err = pcall(s.step, sched, 0)
    if not ok then log_err("enrich: loop step failed: ", tostring(err)) end
    local failure = sched.failure
    if failure then
      sched.failure = nil
      log_err("enrich: task failed: ", tostring(failure))
    end
    local wait = o.idle
    local in_flight = sched:transfers()
    if in_flight > 0 then
      -- Sockets need a look now and then; back off while nothing moves.
      if in_flight ~= last_pending then pause = o.busy else pause = min(pause * 2, o.busy_max) end
      wait = pause
      local t = engine:timeout()
      if t and t >= 0 and t < wait then wait = t end
    else
      pause = o.busy
    end
    last_pending = in_flight
    local wake = sched:next_wakeup()
    if wake and wake < wait then wait = wake end
    if s.spawns[1] ~= nil then wait = 0 end
    -- An old driver hands over when no coroutine of its context is alive.
    if ngx.now() - born > o.recycle and next(sched.tasks) == nil and s.spawns[1] == nil then
      sched.pool = {}
      s.driver_co = nil
      local started = start_driver(s)
      if started then return end
      s.driver_co = co_running()
      born = ngx.now()
    end
    if wait <= 0 then
      -- Let nginx serve others, then go on. Not ngx.sleep(0): without
      -- OpenResty's delayed-events patch (Debian's module) each one writes a
      -- warning to the error log, and it arms a timer all the same.
      ngx.sleep(MIN_SLEEP)
    else
      s.sema:wait(max(wait, 0.001))
    end
  end
  s.running = false
  s.driver_co = nil
end

-- job:wait and friends from outside the loop: park this light thread on a
-- semaphore that the job posts when it finishes (or its check is over).
local function host_wait(job, list, pred, deadline)
  local now = job.client.sched.now     -- the loop's monotonic clock, as deadline is
  if deadline and deadline <= now() then return pred() end   -- wait(0): no need to yield
  check_yieldable("job:wait")
  local sema = require("ngx.semaphore").new()
  local function post() sema:post(1) end
  for _ = 1, 1e9 do                       -- bounded by the deadline, or by the job's own
    if pred() then return true end
    local left = deadline and deadline - now() or 3600
    if left <= 0 then
      jobs.remove_waiter(job, list, post)
      return pred()
    end
    jobs.add_waiter(job, list, post)       -- again after each wake: waking empties the list
    sema:wait(left)
  end
  return pred()
end

local function host_sleep(seconds)
  check_yieldable("enrich.sleep")
  return ngx.sleep(seconds > MIN_SLEEP and seconds or MIN_SLEEP)   -- never ngx.sleep(0): above
end

-- The group of the running request's enrich.run, if any.
local function request_group(s)
  return s.groups[co_running()]
end

local function host_spawn(fn, ...)
  local s = state
  if s.sched:current() then              -- inside a task: the driver's context
    return s.go(s.sched, fn, nil, ...)   -- (the task's own group)
  end
  local group = request_group(s)
  if group then group.queued = group.queued + 1 end
  local sp = { fn = fn, args = { n = select("#", ...), ... }, group = group }
  s.spawns[#s.spawns + 1] = sp
  kick(s)
  return sp
end

local function pack(...) return { n = select("#", ...), ... } end

-- enrich.run in a request: fn runs right here (ngx.say and cosockets work
-- in it; its waits park this request only), its spawns run on the driver;
-- returns when fn and all of them ended; the first error is raised.
local function host_run(fn, ...)
  local s = state
  if type(fn) ~= "function" then error("enrich.run: a function is required", 3) end
  check_yieldable("enrich.run")
  local co = co_running()
  local outer = s.groups[co]
  local sema = require("ngx.semaphore").new()
  local g = new_group(sema)
  s.groups[co] = g
  local res = pack(xpcall(fn, function(e) return traceback(e, 2) end, ...))
  s.groups[co] = outer
  if not res[1] and g.failure == nil then g.failure = res[2] end
  for _ = 1, 1e9 do                      -- bounded by the group's tasks, which end
    if g.failure ~= nil or (g.tasks_live == 0 and g.queued == 0) then break end
    sema:wait(1)
  end
  if g.failure ~= nil then error(g.failure, 2) end
  return unpack(res, 2, res.n)
end

--- Attaches the host to `sched` (enrich's loop, made at first use in this
--- worker) and starts the driver. enrich calls it; idempotent.
function _M.attach(sched, opts)
  if sched.host == _M then return true end
  local S = getmetatable(sched).__index   -- the scheduler's own methods
  if phase() == "init" then
    -- nginx's master: clients may be made here (nothing of libcurl is), but
    -- work would be copied into every worker by the fork.
    -- In a worker (after the fork) the first of these attaches the host.
    for _, name in ipairs { "start", "go", "step", "tick", "at" } do
      sched[name] = function(self, ...)
        if phase() ~= "init" then
          _M.attach(self)
          return self[name](self, ...)
        end
        refuse("enrich: nothing can be submitted or run in init_by_lua (nginx's master process, which"
               .. " forks); submit from init_worker_by_lua, a request or a timer", 2)
      end
    end
    return false
  end
  local o = {}
  opts = opts or _M.pending_opts
  for k, v in pairs(_M.DEFAULTS) do o[k] = (opts and opts[k]) or v end
  local s = {
    sched = sched, opts = o, sema = require("ngx.semaphore").new(),
    spawns = {}, groups = setmetatable({}, { __mode = "k" }),
    kicked = false, running = false, driver_co = nil, generation = 0,
    step = S.step, go = S.go,
  }
  state = s
  sched.host = _M
  sched.host_wait = host_wait
  sched.host_sleep = host_sleep
  -- Only the driver steps the loop and makes its coroutines; anyone else
  -- that tries gets an error, not a crash in another request's context.
  local function not_here()
    refuse("enrich: the loop of an nginx worker is stepped by its driver only"
           .. " (enrich.tick, and waits outside a request, are not for OpenResty)", 3)
  end
  sched.step = function(self, ...)
    if not in_driver(s) then not_here() end
    return S.step(self, ...)
  end
  sched.tick = function() not_here() end
  sched.go = function(self, fn, gopts, ...)
    if not (in_driver(s) or self:current()) then
      refuse("enrich: tasks start on the worker's driver; use enrich.spawn", 2)
    end
    return S.go(self, fn, gopts, ...)
  end
  -- New work (a step, a timer, a wake) from a request wakes the driver.
  local start, at, wake = S.start, S.at, S.wake
  sched.start = function(self, ...)
    start(self, ...)
    if not (in_driver(s) or self:current()) then kick(s) end
  end
  sched.at = function(self, ...)
    local r = at(self, ...)
    if not (in_driver(s) or self:current()) then kick(s) end
    return r
  end
  sched.wake = function(self, ...)             -- a job a request cancelled wakes its waiters
    wake(self, ...)
    if not (in_driver(s) or self:current()) then kick(s) end
  end
  local ok, err = start_driver(s)
  if not ok then refuse(err, 2) end
  return true
end

--- enrich.spawn / enrich.run in nginx (called by enrich when attached).
_M.spawn = function(fn, ...) return host_spawn(fn, ...) end
_M.run = function(fn, ...) return host_run(fn, ...) end

--- Tunes the driver (see DEFAULTS); attaches the host if enrich's loop is
--- not made yet. Optional: the plain API needs no init_worker line.
function _M.start(opts)
  if opts ~= nil and type(opts) ~= "table" then error("start: options must be a table", 2) end
  for k in pairs(opts or {}) do
    if _M.DEFAULTS[k] == nil then error("start: unknown option '" .. tostring(k) .. "'", 2) end
  end
  if state then
    for k, v in pairs(opts or {}) do state.opts[k] = v end
    return true
  end
  _M.pending_opts = opts
  require("enrich").scheduler()            -- makes the loop, which attaches us
  if not state then return nil, "enrich: start() belongs in init_worker_by_lua, not init_by_lua" end
  return true
end

--- The driver's state, for tests and the bench.
function _M.status()
  if not state then return { attached = false } end
  return { attached = true, running = state.running, spawns = #state.spawns,
           generation = state.generation }   -- drivers started so far (see recycle)
end

return _M
