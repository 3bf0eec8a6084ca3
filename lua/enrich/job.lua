-- A job: the inputs of one client:submit, split into parts (one provider
-- request each, by the provider's batch size), submitted, polled on the
-- client's cadence until every part is terminal, then normalized into one
-- result item per input, in input order.
--
-- Its life is three engine steps (submit, check, cancel) and one function,
-- set_state, through which every change of job.state passes: the store
-- hears of each change there, and waiters wake there.
--
-- Between polls a job is only an entry in the scheduler's timer heap (it is
-- its own heap node) and keeps 16 fields, so Lua sizes its table at 16
-- slots; what a step needs for a while (its waiters, "a cancel runs") lives
-- in tables of this module, not on the job.
local errors = require "enrich.errors"
local policy = require "enrich.policy"
local request = require "enrich.request"
local crash = require "enrich.crash"
local core = require "enrich.core"

local ipairs, pairs, type, next, pcall, tostring, setmetatable, min, max, os_time, format =
  ipairs, pairs, type, next, pcall, tostring, setmetatable, math.min, math.max, os.time, string.format
local iso = policy.iso8601

local _M = { _VERSION = "0.2.0" }
local job_mt = {}
job_mt.__index = job_mt
_M.job_mt = job_mt

local TERMINAL = { succeeded = true, partial = true, failed = true, cancelled = true, timed_out = true,
                   unknown = true }
_M.TERMINAL = TERMINAL

local waiters = setmetatable({}, { __mode = "k" })     -- job -> { task or callback, token, ... }
local cancelling = setmetatable({}, { __mode = "k" })  -- job -> "running" | "over"
local checking = setmetatable({}, { __mode = "k" })    -- job -> true while a check step runs
local resumed_deadline = setmetatable({}, { __mode = "k" })   -- job -> seconds left, until start()

---------------------------------------------------------------------------
-- Local unique ids: a random prefix per process, then a counter.

local uid_prefix, uid_pid, uid_seq = nil, nil, 0
local function new_uid()
  local pid = core.getpid and core.getpid()
  if not uid_prefix or pid ~= uid_pid then
    local f = io.open("/dev/urandom", "rb")
    local bytes = f and f:read(6)
    if f then f:close() end
    uid_prefix = bytes and #bytes == 6 and bytes:gsub(".", function(c) return format("%02x", c:byte()) end)
      or format("%x%s", os_time(), (tostring({}):match("(%x+)$") or ""):sub(-6))  -- the clock, an address
    uid_pid, uid_seq = pid, 0
  end
  uid_seq = uid_seq + 1
  return uid_prefix .. "-" .. format("%x", uid_seq)
end
_M.new_uid = new_uid

