-- instaview: email discovery for InstaView's own candidate profiles, a batch
-- of profile ids per run. POST /sourcing/enrich -> requestId (enr_...); GET
-- /sourcing/enrich/{id}/results answers HTTP 202 while the run is processing
-- and 200 once it is completed or failed. (shared/providers/instaview.md)
local errors = require "enrich.errors"
local N = require "enrich.normalize"

local type, ipairs, pairs, tonumber = type, ipairs, pairs, tonumber

local P = {
  name = "instaview",
  base_url = "https://api.instaview.sk",
  batch_size = 10,                          -- documented maximum of profileIds per run
  options = {},                             -- no submit options
  idempotent_submit = false,                -- a re-POST starts (and bills) a new run
}

---------------------------------------------------------------------------
-- ASSUMPTIONS (the public docs were silent; see the sheet). Kept here only.
--
-- Rate: the default key allows 60 requests a minute and 2 000 an hour,
-- counted in fixed windows. A bucket of 0.5/s with a burst of 10 sends at
-- most 10 + 30 = 40 in any minute and 10 + 1800 = 1810 in any hour, so it
-- stays under both tiers even when a burst straddles a window boundary, and
-- leaves room for the dashboard or a second process on the same key. Keys on
-- the Trial plan (30/min, 500/h) need a client `rate` option of their own.
P.rate = { per_second = 0.5, burst = 10 }
-- Cadence (sheet §10): poll every 2-3 s, give up after ~3 min (a run of 10
-- profiles with a 10 s budget each ends well inside that).
P.poll = { interval = 2, factor = 1.25, max_interval = 3, deadline = 180 }
-- A failed profile (`success: false`, "timeout or error", not billed) is an
-- item error that may go well if the profile is sent again: code `server`,
-- retryable. Its reason is a string or {code, message} (sheet §3.2).
local ITEM_ERROR_CODE, ITEM_ERROR_RETRYABLE = "server", true
-- InstaView gives addresses without a verdict: every address is `unknown`,
-- and the best pick is the first one listed.
local EMAIL_STATUS = "unknown"
-- A run-level failure carries error = {code, message} (exact nesting unknown;
-- a bare string is read too).
---------------------------------------------------------------------------

--- An input { id = <profile id> } -> the profile id (trimmed), or nil and a
--- reason when there is nothing to send.
function P.prepare(input)
  if type(input) ~= "table" then return nil, "an input must be a table { id = <profile id> }" end
  local id = N.text(input.id)
  if not id then return nil, "needs id (an InstaView profile id string)" end
  local bad = N.check_utf8(input, { "id" })
  if bad then return nil, bad end
  if input.custom ~= nil and type(input.custom) ~= "table" then return nil, "custom must be a table" end
  return id
end

function P.submit(ctx, part)
  local ids = {}
  for k, id in ipairs(part.inputs) do ids[k] = id end
  local res, err = ctx:call { method = "POST", path = "/sourcing/enrich", json = { profileIds = ids } }
  if not res then return nil, err end
  local id = N.str(res.json.requestId)
  if not id then
    -- A 2xx: instaview may well have accepted (and will charge) it. Never resent,
    -- never retryable: the message says so.
    return nil, ctx:error("protocol", "submit answer (HTTP " .. res.status .. ") has no requestId: instaview "
      .. "may have accepted the request (and charge it); not resent", { status = res.status, retryable = false })
  end
  return id
end

