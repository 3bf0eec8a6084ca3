-- The event loop: one enrich.core engine, an intrusive timer heap, and the
-- coroutines waiting on transfers. Hosts differ only in how they call
-- step(): with a wait in a plain script, with 0 once per frame in a game
-- loop, from one timer per worker in OpenResty.
--
-- Waiting things cost little: a job between polls is only an entry in the
-- heap (no coroutine); coroutines live while a step does HTTP.
local core = require "enrich.core"
local heap = require "enrich.heap"

local co_create, co_resume, co_yield, co_running, co_status =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.running, coroutine.status
local traceback = debug.traceback
local unpack = table.unpack or unpack
local select, error, type, pairs, min, max = select, error, type, pairs, math.min, math.max
local now = core.now

local _M = { _VERSION = "0.1.0" }
local sched_mt = {}
sched_mt.__index = sched_mt

-- Transfers handed to libcurl at once per host; the rest wait here in FIFO
-- order. libcurl could queue them itself, but its bookkeeping of queued
-- handles grows with their number (removal walks them all), and thousands
-- of jobs must not cost more per request than ten.
_M.DEFAULT_PER_HOST = 32

--- A new loop. opts.core: options for enrich.core's engine; opts.per_host:
--- transfers in flight per host (default 32, also libcurl's connection cap);
--- opts.io_thread: libcurl runs on a thread of the engine's own (see core).
function _M.new(opts)
  opts = opts or {}
  local per_host = opts.per_host or _M.DEFAULT_PER_HOST
  -- The engine reads no timings: completions need not carry them.
  local core_opts = { max_host_connections = per_host, max_connections = 4 * per_host, timings = false,
                      io_thread = opts.io_thread or nil }
  for k, v in pairs(opts.core or {}) do core_opts[k] = v end
  local engine, err = core.new(core_opts)
  if not engine then return nil, err end
  return setmetatable({
    engine = engine,
    per_host = per_host,
    threaded = core_opts.io_thread == true,  -- starting a transfer costs this thread nothing
    hosts = {},          -- host -> { n = in flight, queue of parked coroutines }
    host_of = {},        -- transfer id -> host
    timers = heap.new(),
    waiting = {},        -- transfer id -> coroutine
    ready = {}, ready_val = {}, ready_head = 1, ready_tail = 0,
    pool = {},           -- idle worker coroutines for engine steps
    free_tasks = {},     -- records of finished engine steps, for reuse
    deferred = {},       -- tasks whose transfer waits for the next budgeted turn
    deferred_host = {},  -- the host slot each of them holds
    starts_left = nil,   -- new transfers this budgeted turn may still start
    start_go = false,    -- this turn may start one step past its limit
    starting = { head = 1, tail = 0 },  -- engine steps not yet started
    tasks = {},          -- coroutine -> task record, for every task we run
    user_tasks = 0,      -- tasks started by enrich.spawn/run, still alive
    live_jobs = 0,       -- jobs not yet terminal
    failure = nil,       -- first error raised in a user task
  }, sched_mt)
end

sched_mt.now = function() return now() end

--- The task record of the running coroutine, when it is one of ours.
function sched_mt:current()
  local co = co_running()
  return co and self.tasks[co]
end

-- The ready queue: coroutines to resume at the next turn, each with at most
-- one value (two parallel arrays: no table per wake).
local NONE = {}

-- Work waits to run this turn: woken tasks, or steps not yet started.
local function queued(self)
  return self.ready_head <= self.ready_tail or self.starting.head <= self.starting.tail
    or self.deferred[1] ~= nil
end

local function enqueue(self, co, value)
  local t = self.ready_tail + 1
  self.ready_tail = t
  self.ready[t] = co
  self.ready_val[t] = value == nil and NONE or value
end

local function finish_task(self, co, task, ok, ...)
  self.tasks[co] = nil
  if task.user then self.user_tasks = self.user_tasks - 1 end
  if not ok then
    if task.on_error then task.on_error(..., task.arg) else self.failure = self.failure or ... end
  elseif task.on_done then
    task.on_done(...)
  end
end

-- A worker that leaves a full pool ends with IDLE: its step is over, and
-- already accounted for.
local IDLE = {}

local function after_resume(self, co, task, ok, ...)
  if co_status(co) == "dead" and not (ok and ... == IDLE) then finish_task(self, co, task, ok, ...) end
end

local function resume(self, co, value)
  local task = self.tasks[co]
  if not task then return end            -- abandoned (see run) or idle: never resumed
  if value == NONE then value = nil end
  return after_resume(self, co, task, co_resume(co, value))
end

-- Engine steps (a job's submit, a poll, a cancel) run on pooled worker
-- coroutines: a step is short, and jobs take many of them. A worker parks
-- with IDLE between steps; its task record says what to run next.
local POOL_MAX = 256

-- A finished step's record goes back to a free list: a job takes a step
-- per poll, and a record made afresh each time is garbage each time.
local function recycle(self, task)
  task.fn, task.arg, task.on_done, task.on_error, task.co, task.host, task.unheld = nil, nil, nil, nil, nil, nil, nil
  local free = self.free_tasks
  if #free < POOL_MAX then free[#free + 1] = task end
end

local refill                             -- below, with the held steps

local function new_worker(self)
  local co
  co = co_create(function(task)
    while true do
      local ok, err = pcall(task.fn, task.arg)
      self.tasks[co] = nil
      -- A step may end without sending (its job was cancelled, the client
      -- is out of credits): a slot it was let in for passes on.
      if task.host then refill(self, task.host) end
      if not ok then
        if task.on_error then task.on_error(err, task.arg) else self.failure = self.failure or err end
      elseif task.on_done then
        task.on_done()
      end
      recycle(self, task)
      if #self.pool >= POOL_MAX then return IDLE end
      self.pool[#self.pool + 1] = co
      task = co_yield(IDLE)
    end
  end)
  return co
end

--- Runs fn(arg) as an engine step at the next turn of the loop. opts may
--- carry on_done() and on_error(msg, arg); an error without on_error is
--- raised from run()/tick(). The step gets its coroutine only when the loop
--- runs it: in OpenResty a coroutine must be made and resumed by the same
--- light thread (the driver timer), not by the request that submitted.
--- `host` (see host_of): where the step sends its first request; while that
--- host's slots are all taken, the step waits unstarted.
function sched_mt:step_task(fn, arg, opts, host)
  local free = self.free_tasks
  local task = free[#free]
  if task then
    free[#free] = nil
    task.fn, task.arg, task.host = fn, arg, host
  else
    task = { fn = fn, arg = arg, on_done = false, on_error = false, co = false, host = host, unheld = false }
  end
  if opts then task.on_done, task.on_error = opts.on_done, opts.on_error end
  local q = self.starting
  q.tail = q.tail + 1
  q[q.tail] = task
  return task
end

-- `limit`: a time (core.now) after which no more work is started this turn.
-- A poll and a wake get one go at least, so any budget makes progress.
local function over(limit) return limit and now() >= limit end

-- Per host: `n` transfers in flight, the coroutines parked for a slot
-- (h[head..tail]), and `held`: steps not started because every slot was
-- taken when their turn came.
local function host_state(self, host)
  local h = self.hosts[host]
  if not h then
    h = { n = 0, head = 1, tail = 0, held = { head = 1, tail = 0 } }
    self.hosts[host] = h
  end
  return h
end

-- A step for a host with no free slot waits as a record, not as a parked
-- coroutine: ten thousand queued submits cost no stacks, and the
-- collector's atomic phase has no coroutines to walk for them.
local function hold(self, task)
  if not task.host then return false end
  local h = host_state(self, task.host)
  if h.n < self.per_host then return false end
  local held = h.held
  if task.unheld then                    -- was first in line already: stays first
    held.head = held.head - 1
    held[held.head] = task
  else
    held.tail = held.tail + 1
    held[held.tail] = task
  end
  return true
end

-- A slot came free and no coroutine waits for it: the oldest held step
-- goes back to the start queue (it takes a slot when it sends).
local function unhold(self, h)
  local held = h.held
  if held.head > held.tail then return end
  local task = held[held.head]
  held[held.head] = nil
  held.head = held.head + 1
  if held.head > held.tail then held.head, held.tail = 1, 0 end
  task.unheld = true
  local q = self.starting
  q.tail = q.tail + 1
  q[q.tail] = task
end

-- Lets the oldest held step for `host` start if the host has a free slot.
function refill(self, host)
  local h = self.hosts[host]
  if h and h.n < self.per_host then unhold(self, h) end
end

local function start_steps(self, limit)
  local q, pool = self.starting, self.pool
  local last = q.tail                    -- steps unheld meanwhile wait for the next pass
  while q.head <= last and not (over(limit) and not self.start_go) do
    self.start_go = false
    local task = q[q.head]
    q[q.head] = nil
    q.head = q.head + 1
    if not hold(self, task) then
      local co = pool[#pool]
      if co then pool[#pool] = nil else co = new_worker(self) end
      task.co = co
      self.tasks[co] = task
      resume(self, co, task)
    end
  end
  if q.head > q.tail then q.head, q.tail = 1, 0 end
end

--- Runs fn(...) as a user task (counted by run(); errors carry a traceback).
function sched_mt:go(fn, opts, ...)
  local task = opts or {}
  local args = { n = select("#", ...), ... }
  local co = co_create(function()
    local function handler(e) return traceback(e, 2) end
    return select(2, assert(xpcall(fn, handler, unpack(args, 1, args.n))))
  end)
  task.co, task.user = co, true
  self.tasks[co] = task
  self.user_tasks = self.user_tasks + 1
  enqueue(self, co)
  return task
end

--- Wakes a parked task with one value (at the next turn).
function sched_mt:wake(co, value) enqueue(self, co, value) end

--- Parks the running task until wake(); returns wake's value.
function sched_mt:park()
  if not self:current() then error("enrich: park() outside a task", 2) end
  return co_yield()
end

-- Timers: any table with on_timer(self, sched). A sleeping task gets one.
local sleeper_mt = { __index = { on_timer = function(t, sched) sched:wake(t.co, true) end } }

function sched_mt:at(obj, when) self.timers:push(obj, when) end
function sched_mt:cancel_timer(obj) return self.timers:remove(obj) end

--- Sleeps the running task for `seconds` (it must be a task: see enrich.sleep).
function sched_mt:sleep(seconds)
  local co = co_running()
  self:at(setmetatable({ co = co }, sleeper_mt), now() + max(seconds or 0, 0))
  return co_yield()
end

--- The key transfers to `url` share their slots under (scheme and host).
function _M.host_of(url)
  return url:match("^(%a+://[^/?#]*)") or ""
end

--- Takes a transfer slot for `host` (see host_of), parking the running task
--- until this host has one free. Returns the host, for transfer().
function sched_mt:slot(host)
  local h = host_state(self, host)
  if h.n >= self.per_host then          -- wait: release() hands over its slot
    h.tail = h.tail + 1
    h[h.tail] = co_running()
    co_yield()
    return host
  end
  h.n = h.n + 1
  return host
end

--- In a turn with a budget (see step), waits until the turn has a share of
--- new transfers left, so a burst spreads over frames; otherwise returns at
--- once. Call it right before transfer().
--- `host`: the slot the caller holds (given back if the task is abandoned
--- meanwhile).
function sched_mt:pace(host)
  if not self.starts_left then return end
  while self.starts_left <= 0 do
    local d = self.deferred
    d[#d + 1] = co_running()
    self.deferred_host[#d] = host
    co_yield()                             -- resumed first thing next turn
    if not self.starts_left then return end
  end
  self.starts_left = self.starts_left - 1
end

--- Sends one HTTP request from a task and returns its completion record.
--- `host` is a slot taken with slot(); without it one is taken here. The
--- core copies req during submit, so a caller may reuse the table after.
function sched_mt:transfer(req, host)
  if not host then
    host = self:slot(_M.host_of(req.url))
    self:pace(host)
  end
  local id = self.engine:submit(req)
  self.waiting[id] = co_running()
  self.host_of[id] = host
  return co_yield()
end

-- A transfer to `host` is over: its slot passes straight to the next task
-- in line (the count stays), so no newcomer can slip in between and push
-- the host over its cap.
local function release(self, host)
  local h = self.hosts[host]
  while h.head <= h.tail do
    local co = h[h.head]
    h[h.head] = nil
    h.head = h.head + 1
    if self.tasks[co] then return enqueue(self, co) end
  end
  h.head, h.tail = 1, 0                  -- empty: start again at 1
  h.n = h.n - 1
  unhold(self, h)
end

local function run_ready(self, limit)
  start_steps(self, limit)
  -- Only what was queued before this pass: wakes queued meanwhile wait.
  local last, ready, vals = self.ready_tail, self.ready, self.ready_val
  local n = 0
  while self.ready_head <= last and not (n > 0 and over(limit)) do
    n = n + 1
    local i = self.ready_head
    local co, value = ready[i], vals[i]
    ready[i], vals[i] = nil, nil
    self.ready_head = i + 1
    if co_status(co) == "suspended" then resume(self, co, value) end
  end
  if self.ready_head > self.ready_tail then     -- empty: start again at 1
    self.ready_head, self.ready_tail = 1, 0
  end
end

-- Firing a timer only queues work (a wake, a step). With `go`, one fires
-- even past the limit: a threaded turn delivers its completions first, and
-- one whose budget went on them must still move the clock along.
local function fire_timers(self, t, limit, go)
  local timers = self.timers
  local top = timers:peek()
  local n = go and 0 or 1
  while top and top.at <= t and not (n > 0 and over(limit)) do
    n = n + 1
    timers:pop()
    top:on_timer(self)
    top = timers:peek()
  end
end

-- A turn with a budget hands libcurl at most BUDGET_TRANSFERS new transfers
-- (each costs a connect and a send inside the next poll; not so with an I/O
-- thread, which sends them) and takes at most BUDGET_COMPLETIONS completions
-- (and ready sockets) per poll; the rest waits for the next turn.
_M.BUDGET_TRANSFERS = 2
_M.BUDGET_COMPLETIONS = 4

-- The transfers deferred by the last turn go first in this one, before any
-- step starts, as many as the turn's share; one whose task was abandoned
-- (see run) gives its slot back. The rest keep their place in line.
local function begin_turn(self, budget)
  self.starts_left = budget and not self.threaded and _M.BUDGET_TRANSFERS or nil
  local d, hosts = self.deferred, self.deferred_host
  if d[1] == nil then return end
  local share = self.starts_left or #d
  local go, rest, rest_hosts = {}, {}, {}
  for i = 1, #d do
    if not self.tasks[d[i]] then
      release(self, hosts[i])
    elseif #go < share then
      go[#go + 1] = d[i]
    else
      rest[#rest + 1], rest_hosts[#rest + 1] = d[i], hosts[i]
    end
  end
  self.deferred, self.deferred_host = rest, rest_hosts
  for i = 1, #go do resume(self, go[i]) end
end

-- Wakes whoever each completion belongs to; past the turn's limit the rest
-- wait, queued, for the next turn.
local function deliver(self, done, limit)
  for i = 1, #done do
    local c = done[i]
    local co = self.waiting[c.id]
    if co then
      self.waiting[c.id] = nil
      local host = self.host_of[c.id]
      if host then                       -- a Redis reply (enrich.redis) holds no host slot
        release(self, host)
        self.host_of[c.id] = nil
      end
      if type(co) == "function" then co(c)  -- a callback waiter (enrich.redis): C-free, never yields
      elseif i > 1 and over(limit) then enqueue(self, co, c) else resume(self, co, c) end
    end
  end
end

-- Seconds the turn may wait for transfers: none while work is queued, and
-- not past the next timer.
local function wait_for(self, max_wait)
  if queued(self) then return 0 end
  local wait = max_wait or 0
  local top = self.timers:peek()
  if top then wait = min(wait, max(top.at - now(), 0)) end
  return wait
end

local function poll(self, wait, limit)
  if limit then return self.engine:poll(wait, _M.BUDGET_COMPLETIONS, max(limit - now(), 0)) end
  return self.engine:poll(wait)
end

--- One turn: runs what is ready, fires due timers, waits for transfers at
--- most `max_wait` seconds (less if a timer is due sooner; 0 if work is
--- ready), and wakes whoever a completion belongs to. With `budget`
--- (seconds), no new work starts once that much time has gone: the rest
--- waits, queued, for the next turn. Returns the live jobs and tasks.
function sched_mt:step(max_wait, budget)
  local limit = budget and now() + budget
  if self.threaded then
    -- With an I/O thread: completions first, and the turn's new transfers
    -- handed over in one go at its end (flush), so the thread's sending
    -- does not land inside the turn on a shared core.
    deliver(self, poll(self, wait_for(self, max_wait), limit), limit)
    -- Starting a step costs only Lua here: one always gets a go, so the
    -- completions delivered first cannot starve new work.
    self.start_go = budget ~= nil
    begin_turn(self, budget)
    run_ready(self, limit)
    fire_timers(self, now(), limit, true)
    run_ready(self, limit)
    self.engine:flush()
    return self:live()
  end
  begin_turn(self, budget)
  run_ready(self, limit)
  fire_timers(self, now(), limit)
  run_ready(self, limit)
  deliver(self, poll(self, wait_for(self, max_wait), limit), limit)
  fire_timers(self, now(), limit)
  run_ready(self, limit)
  return self:live()
end

function sched_mt:live()
  return self.live_jobs + self.user_tasks
end

--- True when nothing at all could wake a parked task any more.
function sched_mt:idle()
  return not queued(self) and self.timers.n == 0 and self.engine:pending() == 0
end

--- Seconds until the loop has something to do without I/O: 0 when work is
--- ready, the time to the next timer, or nil when there is none. (A foreign
--- loop waits for this or for engine:fd() to turn readable, then ticks.)
function sched_mt:next_wakeup()
  if queued(self) then return 0 end
  if self.engine:timeout() == 0 then return 0 end        -- completions wait in the core
  local top = self.timers:peek()
  if not top then return nil end
  return max(top.at - now(), 0)
end

--- Transfers in flight plus those waiting for a slot.
function sched_mt:transfers()
  local n = self.engine:pending()
  for _, h in pairs(self.hosts) do n = n + (h.tail - h.head + 1) + (h.held.tail - h.held.head + 1) end
  return n
end

-- Forgets every user task: after run() raised, none of them may run on.
local function abandon_user_tasks(self)
  for co, task in pairs(self.tasks) do
    if task.user then self.tasks[co] = nil end
  end
  self.user_tasks = 0
end

--- Raises (and clears) the first error of a user task, if any; the other
--- user tasks are abandoned (the caller gets the error, not half a run).
function sched_mt:check_failure(level)
  local f = self.failure
  if f then
    self.failure = nil
    abandon_user_tasks(self)
    error(f, (level or 1) + 1)
  end
end

--- Runs fn(...) as a task and drives the loop until it and every user task
--- it spawned have finished. Returns fn's results; raises their errors.
function sched_mt:run(fn, ...)
  if type(fn) ~= "function" then error("enrich.run: a function is required", 2) end
  if self:current() then error("enrich.run: already inside a task; use enrich.spawn", 2) end
  local results, finished = nil, false
  self:go(fn, { on_done = function(...)
    results, finished = { n = select("#", ...), ... }, true
  end }, ...)
  while true do
    self:step(1)
    self:check_failure(2)
    if finished and self.user_tasks == 0 then break end
    if self:idle() and self.user_tasks > 0 then
      abandon_user_tasks(self)
      error("enrich.run: tasks are parked with nothing left to wake them", 2)
    end
  end
  return unpack(results, 1, results.n)
end

function sched_mt:close()
  self.engine:close()
end

return _M
