-- A job: the inputs of one client:submit, split into parts (one provider
-- request each, by the provider's batch size), submitted, polled on the
-- client's cadence until every part is terminal, then normalized into one
-- result item per input, in input order.
--
-- Between polls a job is only an entry in the scheduler's timer heap (it is
-- its own heap node); a coroutine exists only while a step does HTTP. A
-- waiting job keeps at most 16 fields, so Lua sizes its table at 16 slots.
-- A waiting part keeps only what the next check needs: Lua tables never
-- shrink, so the engine replaces a part by a right-sized copy once it has
-- dropped what it held during a step (inputs already sent, for a provider
-- with keep_inputs = false; the items table and status body of a check).
local errors = require "enrich.errors"
local policy = require "enrich.policy"
local request = require "enrich.request"

local ipairs, pairs, type, next, getmetatable, min, max, os_time =
  ipairs, pairs, type, next, getmetatable, math.min, math.max, os.time
local iso = policy.iso8601

local _M = { _VERSION = "0.1.0" }
local job_mt = {}
job_mt.__index = job_mt
_M.job_mt = job_mt

local TERMINAL = { succeeded = true, partial = true, failed = true, cancelled = true, timed_out = true }
_M.TERMINAL = TERMINAL

local function touch(job)
  job.updated_at = iso(os_time())
end

