-- Snapshots: a job as plain data (JSON-encodable, version 2, no secret: the
-- key is never on a job), and a live job rebuilt from one. A store keeps
-- them; enrich.job_from_snapshot and enrich.resume use them.
--
--   { v = 2, provider, uid, id, state, opts, inputs (the caller's, custom
--     included), parts = { { uid, count, id, done, error, the provider's
--     own state (an idempotency key...), inputs where the provider reads
--     them or the part was never sent } }, deadline (seconds left),
--     polls, created_at, updated_at, finished_at,
--     results, counts, cost, error (once terminal) }
local errors = require "enrich.errors"
local jobs = require "enrich.job"

local ipairs, pairs, type, getmetatable, setmetatable, max =
  ipairs, pairs, type, getmetatable, setmetatable, math.max

local _M = { _VERSION = "0.2.0" }

-- Part fields the engine rebuilds, or that do not outlive a step (a
-- store records a part's other fields as its own state: enrich.store).
local ENGINE_PART_FIELDS = { inputs = true, items = true, raw = true, error = true, cancel_error = true }
_M.ENGINE_PART_FIELDS = ENGINE_PART_FIELDS

local function plain(v, depth)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then return v end
  if t ~= "table" or depth > 8 or (getmetatable(v) and not errors.is(v)) then return nil end
  local out = {}
  for k, x in pairs(v) do
    if type(k) == "string" or type(k) == "number" then out[k] = plain(x, depth + 1) end
  end
  return out
end

local function plain_error(e)
  return e and { code = e.code, message = e.message, status = e.status, provider_code = e.provider_code,
                 retryable = e.retryable }
end

local function error_from(e, provider)
  if type(e) ~= "table" or errors.CODES[e.code] == nil then return nil end
  return errors.new(e.code, e.message, { provider = provider, status = e.status,
    provider_code = e.provider_code, retryable = e.retryable })
end

--- job:snapshot() -> plain data (see the top of the file).
function jobs.job_mt:snapshot()
  local keep_inputs = self.client.spec.keep_inputs ~= false
  local parts = {}
  for i, p in ipairs(self.parts) do
    local s = {}
    for k, v in pairs(p) do
      if not ENGINE_PART_FIELDS[k] then s[k] = plain(v, 0) end
    end
    if p.inputs and (keep_inputs or not p.id) then s.inputs = plain(p.inputs, 0) end
    s.error = plain_error(p.error)
    parts[i] = s
  end
  local snap = { v = 2, provider = self.provider, uid = self.uid, id = self.id, state = self.state,
                 opts = plain(self.opts, 0), inputs = plain(self.inputs, 0), parts = parts, polls = self.polls,
                 created_at = self.created_at, updated_at = self.updated_at, finished_at = self.finished_at }
  if not self:done() then
    snap.deadline = self.deadline and max(self.deadline - self.client.sched.now(), 0)
    return snap
  end
  snap.results = {}
  for i, r in ipairs(self.results) do
    local copy = plain(r, 0)
    copy.input, copy.raw, copy.error = nil, nil, plain_error(r.error)
    snap.results[i] = copy
  end
  snap.counts, snap.cost, snap.error = plain(self.counts, 0), plain(self.cost, 0), plain_error(self.error)
  return snap
end

--- A live job from a snapshot (decoded JSON is fine). A terminal snapshot
--- comes back terminal, with its results. Otherwise parts with a provider
--- id resume polling at once; a job with parts never sent (no id) comes
--- back unstarted: job:start() sends them, job:start{ resubmit = false }
--- ends them `unknown`.
function _M.from_snapshot(client, snap)
  if type(snap) ~= "table" or snap.v ~= 2 then error("job_from_snapshot: a version 2 snapshot is required", 3) end
  if snap.provider ~= client.spec.name then
    error("job_from_snapshot: a snapshot of '" .. tostring(snap.provider) .. "' for a client of '"
      .. client.spec.name .. "'", 3)
  end
  local parts = {}
  for i, s in ipairs(snap.parts) do
    local p = {}
    for k, v in pairs(s) do p[k] = v end
    p.error, p.done = error_from(s.error, snap.provider), s.done or nil
    parts[i] = p
  end
  local job = setmetatable({
    uid = snap.uid, provider = snap.provider, state = snap.state, id = snap.id,
    created_at = snap.created_at, updated_at = snap.updated_at,
    client = client, inputs = snap.inputs or {}, opts = snap.opts or {},
    parts = parts, polls = snap.polls or 0,
  }, jobs.job_mt)
  if not jobs.TERMINAL[snap.state] then return jobs.resume(job, snap.deadline) end
  job.finished_at, job.counts, job.cost = snap.finished_at, snap.counts, snap.cost
  job.error, job.results = error_from(snap.error, snap.provider), {}
  for i, r in ipairs(snap.results or {}) do
    r.input, r.error = job.inputs[i], error_from(r.error, snap.provider)
    job.results[i] = r
  end
  return job
end

return _M
