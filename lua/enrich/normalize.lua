-- Helpers provider files share: typed readers for decoded JSON, the UTF-8
-- check of inputs, and the pieces of normalized result items.
--
-- Typed readers. A body is what the provider sent, not what its docs say:
-- any value may be JSON null (cjson.null, a lightuserdata that cannot be
-- indexed), another type, or absent. Read every value of a body through
-- these: each returns the value when it has the expected type, else nil,
-- so a mapping tests for nil and never indexes a null.
--   object(v)  a JSON object (a table that is not a non-empty array)
--   array(v)   a JSON array (a table whose first element is set, or empty)
--   list(v)    array(v), or an empty array when v is null/absent/anything else
--   str(v)     a string (not empty)
--   text(v)    a string, trimmed, not empty
--   num(v)     a finite number
--   count(v)   a finite number >= 0 (credits, counts)
--   bool(v)    a boolean
local type, ipairs, next, tostring, byte, find, sub, gsub =
  type, ipairs, next, tostring, string.byte, string.find, string.sub, string.gsub
local huge = math.huge
local null = require("cjson").null

local _M = { _VERSION = "0.1.0" }

_M.null = null

--- A JSON value as a Lua value: JSON null and "" become nil.
function _M.value(v)
  if v == null or v == "" then return nil end
  return v
end

--- v when it is a JSON object, else nil. An empty table counts (cjson
--- decodes {} and [] alike).
function _M.object(v)
  if type(v) ~= "table" or v[1] ~= nil then return nil end
  return v
end

--- v when it is a JSON array (elements may be null), else nil.
function _M.array(v)
  if type(v) ~= "table" then return nil end
  if v[1] == nil and next(v) ~= nil then return nil end   -- an object
  return v
end

local EMPTY = setmetatable({}, { __newindex = function() error("normalize: read-only empty list", 2) end })

--- array(v), or a (read-only) empty array for null, absent or mistyped.
--- For fields the docs allow to be null or absent ("results: null").
function _M.list(v)
  return _M.array(v) or EMPTY
end

--- v when it is a non-empty string, else nil.
function _M.str(v)
  if type(v) ~= "string" or v == "" then return nil end
  return v
end

--- v when it is a finite number, else nil.
function _M.num(v)
  if type(v) ~= "number" or v ~= v or v == huge or v == -huge then return nil end
  return v
end

--- v when it is a finite number >= 0, else nil.
function _M.count(v)
  v = _M.num(v)
  if v and v >= 0 then return v end
  return nil
end

--- v when it is a boolean, else nil.
function _M.bool(v)
  if type(v) ~= "boolean" then return nil end
  return v
end

--- A value shown in a message: one line, at most 60 bytes.
function _M.show(v)
  local s = (v == null) and "null" or tostring(v)
  s = gsub(s, "[%c]", " ")
  if #s > 60 then s = sub(s, 1, 57) .. "..." end
  return s
end

---------------------------------------------------------------------------
-- UTF-8 (RFC 3629): LuaJIT and 5.1 have no utf8 library and Lua 5.3's utf8.len
-- accepts surrogates, so one small validator for every interpreter. Refuses
-- overlong forms, surrogates (U+D800..U+DFFF), code points above U+10FFFF,
-- stray continuation bytes and cut sequences.

