-- A client: one provider, one API key, and the policies that apply to its
-- jobs (provider defaults, overridden by the caller's options).
local errors = require "enrich.errors"
local policy = require "enrich.policy"
local providers = require "enrich.providers"
local ratelimit = require "enrich.ratelimit"
local job = require "enrich.job"
require "enrich.snapshot"                 -- job:snapshot()
local scheduler = require "enrich.scheduler"
local coalesce = require "enrich.coalesce"

local type, pairs, ipairs, tostring, setmetatable = type, pairs, ipairs, tostring, setmetatable

local _M = { _VERSION = "0.1.0" }
local client_mt = {}
_M.client_mt = client_mt
client_mt.__index = client_mt
-- Never print a key: a client shows only its provider.
client_mt.__tostring = function(c) return "enrich.client(" .. c.spec.name .. ")" end

local NO_OPTIONS = setmetatable({}, { __newindex = function() error("submit options are read-only", 2) end })

local OPTIONS = {
  api_key = "string", base_url = "string", poll = "table", retry = "table",
  rate = "table", timeout = "number", connect_timeout = "number", max_body = "number",
  credits_cooldown = "number", store = "table",
  coalesce = "table",          -- or false (enrich.coalesce)
}

-- After a `credits` answer, submits with that key fail fast for this many
-- seconds; then one is let through, and its success closes the breaker.
_M.DEFAULT_CREDITS_COOLDOWN = 60

-- Per (provider, key), shared by every client with that key (providers
-- count per key, not per client object): the rate bucket, the retry
-- budget, the credits breaker; the scheduler runs the key's steps in a
-- lane of its own (keyed by this table). Keys are kept only in memory, as
-- table keys here.
local by_key = {}

-- A client that sets `rate` (or the retry budget) itself sets it for the
-- key: the latest explicit setting wins.
local function shared_state(spec, key, rate, retry, opts)
  local id = spec.name .. "\0" .. key
  local s = by_key[id]
  if not s then
    s = { retry_tokens = retry.budget }
    by_key[id] = s
  end
  if not s.bucket or opts.rate then
    -- A provider's documented rate is kept a margin under; `id` lets every
    -- worker of an nginx share the bucket (enrich.ratelimit_shared).
    s.bucket = rate and ratelimit.new(rate.per_second, rate.burst, { id = id, documented = not opts.rate })
  end
  if not s.retry or (opts.retry and opts.retry.budget) then
    s.retry_max, s.retry_tokens = retry.budget, retry.budget
  end
  s.retry = retry
  if not s.cooldown or opts.credits_cooldown then
    s.cooldown = opts.credits_cooldown or _M.DEFAULT_CREDITS_COOLDOWN
  end
  -- An explicit rate is the caller's plan: rate headers do not move it.
  if opts.rate and s.bucket then s.bucket.fixed = true end
  return s
end

--- enrich.client(name_or_spec, opts) -> client | nil, err
function _M.new(sched, name_or_spec, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("enrich.client: options must be a table", 3) end
  for k, v in pairs(opts) do
    if not OPTIONS[k] then error("enrich.client: unknown option '" .. tostring(k) .. "'", 3) end
    if type(v) ~= OPTIONS[k] and not (k == "coalesce" and v == false) then
      error("enrich.client: '" .. k .. "' must be a " .. OPTIONS[k], 3)
    end
  end
  local spec, msg
  if type(name_or_spec) == "string" then
    spec, msg = providers.get(name_or_spec)
    if not spec then return nil, errors.new("unsupported", msg) end
  elseif type(name_or_spec) == "table" then
    spec = providers.validate(name_or_spec, name_or_spec.name or "custom")
    spec.name = spec.name or "custom"
  else
    error("enrich.client: a provider name or table is required", 3)
  end
  if not opts.api_key or opts.api_key == "" then
    return nil, errors.new("auth", "no api_key given for " .. spec.name, { provider = spec.name })
  end
  -- A key read from a file often ends in "\n": it could never be sent as a
  -- header, so say so here (never showing the key).
  if opts.api_key:find("[%c\127]") then
    local what = opts.api_key:find("[\r\n]") and "a line break" or "a control character"
    return nil, errors.new("auth", "the api_key for " .. spec.name .. " contains " .. what
      .. " (read from a file? trim it)", { provider = spec.name })
  end
  for _, k in ipairs({ "timeout", "connect_timeout", "max_body", "credits_cooldown" }) do
    if opts[k] ~= nil and not (opts[k] > 0 or (k == "credits_cooldown" and opts[k] == 0)) then
      error("enrich.client: '" .. k .. "' must be a positive number", 3)
    end
  end
  local base = opts.base_url or spec.base_url
  if not base:match("^https?://") then
    return nil, errors.new("invalid", "base_url must start with http:// or https://", { provider = spec.name })
  end
  local rate = spec.rate
  -- The caller's policy tables: misuse raised as ours, at our caller.
  local function caller_merge(defaults, over, what)
    local merged = policy.merge(defaults, over, what, "enrich.client: ", 5)   -- (not a tail call: level 5)
    return merged
  end
  if opts.rate then rate = caller_merge(spec.rate or { per_second = 1, burst = 1 }, opts.rate, "rate") end
  local c = setmetatable({
    sched = sched, spec = spec, store = opts.store,
    base_url = base:gsub("/+$", ""),
    host = scheduler.host_of(base),             -- its transfers share this host's slots
    poll = caller_merge(policy.merge(policy.DEFAULT_POLL, spec.poll, "poll"), opts.poll, "poll"),
    retry = caller_merge(policy.merge(policy.DEFAULT_RETRY, spec.retry, "retry"), opts.retry, "retry"),
    timeout = opts.timeout or 30, connect_timeout = opts.connect_timeout or 10,
    max_body = opts.max_body,
  }, client_mt)
  -- The key lives in closures, not in fields, so dumping the client shows
  -- none. Header tables are made once: the core only reads them.
  local key = opts.api_key
  local auth = spec.auth or function(k) return { Authorization = "Bearer " .. k } end
  local plain, json = auth(key), auth(key)
  plain.Accept = plain.Accept or "application/json"
  json.Accept = json.Accept or "application/json"
  json["Content-Type"] = "application/json"
  function c.headers(with_json) return with_json and json or plain end
  -- Provider texts go into error messages; one that echoes the key
  -- ("invalid key sk_…") must not carry it into logs.
  function c.redact(s)
    if type(s) ~= "string" or #key < 4 then return s end
    local from, to = s:find(key, 1, true)
    while from do
      s = s:sub(1, from - 1) .. "[redacted]" .. s:sub(to + 1)
      from, to = s:find(key, from + 10, true)
    end
    return s
  end
  c.shared = shared_state(spec, key, rate, c.retry, opts)
  -- Submits to a batch provider are gathered into shared requests.
  c.spec = coalesce.wrap(c, spec, opts.coalesce)
  return c
end

--- Waits for a token of the provider's rate limit (in a task).
function client_mt:throttle()
  local b = self.shared.bucket
  if not b then return end
  for _ = 1, 1000 do
    local wait = b:take(self.sched.now())
    if wait == 0 then return end
    self.sched:sleep(wait)
  end
end

--- Sees every failed request: an out-of-credits answer opens the key's
--- credits breaker for the cooldown.
function client_mt:observe(err)
  if err.code == "credits" then
    local s = self.shared
    s.breaker, s.open_until, s.trial = err, self.sched.now() + s.cooldown, false
  end
end

--- The credits error while the breaker is open and its cooldown runs (or
--- its one trial submit is out); nil when a submit may go.
function client_mt:blocked()
  local s = self.shared
  if not s.breaker then return nil end
  if s.trial or self.sched.now() < s.open_until then return s.breaker end
  return nil
end

--- For the engine, right before a part's submit: nil (go; after a
--- cooldown this submit is the breaker's one trial) or the credits error.
function client_mt:take_submit()
  local blocked = self:blocked()
  if blocked then return blocked end
  if self.shared.breaker then self.shared.trial = true end
  return nil
end

--- A submit ended (id on success): a success closes the breaker; a trial
--- that failed for another reason lets the next submit try.
function client_mt:submit_ended(id, err)
  local s = self.shared
  if id then
    s.breaker, s.open_until, s.trial = nil, nil, false
  elseif s.breaker and not (err and err.code == "credits") then
    s.trial = false
  end
end

--- Closes the credits breaker at once (after a top-up, say).
function client_mt:resume_submitting()
  local s = self.shared
  s.breaker, s.open_until, s.trial = nil, nil, false
end

--- A request succeeded: the key's retry budget gets a token back (what
--- the retries cost, when it took some).
function client_mt:succeeded(attempt)
  local s = self.shared
  local back = attempt > 1 and (attempt - 1) * s.retry.budget_cost or 1
  s.retry_tokens = math.min(s.retry_max, s.retry_tokens + back)
end

--- Takes the cost of one retry from the key's budget; false when too few
--- tokens are left (the failure then surfaces at once).
function client_mt:spend_retry(err)
  local s = self.shared
  local cost = s.retry.budget_cost * (err.code == "timeout" and 2 or 1)
  if s.retry_tokens < cost then return false end
  s.retry_tokens = s.retry_tokens - cost
  return true
end

--- client:submit(inputs, opts) -> job | nil, err
function client_mt:submit(inputs, opts)
  if type(inputs) ~= "table" then error("submit: inputs must be an array", 2) end
  local n = #inputs
  for k in pairs(inputs) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      error("submit: inputs must be an array (found key '" .. tostring(k) .. "')", 2)
    end
  end
  opts = opts or NO_OPTIONS
  if type(opts) ~= "table" then error("submit: options must be a table", 2) end
  local allowed = self.spec.options or {}
  for k in pairs(opts) do
    if not allowed[k] then error("submit: unknown option '" .. tostring(k) .. "' for " .. self.spec.name, 2) end
  end
  -- Submitting through a store closed already is misuse: the job could
  -- never be journaled. (A store closed under a live job is a runtime
  -- failure: the job's error has code `store`.)
  if self.store and self.store.closed then
    error("submit: the client's store is closed (" .. tostring(self.store) .. ")", 2)
  end
  local name = self.spec.name
  if n == 0 then return nil, errors.new("invalid", "no inputs", { provider = name }) end
  if opts.kind ~= nil and self.spec.kinds and not self.spec.kinds[opts.kind] then
    return nil, errors.new("invalid", "kind '" .. tostring(opts.kind) .. "' is not offered by " .. name,
                           { provider = name })
  end
  local prepared = {}
  for i, input in ipairs(inputs) do
    local p, msg = self.spec.prepare(input, opts)
    if p == nil then
      return nil, errors.new("invalid", "input " .. i .. ": " .. tostring(msg), { provider = name, index = i })
    end
    prepared[i] = p
  end
  local blocked = self:blocked()
  if blocked then return nil, blocked end
  local j = job.new(self, inputs, prepared, opts)
  if self.spec.coalescing then self.spec.coalescing.join(j) end   -- enrich.coalesce
  return j:start()
end

return _M
