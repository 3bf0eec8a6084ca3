-- enrich.sim: one simulator for the five provider APIs. Plain Lua handlers
-- (request table in, response table out) shared by the luasocket front
-- (enrich.sim.httpd, bin/enrich-sim) and the nginx front (enrich.sim.ngx).
--
--   local sim = require("enrich.sim").new{ seed = 1 }
--   local res = sim:handle{ method = "GET", path = "/parsetx/v1/enrich/jobs/x",
--                           headers = {}, args = {}, body = "" }
--
-- Routing: /<provider>/<documented path>; /_sim/... is the control API.
-- Shared here: configuration, the clock, jobs' progress, fault injection
-- and the counters. Each provider's API lives in enrich/sim/<provider>.lua.
-- luacheck: ignore 212/self
local util = require "enrich.sim.util"

local pairs, ipairs, type, tostring, tonumber, pcall, setmetatable, require =
  pairs, ipairs, type, tostring, tonumber, pcall, setmetatable, require
local floor, max = math.floor, math.max
local sort, concat = table.sort, table.concat

local PROVIDERS = { "tamtam", "instaview", "lance", "puffle", "parsetx" }

-- Settings every provider has; provider modules add their own DEFAULTS.
local COMMON_DEFAULTS = {
  polls = 1,          -- status reads answered "in progress" before a job is done
  ms = 0,             -- ...and at least this many milliseconds after submit
  latency = 0,        -- seconds added before every answer of this provider
  job_outcome = false, -- force new jobs: "failed" | "never" | "cancelled"
  outcomes = {},      -- input key -> item outcome ("found", "not_found", ...)
}

local FAULT_TYPES = {
  latency = true, status = true, reset = true, close = true, malformed = true,
  truncate = true, drip = true, huge = true,
}
-- Faults that, by default, still let the request reach the provider and
-- then change its answer; the others answer instead of the provider.
local FAULT_AFTER = { latency = true, malformed = true, truncate = true, drip = true, huge = true }

local DEFAULT_HUGE_SIZE = 64 * 1024 * 1024
local MAX_FAULTS = 10000

local _M = { _VERSION = "0.1.0", PROVIDERS = PROVIDERS, COMMON_DEFAULTS = COMMON_DEFAULTS }

local sim_mt = {}
sim_mt.__index = sim_mt

local function default_clock()
  local ngx_ = rawget(_G, "ngx")
  if type(ngx_) == "table" and ngx_.now then return ngx_.now end
  local ok, socket = pcall(require, "socket")
  if ok and socket.gettime then return socket.gettime end
  return os.time
end

local function fresh_stats()
  local s = { requests = 0, control = 0, faults = 0, providers = {} }
  for _, name in ipairs(PROVIDERS) do
    s.providers[name] = {
      requests = {}, responses = {}, submissions = 0, jobs = 0, inputs = {}, reused = 0,
      credits = { reserved = 0, charged = 0, released = 0 },
    }
  end
  return s
end

local function provider_config(mod)
  local cfg = util.deepcopy(COMMON_DEFAULTS)
  util.merge(cfg, util.deepcopy(mod.DEFAULTS or {}))
  return cfg
end

--- Creates a simulator. opts: seed (number), clock (function -> seconds).
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then return nil, "opts must be a table" end
  local self = setmetatable({
    opts = opts,
    names = PROVIDERS,
    seed = tonumber(opts.seed) or 1,
    base_clock = opts.clock or default_clock(),
  }, sim_mt)
  self.modules = {}
  for _, name in ipairs(PROVIDERS) do
    self.modules[name] = require("enrich.sim." .. name)
  end
  self:reset()
  return self
end

--- Forgets every job, fault, counter, clock offset and configuration change.
function sim_mt:reset()
  self.rng = util.rng(self.seed)
  self.offset = 0
  self.faults = {}
  self.fault_seq = 0
  self.counters = fresh_stats()
  self.revoked = {}
  self.config = {}
  self.jobs = {}
  self.providers = {}
  for _, name in ipairs(PROVIDERS) do
    self.config[name] = provider_config(self.modules[name])
    self.jobs[name] = {}
    self.providers[name] = self.modules[name].new(self, name)
  end
  return true
end

function sim_mt:now()
  return self.base_clock() + self.offset
end

--- Moves the simulator's clock forward by `seconds` (jobs, rate limits).
function sim_mt:advance(seconds)
  self.offset = self.offset + (tonumber(seconds) or 0)
  return self:now()
end

function sim_mt:uuid()
  return self.rng:uuid()
end

