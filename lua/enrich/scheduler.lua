-- The event loop: one enrich.core engine, a timer heap, a ready queue and
-- the tasks (coroutines) it runs. Read it top to bottom:
--
--   tasks     a user task (enrich.spawn/run) or an engine step (a job's
--             submit, check or cancel, run on a pooled coroutine);
--   parking   a task parks with yield; whoever may wake it took the task's
--             token first (sched:waker()). A wake whose token is not the
--             task's current one is dropped: a wake meant for an earlier
--             park never lands on a later one;
--   lanes     one per provider key (any table standing for it): at most
--             per_host of its steps run at once, the rest wait as records
--             (no coroutine);
--   transfer  the one path of every HTTP request: a host slot (FIFO), then
--             submit under protection, park until the completion; the slot
--             goes back on every path (the rate token is taken before, by
--             the caller: a key waiting for its rate holds no slot);
--   turns     step(wait) is one turn, tick(budget) the ticking host's
--             bounded one. A turn never runs inside another.
--
-- A job between polls is only an entry in the timer heap: no coroutine.
local core = require "enrich.core"
local errors = require "enrich.errors"
local heap = require "enrich.heap"

local co_create, co_resume, co_yield, co_running, co_status =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.running, coroutine.status
local traceback, unpack = debug.traceback, table.unpack or unpack
local select, error, type, pairs, next, pcall, setmetatable, min, max =
  select, error, type, pairs, next, pcall, setmetatable, math.min, math.max
local now = core.now

local _M = { _VERSION = "0.2.0" }
local S = {}
S.__index = S

_M.DEFAULT_PER_HOST = 32       -- transfers in flight per host; also a lane's running steps
_M.BUDGET_TRANSFERS = 2        -- new sends per budgeted tick without an I/O thread
_M.BUDGET_COMPLETIONS = 4      -- completions taken per budgeted tick
_M.getpid = core.getpid        -- to notice a fork (nil on a core without it: no check)

-- FIFOs of records of three values, stored flat; a queue that empties
-- after a burst drops its big table.
local fifo_mt = { __index = {
  push = function(q, a, b, c)
    local t, items = q.tail, q.items
    items[t + 1], items[t + 2], items[t + 3] = a, b, c
    q.tail = t + 3
  end,
  pop = function(q)
    local h, items = q.head, q.items
    local a, b, c = items[h], items[h + 1], items[h + 2]
    items[h], items[h + 1], items[h + 2] = nil, nil, nil
    q.head = h + 3
    if q.head > q.tail then
      if q.tail > 3000 then q.items = {} end
      q.head, q.tail = 1, 0
    end
    return a, b, c
  end,
  size = function(q) return (q.tail - q.head + 1) / 3 end,
} }
local function fifo() return setmetatable({ head = 1, tail = 0, items = {} }, fifo_mt) end

