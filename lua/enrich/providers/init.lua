-- The provider registry: names → provider files (plain Lua tables). The five
-- built-in ones load on first use from enrich/providers/<name>.lua; users add
-- their own with register(name, spec), or pass a spec table to enrich.client.
local type, ipairs, pcall, require, tostring = type, ipairs, pcall, require, tostring

local _M = { _VERSION = "0.1.0" }

local BUILTIN = { tamtam = true, instaview = true, lance = true, puffle = true, parsetx = true }
_M.BUILTIN = BUILTIN

local registry = {}

-- What a provider file must have, then what it may have, with their types;
-- in a fixed order so the same mistake always gets the same message.
local FIELDS = {
  { "base_url", "string", true }, { "prepare", "function", true },
  { "submit", "function", true }, { "check", "function", true },
  { "name", "string" }, { "batch_size", "number" }, { "kinds", "table" },
  { "options", "table" }, { "poll", "table" }, { "retry", "table" },
  { "rate", "table" }, { "auth", "function" }, { "cancel", "function" },
  { "error", "function" }, { "idempotent_submit", "boolean" },
  { "keep_inputs", "boolean" },
}

--- Raises with a clear message when spec is not a usable provider table.
function _M.validate(spec, name)
  if type(spec) ~= "table" then error("provider '" .. tostring(name) .. "' must be a table", 3) end
  for _, f in ipairs(FIELDS) do
    local k, t, required = f[1], f[2], f[3]
    if (required or spec[k] ~= nil) and type(spec[k]) ~= t then
      error("provider '" .. tostring(name) .. "': '" .. k .. "' must be a " .. t, 3)
    end
  end
  if spec.batch_size and spec.batch_size < 1 then
    error("provider '" .. tostring(name) .. "': batch_size must be >= 1", 3)
  end
  return spec
end

--- Adds (or replaces) a provider under `name`.
function _M.register(name, spec)
  if type(name) ~= "string" or name == "" then error("providers.register: name must be a string", 2) end
  _M.validate(spec, name)
  spec.name = spec.name or name
  registry[name] = spec
  return spec
end

--- The provider called `name`, or nil and a message.
function _M.get(name)
  if registry[name] then return registry[name] end
  if BUILTIN[name] then
    local ok, spec = pcall(require, "enrich.providers." .. name)
    if not ok then return nil, spec end
    spec.name = spec.name or name
    registry[name] = _M.validate(spec, name)
    return spec
  end
  return nil, "unknown provider '" .. tostring(name) .. "'"
end

return _M
