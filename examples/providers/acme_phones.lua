-- A provider defined in a user's own file, from scratch: "Acme" resells
-- tamtam's phone lookups under its own URL, with its own cadence. Nothing
-- here is built into lua-enrich; see docs/writing-a-provider.md.
local errors = require "enrich.errors"

local P = {
  name = "acme_phones",
  base_url = "https://acme.example/api",
  batch_size = 25,                               -- Acme's own limit
  rate = { per_second = 5, burst = 5 },
  poll = { interval = 1, factor = 2, max_interval = 8, deadline = 300 },
  keep_inputs = false,       -- check needs only part.count: sent inputs are dropped
}

function P.auth(key) return { Authorization = key } end

function P.prepare(person)
  if type(person) ~= "table" or type(person.linkedin_url) ~= "string" then
    return nil, "Acme needs a linkedin_url"
  end
  return { enrichment_type = "phone", linkedin_url = person.linkedin_url }
end

function P.submit(ctx, part)
  local res, err = ctx:call { method = "POST", path = "/v2/people/enrich", json = { requests = part.inputs } }
  if not res then return nil, err end
  return res.json.request_id
end

function P.check(ctx, part)
  local res, err = ctx:call { path = "/v2/people/enrich/" .. ctx.escape(part.id) }
  if not res then return nil, err end
  if res.json.status == "PROCESSING" then return false end
  if res.json.status ~= "COMPLETED" then
    part.error = ctx:error("server", "Acme job " .. tostring(res.json.status))
    return true
  end
  for k, r in ipairs(res.json.results) do
    if k > part.count then break end         -- answers in request order, one per input
    local phone = type(r.phones) == "table" and r.phones[1]
    if r.status == "FAILED" then
      part.items[k] = { status = "failed", raw = r,
                        error = errors.new("server", r.error, { provider = P.name, retryable = false }) }
    else
      part.items[k] = { status = phone and "found" or "not_found", raw = r,
                        phones = phone and { { number = phone.number, region = phone.region } } or {},
                        phone = phone and phone.number }
    end
  end
  return true
end

return P