--- A new job (not started). prepared[i] is the provider's form of inputs[i].
function _M.new(client, inputs, prepared, opts)
  local n = #prepared
  local size = client.spec.batch_size or n
  local parts = {}
  if n <= size then
    parts[1] = { inputs = prepared, count = n }   -- one part: no copy
  else
    for first = 1, n, size do
      local last = min(first + size - 1, n)
      local part = { inputs = {}, count = last - first + 1 }
      for i = first, last do part.inputs[i - first + 1] = prepared[i] end
      parts[#parts + 1] = part
    end
  end
  local t = os_time()
  return setmetatable({
    provider = client.spec.name, state = "queued",
    created_at = iso(t), updated_at = iso(t),
    client = client, inputs = inputs, opts = opts,
    parts = parts, polls = 0,
  }, job_mt)
end

function job_mt:done() return TERMINAL[self.state] == true end

-- Wakes everyone waiting for this job, or for its next check: a task
-- (a coroutine, resumed by the loop) or a host's callback (OpenResty posts
-- a semaphore: a request's coroutine is not ours to resume).
local function wake_all(job, list, value)
  if not list then return end
  for _, w in ipairs(list) do
    if type(w) == "function" then w(value) else job.client.sched:wake(w, value) end
  end
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

-- Builds results, counts and the final state. `forced` is timed_out or
-- cancelled; otherwise the parts decide.
local function finish(job, forced, err)
  if job:done() then return end
  job.client.sched:cancel_timer(job)
  job.state = forced or "running"
  local results, counts = {}, { total = #job.inputs, found = 0, not_found = 0, failed = 0, pending = 0 }
  local part_errors, parts_ok, credits = 0, 0, nil
  local first = 1                        -- parts follow input order: part k starts where k-1 ended
  for _, part in ipairs(job.parts) do
    if part.error then part_errors = part_errors + 1 else parts_ok = parts_ok + 1 end
    if part.credits then credits = (credits or 0) + part.credits end
    local count = part.count
    for k = 1, count do
      local index = first + k - 1
      local item = item_for(job, part, k, index)
      results[index] = item
      counts[item.status] = (counts[item.status] or 0) + 1
    end
    first = first + count
  end
  job.results, job.counts = results, counts
  if credits then job.cost = { credits = credits } end
  if not forced then
    local first_error
    for _, part in ipairs(job.parts) do first_error = first_error or part.error end
    if parts_ok == 0 then
      job.state, err = "failed", first_error
    elseif part_errors > 0 or counts.failed > 0 then
      job.state, err = "partial", first_error
    else
      job.state = "succeeded"
    end
  end
  job.error = err
  local t = iso(os_time())
  job.updated_at, job.finished_at = t, t
  job.client.sched.live_jobs = job.client.sched.live_jobs - 1
  local waiters, checks = job.waiters, job.check_waiters
  job.waiters, job.check_waiters = nil, nil
  wake_all(job, waiters, true)
  wake_all(job, checks, true)
end

-- A Lua error inside a provider step: the body did not look as documented
-- (or the mapping has a bug). Either way the job fails, loudly and once.
local function step_failed(msg, job)
  if job:done() then return end
  local e = errors.new("protocol", "provider mapping failed: " .. tostring(msg):match("^[^\n]*"),
                       { provider = job.provider })
  for _, part in ipairs(job.parts) do
    if not part.done then part.error, part.done = e, true end
  end
  finish(job, nil, e)
end
local STEP = { on_error = step_failed }

local function schedule_poll(job, hint)
  local p = job.client.poll
  local now = job.client.sched.now()
  local delay = policy.poll_delay(p, job.polls, hint)
  -- Never sleep past the deadline: one last look right at it.
  if now + delay > job.deadline then delay = max(job.deadline - now, 0) end
  job.client.sched:at(job, now + delay)
end

-- A waiting part holds no empty table: `items` exists while a step may fill
-- it, and stays only once it holds something; the status body moves to the
-- job (DESIGN's job.raw), so the part does not keep it twice.
local function open_items(part) part.items = part.items or {} end
local function close_items(job, part)
  if part.items and next(part.items) == nil then part.items = nil end
  if part.raw ~= nil then job.raw, part.raw = part.raw, nil end
end

-- The part's fields in a fresh table (without `inputs` when `drop_inputs`):
-- filled key by key, Lua sizes it to the next power of two of what is left,
-- where the old table keeps every slot it ever grew to.
local function compact(part, drop_inputs)
  local copy = {}
  for k, v in pairs(part) do
    if k ~= "inputs" or not drop_inputs then copy[k] = v end
  end
  return copy
end

local function check_all(job)
  if job:done() then return end
  job.checking = true                   -- nil again after: a waiting job keeps no slot for it
  local spec, ctx = job.client.spec, request.new(job.client, job)
  local hint
  for i, part in ipairs(job.parts) do
    if not part.done and not job:done() and not job.cancelling then
      open_items(part)
      local terminal, err = spec.check(ctx, part)
      -- A cancel begun meanwhile may be filling this part's items: it
      -- tidies the part itself (cancel_at_provider).
      if not job.cancelling then close_items(job, part) end
      if err then
        if err.retryable then
          hint = err.retry_after and max(hint or 0, err.retry_after) or hint
        else
          part.error, part.done = err, true
        end
      elseif terminal then
        part.done = true
      end
      hint = part.retry_after and max(hint or 0, part.retry_after) or hint
      part.retry_after = nil
      -- Still waiting: shed the slots the check grew. Not while a cancel
      -- runs: it may hold this very table and still write to it.
      if not (part.done or job:done() or job.cancelling) then job.parts[i] = compact(part) end
    end
  end
  job.checking = nil
  if job:done() or job.cancelling then return end   -- the cancel ends the job, and wakes its waiters
  job.polls = job.polls + 1
  touch(job)
  local all = true
  for _, part in ipairs(job.parts) do all = all and part.done end
  local checks = job.check_waiters
  job.check_waiters = nil
  if all then
    finish(job)
  elseif job.client.sched.now() >= job.deadline then
    finish(job, "timed_out", errors.new("timeout", "no terminal status before the poll deadline",
                                        { provider = job.provider, retryable = true }))
  else
    schedule_poll(job, hint)
  end
  wake_all(job, checks, true)
end

-- The heap calls this when the next poll is due.
function job_mt:on_timer(sched)
  sched:step_task(check_all, self, STEP, self.client.host)
end

local function submit_all(job)
  local client, spec = job.client, job.client.spec
  local ctx = request.new(client, job)
  local drop_inputs = spec.keep_inputs == false
  for i, part in ipairs(job.parts) do
    if job:done() then return end
    local blocked = client:blocked()
    if blocked then
      part.error, part.done = blocked, true
    else
      local id, err = spec.submit(ctx, part)
      if id and job:done() then          -- cancelled while the submit was on its way
        part.id = id
        if spec.cancel then pcall(spec.cancel, ctx, part) end
        return
      elseif id then
        part.id = id
        -- Sent: a provider whose check and cancel read only part.count
        -- needs the inputs no more.
        if drop_inputs then job.parts[i] = compact(part, true) end
        job.id = job.id or id
        job.state = "running"
        touch(job)
      else
        part.error, part.done = err, true
      end
    end
  end
  if job:done() then return end
  local all = true
  for _, part in ipairs(job.parts) do all = all and part.done end
  if all then return finish(job) end
  schedule_poll(job)
end

--- Starts submitting at the next turn of the loop.
function job_mt:start()
  self.deadline = self.client.sched.now() + self.client.poll.deadline
  self.client.sched.live_jobs = self.client.sched.live_jobs + 1
  self.client.sched:step_task(submit_all, self, STEP, self.client.host)
  return self
end

--- Adds `w` (a task's coroutine or a host's callback) to the job's waiter
--- list `list` ("waiters": the job's end; "check_waiters": its next check).
function _M.add_waiter(job, list, w)
  local waiters = job[list] or {}
  job[list] = waiters
  for _, x in ipairs(waiters) do if x == w then return end end
  waiters[#waiters + 1] = w
end

--- Takes `w` off the list again (its wait timed out).
function _M.remove_waiter(job, list, w)
  for i, x in ipairs(job[list] or {}) do
    if x == w then return table.remove(job[list], i) end
  end
end

-- Waits (yielding in a task, driving the loop otherwise) until pred() or
-- `timeout` seconds; `list` names the job's waiter list to join.
local function wait_for(job, list, pred, timeout)
  local sched = job.client.sched
  if pred() then return true end
  local deadline = timeout and sched.now() + timeout
  if sched:current() then
    local co = coroutine.running()
    _M.add_waiter(job, list, co)
    local timer
    if deadline then
      timer = { on_timer = function() sched:wake(co, false) end }
      sched:at(timer, deadline)
    end
    local woke = sched:park()
    if timer then sched:cancel_timer(timer) end
    if not woke then _M.remove_waiter(job, list, co) end
    return pred()
  end
  if sched.host_wait then return sched.host_wait(job, list, pred, deadline) end
  while not pred() do
    local now = sched.now()
    if deadline and now >= deadline then return false end
    sched:step(deadline and min(deadline - now, 1) or 1)
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
  local polls = self.polls
  if not self.checking and self.client.sched:cancel_timer(self) then
    self.client.sched:at(self, self.client.sched.now())
  end
  wait_for(self, "check_waiters", function() return self:done() or self.polls > polls end)
  return self
end

local function cancel_at_provider(job)
  local spec, ctx = job.client.spec, request.new(job.client, job)
  for _, part in ipairs(job.parts) do
    if part.id and not part.done then
      open_items(part)
      local ok, err = spec.cancel(ctx, part)
      close_items(job, part)
      if not ok then part.cancel_error = err end
    end
  end
end

--- Cancels the job: at the provider where it can (provider files with a
--- cancel function), locally always. Returns the job.
function job_mt:cancel()
  if self:done() then return self end
  local sched = self.client.sched
  sched:cancel_timer(self)
  if self.client.spec.cancel and self.state == "running" then
    -- Until the job ends below, a poll under way leaves the parts to the
    -- cancel, and no further poll starts (check_all).
    self.cancelling = true
    if sched:current() then
      pcall(cancel_at_provider, self)
    else
      local over = false
      local function done()
        over = true
        local waiting = self.check_waiters
        self.check_waiters = nil
        wake_all(self, waiting, true)
      end
      sched:step_task(cancel_at_provider, self, { on_done = done, on_error = done })
      -- Bounded, whatever the provider does; a host (OpenResty) waits its way.
      wait_for(self, "check_waiters", function() return over end, 60)
    end
  end
  self.cancelling = nil
  finish(self, "cancelled", errors.new("cancelled", "job cancelled", { provider = self.provider }))
  return self
end

-- Part fields the engine owns or rebuilds: everything else a provider keeps
-- on a part (puffle's idempotency key, say) is its state, and a snapshot
-- keeps it, or a resumed job might pay twice.
local ENGINE_PART_FIELDS = { inputs = true, count = true, items = true, raw = true, error = true, done = true }

local function plain(v, depth)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then return v end
  if t ~= "table" or depth > 4 or getmetatable(v) then return nil end
  local out = {}
  for k, x in pairs(v) do
    if type(k) == "string" or type(k) == "number" then out[k] = plain(x, depth + 1) end
  end
  return out
end

--- Plain data to rebuild the job from: versioned, JSON-encodable, no
--- secrets (the key is never on a job), no functions.
function job_mt:snapshot()
  local parts = {}
  for i, p in ipairs(self.parts) do
    local s = { count = p.count, done = p.done or nil }
    for k, v in pairs(p) do
      if not ENGINE_PART_FIELDS[k] then s[k] = plain(v, 0) end
    end
    if p.error then s.error = { code = p.error.code, message = p.error.message } end
    parts[i] = s
  end
  return { v = 1, provider = self.provider, state = self.state, id = self.id,
           created_at = self.created_at, updated_at = self.updated_at, parts = parts }
end

return _M
