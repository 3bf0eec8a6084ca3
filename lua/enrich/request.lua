-- What provider files call: ctx:call(req) sends one HTTP request through the
-- client's rate limit and retry policy and returns the answer, or nil and an
-- error with a stable code. A ctx belongs to one job.
--
-- req = { method = "GET", path = "/v2/…" (after base_url), query = { k = v },
--         json = table | body = string, idempotent = bool (default: not POST),
--         expect_json = bool (default true) }
-- res = { status, headers, json, body }
local cjson = require "cjson.safe"
local errors = require "enrich.errors"
local policy = require "enrich.policy"
local ratelimit = require "enrich.ratelimit"

local type, tostring, pairs, ipairs, sort, concat, format, byte =
  type, tostring, pairs, ipairs, table.sort, table.concat, string.format, string.byte

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
local function http_error(self, c)
  local spec = self.client.spec
  local message, provider_code, fields
  if spec.error then message, provider_code, fields = spec.error(c) end
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
  fields.provider_code = self.client.redact(provider_code)
  return self:error(code, self.client.redact(message), fields)
end

local function classify(self, c, req)
  if c.error then
    local e = errors.from_transport(c, self.provider)
    -- Refused before a byte was sent: the server never saw it.
    e.unprocessed = c.error.code == "connect" or c.error.code == "dns"
    return nil, e
  end
  if c.status < 200 or c.status > 299 then return nil, http_error(self, c) end
  if req.expect_json ~= false and type(c.json) ~= "table" then
    -- Retryable: a garbled body is more often a passing fault than a change
    -- of API, and the requests that may be resent are safe to resend.
    return nil, self:error("protocol", "expected a JSON object or array, got: "
      .. (c.json_error or excerpt(c.body)), { status = c.status, retryable = true })
  end
  return c                              -- the core's record is res: status, headers, json, body
end

-- One table reused for every transfer: it is filled only once the slot is
-- taken (nothing yields between filling and submitting), and the core
-- copies what it needs before submit returns.
local transfer = {}

--- Sends req and returns res, or nil and an error (see the top of the file).
function ctx_mt:call(req)
  local client = self.client
  local method = req.method or "GET"
  local idempotent = req.idempotent
  if idempotent == nil then idempotent = method ~= "POST" end
  local body = req.body
  if req.json ~= nil then
    local err
    body, err = cjson.encode(req.json)
    if not body then return nil, self:error("invalid", "request body: " .. tostring(err)) end
  end
  local url = client.base_url .. req.path .. query_string(req.query)
  local attempt = 0
  while true do
    attempt = attempt + 1
    -- The token comes last, once the slot is held: a request then goes out
    -- right after its token, and the provider's rate holds for sends too.
    local host = self.sched:slot(client.host)
    client:throttle()
    self.sched:pace(host)
    transfer.method, transfer.url, transfer.body = method, url, body
    transfer.headers = client.headers(req.json ~= nil)
    transfer.timeout, transfer.connect_timeout = client.timeout, client.connect_timeout
    transfer.max_body = client.max_body
    transfer.fresh_connect = not idempotent or nil
    local c = self.sched:transfer(transfer, host)
    ratelimit.observe(client.shared.bucket, c, self.sched.now(), client.spec.rate_hint)
    local res, err = classify(self, c, req)
    if res then return res end
    client:observe(err)
    if not err.retryable then return nil, err end
    -- A request that may have reached the provider is resent only when
    -- resending is harmless (idempotent) or the provider refused it unseen.
    if not idempotent and not err.unprocessed then return nil, err end
    local delay = policy.retry_delay(client.retry, attempt, err.retry_after)
    if not delay then return nil, err end
    self:sleep(delay)
  end
end

return _M
