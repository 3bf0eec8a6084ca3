-- The waterfall: each provider in turn is asked about the people the ones
-- before it did not find (not_found, failed, or skipped for lack of input);
-- each person (a dedupe group) is sent once per provider, answers already in
-- the store are used instead of sending, and every submit first reserves its
-- worst case from the budget. Runs inside enrich.run.
local enrich = require "enrich"
local answers = require "enrich.cli.answers"
local budget_mod = require "enrich.cli.budget"
local dedupe = require "enrich.cli.dedupe"
local records = require "enrich.cli.records"

local ipairs, pairs, type, min, tonumber = ipairs, pairs, type, math.min, tonumber

local _M = { _VERSION = "0.1.0" }

-- Jobs in flight per provider; each carries up to the provider's batch size.
_M.MAX_INFLIGHT = 64
-- Jobs made but not yet sent (waiting for a rate token): few, so that a
-- Ctrl-C, which lets them go out and get their ids, has little left to send.
_M.MAX_UNSENT = 4
_M.IDLE_SLEEP = 0.01       -- seconds between looks while waiting for room

local W = {}
W.__index = W

--- ctx: recs, groups, row_keys (dedupe.group), names, kind, clients (name
--- -> client, nil on a dry run), state, budget, run_id (this run's id),
--- fresh_store (nothing recorded yet: no answer to look up),
--- interrupted() -> bool.
function _M.new(ctx)
  local self = setmetatable(ctx, W)
  self.stats = { rows = #ctx.recs, done_rows = 0, found_rows = 0, requests = 0, submits = 0,
                 cache_hits = 0, started = nil, jobs = {} }
  for _, g in ipairs(ctx.groups) do g.tried = {} end
  return self
end

-- What a group's rows end with, from every provider's answer in order.
local function outcome(g)
  local credits, by = 0, {}
  for _, a in ipairs(g.tried) do credits = credits + (a.credits or 0) end
  for _, a in ipairs(g.tried) do by[a.status] = by[a.status] or a end
  local o
  if by.found then
    local a = by.found
    o = { status = "found", provider = a.provider, email = a.email, email_status = a.email_status,
          phone = a.phone }
  elseif by.unknown then o = { status = "unknown", error = "unknown" }
  elseif by.skipped and by.skipped.error == "budget" then o = { status = "skipped", error = "budget" }
  elseif by.not_found then o = { status = "not_found" }
  elseif by.failed then
    local last
    for _, a in ipairs(g.tried) do if a.status == "failed" then last = a end end
    o = { status = "failed", error = last.error }
  else o = { status = "skipped", error = "invalid" } end
  o.credits = credits
  return o
end
_M.outcome = outcome

-- A group is done when found, stopped (unknown, out of budget), or every
-- provider has had its turn.
function W:settle_group(g, last_stage)
  if g.done then return end
  local a = g.tried[#g.tried]
  local stop = a and (a.status == "found" or a.status == "unknown"
                      or (a.status == "skipped" and a.error == "budget"))
  if stop or last_stage then
    g.done = true
    g.outcome = outcome(g)
    self.stats.done_rows = self.stats.done_rows + #g.rows
    if g.outcome.status == "found" then self.stats.found_rows = self.stats.found_rows + #g.rows end
  end
end

-- Applies a cached or fresh answer of provider `name` to group g.
function W:apply(g, a, name, fresh)
  local credits = 0
  if fresh or a.run == self.run_id then credits = a.credits or 0 end
  g.tried[#g.tried + 1] = { provider = name, status = a.status, email = a.email,
                            email_status = a.email_status, phone = a.phone, error = a.error,
                            credits = credits }
end

-- Picks a group's row for provider `name`: the first that has what it
-- needs. -> input, answer key | nil
function W:pick(g, name)
  for _, r in ipairs(g.rows) do
    local rec = self.recs[r]
    local input = records.usable(name, rec, { kind = self.kind })
    if input then
      local keys = self.row_keys and self.row_keys[r] or dedupe.keys(rec)
      return input, answers.key(name, self.kind, dedupe.answer_key(name, rec, keys))
    end
  end
  return nil
end

--- The groups provider `name` must be asked about (cache misses), after
--- applying what the cache already knows. Counts cache hits; on a dry run
--- also the worst case.
function W:plan(name, stage_is_last)
  local queue = {}
  for _, g in ipairs(self.groups) do
    if not g.done then
      local input, key = self:pick(g, name)
      if not input then
        g.tried[#g.tried + 1] = { provider = name, status = "skipped", error = "invalid", credits = 0 }
        self:settle_group(g, stage_is_last)
      else
        local cached = not self.fresh_store and self.state:answer_get(key) or nil
        if type(cached) == "table" and cached.status then
          if not g.hit then g.hit = true; self.stats.cache_hits = self.stats.cache_hits + 1 end
          if cached.run == self.run_id and (cached.credits or 0) > 0 then
            self.budget:charge(cached.credits, name)
          end
          self:apply(g, cached, name, false)
          self:settle_group(g, stage_is_last)
        else
          queue[#queue + 1] = { group = g, input = input, key = key }
        end
      end
    end
  end
  return queue
end

-- Every group of `items` gets the same answer (a submit that failed).
function W:fail_items(items, name, code, stage_is_last)
  for _, it in ipairs(items) do
    self:apply(it.group, { status = "failed", error = code, credits = 0 }, name, true)
    self:settle_group(it.group, stage_is_last)
  end
end

-- A finished job: its answers into the store (if the journal has not done
-- it already), onto the groups, and the budget settled.
function W:finish_job(job, items, name, reserved, stage_is_last)
  local list = self.state:record(job)
  local total = 0
  for _, e in ipairs(list) do total = total + (e.answer.credits or 0) end
  self.budget:settle(reserved, total, name, job)
  self.stats.requests = self.stats.requests + (tonumber(job.polls) or 0)
  for i, it in ipairs(items) do
    local e = list[i]
    local a = e and e.answer or { status = "failed", error = "protocol", credits = 0 }
    self:apply(it.group, a, name, true)
    self:settle_group(it.group, stage_is_last)
  end
end

--- Jobs made and not sent yet.
function W:unsent()
  local n = 0
  for job in pairs(self.inflight) do
    if job.state == "queued" then n = n + 1 end
  end
  return n
end

--- Asks provider `name` about every group still open. Returns when every
--- job it started has ended, or at once after an interrupt (jobs in flight
--- are left to the journal).
function W:stage(name, stage_is_last)
  local queue = self:plan(name, stage_is_last)
  local client = self.clients[name]
  local spec = client.spec or assert(require("enrich.providers").get(name))
  local batch = spec.batch_size or 100
  local price = budget_mod.price(name, self.kind)
  -- --kind goes only to a provider that takes it (parsetx and instaview
  -- take no submit options: an unknown option raises).
  local sopts = (spec.options == nil or spec.options.kind) and { kind = self.kind } or nil
  local inflight, pos = 0, 1
  self.inflight = self.inflight or {}
  while pos <= #queue do
    if self.interrupted() then return end
    local n = min(batch, #queue - pos + 1)
    local fit, why = 0, "wait"
    if inflight < _M.MAX_INFLIGHT and self:unsent() < _M.MAX_UNSENT then
      -- Fit and reserve in one (in scale-out, one Redis script for the run).
      fit, why = self.budget:grant(n, price)
    end
    if why == "wait" then
      -- Wait for room: a slot, or a reservation to settle (it may cost less).
      enrich.sleep(_M.IDLE_SLEEP)
    elseif fit == 0 then
      for k = pos, #queue do
        local g = queue[k].group
        g.tried[#g.tried + 1] = { provider = name, status = "skipped", error = "budget", credits = 0 }
        self:settle_group(g, stage_is_last)
      end
      pos = #queue + 1
    else
      local items, inputs = {}, {}
      for k = pos, pos + fit - 1 do
        local it = queue[k]
        items[#items + 1] = it
        local input = {}
        for f, v in pairs(it.input) do input[f] = v end
        input.custom = { key = it.key }
        inputs[#inputs + 1] = input
      end
      pos = pos + fit
      local reserved = fit * price
      local job, err = client:submit(inputs, sopts)
      if not job then
        self.budget:settle(reserved, 0, name)
        self:fail_items(items, name, type(err) == "table" and err.code or "invalid", stage_is_last)
      else
        if self.on_job then self.on_job(job) end   -- scale-out: the job joins its chunk
        inflight = inflight + 1
        self.stats.submits = self.stats.submits + 1
        self.stats.requests = self.stats.requests + 1
        self.inflight[job] = true
        enrich.spawn(function()
          job:wait()
          self.inflight[job] = nil
          -- Counted out only once its answers are on the groups: settling
          -- may yield (the shared budget is in Redis).
          local ok, ferr = pcall(self.finish_job, self, job, items, name, reserved, stage_is_last)
          inflight = inflight - 1
          if not ok then error(ferr, 0) end
        end)
      end
    end
  end
  for _ = 1, 1e9 do                        -- bounded by the jobs' own deadlines
    if inflight == 0 or self.interrupted() then return end
    enrich.sleep(_M.IDLE_SLEEP)
  end
end

--- Resumed jobs (after a crash): wait for them; their answers reach the
--- cache, so the stages find them there and send nothing again.
--- -> { [uid] = credits } of the jobs ended (for a shared budget's adopt).
function W:finish_resumed(jobs)
  local charges = {}
  for _, job in ipairs(jobs) do
    if not self.interrupted() then
      self.inflight = self.inflight or {}
      self.inflight[job] = true
      job:wait()
      self.inflight[job] = nil
      local total = 0
      for _, e in ipairs(self.state:record(job) or {}) do total = total + (e.answer.credits or 0) end
      if job.uid then charges[job.uid] = total end
    end
  end
  return charges
end

--- The whole waterfall.
function W:run()
  for k, name in ipairs(self.names) do
    if self.interrupted() then return end
    self:stage(name, k == #self.names)
  end
end

--- A dry run: the cache is read, nothing sent. -> duplicates, cache hits,
--- worst case credits.
function W:dry()
  local worst = 0
  for k, name in ipairs(self.names) do
    local queue = self:plan(name, k == #self.names)
    local price = budget_mod.price(name, self.kind)
    worst = worst + #queue * price
    -- Worst case: nobody is found, so every one goes on to the next provider.
    for _, it in ipairs(queue) do
      it.group.tried[#it.group.tried + 1] = { provider = name, status = "not_found", credits = 0 }
      self:settle_group(it.group, k == #self.names)
    end
  end
  return #self.recs - #self.groups, self.stats.cache_hits, worst
end

--- Every row's outcome, in input order. Credits go to the first row of a
--- group (the one sent); its duplicates show 0, so the column adds up.
function W:outcomes()
  local out = {}
  for _, g in ipairs(self.groups) do
    local o = g.outcome or outcome(g)
    for k, r in ipairs(g.rows) do
      if k == 1 then out[r] = o
      else
        local copy = {}
        for f, v in pairs(o) do copy[f] = v end
        copy.credits = 0
        out[r] = copy
      end
    end
  end
  return out
end

return _M
