-- The event loop: one enrich.core engine, a timer heap, a ready queue and
-- the tasks (coroutines) it runs. Read it top to bottom:
--
--   tasks     a user task (enrich.spawn/run) or an engine step (a job's
--             submit, check or cancel, on a pooled coroutine);
--   parking   a task parks with yield; whoever may wake it took a token
--             (sched:waker()) before it parked. A wake whose token is not
--             the task's current one is dropped, so a wake meant for an
--             earlier park never lands on a later one;
--   transfer  the one path every HTTP request takes: a host slot (FIFO),
--             submit under protection, park until the completion, and the
--             slot given back on every path;
--   turns     step(wait) runs one turn; tick(budget) is the ticking host's
--             bounded turn. A turn never runs inside another one.
--
-- Waiting things cost little: a job between polls is only an entry in the
-- heap; a coroutine exists only while a step runs.
local core = require "enrich.core"
local heap = require "enrich.heap"

local co_create, co_resume, co_yield, co_running, co_status =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.running, coroutine.status
local traceback, unpack = debug.traceback, table.unpack or unpack
local select, error, type, pairs, next, pcall, tostring, min, max =
  select, error, type, pairs, next, pcall, tostring, math.min, math.max
local now = core.now

local _M = { _VERSION = "0.2.0" }
local S = {}
S.__index = S

_M.DEFAULT_PER_HOST = 32       -- transfers in flight per host; also a key's running steps
_M.BUDGET_TRANSFERS = 2        -- new transfers per budgeted tick without an I/O thread
_M.BUDGET_COMPLETIONS = 4      -- completions taken per budgeted tick
-- The process id, to notice a fork (nil on a core without getpid: no check).
_M.getpid = core.getpid

--- A new loop; its engine is made at first use (after any fork).
--- opts: per_host, io_thread, core (options for enrich.core's engine).
function _M.new(opts)
  opts = opts or {}
  return setmetatable({
    opts = opts, per_host = opts.per_host or _M.DEFAULT_PER_HOST,
    threaded = opts.io_thread == true,
    engine = nil, pid = nil, turning = false,
    timers = heap.new(),
    ready = {}, ready_token = {}, ready_value = {}, head = 1, tail = 0,
    starting = {}, start_arg = {}, start_lane = {}, start_admitted = {}, start_head = 1, start_tail = 0,
    deferred = {},                   -- tasks waiting for the next turn's sends (tick)
    sends_left = nil,                -- sends this budgeted turn may still make
    tasks = {},                      -- coroutine -> task record
    hosts = {},                      -- host -> { n = slots taken, FIFO of waiting tasks }
    waiting = {}, xfer_token = {}, xfer_host = {},   -- transfer id -> task, token, host
    pool = {},                       -- idle step workers
    lanes = setmetatable({}, { __mode = "k" }),      -- lanes that have held steps
    live_jobs = 0, user_tasks = 0,
    tasks_live = 0, failure = nil,   -- the default group: tasks spawned outside run()
  }, S)
end

S.now = function() return now() end

--- The engine, made now if this process has none yet. A loop carried over
--- a fork() gets a fresh engine: the old one's transfers belong to the
--- parent, and their tasks get a `network` failure.
function S:core()
  local getpid = _M.getpid
  local pid = getpid and getpid()
  if self.engine and pid == self.pid then return self.engine end
  if self.engine then                    -- forked: the old engine is the parent's
    local lost = {}
    for id in pairs(self.waiting) do
      lost[#lost + 1] = { id = id, error = { code = "network",
        message = "the process forked while this request was in flight" } }
    end
    self:deliver(lost)
  end
  local o = { max_host_connections = self.per_host, max_connections = 4 * self.per_host, timings = false,
              io_thread = self.threaded or nil }
  for k, v in pairs(self.opts.core or {}) do o[k] = v end
  self.engine = assert(core.new(o))
  self.pid = pid
  return self.engine
end

---------------------------------------------------------------------------
-- Tasks, parking and waking

--- The task record of the running coroutine, when enrich runs it.
function S:current()
  local co = co_running()
  return co and self.tasks[co]
end

--- The running task and its token: wake(task, token) resumes this very park.
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
function S:wake(task, token, value)
  local t = self.tail + 1
  self.tail = t
  self.ready[t], self.ready_token[t], self.ready_value[t] = task, token, value
