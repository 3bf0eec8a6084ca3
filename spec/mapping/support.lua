-- Shared by the mapping specs: the sheet's example exchanges as fixtures and
-- the fake ctx users get too (enrich.testing), so a provider's functions run
-- without the engine or the network.
local cjson = require "cjson"
local testing = require "enrich.testing"

local support = {}

--- spec/fixtures/<provider>/<name>.json, decoded.
function support.fixture(provider, name)
  local f = assert(io.open("spec/fixtures/" .. provider .. "/" .. name .. ".json", "rb"))
  local s = f:read("*a")
  f:close()
  return cjson.decode(s)
end

-- The specs' own answer form: a function may return a res such as
-- { status = 202, json = … } (only those keys: status, json, body, headers),
-- an answer with that status and body.
local RES_KEYS = { status = true, json = true, body = true, headers = true }
local function as_answer(r)
  if type(r) ~= "table" or getmetatable(r) ~= nil or type(r.status) ~= "number" then return r end
  for k in pairs(r) do if not RES_KEYS[k] then return r end end
  local body = r.json
  if body == nil then body = r.body end
  return testing.answer(r.status, body, r.headers)
end

--- enrich.testing.ctx for `provider` (its name): ctx:call answers from
--- `answers` — one function(req) -> res, err for every call, or a table
--- keyed by "METHOD path" whose values are a body (status 200), a
--- testing.answer(...) or a function(req) -> res, err. A key with no answer
--- is a 404.
function support.fake_ctx(provider, answers)
  local wrapped
  if type(answers) == "function" then
    wrapped = function(req, ctx)
      local r, err = answers(req, ctx)
      return as_answer(r), err
    end
  else
    -- Read at each call: a spec may change its answers between two calls.
    wrapped = setmetatable({}, { __index = function(_, k)
      local v = answers and answers[k]
      if type(v) ~= "function" then return v end
      return function(req, ctx)
        local r, err = v(req, ctx)
        return as_answer(r), err
      end
    end })
  end
  return testing.ctx { provider = provider, answers = wrapped }
end

return support
