-- Shared by the mapping specs: the sheet's example exchanges as fixtures and
-- a stand-in for the engine's ctx, so a provider's pure functions run
-- without the engine or the network.
local cjson = require "cjson"
local errors = require "enrich.errors"
local request = require "enrich.request"

local support = {}

--- spec/fixtures/<provider>/<name>.json, decoded.
function support.fixture(provider, name)
  local f = assert(io.open("spec/fixtures/" .. provider .. "/" .. name .. ".json", "rb"))
  local s = f:read("*a")
  f:close()
  return cjson.decode(s)
end

--- A ctx like the engine's: escape, null, opts, ctx:error tagging the
-- provider, and ctx:call answering from `answers`, each call recorded in
-- ctx.calls as { key = "METHOD path", req = req }.
-- answers: a function(req) -> res, err that answers every call; or a table
-- keyed by "METHOD path" whose values are a body (answered with status 200)
-- or a function(req) -> res, err. A key with no answer is a 404 not_found.
function support.fake_ctx(provider, answers)
  local ctx = { escape = request.escape, null = cjson.null, opts = {}, calls = {} }
  function ctx.error(_, code, message, fields)
    fields = fields or {}
    fields.provider = provider
    return errors.new(code, message, fields)
  end
  function ctx:call(req)
    local key = (req.method or "GET") .. " " .. req.path
    self.calls[#self.calls + 1] = { key = key, req = req }
    local a = answers
    if type(answers) == "table" then a = answers[key] end
    if type(a) == "function" then return a(req) end
    if a == nil then return nil, errors.new("not_found", "no answer for " .. key, { status = 404 }) end
    return { status = 200, headers = {}, json = a }
  end
  return ctx
end

return support
