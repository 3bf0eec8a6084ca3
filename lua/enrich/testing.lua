-- Testing a provider file without the engine or the network: a fake ctx
-- that answers each ctx:call from a table of canned answers, turning them
-- into results and errors the way the engine's ctx does (non-2xx through the
-- provider's own `error(c)`, a 2xx whose body is not JSON into `protocol`),
-- and `verify`, which checks that what a mapping returned is something the
-- engine documents (states, item statuses, error codes).
--
--   local testing = require "enrich.testing"
--   local ctx = testing.ctx {
--     provider = spec,                                  -- the provider table (or a name)
--     opts = { kind = "email" },                        -- the submit options
--     answers = {
--       ["POST /v2/people/enrich"] = { request_id = "r1" },          -- a JSON body, HTTP 200
--       ["GET /v2/people/enrich/r1"] = testing.answer(202, '{"status":"PROCESSING"}'),
--       ["GET /items"] = testing.sequence(page1, page2),             -- one per call, the last repeats
--       ["POST /cancel"] = testing.answer(204, ""),
--       ["GET /slow"] = testing.transport("timeout"),
--     },
--   }
--   local id, err = spec.submit(ctx, part)
--   ctx.calls[1].req.json                               -- what was sent
--
-- An answer is a table (a JSON body, answered with status 200), a string
-- (a raw body, status 200), testing.answer(status, body, headers),
-- testing.transport(code), testing.sequence(...), or a function(req, ctx)
-- returning any of these (or nil, err). A call with no answer is a 404.
-- `answers` may also be one function for every call. Each call gets one
-- answer: the engine's retries and cadence are not simulated (answer a
-- resent request with a sequence).
local errors = require "enrich.errors"
local request = require "enrich.request"
local cjson = require "cjson.safe"

local type, pairs, ipairs, tostring, setmetatable, getmetatable, error, select =
  type, pairs, ipairs, tostring, setmetatable, getmetatable, error, select
local floor = math.floor

local _M = { _VERSION = "0.1.0" }

local null = cjson.null
_M.null = null

-- Marks on the answer tables this module makes.
local ANSWER, TRANSPORT, SEQUENCE = {}, {}, {}

--- An HTTP answer: status, a body (a table is encoded as JSON; a string is
--- sent as is and decoded as JSON when it is JSON), response headers.
function _M.answer(status, body, headers)
  if type(status) ~= "number" then error("testing.answer: status must be a number", 2) end
  return setmetatable({ status = status, body = body, headers = headers }, ANSWER)
end

--- A transfer that failed before any answer: code "timeout", "connect",
--- "dns", "tls", "network", "too_large" (as enrich.core reports them).
function _M.transport(code, message)
  return setmetatable({ code = code or "network", message = message }, TRANSPORT)
end

--- Answers in turn, one per call; the last one repeats.
function _M.sequence(...)
  return setmetatable({ n = select("#", ...), ... }, SEQUENCE)
end

