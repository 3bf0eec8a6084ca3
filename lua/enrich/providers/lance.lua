-- lance: contact enrichment of Lance's own people (person UUIDs), one
-- record per (person, field). POST …/enrichment/batch creates (or returns
-- the existing) records; POST …/enrichment/batch/query polls them; once a
-- record is finished with data, GET …/prospects/person/{id} reads the
-- emails/phones the enrichment wrote onto the person.
-- (shared/providers/lance.md)
local errors = require "enrich.errors"
local N = require "enrich.normalize"

local type, ipairs, pairs, tostring, lower, min =
  type, ipairs, pairs, tostring, string.lower, math.min

local P = {
  name = "lance",
  base_url = "https://app.lance.so",             -- ASSUMPTION (sheet §1), see below
  batch_size = 100,                              -- batch trigger takes 1..100 ids (sheet §4.3)
  kinds = { email = true, phone = true },
  options = { kind = true },
  idempotent_submit = true,                      -- existing pending/finished records come back, free
}

---------------------------------------------------------------------------
-- ASSUMPTIONS (the public docs were silent; shared/providers/lance.md)
--
-- * Host: app.lance.so is the production API host (sheet §1).
-- * Rate: not documented; stay under ~5 requests/s per key (sheet §7), start
--   retry backoff at 1 s.
-- * Cadence: poll every ~5 s at first, growing to 30 s; give up after
--   15 min, the documented 800 s server ceiling plus margin (sheet §9).
-- * Ids: the batch endpoint documents person ids as UUID v4, so anything
--   else is refused as `invalid` before sending (one bad id would make Lance
--   refuse the whole batch).
-- * A task missing from the batch-query answer has no record: a failed item
--   with code `not_found`, not pending (sheet §9).
-- * finished + dataFound:true but the person's emails/phones list is empty:
--   `not_found` (we have nothing to hand back). The whole list is reported,
--   not a diff against the person before the enrichment (sheet §4.6).
-- * Email strings carry no verdict: status `unknown`; phones no region.
-- * Item errors: `failed` → code `server`, `timeout` → `timeout`,
--   `cancelled` → `cancelled`; none is retryable within the job.
-- * 400 "Organization ID is missing" is a key without an organisation: `auth`.
-- * Prices are not published (sheet §8): no `credits` are reported.
P.rate = { per_second = 5, burst = 5 }
P.poll = { interval = 5, factor = 1.2, max_interval = 30, deadline = 900 }
P.retry = { base = 1 }
local FIELD = { email = "emails", phone = "phones" }
local ITEM_ERROR = { failed = "server", timeout = "timeout", cancelled = "cancelled" }
local MAX_QUERY = 200                            -- batch query takes 1..200 tasks (sheet §4.5)
---------------------------------------------------------------------------

local TERMINAL = { finished = true, failed = true, timeout = true, cancelled = true }
P.TERMINAL = TERMINAL

--- True when s looks like a UUID v4 (8-4-4-4-12 hex, version 4, RFC variant).
function P.is_uuid_v4(s)
  if type(s) ~= "string" then return false end
  local v, variant = s:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-(%x)%x%x%x%-(%x)%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$")
  return v == "4" and variant ~= nil and lower(variant):find("^[89ab]$") ~= nil
end

--- { id = <person uuid> } -> { id, field }; nil and a reason otherwise.
function P.prepare(input, opts)
  if type(input) ~= "table" then return nil, "a lance input must be a table { id = <person uuid> }" end
  local id = N.text(input.id)
  if not id then return nil, "needs id (a Lance person UUID)" end
  local bad = N.check_utf8(input, { "id" })
  if bad then return nil, bad end
  if not P.is_uuid_v4(id) then return nil, "id must be a Lance person UUID (v4)" end
  if input.custom ~= nil and type(input.custom) ~= "table" then return nil, "custom must be a table" end
  return { id = id, field = FIELD[opts.kind or "email"] }
end

-- Records are matched by (entityId, field); ids compared case-insensitively.
local function key_of(id) return lower(tostring(id)) end

--- The distinct person ids of a part, in order.
local function persons_of(part)
  local list, seen = {}, {}
  for _, input in ipairs(part.inputs) do
    local k = key_of(input.id)
    if not seen[k] then seen[k] = true; list[#list + 1] = input.id end
  end
  return list
end

function P.submit(ctx, part)
  local field = part.inputs[1].field
  local res, err = ctx:call {
    method = "POST", path = "/api/v1/operations/enrichment/batch",
    json = { personIds = persons_of(part), field = field },
    idempotent = true,                           -- documented: existing records come back, uncharged
  }
  if not res then return nil, err end
  local records = N.array(res.json)
  if not records then
    return nil, ctx:error("protocol", "batch answer is not an array of records")
  end
  -- Keep the records per person: their ids and first states.
  part.records = {}
  local first_id
  for _, r in ipairs(records) do
    r = N.object(r)
    if r and N.text(r.entityId) and r.field == field then
      part.records[key_of(r.entityId)] = r
      first_id = first_id or N.text(r.id)
    end
  end
  if not first_id then
    return nil, ctx:error("protocol", "batch answer has no record for the " .. field .. " of these people")
  end
  -- The part's id: the record id of its first person (records are stable
  -- per (person, field) while pending or finished).
  local lead = part.records[key_of(part.inputs[1].id)]
  return (lead and N.text(lead.id)) or first_id
