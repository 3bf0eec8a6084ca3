-- Durable jobs: a store records every job of a client made with
-- { store = s } (see README, "Durable jobs"), so that enrich.resume can
-- bring them back after a crash without losing a provider id or paying
-- twice.
--
--   local store = assert(enrich.store.open("sqlite:jobs.db"))
--
-- URLs: "sqlite:PATH" (the embedded default, enrich.store.sqlite);
-- "redis://HOST:PORT/DB" (enrich.store.redis, where installed).
local errors = require "enrich.errors"

local type, pcall, require = type, pcall, require

local _M = { _VERSION = "0.1.0" }

-- Store failures carry their own stable code, "store" (enrich.errors);
-- err.reason says more: "full", "locked", "not_ours", "newer", ...

--- An error in the one shape, code "store".
function _M.error(message, fields)
  return errors.new("store", message, fields)
end

local BACKENDS = { sqlite = "enrich.store.sqlite", redis = "enrich.store.redis" }

--- enrich.store.open(url [, opts]) -> store | nil, err
function _M.open(url, opts)
  if type(url) ~= "string" then error("enrich.store.open: a URL string is required", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("enrich.store.open: options must be a table", 2) end
  local scheme = url:match("^(%a+):")
  local mod = scheme and BACKENDS[scheme:lower()]
  if not mod then
    return nil, _M.error("unknown store URL '" .. url .. "' (expected sqlite:PATH or redis://HOST:PORT/DB)",
                         { reason = "invalid" })
  end
  local ok, backend = pcall(require, mod)
  if not ok then
    return nil, _M.error("the " .. scheme .. " store is not available: " .. tostring(backend):match("^[^\n]*"),
                         { reason = "unsupported" })
  end
  local s, err = backend.open(url, opts)   -- not a tail call: the backend raises at level 3
  return s, err
end

return _M
