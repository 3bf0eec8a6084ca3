-- Coalescing: single submits gathered into provider batches (DESIGN.md,
-- "Batching single jobs"; issue 16).
--
-- Many callers submit one person at a time. A client of a provider whose
-- one request carries several inputs (spec.batch_size > 1) gathers the
-- parts of submits with the same options that arrive within `window`
-- seconds, up to the batch size, into one provider request: a *batch*.
--
-- How, in one module and without flags across the engine: the client's
-- spec is wrapped in a *view* (coalesce.wrap). The engine runs every job as
-- before — its own parts, its own poll timer, its own store hooks, its own
-- state, results and custom — and calls the view's submit, check and
-- cancel for each part:
--
--   client:submit      (before the job starts) each part smaller than the
--                      batch size joins the open batch of its options; a
--                      full batch, or the window's end, seals it, and the
--                      batch's own step sends ONE provider request with
--                      every member's inputs. Inputs were checked by
--                      client:submit, so a bad input never joins. A
--                      full-size part goes alone, as without coalescing.
--   submit(ctx, part)  the member's submit step waits (parked) until its
--                      batch is sent, then returns the shared provider id,
--                      or the shared error, to the engine.
--   check(ctx, part)   the first member due to poll checks the batch with
--                      one provider request; members polling while that
--                      check runs wait for it, and those due soon after it
--                      (within half the last gap between checks) take its
--                      answer. Once the batch is terminal each member takes
--                      its slice of the items (offset, count: its inputs'
--                      positions in the shared request), the shared error,
--                      and its share of the credits (by its billed items);
--                      the other members' timers are brought forward, so
--                      they end with it.
--   cancel(ctx, part)  a member leaves the batch (the engine ends the job
--                      locally); the provider's cancel runs only when no
--                      live member is left. Members cancelled while the
--                      batch gathers are not sent at all.
--
-- The store: the shared submit's before_send records every member's intent
-- (each job its own, all of them before the first byte; one refusal stops
-- the send and fails the batch): store:intents(list) where the store has it
-- (one durable commit for the whole batch, not one per member), else
-- store:intent(job, part) for each, one after the other; the engine then
-- records each member's accepted id, changes and results as for any job.
-- A member part keeps `offset` and `batch_count` (provider state: snapshots
-- keep them), so a resumed member reads its own slice: a part that kept its
-- inputs is checked on them (the mappings correlate by content: instaview
-- by profileId, parsetx by echo, lance by person), one that dropped them
-- (tamtam) by position in the shared request.
--
-- Costs: a member's submit step holds a coroutine (and a place in its key's
-- lane) while it waits for the window and the shared submit; the batch's
-- send runs outside the lane, so waiting members never stall it.
--
-- Off for puffle by default: its idempotency key names one run, and a
-- resumed member could not resend its share under it without paying twice.
-- A provider file may say `coalesce = false`; `coalesce = {}` turns it on.
local errors = require "enrich.errors"
local request = require "enrich.request"

local type, pairs, ipairs, tostring, setmetatable, pcall, error, sort, concat, floor, max =
  type, pairs, ipairs, tostring, setmetatable, pcall, error, table.sort, table.concat, math.floor, math.max

local _M = { _VERSION = "0.1.0" }

_M.DEFAULT_WINDOW = 0.05                 -- seconds
_M.MAX_WINDOW = 10
-- Providers that take batches but are not coalesced unless asked (see above).
_M.NOT_BY_DEFAULT = { puffle = true }

local BILLED = { found = true, not_found = true }

