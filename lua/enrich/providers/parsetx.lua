-- parsetx: merchant enrichment of bank/card transaction strings, through the
-- async job endpoint. POST /v1/enrich/async -> job_id; GET
-- /v1/enrich/jobs/{id} until the status is complete or failed; results come
-- in input order, each echoing its input. (shared/providers/parsetx.md)
local errors = require "enrich.errors"
local N = require "enrich.normalize"

local type, ipairs, format, os_time, ceil = type, ipairs, string.format, os.time, math.ceil

local P = {
  name = "parsetx",
  base_url = "https://api.parsetx.com",
  batch_size = 500,                         -- documented hard cap of the async endpoint
  options = {},                             -- no submit options
  idempotent_submit = false,                -- a re-POST creates (and bills) a new job
}

---------------------------------------------------------------------------
-- ASSUMPTIONS (the public docs were silent; see the sheet). Kept here only.
--
-- Rate: no request rate is documented (only monthly and daily quotas). A
-- polite bucket of 20 requests a second keeps thousands of polling jobs
-- from hammering the API; raise it with the client's `rate` option.
P.rate = { per_second = 20, burst = 20 }
-- Cadence (sheet §9): first poll after 1 s, then 2 s, backing off to 5 s;
-- give up after 10 min (a 500-item job full of cache misses takes minutes).
P.poll = { interval = 1, factor = 2, max_interval = 5, deadline = 600 }
-- Credits: the price is per cache-miss transaction (source "llm"); cache hits
-- and rejected items are free. part.credits counts the billed transactions.
local BILLED_SOURCE = "llm"
-- A `retry` item is a transient failure of that item: code `server`,
-- retryable (resend just that string). A `rejected` item failed the input
-- gate: code `invalid`, never retryable.
local RETRY_CODE = "server"
-- The 429 bodies are told apart by their documented messages (and, failing
-- that, by their extra fields); no Retry-After header is documented, and one
-- would win over what is computed here.
local MONTHLY = "^Monthly quota exceeded"
local DAILY = "^Daily token budget exceeded"
-- The daily budget resets at 00:00 UTC; os.time() counts POSIX seconds.
P.clock = os_time
---------------------------------------------------------------------------

-- The documented, preferred header (it wins over Authorization if both come).
function P.auth(key) return { ["X-API-Key"] = key } end

--- A transaction string, or { text = "...", custom = ... } -> the string to
--- send (unchanged: the provider sanitises it and echoes it back), or nil and
--- a reason.
function P.prepare(input)
  local text = input
  if type(input) == "table" then
    text = input.text
    if input.custom ~= nil and type(input.custom) ~= "table" then return nil, "custom must be a table" end
  end
  if type(text) ~= "string" then return nil, "a transaction must be a string or { text = <string> }" end
  if not N.text(text) then return nil, "empty transaction string" end
  local ok = N.utf8_valid(text)
  if not ok then return nil, N.check_utf8({ text = text }, { "text" }) end
  return text
end

function P.submit(ctx, part)
  local list = {}
  for k, text in ipairs(part.inputs) do list[k] = text end
  local res, err = ctx:call { method = "POST", path = "/v1/enrich/async", json = { transactions = list } }
  if not res then return nil, err end
  local id = N.str(res.json.job_id)
  if not id then
    -- A 2xx: parsetx may well have accepted (and will charge) it. Never resent,
    -- never retryable: the message says so.
    return nil, ctx:error("protocol", "submit answer (HTTP " .. res.status .. ") has no job_id: parsetx "
      .. "may have accepted the request (and charge it); not resent", { status = res.status, retryable = false })
  end
  return id
end

-- A documented string that may come as a number (an MCC of 5814).
local function code_text(v)
  if N.num(v) and v % 1 == 0 and v > -1e15 and v < 1e15 then return format("%d", v) end
  return N.str(v)
end