function sim_mt:cfg(name)
  return self.config[name]
end

function sim_mt:is_revoked(key)
  return key ~= nil and self.revoked[key] == true
end

--- Merges settings. Keys: a provider name or `all` (every provider) with
--- polls, ms, latency, job_outcome, outcomes, rate limits, credits...;
--- `revoked_keys` (array, replaces the set), `revoke` / `unrevoke` (one key).
function sim_mt:configure(t)
  if type(t) ~= "table" then return nil, "config must be an object" end
  for k, v in pairs(t) do
    if k == "revoked_keys" then
      if not util.is_array(v) then return nil, "revoked_keys must be an array" end
      self.revoked = {}
      for _, key in ipairs(v) do self.revoked[tostring(key)] = true end
    elseif k == "revoke" then
      self.revoked[tostring(v)] = true
    elseif k == "unrevoke" then
      self.revoked[tostring(v)] = nil
    elseif k == "seed" then
      self.seed = tonumber(v) or self.seed
      self.rng = util.rng(self.seed)
    elseif k == "all" or self.config[k] then
      if type(v) ~= "table" then return nil, k .. " must be an object" end
      local names = (k == "all") and PROVIDERS or { k }
      for _, name in ipairs(names) do
        if type(v.outcomes) == "table" then
          -- outcomes accumulate; a JSON null value removes one
          for key, o in pairs(v.outcomes) do
            self.config[name].outcomes[key] = (o ~= util.null) and o or nil
          end
        end
        local rest = {}
        for kk, vv in pairs(v) do if kk ~= "outcomes" then rest[kk] = vv end end
        util.merge(self.config[name], util.deepcopy(rest))
      end
    else
      return nil, "unknown config key: " .. tostring(k)
    end
  end
  return self:config_snapshot()
end

function sim_mt:config_snapshot()
  local out = { providers = util.deepcopy(self.config), revoked_keys = 0, seed = self.seed }
  for _ in pairs(self.revoked) do out.revoked_keys = out.revoked_keys + 1 end
  return out
end

---------------------------------------------------------------------------
-- Counters

function sim_mt:count_submission(name)
  local p = self.counters.providers[name]
  p.submissions = p.submissions + 1
end

function sim_mt:count_input(name, key)
  local inputs = self.counters.providers[name].inputs
  inputs[key] = (inputs[key] or 0) + 1
end

-- A submit answered with existing work (lance records, puffle replays).
function sim_mt:count_reused(name)
  local p = self.counters.providers[name]
  p.reused = p.reused + 1
end

--- what: "reserved" | "charged" | "released"
function sim_mt:count_credits(name, what, n)
  local c = self.counters.providers[name].credits
  c[what] = c[what] + (n or 0)
end

