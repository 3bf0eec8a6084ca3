-- What provider files call: ctx:call(req) sends one HTTP request through the
-- client's rate limit and retry policy and returns the answer, or nil and an
-- error with a stable code. A ctx belongs to one job.
--
-- req = { method = "GET", path = "/v2/…" (after base_url), query = { k = v },
--         json = table | body = string, headers = { name = value },
--         timeout = seconds, idempotent = bool (default: not POST; inside
--         a submit, the provider's idempotent_submit decides),
--         expect_json = bool (default true), before_send = function }
-- res = { status, headers, json, body, retry_after }
local cjson = require "cjson.safe"
local errors = require "enrich.errors"
local policy = require "enrich.policy"
local crash = require "enrich.crash"
local ratelimit = require "enrich.ratelimit"

local type, tostring, pairs, ipairs, sort, concat, format, byte, error =
  type, tostring, pairs, ipairs, table.sort, table.concat, string.format, string.byte, error

local _M = { _VERSION = "0.1.0" }
local ctx_mt = {}
ctx_mt.__index = ctx_mt

_M.null = cjson.null

--- Percent-encodes everything but RFC 3986's unreserved characters, so an id
--- from a provider can never change the path or the query it goes into.
local function escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end
_M.escape = escape
ctx_mt.escape = escape
ctx_mt.null = cjson.null

local function query_string(q)
  if not q then return "" end
  local keys = {}
  for k in pairs(q) do keys[#keys + 1] = k end
  sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = escape(k) .. "=" .. escape(q[k]) end
  return #parts > 0 and ("?" .. concat(parts, "&")) or ""
end

function _M.new(client, job)
  return setmetatable({ client = client, job = job, opts = job and job.opts or {},
                        sched = client.sched, provider = client.spec.name }, ctx_mt)
end

function ctx_mt:sleep(seconds) return self.sched:sleep(seconds) end

--- An error in the one shape, tagged with this provider.
function ctx_mt:error(code, message, fields)
  fields = fields or {}
  fields.provider = self.provider
  return errors.new(code, message, fields)
end

-- A short, single-line excerpt of a body for messages.
local function excerpt(s)
  s = tostring(s or ""):gsub("%s+", " ")
  return #s > 160 and (s:sub(1, 157) .. "...") or s
end

-- Turns a non-2xx answer into an error. The provider file may read its own
-- error body (spec.error(res) -> message, provider_code, fields).
local function http_error(ctx, c, spec, redact)
  local message, provider_code, fields
  if spec and spec.error then message, provider_code, fields = spec.error(c) end
  fields = fields or {}
  local code = fields.code or errors.code_for_status(c.status)
  fields.code = nil
  fields.status = c.status
  -- The header wins over anything a body says about when to come back.
  local after = policy.parse_retry_after(c.headers["retry-after"])
  if after then fields.retry_after = after end
  -- A 429 (or a provider-marked refusal) was not processed: safe to resend.
  if fields.unprocessed == nil then fields.unprocessed = c.status == 429 end
  message = message or ("HTTP " .. c.status .. ": " .. excerpt(c.body))
  fields.provider_code = redact(provider_code)
  return ctx:error(code, redact(message), fields)
end

-- Transport failures that happen before a byte of the request is sent.
local UNSENT = { connect = true, dns = true, tls = true, url = true }

local function as_is(s) return s end

--- What one answer means: c (enrich.core's completion record) -> res, or
--- nil and an error in the one shape. ctx makes the errors (ctx:error) and
--- gets ctx.retry_after; spec is the provider table (its error(c) reads
--- error bodies); redact (optional) scrubs the key from provider text.
--- The engine's ctx:call and enrich.testing's fake ctx both use it.
function _M.classify(ctx, c, req, spec, redact)
  if c.error then
    if c.error.refused then               -- the core would not take the request: a misuse
      return nil, ctx:error("invalid", c.error.message, { retryable = false, unprocessed = true })
    end
    local e = errors.from_transport(c, ctx.provider)
    e.unprocessed = UNSENT[c.error.code] == true
    return nil, e
  end
  if c.status < 200 or c.status > 299 then return nil, http_error(ctx, c, spec, redact or as_is) end
  ctx.retry_after = policy.parse_retry_after(c.headers["retry-after"])
  c.retry_after = ctx.retry_after
  if req.expect_json ~= false and type(c.json) ~= "table" then
    -- Retryable: a garbled body is more often a passing fault than a change
    -- of API, and the requests that may be resent are safe to resend.
    return nil, ctx:error("protocol", "expected a JSON object or array, got: "
      .. (c.json_error or excerpt(c.body)), { status = c.status, retryable = true, answered = true })
  end
  return c                              -- the core's record is res: status, headers, json, body
end

-- A request that may have reached the provider, whose answer cannot be
-- read, and that is not safe to send again: the provider may have acted.
local function unknown(self, err)
  return self:error("unknown", tostring(err.message) .. ": the provider may have accepted it; not resent",
    { status = err.status, cause = err.code, retryable = false })
end

local function request_headers(client, req)
  local base = client.headers(req.json ~= nil)
  local extra = req.headers
  if extra == nil then return base end
  if type(extra) ~= "table" then error("ctx:call: headers must be a table", 3) end
  local h = {}
  for k, v in pairs(base) do h[k] = v end
  for k, v in pairs(extra) do
    if type(k) ~= "string" or type(v) ~= "string" then error("ctx:call: header names and values must be strings", 3) end
    h[k] = v
  end
  return h
end

--- Sends req and returns res, or nil and an error (see the top of the file).
--- The path of every attempt: the key's rate token, then (in the
--- scheduler) a host slot, before_send, the core's submit, the answer.
function ctx_mt:call(req)
  local client, sched = self.client, self.sched
  local method = req.method or "GET"
  if req.timeout ~= nil and (type(req.timeout) ~= "number" or req.timeout <= 0) then
    error("ctx:call: timeout must be a number of seconds > 0", 2)
  end
  local submitting = self.submitting
  local idempotent = req.idempotent
  if idempotent == nil then idempotent = method ~= "POST" end
  -- A submit that writes is resent only where the provider says it may be.
  if submitting and method ~= "GET" and method ~= "HEAD" then
    idempotent = client.spec.idempotent_submit == true and req.idempotent ~= false
  end
  local body = req.body
  if req.json ~= nil then
    local err
    body, err = cjson.encode(req.json)
    if not body then return nil, self:error("invalid", "request body: " .. tostring(err)) end
  end
  local transfer = {
    method = method, url = client.base_url .. req.path .. query_string(req.query), body = body,
    headers = request_headers(client, req),
    timeout = req.timeout or client.timeout, connect_timeout = client.connect_timeout,
    max_body = client.max_body, fresh_connect = not idempotent or nil,
  }
  local attempt = 0
  while true do
    attempt = attempt + 1
    client:throttle()                     -- the rate token first: a full bucket never holds a slot
    local before_send = req.before_send or self.before_send
    local c = sched:transfer(transfer, client.host, before_send)
    ratelimit.observe(client.shared.bucket, c, sched.now(), client.spec.rate_hint)
    local refused = c.before_send_error
    if refused ~= nil then
      if errors.is(refused) then return nil, refused end
      -- A raise in the store's intent (a store closed under a live job):
      -- a store failure, without the Lua position of the raise.
      return nil, self:error("store", "not sent: " .. errors.unpositioned(refused), { retryable = false })
    end
    self.before_send = nil                -- the intent is recorded once, before the first send
    if submitting and not (c.error and c.error.refused) then crash.point("request_sent") end
    local res, err = _M.classify(self, c, req, client.spec, client.redact)
    if res then
      if submitting then self.answered = true end
      client:succeeded(attempt)
      return res
    end
    if submitting and err.answered then self.answered = true end
    client:observe(err)
    -- A request that may have reached the provider is resent only when
    -- resending is harmless (idempotent) or the provider refused it unseen.
    if not idempotent and not err.unprocessed then
      if c.error or (c.status >= 200 and c.status <= 299) then
        return nil, unknown(self, err)    -- sent, no answer read: the provider may have acted
      end
      return nil, err
    end
    if not err.retryable then return nil, err end
    local delay = policy.retry_delay(client.retry, attempt, err.retry_after)
    if not delay or not client:spend_retry(err) then return nil, err end
    self:sleep(delay)
  end
end

return _M