--- One `data` entry -> a normalized item (the job completes the rest).
--- Any value in it may be null or mistyped: read through the typed readers.
function P.item(d)
  d = N.object(d)
  if not d then return N.unreadable("instaview", "result entry is not a JSON object") end
  if d.success == false then
    local reason = N.value(d.error)
    local e = N.object(reason)
    return { status = "failed", raw = d,
             error = errors.new(ITEM_ERROR_CODE, N.message(reason) or "profile enrichment failed", {
               provider = "instaview", retryable = ITEM_ERROR_RETRYABLE,
               provider_code = e and N.text(e.code) or nil }) }
  end
  if d.success ~= true then
    return N.unreadable("instaview", "result entry without a boolean success", d)
  end
  local candidate = N.object(d.candidate)
  if not candidate then
    return N.unreadable("instaview", "successful entry without a candidate object", d)
  end
  local emails = {}
  for _, address in ipairs(N.list(candidate.emails)) do
    address = N.text(address)
    if address then emails[#emails + 1] = { address = address, status = EMAIL_STATUS } end
  end
  local email = emails[1] and emails[1].address
  return { status = email and "found" or "not_found", emails = emails, email = email,
           fields = candidate, raw = d }
end

--- The run state of a results answer: false while processing, true when
--- terminal, nil and a message when the body says something undocumented.
--- HTTP 202 alone means "processing", whatever the body holds.
function P.state(status, body)
  if status == 202 then return false end
  if type(body) ~= "table" then return nil, "results answer is not a JSON object" end
  if body.status == "completed" or body.status == "failed" then return true end
  if body.status == "processing" then return false end
  return nil, "unknown status '" .. N.show(body.status) .. "'"
end

function P.check(ctx, part)
  -- The body of a 202 does not matter; a 200 must be JSON (checked below).
  local res, err = ctx:call { path = "/sourcing/enrich/" .. ctx.escape(part.id) .. "/results",
                              expect_json = false }
  if not res then return nil, err end
  local body = res.json
  local done, why = P.state(res.status, body)
  if done == nil then
    -- A garbled body is usually a passing fault: poll again rather than fail.
    return nil, ctx:error("protocol", why, { status = res.status, retryable = type(body) ~= "table" })
  end
  if type(body) == "table" then part.raw = body end
  if not done then return false end
  part.credits = N.count(body.creditsConsumed)
  if body.status == "failed" then
    local e = N.value(body.error)
    local o = N.object(e)
    part.error = ctx:error("server", N.message(e) or "instaview reports the run failed",
                           { provider_code = o and N.text(o.code) or nil })
    return true
  end
  -- data: an array (null reads as empty); another type cannot be read.
  local data = N.array(body.data)
  if not data and body.data ~= nil and body.data ~= N.null then
    part.error = ctx:error("protocol", "completed answer whose data is not an array")
    return true
  end
  -- Correlate by profileId (several inputs may share one id); fall back to
  -- position for an entry without one (or one that is not even an object).
  local waiting = {}
  for k, id in ipairs(part.inputs) do
    local list = waiting[id]
    if not list then list = {}; waiting[id] = list end
    list[#list + 1] = k
  end
  local by_position = {}
  for pos, d in ipairs(data or {}) do
    local obj = N.object(d)
    local id = obj and N.str(obj.profileId)
    local list = id and waiting[id]
    if list and #list > 0 then
      part.items[table.remove(list, 1)] = P.item(obj)
    elseif part.inputs[pos] and not (obj and obj.profileId ~= nil and obj.profileId ~= N.null) then
      by_position[pos] = d
    end
  end
  for pos, d in pairs(by_position) do
    if not part.items[pos] then part.items[pos] = P.item(d) end
  end
  -- A final answer leaves nothing unset: what it did not answer is failed.
  N.settle(part, "instaview")
  return true
end

-- The standard envelope {success:false, error:{code, message}}, or the
-- NestJS-style 429 {statusCode, message, error, retryAfter}.
function P.error(c)
  local b = N.object(c.json) or {}
  local fields = {}
  local e = N.object(b.error)
  if e then
    if N.text(e.code) == "INSUFFICIENT_CREDITS" then fields.code = "credits" end
    return N.text(e.message), N.text(e.code), fields
  end
  -- The Retry-After header wins over this (the engine applies it after).
  local after = N.count(tonumber(b.retryAfter))
  if after then fields.retry_after = after end
  return N.text(b.message), N.text(b.error), fields
end

return P