-- The options that must be equal for submits to share a request.
local function signature(opts)
  local keys = {}
  for k, v in pairs(opts) do
    if type(v) == "table" or type(v) == "function" or type(v) == "userdata" then return nil end
    keys[#keys + 1] = tostring(k) .. "=" .. type(v) .. ":" .. tostring(v)
  end
  sort(keys)
  return concat(keys, "\0")
end

-- Parks the running task on `list` until wake_list.
local function park_on(sched, list)
  local task, token = sched:waker()
  list[#list + 1], list[#list + 2] = task, token
  return sched:park()
end

-- Wakes every task parked on `list` (a wake with a stale token is dropped
-- by the loop) and empties it.
local function wake_list(sched, list)
  for i = 1, #list, 2 do
    local task, token = list[i], list[i + 1]
    list[i], list[i + 1] = nil, nil
    sched:wake(task, token, true)
  end
end

-- Splits `total` credits over the members in proportion to their billed
-- items (found / not_found), else to their counts; largest remainders, so
-- the shares add up to the total.
local function share_credits(batch)
  local total = batch.part.credits
  if not total then return end
  local items = batch.part.items or {}
  local weights, sum = {}, 0
  for i, m in ipairs(batch.all) do
    local w = 0
    for k = 1, m.count do
      local it = items[m.offset + k]
      if it and BILLED[it.status] then w = w + 1 end
    end
    weights[i], sum = w, sum + w
  end
  if sum == 0 then
    for i, m in ipairs(batch.all) do weights[i] = m.count; sum = sum + m.count end
  end
  local given, rest = 0, {}
  for i, m in ipairs(batch.all) do
    local exact = total * weights[i] / sum
    m.credits = floor(exact)
    given = given + m.credits
    rest[#rest + 1] = { i = i, r = exact - m.credits }
  end
  sort(rest, function(a, b) if a.r ~= b.r then return a.r > b.r end return a.i < b.i end)
  local left = total - given
  for j = 1, #rest do
    if left < 1 then break end
    local m = batch.all[rest[j].i]
    m.credits = m.credits + 1
    left = left - 1
  end
end

--- Wraps `spec` for `client` per its `coalesce` option (nil: the default,
--- false: off, { window = s }: on). Returns the spec the client uses.
function _M.wrap(client, spec, opt)
  if opt == false then return spec end
  local window = _M.DEFAULT_WINDOW
  if opt ~= nil then
    if type(opt) ~= "table" then error("enrich.client: 'coalesce' must be false or a table", 4) end
    for k in pairs(opt) do
      if k ~= "window" then error("enrich.client: unknown coalesce option '" .. tostring(k) .. "'", 4) end
    end
    if opt.window ~= nil then
      if type(opt.window) ~= "number" or opt.window ~= opt.window or opt.window < 0 or opt.window > _M.MAX_WINDOW then
        error("enrich.client: coalesce.window must be a number of seconds from 0 to " .. _M.MAX_WINDOW, 4)
      end
      window = opt.window
    end
  elseif _M.NOT_BY_DEFAULT[spec.name] or spec.coalesce == false then
    return spec
  end
  local size = spec.batch_size or 1
  if size <= 1 then return spec end      -- one input per request: nothing to gather

  local sched = client.sched
  -- Shared by every client with this key (client.shared) on this loop: a
  -- handler that makes a client per request still gathers with the others,
  -- and a loop made after enrich.close() starts afresh.
  local per_loop = client.shared.coalesce
  if not per_loop then
    per_loop = setmetatable({}, { __mode = "k" })
    client.shared.coalesce = per_loop
  end
  local state = per_loop[sched]
  if not state then
    state = { open = {}, by_id = {} }
    per_loop[sched] = state
  end
  local open = state.open                -- options signature and base URL -> the batch gathering
  local by_id = state.by_id              -- provider id -> batch sent, not yet fully delivered
  -- Counters for benches and curious callers: shared requests sent, the
  -- inputs they carried, and how many were sealed by the window (not full).
  local stats = { batches = 0, inputs = 0, by_window = 0 }
  local view = setmetatable({ coalescing = { window = window, open = open, by_id = by_id, stats = stats } },
                            { __index = spec })
  local joined = setmetatable({}, { __mode = "k" })   -- part -> member, until its submit step

  -- A ctx for the batch's own requests: the client that opened it (its
  -- members share its key and base URL) and their options.
  local function batch_ctx(batch)
    local pseudo = { opts = batch.opts, provider = spec.name, uid = "batch" }
    return request.new(batch.client, pseudo)
  end

  -- A member still waiting for its share: not cancelled, not delivered,
  -- its job not over.
  local function waiting(m) return not (m.cancelled or m.delivered or m.job:done()) end
  local function live_member(batch)
    for _, m in ipairs(batch.all) do if waiting(m) then return m end end
  end
  -- A batch nobody waits on leaves the index.
  local function forget_if_over(batch)
    if not live_member(batch) then by_id[batch.id] = nil end
  end
  -- The provider's cancel of the whole request: once, and only when no
  -- job is left in it.
  local function cancel_batch(batch, ctx)
    if batch.cancel_sent or not spec.cancel or batch.state == "done" then return true end
    batch.cancel_sent = true
    local bp = batch.part
    bp.items = bp.items or {}
    return spec.cancel(ctx or batch_ctx(batch), bp)
  end


  -- Every member's intent, before the shared submit's first byte: each job
  -- in its own client's store, and each store's share in ONE durable
  -- write (store:intents: one commit, one fsync, however many members)
  -- where the store offers it, else one intent() after the other. true,
  -- or nil and the first refusal (then nothing is sent).
  local function record_intents(live)
    local stores, lists = {}, {}
    for _, m in ipairs(live) do
      local store = m.job.client.store
      if store and (store.intents or store.intent) then
        local list = lists[store]
        if not list then
          list = {}
          lists[store], stores[#stores + 1] = list, store
        end
        list[#list + 1] = { job = m.job, part = m.part }
      end
    end
    for _, store in ipairs(stores) do
      local list = lists[store]
      if store.intents then
        local ok, err = store:intents(list)
        if not ok then return nil, err end
      else
        for _, e in ipairs(list) do
          local ok, err = store:intent(e.job, e.part)
          if not ok then return nil, err end
        end
      end
    end
    return true
  end

  local function send(batch)
    -- Members cancelled while the batch gathered drop out; the rest are
    -- packed in arrival order.
    local live, inputs, n = {}, {}, 0
    for _, m in ipairs(batch.members) do
      if not m.job:done() then
        m.offset = n
        local src = m.part.inputs
        for k = 1, m.count do inputs[n + k] = src[k] end
        n = n + m.count
        live[#live + 1] = m
      end
    end
    batch.members, batch.all = live, live
    -- The credits breaker is the members' own: each submit step asks it
    -- before it waits here, and a member it refuses ends (and is left out).
    if n == 0 then
      batch.state = "done"
      batch.err = errors.new("cancelled", "every job of the batch was cancelled", { provider = spec.name })
      return wake_list(sched, batch.waiters)
    end
    for _, m in ipairs(live) do m.part.offset, m.part.batch_count = m.offset, n end
    batch.part = { inputs = inputs, count = n }
    stats.batches, stats.inputs = stats.batches + 1, stats.inputs + n
    if batch.by_window then stats.by_window = stats.by_window + 1 end
    batch.state = "sending"
    local ctx = batch_ctx(batch)
    -- As the engine's submit (job.lua submit_part): not resent unless the
    -- provider says so; every member's intent recorded before the first
    -- byte goes (the store may yield); a 2xx without an id is never resent.
    ctx.submitting, ctx.answered = batch.part, false
    ctx.before_send = function() return record_intents(live) end
    local ok, id, err = pcall(spec.submit, ctx, batch.part)
    if not ok then
      err = errors.from_raise("protocol", id, "provider mapping failed: ", { provider = spec.name })
      id = nil
    elseif id ~= nil and (type(id) ~= "string" or id == "") then
      err = errors.new("protocol", "the provider's submit returned a " .. type(id) .. " id, not a string",
                       { provider = spec.name })
      id = nil
    elseif id == nil and not errors.is(err) then
      err = errors.new("protocol", "the provider's submit returned no id and no enrich error",
                       { provider = spec.name })
    end
    if not id and ctx.answered and err.code ~= "unknown" and not spec.idempotent_submit then
      err.retryable = false
      err.message = tostring(err.message) .. " (the provider may have accepted it; not resent)"
    end
    if id then
      batch.id, batch.state = id, "sent"
      batch.part.id = id
      by_id[id] = batch
      if spec.keep_inputs == false then batch.part.inputs = nil end
      -- Every job cancelled meanwhile, none to take its id: cancel it now.
      if not live_member(batch) then
        by_id[id] = nil
        pcall(cancel_batch, batch)
      end
    else
      batch.err, batch.state = err, "done"
    end
    return wake_list(sched, batch.waiters)
  end

  local SEND = {
    run = send,
    failed = function(msg, batch)        -- send() guards the mapping: this is a bug of ours
      batch.err = errors.from_raise("protocol", msg, "coalesce: ", { provider = spec.name })
      batch.state = "done"
      wake_list(sched, batch.waiters)
    end,
  }

  local function seal(batch)
    if batch.sealed then return end
    batch.sealed = true
    if open[batch.key] == batch then open[batch.key] = nil end
    sched:cancel_timer(batch.timer)
    -- A step of its own, outside the key's lane: the members' submit
    -- steps may fill that lane, parked until this one has sent.
    sched:start(SEND, batch)
  end

  -- Adds `part` of `job` to the open batch of its options (opening one,
  -- sealing a full one). Returns the member, or nil when the part goes alone.
  local function join(job, part, opts)
    local key = signature(opts or {})
    if part.count >= size or not key then return nil end
    key = key .. "\0" .. client.base_url .. "\0" .. tostring(spec)
    part.offset, part.batch_count = nil, nil     -- a resent part joins afresh
    local batch = open[key]
    if batch and batch.size + part.count > size then seal(batch); batch = nil end
    if not batch then
      batch = { key = key, opts = opts, client = client, spec = spec, members = {}, size = 0, state = "open",
                waiters = {}, check_waiters = {} }
      batch.timer = { on_timer = function() batch.by_window = true; seal(batch) end }
      -- The timer first: a loop that refuses work (OpenResty's host in
      -- nginx's master, init_by_lua) raises here, and must leave no open
      -- batch behind; one without its timer would be forked into every
      -- worker and swallow their submits, never sealed.
      sched:at(batch.timer, sched.now() + window)
      open[key] = batch
    end
    local m = { job = job, part = part, offset = batch.size, count = part.count, batch = batch }
    batch.members[#batch.members + 1] = m
    batch.size = batch.size + part.count
    joined[part] = m
    if batch.size >= size then seal(batch) end
    return m
  end

  --- client:submit calls this for a new job, before it starts: its parts
  --- join batches at once (their submit steps may start later, behind a
  --- host's busy slots, and must not leave the batches half empty).
  function view.coalescing.join(job)
    for _, part in ipairs(job.parts) do join(job, part, job.opts) end
  end

  function view.submit(ctx, part)
    local m = joined[part]
    if not m then
      if not sched:current() then return spec.submit(ctx, part) end
      m = join(ctx.job, part, ctx.opts)          -- a part resent (a resumed job's, say)
      if not m then return spec.submit(ctx, part) end
    end
    joined[part] = nil
    local batch = m.batch
    for _ = 1, 1000 do                           -- bounded; send() wakes every waiter once
      if not (batch.state == "open" or batch.state == "sending") then break end
      park_on(sched, batch.waiters)
    end
    if batch.id then return batch.id end
    return nil, batch.err
  end

  -- The member of `batch` a part belongs to (by its offset).
  local function member_of(batch, part)
    if batch.spec ~= spec then return nil end
    for _, m in ipairs(batch.all) do
      if m.offset == part.offset then return m end
    end
  end

  -- Brings the other members' next poll forward to now.
  local function hurry(batch, except)
    local t = sched.now()
    for _, m in ipairs(batch.all) do
      if m ~= except and waiting(m) then
        if sched:cancel_timer(m.job) then sched:at(m.job, t) end
      end
    end
  end

  -- One provider check of the whole batch, by the member `m`'s task.
  local function check_batch(batch, m)
    batch.checking = true
    local bp = batch.part
    bp.items = bp.items or {}
    local ctx = batch_ctx(batch)
    local ok, terminal, err = pcall(spec.check, ctx, bp)
    batch.checking = false
    batch.retry_after = ctx.retry_after or bp.retry_after
    bp.retry_after = nil
    local t = sched.now()
    if batch.checked_at then batch.gap = t - batch.checked_at end
    batch.checked_at = t
    if not ok then
      batch.check_err = nil
      wake_list(sched, batch.check_waiters)
      error(terminal, 0)                         -- the engine fails this job's step, as without coalescing
    end
    if err and not err.retryable then
      bp.error, terminal = err, true
    end
    batch.check_err = err and err.retryable and err or nil
    if terminal then
      batch.state = "done"
      share_credits(batch)
      hurry(batch, m)
    end
    wake_list(sched, batch.check_waiters)
  end

  -- Hands the member its slice of a terminal batch.
  local function deliver(batch, m, part)
    local bp = batch.part
    local items = bp.items or {}
    part.items = part.items or {}
    for k = 1, m.count do part.items[k] = items[m.offset + k] end
    part.error = bp.error
    part.credits = m.credits
    part.raw = bp.raw
    m.delivered = true
    forget_if_over(batch)
    return true
  end

  -- A part from a snapshot (no batch in memory): see the top of the file.
  -- Its credits: the request's, in proportion to its inputs (the other
  -- members' items are not at hand to weigh by).
  local function check_resumed(ctx, part)
    local terminal, err, credits
    -- A mapping that reads its answers by position (keep_inputs = false:
    -- tamtam) is checked on the whole request, whatever inputs a store
    -- handed back with the part; one that correlates by content on them.
    if part.inputs and spec.keep_inputs ~= false then
      terminal, err = spec.check(ctx, part)
      credits = part.credits
    else
      local whole = { id = part.id, count = part.batch_count, items = {} }
      terminal, err = spec.check(ctx, whole)
      if whole.retry_after then ctx.retry_after = ctx.retry_after or whole.retry_after end
      if terminal then
        part.items = part.items or {}
        for k = 1, part.count do part.items[k] = whole.items[part.offset + k] end
        part.error, part.raw = whole.error, whole.raw
      end
      credits = whole.credits
    end
    if terminal and credits and part.batch_count > 0 then
      part.credits = floor(credits * part.count / part.batch_count + 0.5)
    end
    return terminal, err
  end

  function view.check(ctx, part)
    local batch = part.offset and by_id[part.id]
    local m = batch and member_of(batch, part)
    if not m then
      if part.offset and part.batch_count then return check_resumed(ctx, part) end
      return spec.check(ctx, part)
    end
    m.part = part
    if batch.state ~= "done" then
      if batch.checking then
        park_on(sched, batch.check_waiters)      -- woken when that check is over
        m.seen = batch.checked_at
      else
        -- Another member's answer is taken when it is fresh, and by each
        -- member once: one that asks again (a refresh) gets a new check.
        local fresh = 0.5 * max(batch.gap or 0, batch.client.poll.interval or 0)
        local at = batch.checked_at
        if at and m.seen ~= at and sched.now() - at < fresh then
          m.seen = at
        else
          check_batch(batch, m)
          m.seen = batch.checked_at
        end
      end
    end
    ctx.retry_after = batch.retry_after
    if batch.state == "done" then return deliver(batch, m, part) end
    if batch.check_err then return nil, batch.check_err end
    return false
  end

  function view.cancel(ctx, part)
    local batch = part.offset and by_id[part.id]
    local m = batch and member_of(batch, part)
    if not m then
      if spec.cancel then return spec.cancel(ctx, part) end
      return true
    end
    if m.cancelled then return true end
    m.cancelled = true
    forget_if_over(batch)
    if not live_member(batch) then return cancel_batch(batch) end
    return true
  end

  return view
end

--- True when `client` coalesces its submits.
function _M.enabled(client) return client.spec.coalescing ~= nil end

return _M