--- One EnrichResultItem -> a normalized item (the job completes the rest).
--- Any value in it may be null or mistyped: read through the typed readers.
function P.item(r)
  r = N.object(r)
  if not r then return N.unreadable("parsetx", "result item is not a JSON object") end
  if r.status == "complete" then
    local name = N.text(r.merchant)
    if not name then
      return N.unreadable("parsetx", "complete item without a merchant name", r)
    end
    return { status = "found", raw = r,
             merchant = { name = name, domain = N.str(r.domain), category = N.str(r.category),
                          mcc = code_text(r.mcc_code), subscription = N.bool(r.is_subscription),
                          confidence = N.num(r.confidence) },
             fields = { source = N.str(r.source) } }
  elseif r.status == "rejected" then
    return { status = "failed", raw = r,
             error = errors.new("invalid", "transaction rejected by the input gate (not retryable)",
                                { provider = "parsetx", provider_code = "rejected", retryable = false }) }
  elseif r.status == "retry" then
    return { status = "failed", raw = r,
             error = errors.new(RETRY_CODE, "transient failure for this transaction; resend it",
                                { provider = "parsetx", provider_code = "retry", retryable = true }) }
  end
  return { status = "failed", raw = r,
           error = errors.new("protocol", "unknown item status '" .. N.show(r.status) .. "'",
                              { provider = "parsetx", provider_code = N.text(r.status) }) }
end

-- Job status -> terminal?
local STATES = { queued = false, processing = false, complete = true, failed = true }

--- The job state of a status body: false, true, or nil and a message.
function P.state(body)
  if type(body) ~= "table" then return nil, "job answer is not a JSON object" end
  local done = STATES[body.status]
  if done == nil then return nil, "unknown status '" .. N.show(body.status) .. "'" end
  return done
end

function P.check(ctx, part)
  local res, err = ctx:call { path = "/v1/enrich/jobs/" .. ctx.escape(part.id) }
  if not res then return nil, err end
  local body = res.json
  local done, why = P.state(body)
  if done == nil then return nil, ctx:error("protocol", why, { status = res.status }) end
  part.raw = body
  if not done then return false end
  if body.status == "failed" then
    part.error = ctx:error("server", "parsetx reports the job failed (contact support with the job_id)",
                           { provider_code = "failed" })
    part.credits = 0
    return true
  end
  -- Results follow input order; each echoes its input. An echo that does not
  -- match its position is correlated by text instead. results may be null
  -- (nothing readable); another type cannot be read at all.
  local results = N.array(body.results)
  if not results and body.results ~= nil and body.results ~= N.null then
    part.error = ctx:error("protocol", "complete answer whose results is not an array")
    return true
  end
  local by_text = {}
  for k, text in ipairs(part.inputs) do
    local list = by_text[text]
    if not list then list = {}; by_text[text] = list end
    list[#list + 1] = k
  end
  local taken, billed = {}, 0
  local function take(k)
    taken[k] = true
    local list = by_text[part.inputs[k]]
    for i, x in ipairs(list) do if x == k then table.remove(list, i) break end end
    return k
  end
  for pos, r in ipairs(results or {}) do
    local obj = N.object(r)
    local echo = obj and N.str(obj.input)
    local k
    if part.inputs[pos] and not taken[pos] and (echo == nil or echo == part.inputs[pos]) then
      k = take(pos)
    elseif echo and by_text[echo] and by_text[echo][1] then
      k = take(by_text[echo][1])
    end
    if k then
      local item = P.item(r)
      part.items[k] = item
      if item.status == "found" and item.fields.source == BILLED_SOURCE then billed = billed + 1 end
    end
  end
  -- A final answer leaves nothing unset: what it did not answer is failed.
  N.settle(part, "parsetx")
  part.credits = billed
  return true
end

--- Seconds from `now` (POSIX seconds) to the next 00:00 UTC.
function P.until_midnight(now)
  return ceil(86400 - now % 86400)
end

-- {"error": "<message>"}, sometimes with extra fields (the 429 quotas).
function P.error(c)
  local b = N.object(c.json) or {}
  local msg = N.text(b.error)
  local fields = {}
  if c.status == 429 then
    if (msg and msg:find(MONTHLY)) or (not msg and b.limit ~= nil and b.usage ~= nil) then
      -- Waiting seconds will not restore a monthly quota.
      fields.code, fields.retryable = "credits", false
    elseif (msg and msg:find(DAILY)) or b.token_limit ~= nil then
      fields.code = "rate_limited"
      fields.retry_after = P.until_midnight(P.clock())
    end
  end
  return msg, nil, fields
end

return P