end

local function finish_task(self, task, ok, ...)
  self.tasks[task.co] = nil
  self.user_tasks = self.user_tasks - 1
  local group = task.group
  group.tasks_live = group.tasks_live - 1
  if not ok then group.failure = group.failure or ...
  elseif task.on_done then task.on_done(...) end
end

-- Resumes a task if the token is its current one; drops the wake otherwise.
local function after_resume(self, task, ok, ...)
  if co_status(task.co) == "dead" then finish_task(self, task, ok, ...) end
end

-- Resumes a task if the token is its current one; drops the wake otherwise.
local function resume(self, task, token, value)
  if task.token ~= token or self.tasks[task.co] ~= task or co_status(task.co) ~= "suspended" then return end
  task.token = token + 1
  if task.group then return after_resume(self, task, co_resume(task.co, value)) end   -- a user task
  co_resume(task.co, value)              -- a step worker never raises (see new_worker)
end

--- Runs fn(...) as a user task in `group` (default: the running task's, or
--- the loop's own). Its errors go to the group (see run and check_failure).
function S:go(fn, opts, ...)
  local args = { n = select("#", ...), ... }
  local parent = self:current()
  local group = opts and opts.group or (parent and parent.group) or self
  local task = { token = 0, group = group, on_done = opts and opts.on_done }
  task.co = co_create(function()
    local function handler(e) return traceback(e, 2) end
    return select(2, assert(xpcall(fn, handler, unpack(args, 1, args.n))))
  end)
  self.tasks[task.co] = task
  self.user_tasks = self.user_tasks + 1
  group.tasks_live = group.tasks_live + 1
  self:wake(task, 0)
  return task
end

-- Engine steps: kind.run(arg) on a pooled coroutine; an error goes to
-- kind.failed(msg, arg). A lane (one per provider key) runs at most
-- per_host steps at once; the rest wait as records, not coroutines.
local POOL_MAX = 256

local function new_worker(self)
  local w = { token = 0 }
  w.co = co_create(function(kind, arg, lane)
    while true do
      local ok, err = pcall(kind.run, arg)
      if not ok then pcall(kind.failed, err, arg) end
      if lane then
        local h = lane.held_head
        if h and h <= lane.held_tail then      -- its place goes to the oldest held step
          local k, a = lane.held_kind[h], lane.held_arg[h]
          lane.held_kind[h], lane.held_arg[h], lane.held_head = nil, nil, h + 1
          self:start(k, a, lane, true)
        else
          lane.active = lane.active - 1
        end
      end
      self.tasks[w.co] = nil
      if #self.pool >= POOL_MAX then return end
      self.pool[#self.pool + 1] = w
      kind, arg, lane = co_yield()
    end
  end)
  return w
end

local function run_step(self, kind, arg, lane, admitted)
  if lane and not admitted then
    if lane.active >= self.per_host then             -- hold it as a record
      if not lane.held_head then lane.held_head, lane.held_tail, lane.held_kind, lane.held_arg = 1, 0, {}, {} end
      self.lanes[lane] = true
      local t = lane.held_tail + 1
      lane.held_tail, lane.held_kind[t], lane.held_arg[t] = t, kind, arg
      return
    end
    lane.active = lane.active + 1
  end
  local pool = self.pool
  local w = pool[#pool]
  if w then pool[#pool] = nil else w = new_worker(self) end
  self.tasks[w.co] = w
  w.token = w.token + 1                  -- wakes left from its last step are stale
  co_resume(w.co, kind, arg, lane)
end

--- Runs kind.run(arg) as an engine step at this or the next turn. In
--- OpenResty a coroutine must be made by the loop's own light thread, so a
--- step never starts inside the caller.
function S:start(kind, arg, lane, admitted)
  local t = self.start_tail + 1
  self.start_tail = t
  self.starting[t], self.start_arg[t], self.start_lane[t], self.start_admitted[t] = kind, arg, lane or false, admitted
end

---------------------------------------------------------------------------
-- Timers: any table with on_timer(self, sched)

local waker_mt = { __index = { on_timer = function(t, sched) sched:wake(t.task, t.token, false) end } }

function S:at(obj, when) self.timers:push(obj, when) end
function S:cancel_timer(obj) return self.timers:remove(obj) end

--- A timer that wakes (task, token) with false at `when`; cancel_timer it.
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

local function give_slot(self, host, task)
  if task then task.slot = nil end
  local h = self.hosts[host]
  if not h then return end
  while h.head <= h.tail do              -- hand it to the oldest live waiter
    local i = h.head
    local w, token = h[i], h.token[i]
    h[i], h.token[i], h.head = nil, nil, i + 1
    if self.tasks[w.co] == w and w.token == token then
      w.slot = host
      return self:wake(w, token, true)
    end
  end
  h.head, h.tail, h.n = 1, 0, h.n - 1
end

local function take_slot(self, task, host)
  local h = self.hosts[host]
  if not h then h = { n = 0, head = 1, tail = 0, token = {} }; self.hosts[host] = h end
  if h.n < self.per_host and h.head > h.tail then
    h.n = h.n + 1
    task.slot = host
    return
  end
  local t = h.tail + 1
  h.tail, h[t], h.token[t] = t, task, task.token
  co_yield()                             -- give_slot hands the slot over
end

--- Sends req from the running task and returns its completion record.
--- Waits for a slot of `host` (FIFO); then before_send() (may yield;
--- nil, err: nothing is sent, and { before_send_error = err } comes back);
--- then the core's submit (a raise comes back as an `invalid` completion).
--- The slot is given back on every path.
function S:transfer(req, host, before_send)
  local task = self:current()
  if not task then error("enrich: a transfer needs a task", 2) end
  if self.sends_left then                -- a budgeted tick: this turn's share of sends
    while self.sends_left and self.sends_left <= 0 do
      self.deferred[#self.deferred + 1] = task
      co_yield()
    end
    if self.sends_left then self.sends_left = self.sends_left - 1 end
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
    return { error = { code = "invalid", message = "request refused: " .. tostring(id):match("^[^\n]*"),
                       refused = true } }
  end
  self.waiting[id], self.xfer_token[id], self.xfer_host[id] = task, task.token, host
  return co_yield()
end

-- Completions wake their tasks; each gives its slot back first.
function S:deliver(done)
  for i = 1, #done do
    local c = done[i]
    local task = self.waiting[c.id]
    if type(task) == "function" then   -- a callback waiter (enrich.redis): no slot, no wake; never yields
      self.waiting[c.id] = nil
      task(c)
    elseif task then
      local token, host = self.xfer_token[c.id], self.xfer_host[c.id]
      self.waiting[c.id], self.xfer_token[c.id], self.xfer_host[c.id] = nil, nil, nil
      give_slot(self, host, task)
      self:wake(task, token, c)
    end
  end
end

---------------------------------------------------------------------------
-- Turns

local function queued(self)
  return self.head <= self.tail or self.start_head <= self.start_tail or self.deferred[1] ~= nil
end

-- Runs the tasks woken so far, then starts the queued steps; with
-- `limit`, at least one of each, then no more once the clock passes it.
local function run_queued(self, limit)
  local last, n = self.tail, 0
  while self.head <= last and not (limit and n > 0 and now() >= limit) do
    local i = self.head
    local task, token, value = self.ready[i], self.ready_token[i], self.ready_value[i]
    self.ready[i], self.ready_token[i], self.ready_value[i], self.head = nil, nil, nil, i + 1
    n = n + 1
    resume(self, task, token, value)
  end
  if self.head > self.tail then self.head, self.tail = 1, 0 end
  last, n = self.start_tail, 0
  while self.start_head <= last and not (limit and n > 0 and now() >= limit) do
    local i = self.start_head
    local kind, arg, lane, admitted = self.starting[i], self.start_arg[i], self.start_lane[i], self.start_admitted[i]
    self.starting[i], self.start_arg[i], self.start_lane[i], self.start_admitted[i] = nil, nil, nil, nil
    self.start_head = i + 1
    n = n + 1
    run_step(self, kind, arg, lane or nil, admitted)
  end
  if self.start_head > self.start_tail then self.start_head, self.start_tail = 1, 0 end
end

local function fire_timers(self, limit)
  local t, n = now(), 0
  local top = self.timers:peek()
  while top and top.at <= t and not (limit and n > 0 and now() >= limit) do
    n = n + 1
    self.timers:pop()
    top:on_timer(self)
    top = self.timers:peek()
  end
end

local function enter(self)
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
  return engine
end

local function leave(self, engine)
  if self.threaded then engine:flush() end   -- the turn's requests, handed over in one go
  self.turning = false
  return self.live_jobs + self.user_tasks
end

-- Seconds a turn may wait for transfers: none while work is queued, and
-- not past the next timer.
local function wait_for(self, max_wait)
  if queued(self) then return 0 end
  local top = self.timers:peek()
  if top then return min(max_wait, max(top.at - now(), 0)) end
  return max_wait
end

--- One turn: waits at most `max_wait` seconds for transfers (less if a
--- timer is due sooner, none if work is ready), then delivers completions,
--- fires due timers and runs what is ready. Returns the live jobs and tasks.
local function turn(self, engine, max_wait)
  self:deliver(engine:poll(wait_for(self, max_wait)))
  fire_timers(self)
  run_queued(self)
end

function S:step(max_wait)
  local engine = enter(self)
  local ok, err = pcall(turn, self, engine, max_wait or 0)
  local live = leave(self, engine)
  if not ok then error(err, 0) end
  return live
end

--- The ticking host's turn: bounded by `budget` seconds of work. At most
--- BUDGET_COMPLETIONS completions, and without an I/O thread at most
--- BUDGET_TRANSFERS new sends (each costs a connect and a send inside the
--- next poll); one completion, one timer, one step and one ready task
--- always get their go, so any budget makes progress.
local function bounded_turn(self, engine, budget)
  local limit = now() + budget
  self:deliver(engine:poll(0, _M.BUDGET_COMPLETIONS, budget))
  fire_timers(self, limit)
  self.sends_left = not self.threaded and _M.BUDGET_TRANSFERS or nil
  run_queued(self, limit)
end

function S:tick(budget)
  local engine = enter(self)
  local ok, err = pcall(bounded_turn, self, engine, budget)
  self.sends_left = nil
  local live = leave(self, engine)
  if not ok then error(err, 0) end
  return live
end

function S:live() return self.live_jobs + self.user_tasks end

--- True when nothing at all could wake a parked task any more.
function S:idle()
  return not queued(self) and self.timers.n == 0 and next(self.waiting) == nil
end

--- Seconds until the loop has work without I/O: 0 when work is ready or
--- answers wait in the core, the time to the next timer, or nil.
function S:next_wakeup()
  if queued(self) then return 0 end
  if self.engine and self.engine:timeout() == 0 then return 0 end
  local top = self.timers:peek()
  return top and max(top.at - now(), 0) or nil
end

--- Seconds until the loop wants a tick (next_wakeup or libcurl's own timer).
function S:timeout()
  local w = self:next_wakeup()
  local c = self:core():timeout()
  if c and (not w or c < w) then w = c end
  return w
end

--- Transfers in flight, plus tasks waiting for a host slot and steps held
--- in their key's lane (each is about to send).
function S:transfers()
  local n = 0
  for _ in pairs(self.waiting) do n = n + 1 end
  for _, h in pairs(self.hosts) do n = n + (h.tail - h.head + 1) end
  for lane in pairs(self.lanes) do n = n + (lane.held_tail - lane.held_head + 1) end
  return n
end

---------------------------------------------------------------------------
-- Groups: run() owns the tasks it starts (and those they spawn)

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
--- (never resumed). Tasks of other runs and of enrich.spawn outside any
--- run go on.
function S:run(fn, ...)
  if type(fn) ~= "function" then error("enrich.run: a function is required", 2) end
  if self:current() then error("enrich.run: already inside a task; use enrich.spawn", 2) end
  local group = { tasks_live = 0 }
  local results
  self:go(fn, { group = group, on_done = function(...) results = { n = select("#", ...), ... } end }, ...)
  while true do
    self:step(1)
    if group.failure then
      abandon(self, group)
      error(group.failure, 2)
    end
    if results and group.tasks_live == 0 then break end
    if self:idle() and group.tasks_live > 0 then
      abandon(self, group)
      error("enrich.run: tasks are parked with nothing left to wake them", 2)
    end
  end
  return unpack(results, 1, results.n)
end

--- Ends the loop: its engine closes (transfers in flight end unanswered).
function S:close()
  if self.engine then self.engine:close() end
  self.engine, self.closed = nil, true
end

return _M
