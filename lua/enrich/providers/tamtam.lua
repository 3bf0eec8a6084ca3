-- tamtam: people enrichment (email or phone), a batch per request.
-- POST /v2/people/enrich -> request_id; GET /v2/people/enrich/{id} until the
-- aggregate status is COMPLETED or FAILED. (shared/providers/tamtam.md)
local errors = require "enrich.errors"
local N = require "enrich.normalize"

local type, ipairs, pairs, tostring, tonumber = type, ipairs, pairs, tostring, tonumber

-- Once a part is sent the engine drops its inputs (keep_inputs = false):
-- a row marker only has to name one of the part's `count` positions.
local function in_part(part, k)
  return k >= 1 and k <= part.count and k % 1 == 0
end

local P = {
  name = "tamtam",
  base_url = "https://api.tamtam.ai/api",
  batch_size = 100,                              -- documented maximum per call
  kinds = { email = true, phone = true },
  options = { kind = true },
  rate = { per_second = 10, burst = 10 },        -- per key, all endpoints
  -- ASSUMPTION (sheet §9): first poll after ~2 s, then 3-5 s; give up at 15 min.
  poll = { interval = 2, factor = 1.5, max_interval = 15, deadline = 900 },
  retry = { base = 1 },                          -- provider's advice: start at 1 s
  idempotent_submit = false,                     -- a re-POST reserves credits again
  keep_inputs = false,                           -- check reads part.count, never the people
}

-- ASSUMPTION (sheet §8): email 1 credit, phone 10, charged for completed items.
local CREDITS = { email = 1, phone = 10 }

-- The raw key, without "Bearer ": the guide is explicit about it.
function P.auth(key) return { Authorization = key } end

-- The input fields that go to tamtam (custom never does: see below).
local SENT = { "first_name", "last_name", "full_name", "company", "domain", "linkedin_url" }

--- A person -> one request item; nil and a reason when there is nothing to
--- look up. custom travels as our own row marker, never the caller's data.
function P.prepare(input)
  if type(input) ~= "table" then return nil, "a person must be a table" end
  local first, last = N.text(input.first_name), N.text(input.last_name)
  if not (first and last) and input.full_name then
    local f, l = N.split_name(input.full_name)
    first, last = N.text(f), N.text(l)
  end
  local linkedin = N.text(input.linkedin_url)
  -- tamtam validates every item and answers 422 for the whole request when
  -- one has neither (the simulator does as the sheet's sibling endpoint
  -- says): one half-named person would sink every other of its batch.
  if not (linkedin or (first and last)) then
    return nil, "needs linkedin_url, or first_name and last_name (or a full_name of two words)"
  end
  if input.custom ~= nil and type(input.custom) ~= "table" then return nil, "custom must be a table" end
  local bad = N.check_utf8(input, SENT)
  if bad then return nil, bad end
  -- Fields set one by one: a constructor listing absent (nil) fields would
  -- still reserve room for them, in every waiting job. The kind is the
  -- job's (ctx.opts), not each person's.
  local p = {}
  p.first_name, p.last_name, p.linkedin_url = first, last, linkedin
  p.company_name, p.company_domain = N.text(input.company), N.text(input.domain)
  return p
end

function P.submit(ctx, part)
  local requests = {}
  local kind = ctx.opts.kind or "email"
  for k, item in ipairs(part.inputs) do
    requests[k] = {
      enrichment_type = kind, first_name = item.first_name,
      last_name = item.last_name, linkedin_url = item.linkedin_url,
      company_name = item.company_name, company_domain = item.company_domain,
      custom = { row = tostring(k) },
    }
  end
  local res, err = ctx:call { method = "POST", path = "/v2/people/enrich", json = { requests = requests } }
  if not res then return nil, err end
  local id = N.str(res.json.request_id)
  if not id then
    -- A 2xx: tamtam may well have accepted (and will charge) it. Never resent,
    -- never retryable: the message says so.
    return nil, ctx:error("protocol", "submit answer (HTTP " .. res.status .. ") has no request_id: tamtam "
      .. "may have accepted the request (and charge it); not resent", { status = res.status, retryable = false })
  end
  return id