--- A new job (not started). prepared[i] is the provider's form of inputs[i].
function _M.new(client, inputs, prepared, opts)
  local n = #prepared
  local size = client.spec.batch_size or n
  local uid = new_uid()
  local parts = {}
  if n <= size then
    parts[1] = { uid = uid .. "/1", inputs = prepared, count = n }   -- one part: no copy
  else
    for first = 1, n, size do
      local last = min(first + size - 1, n)
      local part = { uid = uid .. "/" .. (#parts + 1), inputs = {}, count = last - first + 1 }
      for i = first, last do part.inputs[i - first + 1] = prepared[i] end
      parts[#parts + 1] = part
    end
  end
  local t = iso(os_time())
  return setmetatable({
    uid = uid, provider = client.spec.name, state = "queued",
    created_at = t, updated_at = t,
    client = client, inputs = inputs, opts = opts,
    parts = parts, polls = 0,
  }, job_mt)
end

function job_mt:done() return TERMINAL[self.state] == true end

--- True while a check step of the job is under way (for specs and hosts).
function _M.is_checking(job) return checking[job] == true end

local function wake_all(job)
  local list = waiters[job]
  if not list then return end
  waiters[job] = nil
  local sched = job.client.sched
  for i = 1, #list, 2 do
    local w = list[i]
    if type(w) == "function" then w(true) else sched:wake(w, list[i + 1], true) end
  end
end

---------------------------------------------------------------------------
-- Results and the one state change

local function protocol(job, message)
  local msg, where = errors.unpositioned(message)     -- a raise's Lua position never reaches the message
  local e = errors.new("protocol", msg, { provider = job.provider })
  e.where = where
  return e
end

-- An error from a provider file in the one shape: tables with a known code
-- pass; anything else becomes a `protocol` error saying what it was.
local function as_error(job, e)
  if type(e) ~= "table" or errors.CODES[e.code] == nil then
    return protocol(job, "the provider returned an error that is not an enrich error: "
      .. tostring(type(e) == "table" and (e.message or e.code) or e))
  end
  return errors.is(e) and e or errors.new(e.code, e.message, e)
end

local function item_for(job, part, k, index)
  local item = part.items and part.items[k] or {}
  local input = job.inputs[index]
  item.index = index
  item.input = input
  item.custom = type(input) == "table" and input.custom or nil
  if not item.status then
    if part.error and job.state ~= "timed_out" then
      item.status, item.error = "failed", item.error or part.error
    else
      item.status = "pending"
    end
  end
  return item
end

-- Results and counts from the parts; the final state when `state` is nil
-- (the parts decide), else `state` (timed_out, cancelled).
local function build_results(job, state, err)
  local results, counts = {}, { total = #job.inputs, found = 0, not_found = 0, failed = 0, pending = 0 }
  local parts_ok, first_error, unknown, credits = 0, nil, nil, nil
  local first = 1                        -- parts follow input order
  for _, part in ipairs(job.parts) do
    local e = part.error
    if e then
      first_error = first_error or e
      if e.code == "unknown" then unknown = unknown or e end
    else
      parts_ok = parts_ok + 1
    end
    if part.credits then credits = (credits or 0) + part.credits end
    for k = 1, part.count do
      local item = item_for(job, part, k, first + k - 1)
      results[first + k - 1] = item
      counts[item.status] = (counts[item.status] or 0) + 1
    end
    first = first + part.count
  end
  job.results, job.counts = results, counts
  if credits then job.cost = { credits = credits } end
  if state then return state, err end
  if parts_ok == 0 then return unknown and "unknown" or "failed", unknown or first_error end
  if first_error or counts.failed > 0 then return "partial", first_error end
  return "succeeded", nil
end

local function store_call(job, hook, ...)
  local store = job.client.store
  if not (store and store[hook]) then return true end
  local ok, done, err = pcall(store[hook], store, ...)
  if not ok then return nil, errors.from_raise("store", done, nil, { provider = job.provider }) end
  if not done and err ~= nil and not errors.is(err) then
    err = errors.new("store", errors.unpositioned(err), { provider = job.provider })
  end
  return done, err
end

--- Every change of job.state passes here. A terminal state (nil: the
--- parts decide) builds results first, then the store records it
--- (finished; changed otherwise), then waiters wake. Returns false on a
--- job already terminal: nothing changes after the end.
local function set_state(job, state, err)
  if TERMINAL[job.state] then return false end
  local sched = job.client.sched
  local t = iso(os_time())
  job.updated_at = t
  if state and not TERMINAL[state] then
    job.state = state
    local ok, e = store_call(job, "changed", job)
    if not ok and e then job.store_error = e end
    return true
  end
  sched:cancel_timer(job)
  state, err = build_results(job, state, err)
  job.state, job.error, job.finished_at = state, err, t
  if job.deadline then sched.live_jobs = sched.live_jobs - 1 end   -- (started: see start, resume)
  crash.point("terminal_read")
  local ok, e = store_call(job, "finished", job)
  if not ok and e then job.store_error = e end
  wake_all(job)
  return true
end
_M.set_state = set_state

---------------------------------------------------------------------------
-- The steps

-- A Lua error escaping a step (a bug of the engine or of a provider file
-- outside its guarded calls): the job fails, once.
local function step_failed(msg, job)
  if job:done() then return end
  local e = protocol(job, "provider mapping failed: " .. tostring(msg))
  for _, part in ipairs(job.parts) do
    if not part.done then part.error, part.done = e, true end
  end
  set_state(job)
end

local function schedule_poll(job, hint)
  local sched, p = job.client.sched, job.client.poll
  local t = sched.now()
  local delay = policy.poll_delay(p, job.polls, hint)
  if t + delay > job.deadline then delay = max(job.deadline - t, 0) end   -- one last look at it
  sched:at(job, t + delay)
end

local function all_done(job)
  for _, part in ipairs(job.parts) do if not part.done then return false end end
  return true
end

-- The part's fields in a fresh table (without `inputs` when `drop_inputs`):
-- Lua tables never shrink, so a waiting part is copied at the size it needs.
local function compact(part, drop_inputs)
  local copy = {}
  for k, v in pairs(part) do
    if k ~= "inputs" or not drop_inputs then copy[k] = v end
  end
  return copy
end

-- spec.submit under protection; its answer checked against the contract.
local function submit_part(job, ctx, part)
  local spec = job.client.spec
  ctx.submitting, ctx.answered = part, false
  local ok, id, err = pcall(spec.submit, ctx, part)
  ctx.submitting = nil
  if ok and type(id) == "string" and id ~= "" then return id end
  if not ok then
    err = protocol(job, "provider mapping failed: " .. tostring(id))
  elseif id ~= nil then
    err = protocol(job, "the provider's submit returned a " .. type(id) .. " id, not a string")
  elseif err == nil then
    err = protocol(job, "the provider's submit returned neither an id nor an error")
  else
    err = as_error(job, err)
  end
  -- A 2xx came back, yet no id could be read from it: the provider may
  -- have accepted (and charged) the submit. Never invite a resend.
  if ctx.answered and err.code ~= "unknown" and not spec.idempotent_submit then
    err.retryable = false
    err.message = tostring(err.message) .. " (the provider may have accepted it; not resent)"
  end
  return nil, err
end

local function submit_step(job)
  local client = job.client
  local ctx = request.new(client, job)
  local store = client.store
  local drop_inputs = client.spec.keep_inputs == false
  for i, part in ipairs(job.parts) do
    if job:done() then return end
    if not (part.id or part.done) then
      local id, err
      err = client:take_submit()         -- the credits breaker
      if not err then
        if store and store.intent then
          ctx.before_send = function() return store:intent(job, part) end
        end
        id, err = submit_part(job, ctx, part)
        ctx.before_send = nil
        client:submit_ended(id, err)
      end
      if id then
        part.id = id
        job.id = job.id or id
        crash.point("answer_read")
        local stored, serr = store_call(job, "accepted", job, part)
        if not stored and serr then job.store_error = serr end
        if job:done() then               -- cancelled while the submit was on its way
          if client.spec.cancel then
            local ok, res, cerr = pcall(client.spec.cancel, ctx, part)
            if not (ok and res) then part.cancel_error = as_error(job, ok and cerr or res) end
          end
          return
        end
        if drop_inputs then job.parts[i] = compact(part, true) end
        if job.state == "queued" then set_state(job, "running") end
      else
        part.error, part.done = err, true
      end
    end
  end
  if job:done() then return end
  if all_done(job) then return set_state(job) end
  schedule_poll(job)
end

-- A check that came back terminal: every item it left unset failed.
local function fill_unset(job, part)
  if part.error then return end
  local items = part.items
  for k = 1, part.count do
    if not items[k] then
      items[k] = { status = "failed", error = protocol(job,
        "the provider's terminal answer has no result for this input") }
    end
  end
end

local function later(a, b)
  if a and b then return max(a, b) end
  return a or b
end

local function check_step(job)
  if job:done() or cancelling[job] then return end
  checking[job] = true
  local client = job.client
  local spec, ctx = client.spec, request.new(client, job)
  local hint
  for i, part in ipairs(job.parts) do
    if part.id and not part.done then
      part.items = part.items or {}
      ctx.retry_after = nil
      local ok, terminal, err = pcall(spec.check, ctx, part)
      -- A cancel ended the job (or took over its parts) meanwhile: this
      -- answer is stale, and nothing of it is written.
      if job:done() or cancelling[job] then checking[job] = nil return end
      if not ok then
        err = protocol(job, "provider mapping failed: " .. tostring(terminal))
      elseif err ~= nil then
        err = as_error(job, err)
      elseif terminal == nil then
        err = protocol(job, "the provider's check returned neither a state nor an error")
      end
      if err and err.retryable then
        hint = later(hint, ctx.retry_after or err.retry_after)
      elseif err then
        part.error, part.done = err, true
      elseif terminal then
        part.done = true
        fill_unset(job, part)
      end
      -- The header wins over what a body says about when to come back.
      hint = later(hint, ctx.retry_after or part.retry_after)
      part.retry_after = nil
      if part.raw ~= nil then job.raw, part.raw = part.raw, nil end
      if not part.done then
        if next(part.items) == nil then part.items = nil end
        job.parts[i] = compact(part)     -- still waiting: shed the slots the check grew
      end
    end
  end
  checking[job] = nil
  job.polls = job.polls + 1
  job.updated_at = iso(os_time())
  if all_done(job) then
    set_state(job)
  elseif client.sched.now() >= job.deadline then
    set_state(job, "timed_out", errors.new("timeout", "no terminal status before the poll deadline",
                                          { provider = job.provider, retryable = true }))
  else
    schedule_poll(job, hint)
    wake_all(job)                        -- refresh() waits for this
  end
end

local function cancel_step(job)
  local spec, ctx = job.client.spec, request.new(job.client, job)
  for _, part in ipairs(job.parts) do
    if part.id and not part.done then
      part.items = part.items or {}
      local ok, res, err = pcall(spec.cancel, ctx, part)
      if not (ok and res) then
        part.cancel_error = ok and as_error(job, err or "cancel returned nothing")
          or protocol(job, "provider cancel failed: " .. tostring(res))
      end
      if part.raw ~= nil then job.raw, part.raw = part.raw, nil end
    end
  end
end

local SUBMIT = { run = submit_step, failed = step_failed }
local CHECK = { run = check_step, failed = step_failed }
local CANCEL = {
  run = function(job) cancel_step(job); cancelling[job] = "over"; wake_all(job) end,
  failed = function(msg, job)
    job.parts[1].cancel_error = protocol(job, "provider cancel failed: " .. tostring(msg))
    cancelling[job] = "over"
    wake_all(job)
  end,
}

-- The heap calls this when the next poll is due.
function job_mt:on_timer(sched)
  sched:start(CHECK, self, self.client.shared)
end

--- Starts the job at the next turn of the loop: submits the parts that
--- have no provider id yet, then polls. A job rebuilt from a snapshot
--- with parts never sent is started only by this call (see from_snapshot);
--- with opts.resubmit == false those parts end `unknown` instead.
function job_mt:start(opts)
  if self:done() or self.deadline then return self end           -- started already
  local sched = self.client.sched
  self.deadline = sched.now() + (resumed_deadline[self] or self.client.poll.deadline)
  resumed_deadline[self] = nil
  sched.live_jobs = sched.live_jobs + 1
  if opts and opts.resubmit == false then
    for _, part in ipairs(self.parts) do
      if not (part.id or part.done) then
        part.error, part.done = errors.new("unknown",
          "the submit may have reached the provider before a restart; not resent",
          { provider = self.provider, retryable = false }), true
      end
    end
  end
  sched:start(SUBMIT, self, self.client.shared)
  return self
end

---------------------------------------------------------------------------
-- Waiting

--- Adds `w` to the job's waiters: a host's callback (OpenResty posts a
--- semaphore), or a task with its token. `list` is kept for old callers.
function _M.add_waiter(job, _list, w, token)
  local l = waiters[job]
  if not l then l = {}; waiters[job] = l end
  l[#l + 1], l[#l + 2] = w, token or false
end

--- Takes `w` off the job's waiters again.
function _M.remove_waiter(job, _list, w)
  local l = waiters[job]
  if not l then return end
  for i = 1, #l, 2 do
    if l[i] == w then
      table.remove(l, i); table.remove(l, i)
      return
    end
  end
end

-- Waits (yielding in a task, driving the loop otherwise) until pred() or
-- `timeout` seconds; true when pred() holds.
local function wait_for(job, list, pred, timeout)
  local sched = job.client.sched
  if pred() then return true end
  local deadline = timeout and sched.now() + timeout
  if sched:current() then
    while not pred() do
      if deadline and sched.now() >= deadline then return false end
      local task, token = sched:waker()
      _M.add_waiter(job, list, task, token)
      local timer = deadline and sched:wake_at(deadline, task, token)
      local woke = sched:park()
      if timer then sched:cancel_timer(timer) end
      if not woke then _M.remove_waiter(job, list, task) end
    end
    return true
  end
  if sched.host_wait then return sched.host_wait(job, list, pred, deadline) end
  while not pred() do
    local t = sched.now()
    if deadline and t >= deadline then return false end
    sched:step(deadline and min(deadline - t, 1) or 1)
    sched:check_failure(3)
  end
  return true
end
_M.wait_for = wait_for

--- Waits until the job is terminal, whichever way it ended. Returns the job,
--- or nil and a `timeout` error if `timeout` seconds pass first.
function job_mt:wait(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("job:wait: timeout must be a number of seconds >= 0", 2)
  end
  if wait_for(self, "waiters", function() return self:done() end, timeout) then return self end
  return nil, errors.new("timeout", "job not finished within the wait timeout",
                         { provider = self.provider, retryable = true })
end

--- Polls the provider once now (not waiting for the cadence) and returns
--- the job when that check is over.
function job_mt:refresh()
  if self:done() or self.state == "queued" then return self end
  local sched, polls = self.client.sched, self.polls
  if not checking[self] and sched:cancel_timer(self) then sched:at(self, sched.now()) end
  wait_for(self, "waiters", function() return self:done() or self.polls > polls end)
  return self
end

--- Cancels the job: at the provider where it can (provider files with a
--- cancel function), locally always. A cancel the provider refused (or
--- that raised) is kept in job.cancel_error and named in job.error.
function job_mt:cancel()
  if self:done() then return self end
  local sched, spec = self.client.sched, self.client.spec
  sched:cancel_timer(self)
  if spec.cancel and self.state == "running" and not cancelling[self] then
    cancelling[self] = "running"         -- a check in flight leaves the parts alone
    sched:start(CANCEL, self)
    wait_for(self, "waiters", function() return cancelling[self] == "over" end, 60)
  end
  cancelling[self] = nil
  local cerr
  for _, part in ipairs(self.parts) do cerr = cerr or part.cancel_error end
  self.cancel_error = cerr
  set_state(self, "cancelled", errors.new("cancelled",
    cerr and ("job cancelled locally; the provider's cancel failed: " .. tostring(cerr.message)) or "job cancelled",
    { provider = self.provider, cancel_error = cerr }))
  return self
end

--- Puts a job rebuilt from a snapshot (enrich.snapshot) on the loop, with
--- `left` seconds to its deadline: it polls at once when every part has a
--- provider id; with parts never sent it waits for job:start().
function _M.resume(job, left)
  for _, part in ipairs(job.parts) do
    if not (part.id or part.done) then
      resumed_deadline[job] = left
      return job
    end
  end
  local sched = job.client.sched
  job.deadline = sched.now() + (left or job.client.poll.deadline)
  sched.live_jobs = sched.live_jobs + 1
  if all_done(job) then set_state(job) else sched:at(job, sched.now()) end
  return job
end

return _M
