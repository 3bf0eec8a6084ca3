-- Shared helpers for the simulator's handlers: JSON responses (with real
-- empty arrays), ids, ISO/HTTP dates, hashing, token buckets, and the outcome
-- conventions read from inputs. Plain Lua 5.1 syntax: also runs on LuaJIT.
local cjson = require "cjson"

local floor, abs = math.floor, math.abs
local format, byte, lower = string.format, string.byte, string.lower
local concat = table.concat
local type, pairs, ipairs, pcall, tostring, tonumber, next =
  type, pairs, ipairs, pcall, tostring, tonumber, next
local os_date = os.date

local _M = { _VERSION = "0.1.0" }

_M.REASONS = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [202] = "Accepted",
  [204] = "No Content", [301] = "Moved Permanently", [302] = "Found",
  [304] = "Not Modified", [400] = "Bad Request", [401] = "Unauthorized",
  [402] = "Payment Required", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict",
  [410] = "Gone", [411] = "Length Required", [413] = "Payload Too Large",
  [415] = "Unsupported Media Type", [422] = "Unprocessable Entity",
  [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [501] = "Not Implemented",
  [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}

_M.null = cjson.null

-- Debian's cjson 2.1.0 has no empty-array marker: encode empty arrays as a
-- sentinel string and swap its encoded form for [] afterwards.
local EMPTY_ARRAY = "\1sim:empty-array\1"
local EMPTY_ARRAY_JSON = cjson.encode(EMPTY_ARRAY)
_M.EMPTY_ARRAY = EMPTY_ARRAY

--- Returns t, or the empty-array sentinel when t is nil or empty.
function _M.array(t)
  if t == nil or next(t) == nil then return EMPTY_ARRAY end
  return t
end

function _M.encode(value)
  local s = cjson.encode(value)
  if s:find(EMPTY_ARRAY_JSON, 1, true) then
    s = s:gsub(EMPTY_ARRAY_JSON:gsub("%p", "%%%0"), "[]")
  end
  return s
end

--- Decodes JSON; returns value or nil, message.
function _M.decode(s)
  if type(s) ~= "string" or s == "" then return nil, "empty body" end
  local ok, v = pcall(cjson.decode, s)
  if not ok then return nil, "invalid JSON" end
  return v
end

--- A response table for the fronts.
function _M.json(status, value, headers, content_type)
  local h = { ["Content-Type"] = content_type or "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return { status = status, headers = h, body = _M.encode(value) }
end

function _M.is_array(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or floor(k) ~= k then return false end
    n = n + 1
  end
  return n == #t
end

function _M.int(n)
  n = tonumber(n)
  if not n then return nil end
  return floor(n)
end

-- ISO 8601 UTC with milliseconds.
function _M.iso(t)
  local s = floor(t)
  return os_date("!%Y-%m-%dT%H:%M:%S", s) .. format(".%03dZ", floor((t - s) * 1000))
end

-- RFC 7231 IMF-fixdate, for Retry-After and Date.
function _M.http_date(t)
  return os_date("!%a, %d %b %Y %H:%M:%S GMT", floor(t))
end

-- A 31-bit string hash, identical on every Lua (no bit operators).
local function hash(s)
  local h = 5381
  s = tostring(s)
  for i = 1, #s do
    h = (h * 33 + byte(s, i)) % 2147483647
  end
  return h
end
_M.hash = hash

-- Deterministic pseudo-random numbers (Park-Miller), same on 5.4 and LuaJIT.
local rng_mt = {}
rng_mt.__index = rng_mt
function _M.rng(seed)
  seed = floor(abs(tonumber(seed) or 1)) % 2147483646 + 1
  return setmetatable({ state = seed }, rng_mt)
end
function rng_mt:next()
  self.state = (self.state * 48271) % 2147483647
  return self.state
end
function rng_mt:hex(n)
  local out = {}
  for i = 1, n do out[i] = format("%x", self:next() % 16) end
  return concat(out)
end
function rng_mt:uuid()
  local variant = format("%x", 8 + self:next() % 4)
  return self:hex(8) .. "-" .. self:hex(4) .. "-4" .. self:hex(3) .. "-"
    .. variant .. self:hex(3) .. "-" .. self:hex(12)
end

function _M.is_uuid(s)
  return type(s) == "string"
    and s:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil
end

function _M.is_uuid_v4(s)
  return _M.is_uuid(s) and s:sub(15, 15) == "4" and s:sub(20, 20):lower():match("[89ab]") ~= nil
end

--- Outcome conventions read from the input itself (docs/simulator.md).
-- Text markers, case-insensitive, anywhere in the identifying strings:
local ITEM_MARKERS = {
  { "notfound", "not_found" }, { "not_found", "not_found" }, { "not-found", "not_found" },
  { "itemfail", "failed" }, { "timeout", "timeout" },
  { "retry", "retry" }, { "reject", "rejected" },
}
local JOB_MARKERS = {
  { "jobfail", "failed" }, { "jobhang", "never" }, { "jobcancel", "cancelled" },
}
-- UUID-only inputs: the last group is eight zeros and a code.
local UUID_CODES = {
  ["0404"] = "not_found", ["0500"] = "failed", ["0408"] = "timeout",
  ["0410"] = "cancelled", ["0102"] = "never", ["0422"] = "retry",
}
_M.ITEM_MARKERS, _M.JOB_MARKERS, _M.UUID_CODES = ITEM_MARKERS, JOB_MARKERS, UUID_CODES

local function uuid_code(s)
  local code = type(s) == "string" and s:lower():match("%-00000000(%x%x%x%x)$")
  return code and UUID_CODES[code]
end

--- The outcome an input asks for: "found" (default), "not_found", "failed",
--- "timeout", "retry", "rejected" — or, from a UUID code, also "cancelled"
--- and "never".
function _M.item_outcome(text)
  local code = uuid_code(text)
  if code then return code end
  local l = lower(tostring(text or ""))
  for _, m in ipairs(ITEM_MARKERS) do
    if l:find(m[1], 1, true) then return m[2] end
  end
  return "found"
end

--- The job-level outcome any of the texts asks for, or nil.
function _M.job_outcome(texts)
  for _, text in ipairs(texts) do
    local l = lower(tostring(text or ""))
    for _, m in ipairs(JOB_MARKERS) do
      if l:find(m[1], 1, true) then return m[2] end
    end
  end
  return nil
end

--- Token bucket: `rate` tokens per second, at most `burst`.
function _M.bucket_take(b, now, rate, burst)
  if not b.t then b.t, b.tokens = now, burst end
  b.tokens = math.min(burst, b.tokens + (now - b.t) * rate)
  b.t = now
  if b.tokens >= 1 then
    b.tokens = b.tokens - 1
    return true
  end
  return false, (1 - b.tokens) / rate
end

--- Shallow-merges src into dst, recursing into plain tables; false/null clear.
local function merge(dst, src)
  for k, v in pairs(src) do
    if v == cjson.null then
      dst[k] = false
    elseif type(v) == "table" and type(dst[k]) == "table" and not _M.is_array(v) then
      merge(dst[k], v)
    else
      dst[k] = v
    end
  end
  return dst
end
_M.merge = merge

local function deepcopy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = deepcopy(x) end
  return t
end
_M.deepcopy = deepcopy

--- The token of an "Authorization: Bearer <token>" header, or nil.
function _M.bearer(headers)
  local v = headers and headers.authorization
  if type(v) ~= "string" then return nil end
  local token = v:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
  return token
end

--- Decodes a JSON request body that must be an object.
--- Returns the table, or nil and "invalid" / "not_object".
function _M.json_object(body)
  local v = _M.decode(body)
  if v == nil then return nil, "invalid" end
  if type(v) ~= "table" or (_M.is_array(v) and next(v) ~= nil) then return nil, "not_object" end
  return v
end

-- Words of a string, for deterministic fake data.
function _M.slug(s)
  return (lower(tostring(s or "")):gsub("[^%w]+", ""))
end

function _M.title(s)
  return (tostring(s):lower():gsub("(%a)(%w*)", function(a, b) return a:upper() .. b end))
end

-- A stable phone number derived from a string.
function _M.phone_of(s)
  return format("+1555%07d", hash(s) % 10000000)
end

return _M