--- true when s is valid UTF-8; else false and the byte offset of the
--- first bad sequence.
function _M.utf8_valid(s)
  -- The usual case, pure ASCII, in one C-level scan.
  if not find(s, "[\128-\255]") then return true end
  local i, n = 1, #s
  while i <= n do
    local c = byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local len, lo, hi                          -- lo/hi: the allowed second byte
      lo, hi = 0x80, 0xBF
      if c >= 0xC2 and c <= 0xDF then len = 2
      elseif c == 0xE0 then len, lo = 3, 0xA0       -- no overlong 3-byte forms
      elseif c >= 0xE1 and c <= 0xEC then len = 3
      elseif c == 0xED then len, hi = 3, 0x9F       -- no surrogates
      elseif c >= 0xEE and c <= 0xEF then len = 3
      elseif c == 0xF0 then len, lo = 4, 0x90       -- no overlong 4-byte forms
      elseif c >= 0xF1 and c <= 0xF3 then len = 4
      elseif c == 0xF4 then len, hi = 4, 0x8F       -- nothing above U+10FFFF
      else return false, i end                      -- 80..C1, F5..FF
      if i + len - 1 > n then return false, i end
      local c2 = byte(s, i + 1)
      if c2 < lo or c2 > hi then return false, i end
      for j = i + 2, i + len - 1 do
        local cj = byte(s, j)
        if cj < 0x80 or cj > 0xBF then return false, i end
      end
      i = i + len
    end
  end
  return true
end

--- Checks the named string fields of an input table: nil when every one
--- that is a string is valid UTF-8, else a reason naming the first bad
--- field (for prepare's `nil, reason`; the engine adds the input's index).
function _M.check_utf8(input, fields)
  for _, f in ipairs(fields) do
    local v = input[f]
    if type(v) == "string" then
      local ok, at = _M.utf8_valid(v)
      if not ok then return f .. " is not valid UTF-8 (bad byte at offset " .. at .. ")" end
    end
  end
  return nil
end

---------------------------------------------------------------------------
-- Result items

--- A provider's email verdict in our vocabulary: lower case, underscores
--- ("CATCH_ALL" -> "catch_all", "Deliverable" -> "deliverable").
function _M.email_status(s)
  if type(s) ~= "string" or s == "" then return "unknown" end
  return (s:lower():gsub("[%s%-]+", "_"))
end

--- The best address of a list of {address, status}: `preferred` when it is
--- in the list, else the first deliverable one, else the first one.
function _M.best_email(emails, preferred)
  if preferred then
    for _, e in ipairs(emails) do if e.address == preferred then return preferred end end
  end
  for _, e in ipairs(emails) do if e.status == "deliverable" then return e.address end end
  return emails[1] and emails[1].address
end

--- Splits "Ada Lovelace Byron" into "Ada", "Lovelace Byron".
function _M.split_name(full)
  if type(full) ~= "string" then return nil end
  local first, last = full:match("^%s*(%S+)%s+(.-)%s*$")
  if first then return first, last end
  return (full:match("^%s*(.-)%s*$")), nil
end

--- The trimmed string of s, or nil when it is not a non-empty string.
function _M.text(s)
  if type(s) ~= "string" or s == "" then return nil end
  if byte(s, 1) > 32 and byte(s, -1) > 32 then return s end   -- the usual case: nothing to trim
  s = s:match("^%s*(.-)%s*$")
  return s ~= "" and s or nil
end

--- A message from an error value: a string, or {message=...}, or nil.
function _M.message(v)
  if type(v) == "string" then return _M.text(v) end
  if type(v) == "table" then return _M.text(v.message) end
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  return nil
end

--- A failed item: the provider's answer did not say what happened to this
--- input, or said it in a way we cannot read (code `protocol`).
function _M.unreadable(provider, message, raw)
  local errors = require "enrich.errors"
  return { status = "failed", raw = raw,
           error = errors.new("protocol", message, { provider = provider, retryable = false }) }
end

--- After a terminal answer: every item of 1..part.count that the answer
--- left unset, or left pending (nothing more will come), becomes failed
--- with code `protocol`. Returns how many it filled.
function _M.settle(part, provider)
  local items, filled = part.items, 0
  for k = 1, part.count or (part.inputs and #part.inputs) or 0 do
    local item = items[k]
    if item == nil then
      items[k] = _M.unreadable(provider, "the provider's final answer has no readable result for this input")
      filled = filled + 1
    elseif item.status == "pending" then
      items[k] = _M.unreadable(provider, "the provider's final answer leaves this input unfinished", item.raw)
      filled = filled + 1
    end
  end
  return filled
end

return _M
