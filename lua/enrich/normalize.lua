-- Helpers provider files share to build normalized result items.
local type, ipairs, tostring = type, ipairs, tostring
local null = require("cjson").null

local _M = { _VERSION = "0.1.0" }

--- A JSON value as a Lua value: JSON null and "" become nil.
function _M.value(v)
  if v == null or v == "" then return nil end
  return v
end

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

--- A list that is really a JSON array (or nothing): always a Lua array.
function _M.array(v)
  if type(v) ~= "table" then return {} end
  return v
end

--- Splits "Ada Lovelace Byron" into "Ada", "Lovelace Byron".
function _M.split_name(full)
  if type(full) ~= "string" then return nil end
  local first, last = full:match("^%s*(%S+)%s+(.-)%s*$")
  if first then return first, last end
  return (full:match("^%s*(.-)%s*$")), nil
end

local byte = string.byte

--- The trimmed string of s, or nil when it is not a non-empty string.
function _M.text(s)
  if type(s) ~= "string" or s == "" then return nil end
  if byte(s, 1) > 32 and byte(s, -1) > 32 then return s end   -- the usual case: nothing to trim
  s = s:match("^%s*(.-)%s*$")
  return s ~= "" and s or nil
end

--- A message from an error value: a string, or {message=...}, or nil.
function _M.message(v)
  if type(v) == "string" and v ~= "" then return v end
  if type(v) == "table" and type(v.message) == "string" then return v.message end
  return v ~= nil and v ~= null and tostring(v) or nil
end

return _M