--- A new loop; its engine is made at first use (after any fork).
--- opts: per_host, io_thread, core (options for enrich.core's engine).
function _M.new(opts)
  opts = opts or {}
  return setmetatable({
    opts = opts, per_host = opts.per_host or _M.DEFAULT_PER_HOST, threaded = opts.io_thread == true,
    engine = nil, pid = nil, turning = false,
    timers = heap.new(),
    ready = fifo(),                  -- task, token, value
    starting = fifo(),               -- kind, arg, lane: steps to start this turn
    deferred = {},                   -- tasks whose send waits for the next turn (tick)
    sends_left = nil,                -- sends this budgeted turn may still make
    tasks = {},                      -- coroutine -> task record
    hosts = {},                      -- host -> { n = slots taken, waiting = fifo of task, token }
    waiting = {},                    -- transfer id -> task (parked in it, holding task.slot)
    pool = {},                       -- idle step workers
    lanes = setmetatable({}, { __mode = "k" }),      -- key -> { active = n, held = fifo }
    live_jobs = 0, user_tasks = 0,
    tasks_live = 0, failure = nil,   -- the default group: tasks spawned outside run()
  }, S)
end

S.now = function() return now() end

---------------------------------------------------------------------------
-- Tasks, parking and waking

--- The task record of the running coroutine, when enrich runs it.
function S:current()
  local co = co_running()
  return co and self.tasks[co]
end

--- The running task and its token: wake(task, token) resumes this park.
function S:waker()
  local task = self:current()
  if not task then error("enrich: not inside a task", 2) end
  return task, task.token
end

--- Parks the running task until a wake with its token; returns the value.
function S:park()
  if not self:current() then error("enrich: park() outside a task", 2) end
  return co_yield()
end

--- Queues a wake for the next pass over the ready queue.
function S:wake(task, token, value) self.ready:push(task, token, value) end

local function finish_task(self, task, ok, ...)
  if co_status(task.co) ~= "dead" then return end
  self.tasks[task.co] = nil
  self.user_tasks = self.user_tasks - 1
  local group = task.group
  group.tasks_live = group.tasks_live - 1
  if not ok then group.failure = group.failure or ...
  elseif task.on_done then task.on_done(...) end
end

-- Resumes a task if the token is its current one; drops the wake otherwise.
local function resume(self, task, token, value)
  if task.token ~= token or self.tasks[task.co] ~= task or co_status(task.co) ~= "suspended" then return end
  task.token = token + 1
  if task.group then return finish_task(self, task, co_resume(task.co, value)) end   -- a user task
  co_resume(task.co, value)              -- a step worker never raises (see new_worker)
end

--- Runs fn(...) as a user task in opts.group (default: the running task's,
--- or the loop's own). Its error goes to its group (see run, check_failure).
function S:go(fn, opts, ...)
  local args = { n = select("#", ...), ... }
  local parent = self:current()
  local group = opts and opts.group or (parent and parent.group) or self
  local task = { token = 0, group = group, on_done = opts and opts.on_done }
  task.co = co_create(function()
    return select(2, assert(xpcall(fn, function(e) return traceback(e, 2) end, unpack(args, 1, args.n))))
  end)
  self.tasks[task.co] = task
  self.user_tasks = self.user_tasks + 1
  group.tasks_live = group.tasks_live + 1
  self:wake(task, 0)
  return task
end

-- Engine steps: kind.run(arg) on a pooled coroutine; an error goes to
-- kind.failed(msg, arg).
local POOL_MAX = 256

local function new_worker(self)
  local w = { token = 0 }
  w.co = co_create(function(kind, arg, lane)
    while true do
      local ok, err = pcall(kind.run, arg)
      if not ok then pcall(kind.failed, err, arg) end
      if lane and lane.held.tail > 0 then
        self.starting:push(lane.held:pop())          -- its place in the lane passes on
      elseif lane then
        lane.active = lane.active - 1
      end
      self.tasks[w.co] = nil
      if #self.pool >= POOL_MAX then return end
      self.pool[#self.pool + 1] = w
      kind, arg, lane = co_yield()
    end
  end)
  return w
end

--- Runs kind.run(arg) as an engine step at the next pass over the ready
--- queue (in OpenResty a coroutine must be made by the loop's own light
--- thread, never by the caller). With `key`, it runs in that key's lane:
--- while per_host steps of the lane run, it waits there.
function S:start(kind, arg, key)
  local lane = key and self.lanes[key]
  if key and not lane then
    lane = { active = 0, held = fifo() }
    self.lanes[key] = lane
  end
  if lane then
    if lane.active >= self.per_host then return lane.held:push(kind, arg, lane) end
    lane.active = lane.active + 1
  end
  self.starting:push(kind, arg, lane)
end

local function run_step(self, kind, arg, lane)
  local pool = self.pool
  local w = pool[#pool]
  if w then pool[#pool] = nil else w = new_worker(self) end
  self.tasks[w.co] = w
  w.token = w.token + 1                  -- wakes left from its last step are stale
  co_resume(w.co, kind, arg, lane)
end

---------------------------------------------------------------------------
-- Timers: any table with on_timer(self, sched) and the heap's fields

local waker_mt = { __index = { on_timer = function(t, sched) sched:wake(t.task, t.token, false) end } }

function S:at(obj, when) self.timers:push(obj, when) end
function S:cancel_timer(obj) return self.timers:remove(obj) end

--- A timer that wakes (task, token) with false at `when`.
function S:wake_at(when, task, token)
  local t = setmetatable({ task = task, token = token }, waker_mt)
  self:at(t, when)
  return t
end

--- Sleeps the running task for `seconds`.
function S:sleep(seconds)
  local task, token = self:waker()
  self:wake_at(now() + max(seconds or 0, 0), task, token)
  return co_yield()
end

---------------------------------------------------------------------------
-- Transfers: the one path

--- The key transfers to `url` share their slots under (scheme and host).
function _M.host_of(url)
  return url:match("^(%a+://[^/?#]*)") or ""
end

-- Gives `task`'s slot of `host` back: to the oldest live waiter, if any.
local function give_slot(self, host, task)
  task.slot = nil
  local h = self.hosts[host]
  while h.waiting.tail > 0 do
    local w, token = h.waiting:pop()
    if self.tasks[w.co] == w and w.token == token then
      w.slot = host
      return self:wake(w, token, true)
    end
  end
  h.n = h.n - 1
end

local function take_slot(self, task, host)
  local h = self.hosts[host]
  if not h then h = { n = 0, waiting = fifo() }; self.hosts[host] = h end
  if h.n < self.per_host and h.waiting.tail == 0 then
    h.n, task.slot = h.n + 1, host
  else
    h.waiting:push(task, task.token)
    co_yield()                           -- give_slot hands it over
  end
end

--- Sends req from the running task and returns its completion record.
--- Waits for a slot of `host` (FIFO); runs before_send() (may yield; nil,
--- err: nothing is sent, { before_send_error = err } comes back); then the
--- core's submit (a raise comes back as a refused completion).
function S:transfer(req, host, before_send)
  local task = self:current()
  if not task then error("enrich: a transfer needs a task", 2) end
  while self.sends_left do               -- a budgeted tick: this turn's share of sends
    if self.sends_left > 0 then self.sends_left = self.sends_left - 1 break end
    self.deferred[#self.deferred + 1] = task
    co_yield()
  end
  take_slot(self, task, host)
  if before_send then
    local ok, go, err = pcall(before_send)
    if not (ok and go) then
      give_slot(self, host, task)
      return { before_send_error = ok and (err or "before_send refused") or go }
    end
  end
  local engine = self:core()
  local ok, id = pcall(engine.submit, engine, req)
  if not ok then
    give_slot(self, host, task)
    return { error = { code = "invalid", refused = true,
                       message = "request refused: " .. errors.unpositioned(id) } }
  end
  self.waiting[id] = task
  return co_yield()
end

--- Completions wake their tasks, each giving its slot back first.
function S:deliver(done)
  for i = 1, #done do
    local c = done[i]
    local task = self.waiting[c.id]
    if type(task) == "function" then     -- a callback waiter (enrich.redis): no slot, no wake; never yields
      self.waiting[c.id] = nil
      task(c)
    elseif task then                     -- parked in transfer(): its token is still the current one
      self.waiting[c.id] = nil
      if task.slot then give_slot(self, task.slot, task) end   -- (gone if the task was abandoned)
      self:wake(task, task.token, c)
    end
  end
end

--- The engine, made now if this process has none yet. A loop carried over
--- a fork() gets a fresh one: the old engine's transfers are the parent's,
--- and their tasks get a `network` failure.
function S:core()
  local getpid = _M.getpid
  local pid = getpid and getpid()
  if self.engine and pid == self.pid then return self.engine end
  if self.engine then
    local lost = {}
    for id in pairs(self.waiting) do
      lost[#lost + 1] = { id = id, error = { code = "network", message = "the process forked during the request" } }
    end
    self:deliver(lost)
  end
  local o = { max_host_connections = self.per_host, max_connections = 4 * self.per_host, timings = false,
              io_thread = self.threaded or nil }
  for k, v in pairs(self.opts.core or {}) do o[k] = v end
  self.engine, self.pid = assert(core.new(o)), pid
  return self.engine
end

---------------------------------------------------------------------------
-- Turns

local function queued(self)
  return self.ready.tail > 0 or self.starting.tail > 0 or self.deferred[1] ~= nil
end

-- Runs what is ready, then starts the queued steps (only what was queued
-- before this pass). With `limit`: one of each at least, then no more
-- once the clock passes it.
local function run_queued(self, limit)
  local ready, starting = self.ready, self.starting
  for i = 1, ready:size() do
    if limit and i > 1 and now() >= limit then break end
    resume(self, ready:pop())
  end
  for i = 1, starting:size() do
    if limit and i > 1 and now() >= limit then break end
    run_step(self, starting:pop())
  end
end

local function fire_timers(self, limit)
  local t, timers = now(), self.timers
  local top, n = timers:peek(), 0
  while top and top.at <= t and not (limit and n > 0 and now() >= limit) do
    n = n + 1
    timers:pop()
    top:on_timer(self)
    top = timers:peek()
  end
end

local function turn(self, engine, max_wait)
  local wait = 0
  if not queued(self) then
    local top = self.timers:peek()
    wait = top and min(max_wait, max(top.at - now(), 0)) or max_wait
  end
  self:deliver(engine:poll(wait))
  fire_timers(self)
  run_queued(self)
end

local function bounded_turn(self, engine, budget)
  local limit = now() + budget
  self:deliver(engine:poll(0, _M.BUDGET_COMPLETIONS, budget))
  fire_timers(self, limit)
  self.sends_left = not self.threaded and _M.BUDGET_TRANSFERS or nil
  run_queued(self, limit)
end

local function run_turn(self, fn, arg)
  if self.turning then
    error("enrich: the loop is already running a turn: job:wait, enrich.sleep or enrich.run was called "
      .. "from a coroutine that enrich does not run (start it with enrich.spawn instead)", 3)
  end
  self.turning = true
  local engine = self:core()
  local d = self.deferred                -- last turn's held-back sends go first
  if d[1] then
    self.deferred = {}
    for i = 1, #d do self:wake(d[i], d[i].token) end
  end
  local ok, err = pcall(fn, self, engine, arg)
  self.sends_left = nil
  if self.threaded then engine:flush() end   -- the turn's requests, handed over in one go
  self.turning = false
  if not ok then error(err, 0) end
  return self.live_jobs + self.user_tasks
end

--- One turn: waits at most `max_wait` seconds for transfers (less if a
--- timer is due sooner, none if work is ready), delivers completions,
--- fires due timers, runs what is ready. Returns the live jobs and tasks.
function S:step(max_wait) return run_turn(self, turn, max_wait or 0) end

--- The ticking host's turn, bounded by `budget` seconds of work: at most
--- BUDGET_COMPLETIONS completions and, without an I/O thread, at most
--- BUDGET_TRANSFERS new sends (each costs a connect and a send inside the
--- next poll). A completion, a timer, a step and a ready task always get
--- their go, so any budget makes progress.
function S:tick(budget) return run_turn(self, bounded_turn, budget) end

function S:live() return self.live_jobs + self.user_tasks end

--- True when nothing at all could wake a parked task any more.
function S:idle()
  return not queued(self) and self.timers.n == 0 and next(self.waiting) == nil
end

--- Seconds until the loop has work without I/O: 0 when work is ready or
--- answers wait in the core, the time to the next timer, or nil.
function S:next_wakeup()
  if queued(self) or (self.engine and self.engine:timeout() == 0) then return 0 end
  local top = self.timers:peek()
  return top and max(top.at - now(), 0) or nil
end

--- Seconds until the loop wants a tick (next_wakeup or libcurl's timer).
function S:timeout()
  local w, c = self:next_wakeup(), self:core():timeout()
  if c and (not w or c < w) then w = c end
  return w
end

--- Transfers in flight, tasks waiting for a host slot, and steps held in
--- their lane (each about to send).
function S:transfers()
  local n = 0
  for _ in pairs(self.waiting) do n = n + 1 end
  for _, h in pairs(self.hosts) do n = n + h.waiting:size() end
  for _, lane in pairs(self.lanes) do n = n + lane.held:size() end
  return n
end

---------------------------------------------------------------------------
-- Groups: a run() owns the tasks it starts and those they spawn

-- Forgets a group's tasks: none of them runs again; a slot one holds goes back.
local function abandon(self, group)
  for co, task in pairs(self.tasks) do
    if task.group == group then
      self.tasks[co] = nil
      self.user_tasks = self.user_tasks - 1
      if task.slot then give_slot(self, task.slot, task) end
    end
  end
  group.tasks_live = 0
end

--- Raises (and clears) the first error of a task spawned outside run().
function S:check_failure(level)
  local f = self.failure
  if f then
    self.failure = nil
    error(f, (level or 1) + 1)
  end
end

--- Runs fn(...) as a task and drives the loop until it and every task it
--- spawned have finished; returns fn's results. The first error of one of
--- these tasks is raised from here, and their other tasks are abandoned
--- (never resumed again). Tasks of other runs, and those spawned outside
--- any run, go on.
function S:run(fn, ...)
  if type(fn) ~= "function" then error("enrich.run: a function is required", 2) end
  if self:current() then error("enrich.run: already inside a task; use enrich.spawn", 2) end
  local group, results = { tasks_live = 0 }, nil
  self:go(fn, { group = group, on_done = function(...) results = { n = select("#", ...), ... } end }, ...)
  while not (results and group.tasks_live == 0) do
    self:step(1)
    if group.failure or (self:idle() and group.tasks_live > 0) then
      abandon(self, group)
      error(group.failure or "enrich.run: tasks are parked with nothing left to wake them", 2)
    end
  end
  return unpack(results, 1, results.n)
end

--- Ends the loop: its engine closes (transfers in flight end unanswered);
--- `closed` tells a host's driver to stop.
function S:close()
  if self.engine then self.engine:close() end
  self.engine, self.closed = nil, true
end

return _M
