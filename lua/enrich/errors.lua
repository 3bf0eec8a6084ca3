-- One error shape everywhere: { code, message, status, provider,
-- provider_code, retryable, retry_after }. Callers compare `code`, never the
-- message. tostring(err) is one line and never carries a key: messages are
-- built from codes, statuses and provider texts, never from request headers.
local setmetatable, tostring, type, pairs = setmetatable, tostring, type, pairs

local _M = { _VERSION = "0.1.0" }

-- The stable codes and whether waiting and trying again can help.
local CODES = {
  auth = false, credits = false, not_found = false, invalid = false,
  rate_limited = true, server = true, network = true, timeout = true,
  protocol = false, cancelled = false, unsupported = false,
  unknown = false,     -- sent, no answer read, not safe to resend: the provider may have acted
  store = false,       -- the durable store failed (err.reason says how: full, locked, ...)
}
_M.CODES = CODES

-- HTTP status → code, for answers a provider file does not map itself.
local BY_STATUS = {
  [400] = "invalid", [401] = "auth", [402] = "credits", [403] = "auth",
  [404] = "not_found", [409] = "invalid", [410] = "not_found",
  [413] = "invalid", [422] = "invalid", [429] = "rate_limited",
}
_M.BY_STATUS = BY_STATUS

-- Transport codes from enrich.core → our codes.
local BY_TRANSPORT = {
  timeout = "timeout", connect = "network", dns = "network", network = "network",
  tls = "network", too_large = "protocol", protocol = "protocol", url = "invalid",
  cancelled = "cancelled",
}

local err_mt = {}
err_mt.__index = err_mt

function err_mt.__tostring(e)
  local s = e.code .. ": " .. tostring(e.message)
  local extra = {}
  if e.provider then extra[#extra + 1] = e.provider end
  if e.status then extra[#extra + 1] = "HTTP " .. e.status end
  if e.provider_code then extra[#extra + 1] = tostring(e.provider_code) end
  if #extra > 0 then s = s .. " (" .. table.concat(extra, ", ") .. ")" end
  return (s:gsub("[\r\n]+", " "))
end

--- A new error. fields: status, provider, provider_code, retryable,
--- retry_after. Unknown codes are a bug in the caller: they raise.
function _M.new(code, message, fields)
  if CODES[code] == nil then error("enrich.errors: unknown code '" .. tostring(code) .. "'", 2) end
  local e = { code = code, message = message or code }
  if fields then for k, v in pairs(fields) do e[k] = v end end
  if e.retryable == nil then e.retryable = CODES[code] end
  return setmetatable(e, err_mt)
end

function _M.is(e) return type(e) == "table" and getmetatable(e) == err_mt end

--- A raised Lua error as one line without the source positions Lua put in
--- it ("lua/enrich/x.lua:12: "): an internal failure turned into a job
--- error keeps its message, never a file path. -> message, first position
function _M.unpositioned(e)
  if _M.is(e) then return tostring(e.message):match("^[^\n]*") end
  local s, where = tostring(e):match("^[^\n]*"), nil
  s = s:gsub('%[string "[^"]*"%]:%d+: ', function(p) where = where or p:sub(1, -3) return "" end)
  s = s:gsub("[^%s:]+%.lua:%d+: ", function(p) where = where or p:sub(1, -3) return "" end)
  return s, where
end

--- An error of `code` from a raised Lua error (a string or an enrich
--- error): its message without positions; the first position goes to
--- err.where for whoever debugs it, never into the message.
function _M.from_raise(code, e, prefix, fields)
  if _M.is(e) then return e end
  local msg, where = _M.unpositioned(e)
  local err = _M.new(code, (prefix or "") .. msg, fields)
  err.where = where
  return err
end

--- The code for an HTTP status that is not a success.
function _M.code_for_status(status)
  if BY_STATUS[status] then return BY_STATUS[status] end
  if status >= 500 then return "server" end
  if status >= 400 then return "invalid" end
  return "protocol"                       -- 1xx/3xx where an answer was due
end

--- An error from an enrich.core completion that failed in transport.
function _M.from_transport(c, provider)
  local code = BY_TRANSPORT[c.error.code] or "network"
  return _M.new(code, c.error.message, { provider = provider, transport = c.error.code })
end

return _M