--- A snapshot of the counters. Per provider: requests by route, responses
--- by status, submissions (accepted submit calls), jobs created, inputs
--- (stable input key -> times submitted), duplicates (keys submitted more
--- than once), credits {reserved, charged, released}.
function sim_mt:stats()
  local s = util.deepcopy(self.counters)
  for name, p in pairs(s.providers) do
    local dups = {}
    for key, n in pairs(p.inputs) do
      if n > 1 then dups[#dups + 1] = key end
    end
    sort(dups)
    p.duplicates = dups
    local mod = self.providers[name]
    if mod.balance then p.balance = mod:balance() end
  end
  s.now = self:now()
  return s
end

---------------------------------------------------------------------------
-- Jobs: progress on the controlled clock.

--- Registers a job. fields: id (required), key, outcome (nil or a job
--- outcome), plus provider data. Settings polls/ms come from the provider's
--- config unless given.
function sim_mt:new_job(name, fields)
  local cfg = self.config[name]
  local job = fields
  job.provider = name
  job.created = self:now()
  job.polls_seen = 0
  job.need_polls = tonumber(fields.need_polls) or tonumber(cfg.polls) or 0
  job.need_ms = tonumber(fields.need_ms) or tonumber(cfg.ms) or 0
  if job.outcome == nil and cfg.job_outcome and cfg.job_outcome ~= "" then
    job.outcome = cfg.job_outcome
  end
  self.jobs[name][job.id] = job
  local p = self.counters.providers[name]
  p.jobs = p.jobs + 1
  return job
end

function sim_mt:job(name, id)
  return self.jobs[name] and self.jobs[name][id]
end

--- Returns the job's phase: "queued" (never seen in progress yet),
--- "running", or "done". A status read (count = true) counts as a poll.
--- The first time a job is found done, the provider's on_done(job) runs.
function sim_mt:job_phase(job, count)
  if not job.done then
    local ready = job.forced or (job.polls_seen >= job.need_polls
      and (self:now() - job.created) * 1000 >= job.need_ms)
    if job.outcome == "never" and not job.forced then ready = false end
    if ready then
      job.done = true
      job.finished_at = self:now()
      local mod = self.providers[job.provider]
      if mod.on_done then mod:on_done(job) end
    end
  end
  local phase
  if job.done then
    phase = "done"
  elseif job.polls_seen == 0 then
    phase = "queued"
  else
    phase = "running"
  end
  if count then
    -- what this poll saw; reads that are not polls show the same progress
    job.phase_polls = job.polls_seen
    job.polls_seen = job.polls_seen + 1
  end
  return phase
end

--- Fraction of the way to done (0..1) for progressive per-item states.
function sim_mt:job_progress(job)
  if job.done then return 1 end
  if job.need_polls <= 0 then return 0 end
  return math.min(1, (job.phase_polls or job.polls_seen) / job.need_polls)
end

--- Changes a live job: outcome, polls, ms, finish = true (done at next read).
function sim_mt:control_job(name, id, t)
  local job = self:job(name, id)
  if not job then return nil, "no such job" end
  if job.done then return nil, "job already terminal" end
  if t.outcome ~= nil then
    local o = t.outcome
    job.outcome = (o == "complete" or o == "completed" or o == util.null or o == false) and nil or o
  end
  if t.polls ~= nil then job.need_polls = tonumber(t.polls) or job.need_polls end
  if t.ms ~= nil then job.need_ms = tonumber(t.ms) or job.need_ms end
  if t.finish then job.forced = true end
  return self:job_view(job)
end

function sim_mt:job_view(job)
  return {
    id = job.id, provider = job.provider, done = job.done == true,
    outcome = job.outcome or "complete", polls_seen = job.polls_seen,
    need_polls = job.need_polls, need_ms = job.need_ms,
    created = util.iso(job.created),
  }
end

--- The item outcome: an explicit per-input setting wins over the input's
--- own markers.
function sim_mt:item_outcome(name, key, text)
  local o = self.config[name].outcomes[key]
  if o and o ~= "" then return o end
  return util.item_outcome(text)
end

---------------------------------------------------------------------------
-- Faults

--- Queues a fault for the next `count` requests matching provider, method
--- and path (a Lua pattern on the path after the provider prefix).
--- type: latency | status | reset | close | malformed | truncate | drip |
--- huge, or a status code ("429", 503). Returns the fault id.
function sim_mt:fault(t)
  if type(t) ~= "table" then return nil, "fault must be an object" end
  local f = util.deepcopy(t)
  local ftype = f.type
  if type(ftype) == "number" or (type(ftype) == "string" and ftype:match("^%d%d%d$")) then
    f.status = tonumber(ftype)
    ftype = "status"
  end
  if not FAULT_TYPES[ftype] then return nil, "unknown fault type: " .. tostring(f.type) end
  f.type = ftype
  if ftype == "status" and not tonumber(f.status) then return nil, "status fault needs a status" end
  if f.provider and not self.config[f.provider] then
    return nil, "unknown provider: " .. tostring(f.provider)
  end
  if f.path and not pcall(string.find, "", f.path) then
    return nil, "bad path pattern: " .. tostring(f.path)
  end
  f.count = floor(tonumber(f.count) or 1)
  if f.count < 1 then return nil, "count must be >= 1" end
  if f.after == nil then f.after = FAULT_AFTER[ftype] or false end
  if #self.faults >= MAX_FAULTS then return nil, "too many queued faults" end
  self.fault_seq = self.fault_seq + 1
  f.id = self.fault_seq
  self.faults[#self.faults + 1] = f
  return f.id
end

function sim_mt:clear_faults()
  self.faults = {}
end

local function fault_matches(f, name, req)
  if f.provider and f.provider ~= name then return false end
  if f.method and f.method:upper() ~= req.method then return false end
  if f.path and not req.path:find(f.path) then return false end
  return true
end

function sim_mt:take_fault(name, req)
  for i, f in ipairs(self.faults) do
    if fault_matches(f, name, req) then
      f.count = f.count - 1
      if f.count <= 0 then table.remove(self.faults, i) end
      self.counters.faults = self.counters.faults + 1
      return f
    end
  end
  return nil
end

local function retry_after_headers(self, f, headers)
  if f.retry_after ~= nil then
    headers["Retry-After"] = tostring(f.retry_after)
  elseif f.retry_after_date ~= nil then
    headers["Retry-After"] = util.http_date(self:now() + (tonumber(f.retry_after_date) or 0))
  end
  return headers
end

-- The answer a fault gives instead of (or on top of) the provider's.
function sim_mt:apply_fault(f, mod, req, res)
  local t = f.type
  if t == "status" then
    local status = floor(tonumber(f.status))
    local out
    if f.body then
      out = { status = status, headers = { ["Content-Type"] = f.content_type or "application/json" },
              body = type(f.body) == "string" and f.body or util.encode(f.body) }
    else
      out = mod:fault_response(status, req)
    end
    out.headers = retry_after_headers(self, f, out.headers or {})
    if status == 429 and f.retry_after == nil and f.retry_after_date == nil then
      out.headers["Retry-After"] = nil
    end
    res = out
  elseif t == "reset" or t == "close" then
    res = { status = 0, headers = {}, body = "", fault = t }
  elseif t == "malformed" then
    local body = res.body or ""
    res.body = body:sub(1, max(1, floor(#body / 2))) .. "\0<<not json"
  elseif t == "truncate" then
    res.fault = "truncate"
    if f.at then res.truncate_at = tonumber(f.at) end
  elseif t == "drip" then
    res.fault = "drip"
    res.drip_chunk = tonumber(f.chunk) or 8
    res.drip_interval = tonumber(f.interval) or 0.05
  elseif t == "huge" then
    res.body = '{"pad":"'
    res.body_suffix = '"}'
    res.body_fill = "x"
    res.body_size = floor(tonumber(f.size) or DEFAULT_HUGE_SIZE)
  end
  if f.delay then res.delay = (res.delay or 0) + (tonumber(f.delay) or 0) end
  if t == "latency" then res.delay = (res.delay or 0) + (tonumber(f.seconds) or 1) end
  return res
end

---------------------------------------------------------------------------
-- Routing

local function match_route(routes, method, path)
  local allowed
  for _, r in ipairs(routes) do
    local caps = { path:match(r[2]) }
    if caps[1] ~= nil then
      if r[1] == method then return r, caps end
      allowed = allowed or {}
      allowed[#allowed + 1] = r[1]
    end
  end
  return nil, nil, allowed
end
_M.match_route = match_route

local function normalize(req)
  req.method = (req.method or "GET"):upper()
  req.headers = req.headers or {}
  req.args = req.args or {}
  req.body = req.body or ""
  req.path = req.path or "/"
  return req
end

function sim_mt:handle_provider(name, req)
  local mod = self.providers[name]
  local route, caps, allowed = match_route(mod.ROUTES, req.method, req.path)
  local label = route and route[3] or "unmatched"
  local pc = self.counters.providers[name]
  pc.requests[label] = (pc.requests[label] or 0) + 1

  local f = self:take_fault(name, req)
  local res
  -- A latency fault always carries the provider's own answer, only later
  -- (with after = false it used to answer an empty 200 instead).
  if f and not f.after and f.type ~= "latency" then
    res = self:apply_fault(f, mod, req, {})
  else
    if route then
      res = mod:dispatch(route, req, caps)
    elseif allowed then
      res = mod:error_response(405, "method not allowed", req)
      res.headers = res.headers or {}
      res.headers.Allow = concat(allowed, ", ")
    else
      res = mod:error_response(404, "no such route", req)
    end
    if f then res = self:apply_fault(f, mod, req, res) end
  end
  local latency = tonumber(self.config[name].latency) or 0
  if latency > 0 then res.delay = (res.delay or 0) + latency end
  local code = tostring(res.status)
  pc.responses[code] = (pc.responses[code] or 0) + 1
  return res
end

--- Answers one request (see the header comment for the request shape).
function sim_mt:handle(req)
  normalize(req)
  self.counters.requests = self.counters.requests + 1
  local path = req.path
  if path == "/_sim" or path:sub(1, 6) == "/_sim/" then
    self.counters.control = self.counters.control + 1
    return require("enrich.sim.control").handle(self, req)
  end
  local name, rest = path:match("^/([%w_]+)(/.*)$")
  if not name then name, rest = path:match("^/([%w_]+)$"), "/" end
  if name and self.providers[name] then
    local sub = {}
    for k, v in pairs(req) do sub[k] = v end
    sub.path = rest
    sub.full_path = path
    return self:handle_provider(name, sub)
  end
  return util.json(404, { error = "unknown path; providers live under /"
    .. concat(PROVIDERS, ", /") .. " and the control API under /_sim/" })
end

return _M