end

--- One provider result (a JSON object) -> a normalized item (fields the
--- job completes). Every value read through the typed readers: any of
--- them may be null or of another type.
function P.item(r, kind)
  local status, err = N.str(r.status), N.message(r.error)
  if status == "FAILED" or err then
    return { status = "failed", raw = r,
             error = errors.new("server", err or "item failed", { provider = "tamtam", retryable = false }) }
  end
  if status == "PROCESSING" then return { status = "pending", raw = r } end
  if status ~= "COMPLETED" then
    return N.unreadable("tamtam", "unknown item status '" .. N.show(r.status) .. "'", r)
  end
  local emails, phones = {}, {}
  for _, e in ipairs(N.list(r.emails)) do
    e = N.object(e)
    local address = e and N.text(e.email)
    if address then emails[#emails + 1] = { address = address, status = N.email_status(e.status) } end
  end
  for _, p in ipairs(N.list(r.phones)) do
    p = N.object(p)
    local number = p and N.text(p.number)
    if number then phones[#phones + 1] = { number = number, region = N.str(p.region) } end
  end
  local email = N.best_email(emails, N.text(r.most_probable_email))
  local phone = phones[1] and phones[1].number
  local found = (kind == "phone" and phone) or (kind ~= "phone" and email)
  return { status = found and "found" or "not_found", emails = emails, phones = phones,
           email = email, phone = phone, raw = r }
end

local STATES = { PROCESSING = false, COMPLETED = true, FAILED = true }

-- Our row marker of a result (custom = { row = "k" }), or nil.
local function row_of(r)
  local custom = N.object(r.custom)
  local row = custom and custom.row
  if type(row) == "string" or type(row) == "number" then return tonumber(row) end
  return nil
end

function P.check(ctx, part)
  local res, err = ctx:call { path = "/v2/people/enrich/" .. ctx.escape(part.id) }
  if not res then return nil, err end
  local body = res.json
  local done = STATES[body.status]
  if done == nil then
    return nil, ctx:error("protocol", "unknown status '" .. N.show(body.status) .. "'")
  end
  part.raw = body
  if not done then return false end
  if body.status == "FAILED" then
    part.error = ctx:error("server", "tamtam reports the request failed", { provider_code = "FAILED" })
    return true
  end
  -- results: an array, or null (documented); anything else cannot be read.
  local results = N.array(body.results)
  if not results and body.results ~= nil and body.results ~= N.null then
    part.error = ctx:error("protocol", "COMPLETED answer whose results is not an array")
    return true
  end
  local kind = ctx.opts.kind or "email"
  local unreadable = {}
  for pos, r in ipairs(results or {}) do
    r = N.object(r)
    -- Correlate by our row marker; fall back to position (sheet §3.2).
    local k = r and row_of(r) or pos
    if in_part(part, k) then
      if r then
        part.items[k] = P.item(r, kind)
      else
        unreadable[k] = true
      end
    end
  end
  for k in pairs(unreadable) do
    part.items[k] = part.items[k] or N.unreadable("tamtam", "result " .. k .. " is not a JSON object")
  end
  -- A final answer leaves nothing unset or pending.
  N.settle(part, "tamtam")
  local charged = 0
  for k = 1, part.count do
    local status = part.items[k].status
    if status == "found" or status == "not_found" then charged = charged + CREDITS[kind] end
  end
  part.credits = charged
  return true
end

-- problem+json (title, detail, errors[]), or the bare 429 {"Message": ...}.
function P.error(c)
  local b = N.object(c.json) or {}
  local msg = N.text(b.detail) or N.text(b.title) or N.text(b.Message)
  local list = N.array(b.errors)
  local first = list and N.object(list[1])
  if first and N.text(first.message) then
    msg = (msg and (msg .. ": ") or "") .. first.message
  end
  local fields = {}
  -- ASSUMPTION (sheet §8): out of credits may come as 402 or a 422 saying so.
  if msg and msg:lower():find("credit", 1, true) then fields.code = "credits" end
  return msg, N.text(b.title), fields
end

return P