-- Percent-encodes an id for a path or a query (the engine's ctx.escape).
local escape = request.escape
_M.escape = escape

-- A completion record (what enrich.core hands the engine) for an answer.
local function completion(a)
  local status, body, headers = a.status, a.body, {}
  for k, v in pairs(a.headers or {}) do headers[tostring(k):lower()] = v end
  local c = { status = status, headers = headers }
  if type(body) == "table" then
    c.json, c.body = body, cjson.encode(body) or ""
  else
    c.body = body ~= nil and tostring(body) or ""
    if c.body ~= "" then
      -- A UTF-8 byte-order mark may lead a JSON text (RFC 8259 §8.1): skipped.
      local text = c.body:sub(1, 3) == "\239\187\191" and c.body:sub(4) or c.body
      local v, err = cjson.decode(text)
      if v == nil then c.json_error = tostring(err) else c.json = v end
    else
      c.json_error = "empty body"
    end
  end
  return c
end

-- What the engine's ctx:call makes of a completion: the answer, or nil and
-- an error in the one shape (the engine's own rules, enrich.request.classify).
local function classify(ctx, c, req)
  return request.classify(ctx, c, req, ctx.spec)
end

local ctx_mt = {}
ctx_mt.__index = ctx_mt
ctx_mt.escape = escape
ctx_mt.null = null

--- A fake ctx (see the top of the file). t: provider (a provider table or
--- name), opts, answers, max_calls (default 10000: a mapping that calls
--- more raises, so a loop that never ends shows up as an error).
function _M.ctx(t)
  t = t or {}
  local spec = t.provider
  if type(spec) == "string" then spec = assert(require("enrich.providers").get(spec)) end
  return setmetatable({
    spec = spec, provider = spec and spec.name or t.name or "test",
    opts = t.opts or {}, answers = t.answers or {}, calls = {},
    max_calls = t.max_calls or 10000, turns = {},
  }, ctx_mt)
end

function ctx_mt:error(code, message, fields)
  fields = fields or {}
  fields.provider = self.provider
  return errors.new(code, message, fields)
end

function ctx_mt.sleep() end

--- One call: records it in ctx.calls ({ key = "METHOD path", req = req })
--- and answers it from ctx.answers.
function ctx_mt:call(req)
  if type(req) ~= "table" or type(req.path) ~= "string" then error("ctx:call: req.path must be a string", 2) end
  if #self.calls >= self.max_calls then
    error("testing ctx: more than " .. self.max_calls .. " calls (a loop that does not end?)", 2)
  end
  local key = (req.method or "GET") .. " " .. req.path
  self.calls[#self.calls + 1] = { key = key, req = req }
  local a = self.answers
  local amt = type(a) == "table" and getmetatable(a)
  if type(a) == "table" and amt ~= ANSWER and amt ~= TRANSPORT and amt ~= SEQUENCE then a = a[key] end
  if type(a) == "function" then
    local err
    a, err = a(req, self)
    if a == nil then
      if err ~= nil then return nil, err end
    end
  end
  if getmetatable(a) == SEQUENCE then
    local turn = (self.turns[key] or 0) + 1
    self.turns[key] = turn
    a = a[turn <= a.n and turn or a.n]
  end
  if a == nil then
    return classify(self, completion({ status = 404, body = "" }), req)
  end
  local mt = getmetatable(a)
  if mt == TRANSPORT then
    return classify(self, { error = { code = a.code, message = a.message or a.code } }, req)
  end
  if mt == ANSWER then return classify(self, completion(a), req) end
  if type(a) == "table" or type(a) == "string" then
    return classify(self, completion({ status = 200, body = a }), req)
  end
  error("testing ctx: bad answer for " .. key .. " (" .. type(a) .. ")")
end

---------------------------------------------------------------------------
-- verify: is an outcome something the engine documents?

local ITEM_STATUS = { found = true, not_found = true, failed = true, pending = true }
_M.ITEM_STATUS = ITEM_STATUS

local function finite(n) return type(n) == "number" and n == n and n ~= math.huge and n ~= -math.huge end

--- nil when e is an error in the one shape with a documented code; else a
--- reason.
function _M.check_error(e)
  if not errors.is(e) then return "not an enrich error: " .. tostring(e) end
  if errors.CODES[e.code] == nil then return "undocumented code '" .. tostring(e.code) .. "'" end
  if type(e.message) ~= "string" then return "error message is not a string" end
  if e.code == "unknown" and e.retryable then
    return "code 'unknown' (may have reached the provider) is never retryable"
  end
  if e.retry_after ~= nil and not (finite(e.retry_after) and e.retry_after >= 0) then
    return "retry_after is not a number of seconds >= 0"
  end
  local ok, s = pcall(tostring, e)
  if not ok or s:find("[\r\n]") then return "tostring(err) is not one line" end
  return nil
end

--- nil when item is a result item the engine documents; else a reason.
function _M.check_item(item)
  if type(item) ~= "table" then return "item is not a table" end
  if not ITEM_STATUS[item.status] then return "undocumented item status '" .. tostring(item.status) .. "'" end
  if item.status == "failed" then
    local why = _M.check_error(item.error)
    if why then return "failed item: " .. why end
  end
  for _, e in ipairs(item.emails or {}) do
    if type(e) ~= "table" or type(e.address) ~= "string" or type(e.status) ~= "string" then
      return "emails entry is not { address = string, status = string }"
    end
  end
  for _, p in ipairs(item.phones or {}) do
    if type(p) ~= "table" or type(p.number) ~= "string" then return "phones entry is not { number = string }" end
  end
  if item.email ~= nil and type(item.email) ~= "string" then return "email is not a string" end
  if item.phone ~= nil and type(item.phone) ~= "string" then return "phone is not a string" end
  if item.merchant ~= nil and (type(item.merchant) ~= "table" or type(item.merchant.name) ~= "string") then
    return "found merchant without a name"
  end
  return nil
end

--- Checks what a provider step returned. op: "submit", "check", "cancel";
--- ... what the step returned. Returns nil when it is documented, else a
--- reason. For a terminal check (true) without part.error every item of
--- 1..count must be set and none pending; items are only ever set in
--- 1..count.
function _M.verify(op, part, ...)
  local a, b = ...
  if op == "submit" then
    if a == nil then return _M.check_error(b) end
    if type(a) ~= "string" or a == "" then return "submit returned a non-string id: " .. tostring(a) end
    return nil
  end
  if op == "cancel" then
    if a == nil then return _M.check_error(b) end
    if a ~= true then return "cancel returned " .. tostring(a) .. " (want true, or nil and an error)" end
  elseif op == "check" then
    if a == nil then return _M.check_error(b) end
    if a ~= true and a ~= false then return "check returned " .. tostring(a) .. " (want a boolean)" end
  else
    error("testing.verify: unknown op '" .. tostring(op) .. "'", 2)
  end
  local count = part.count or (part.inputs and #part.inputs) or 0
  for k, item in pairs(part.items or {}) do
    if type(k) ~= "number" or k < 1 or k > count or k ~= floor(k) then
      return "item set outside 1.." .. count .. ": " .. tostring(k)
    end
    local why = _M.check_item(item)
    if why then return "item " .. k .. ": " .. why end
  end
  if part.error ~= nil then
    local why = _M.check_error(part.error)
    if why then return "part.error: " .. why end
  end
  if part.credits ~= nil and not (finite(part.credits) and part.credits >= 0) then
    return "part.credits is not a number >= 0: " .. tostring(part.credits)
  end
  if op == "check" and a == true and part.error == nil then
    for k = 1, count do
      local item = part.items and part.items[k]
      if item == nil then return "terminal answer left item " .. k .. " unset" end
      if item.status == "pending" then return "terminal answer left item " .. k .. " pending" end
    end
  end
  return nil
end

return _M