end

--- A terminal or pending record -> a normalized item. For finished records
--- with data the item is completed from the person by P.person_item.
function P.record_item(r)
  if r == nil then
    return { status = "failed",
             error = errors.new("not_found", "lance has no enrichment record for this person",
                                { provider = "lance", retryable = false }) }
  end
  local status = N.str(r.status)
  if status == "pending" then return { status = "pending", raw = r } end
  if status == "finished" then
    if r.dataFound == true then return { status = "found", raw = r } end
    if r.dataFound == false then return { status = "not_found", raw = r } end
    if r.dataFound == nil or r.dataFound == N.null then
      return { status = "pending", raw = r }     -- finished, dataFound not yet set: look again
    end
    return N.unreadable("lance", "finished record whose dataFound is not a boolean", r)
  end
  local code = ITEM_ERROR[status]
  if not code then                               -- not a documented status
    return N.unreadable("lance", "unknown record status '" .. N.show(r.status) .. "'", r)
  end
  return { status = "failed", raw = r,
           error = errors.new(code, N.message(r.error) or ("enrichment " .. status),
                              { provider = "lance", provider_code = status, retryable = false }) }
end

--- A finished record with data plus the person read afterwards -> the item.
function P.person_item(r, person, field)
  local emails, phones = {}, {}
  person = N.object(person)
  if not person then return N.unreadable("lance", "person answer is not a JSON object", r) end
  for _, e in ipairs(N.list(person.emails)) do
    if N.text(e) then emails[#emails + 1] = { address = N.text(e), status = "unknown" } end
  end
  for _, p in ipairs(N.list(person.phones)) do
    if N.text(p) then phones[#phones + 1] = { number = N.text(p), region = nil } end
  end
  local email, phone = N.best_email(emails), phones[1] and phones[1].number
  local found = (field == "phones" and phone) or (field ~= "phones" and email)
  return { status = found and "found" or "not_found", emails = emails, phones = phones,
           email = email, phone = phone, raw = r }
end

-- One batch query for the given person ids; returns records by person key.
local function query(ctx, ids, field)
  local tasks = {}
  for i, id in ipairs(ids) do tasks[i] = { entityId = id, field = field } end
  local res, err = ctx:call {
    method = "POST", path = "/api/v1/operations/enrichment/batch/query",
    json = { tasks = tasks }, idempotent = true,   -- a read
  }
  if not res then return nil, err end
  local list = N.array(res.json)
  if not list then
    return nil, ctx:error("protocol", "batch query answer is not an array of records",
                          { status = res.status, retryable = false })
  end
  local out = {}
  for _, r in ipairs(list) do
    r = N.object(r)
    if r and N.text(r.entityId) and r.field == field then out[key_of(r.entityId)] = r end
  end
  return out
end

function P.check(ctx, part)
  local field = part.inputs[1].field
  part.state = part.state or {}                  -- person key -> terminal item
  local state = part.state
  -- Ask only about the people without a terminal item yet.
  local open = {}
  for _, id in ipairs(persons_of(part)) do
    if not state[key_of(id)] then open[#open + 1] = id end
  end
  local records = {}
  for first = 1, #open, MAX_QUERY do           -- bounded: #open / 200 queries
    local chunk = {}
    for i = first, min(first + MAX_QUERY - 1, #open) do chunk[#chunk + 1] = open[i] end
    local got, err = query(ctx, chunk, field)
    if not got then return nil, err end
    for k, r in pairs(got) do records[k] = r end
  end
  local raw = {}
  for _, id in ipairs(open) do
    local k = key_of(id)
    local r = records[k]
    raw[#raw + 1] = r
    local item = P.record_item(r)
    if item.status == "found" then
      local res, err = ctx:call { path = "/api/v1/entities/prospects/person/" .. ctx.escape(id) }
      if res then
        item = P.person_item(r, res.json, field)
      elseif err.retryable then
        return nil, err                          -- read it at the next poll
      else
        item = { status = "failed", raw = r, error = err }
      end
    end
    if item.status ~= "pending" then
      state[k] = item
    end
  end
  part.raw = raw
  local done = true
  for k, input in ipairs(part.inputs) do
    local item = state[key_of(input.id)]
    if item then
      -- Each input its own table: the engine writes index/input/custom into it.
      local copy = {}
      for f, v in pairs(item) do copy[f] = v end
      part.items[k] = copy
    else
      done = false
    end
  end
  return done
end

-- {error:{code,message,details}}.
function P.error(c)
  local b = N.object(c.json) or {}
  local e = N.object(b.error) or {}
  local msg = N.text(e.message) or N.text(b.message) or (type(b.error) == "string" and N.text(b.error)) or nil
  local code = N.text(e.code)
  local fields = {}
  if code == "INSUFFICIENT_CREDITS" then
    fields.code = "credits"
    fields.unprocessed = true                    -- nothing is created when the balance is short
  elseif c.status == 401 or code == "UNAUTHORIZED" then
    fields.code = "auth"                         -- documented as VALIDATION_ERROR or UNAUTHORIZED
  elseif msg and msg:lower():find("organization id is missing", 1, true) then
    fields.code = "auth"
  end
  return msg, code, fields
end

return P
