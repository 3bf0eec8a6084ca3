-- puffle: enrichment runs over Puffle's own leads. POST /api/enrichment
-- starts a run of one catalog contract (a slug) over explicit lead ids;
-- GET /api/enrichment/{id} until completed / failed / cancelled; then page
-- GET /api/enrichment/{id}/items for the per-lead results.
-- POST /api/enrichment/{id}/cancel cancels (best effort, no refund).
-- (shared/providers/puffle.md)
local errors = require "enrich.errors"
local N = require "enrich.normalize"

local type, ipairs, pairs, tostring, format, byte, floor, random, os_time, clock, io_open =
  type, ipairs, pairs, tostring, string.format, string.byte, math.floor, math.random,
  os.time, os.clock, io.open

local P = {
  name = "puffle",
  base_url = "https://app.puffle.ai",
  kinds = { email = true, phone = true },
  options = { kind = true, enrichment = true },
  idempotent_submit = true,                      -- every submit carries an idempotencyKey
}

---------------------------------------------------------------------------
-- ASSUMPTIONS (the public docs were silent; shared/providers/puffle.md)
--
-- * Slugs: kind email -> `work_email` (documented); kind phone ->
--   `phone_number` (not documented; DESIGN.md names it). opts.enrichment =
--   <slug> runs any other contract and wins over opts.kind.
-- * At most 500 leads per run (the list-import limit, sheet §3.2).
-- * Rate: not published; ~5 requests/s per key.
-- * Cadence: poll every 2-5 s, give up after 10 min (sheet §9).
-- * Credits: run.cost.actual, else run.cost.preview, read as { credits = n }
--   (the structure is not specified, sheet §3.3).
-- * Item results: `result` as the contract's outputSchema says; the email is
--   result.email, the phone result.phone or result.number (sheet §10 shows
--   { email } only). A completed item whose result is null/empty, or lacks
--   the email/phone its kind asks for, is `not_found`.
-- * Items: failed -> `failed` (code `server`); skipped with run_cancelled ->
--   `failed` code `cancelled`; skipped for another reason -> `failed` code
--   `invalid` (the lead did not qualify). A lead without any item in a
--   finished run -> `failed` code `not_found`.
-- * Error bodies: `{ error: "<message>" }`, 409 `{ reason }`, 402
--   `{ required, balance }` (sheet §5); read reason, error, message.
-- * A run `cancelled` that we did not cancel fails its part with code
--   `cancelled` (items mapped as the items endpoint reports them).
P.batch_size = 500
P.rate = { per_second = 5, burst = 10 }
P.poll = { interval = 2, factor = 1.5, max_interval = 5, deadline = 600 }
local SLUG = { email = "work_email", phone = "phone_number" }
local KIND_OF = { work_email = "email", phone_number = "phone" }
local PAGE = 100                                 -- items page size (documented maximum)
---------------------------------------------------------------------------

-- The text of an error value: "…" or { message = "…" }; nil otherwise.
local function message_of(v)
  if type(v) == "table" then return N.text(v.message) end
  return N.text(v)
end

-- A JSON number as text, integers without the ".0" decoders give them.
local function num(n)
  if type(n) == "number" and n == floor(n) and n > -1e15 and n < 1e15 then return format("%d", n) end
  return N.show(n)
end

local RUN_STATES = { pending = false, running = false, completed = true, failed = true, cancelled = true }

--- { id = <lead id> } -> { id, slug, kind }; nil and a reason otherwise.
function P.prepare(input, opts)
  if type(input) ~= "table" then return nil, "a puffle input must be a table { id = <lead id> }" end
  local id = input.id
  if type(id) == "number" then id = tostring(id) end
  id = N.text(id)
  if not id then return nil, "needs id (a Puffle lead id)" end
  if input.custom ~= nil and type(input.custom) ~= "table" then return nil, "custom must be a table" end
  local bad = N.check_utf8({ id = id, enrichment = opts.enrichment }, { "id", "enrichment" })
  if bad then return nil, bad end
  local slug = opts.enrichment
  if slug ~= nil and not N.text(slug) then return nil, "enrichment must be a catalog slug (a string)" end
  slug = N.text(slug) or SLUG[opts.kind or "email"]
  -- kind decides what "found" means: an email, a phone, or any output.
  return { id = id, slug = slug, kind = KIND_OF[slug] }
end

-- A key nobody else will send: random bytes from the system when it has
-- them, else a mix of clock, address and counter (LuaJIT's math.random is
-- not seeded per process, so it alone could repeat across processes).
local seq = 0
local function new_key()
  seq = seq + 1
  local hex
  local f = io_open and io_open("/dev/urandom", "rb")
  if f then
    local bytes = f:read(16)
    f:close()
    if bytes and #bytes == 16 then
      hex = bytes:gsub(".", function(c) return format("%02x", byte(c)) end)
    end
  end
  if not hex then
    local addr = tostring({}):match("0x(%x+)") or "0"
    hex = format("%s%08x%06x", addr, floor(random() * 0xffffffff), floor(clock() * 1e6) % 0xffffff)
  end
  return format("lua-enrich-%d-%s-%d", os_time(), hex, seq)
end
P.new_key = new_key

--- The distinct lead ids of a part, in order (a lead sent twice would be
--- billed twice).
local function leads_of(part)
  local list, seen = {}, {}
  for _, input in ipairs(part.inputs) do
    if not seen[input.id] then seen[input.id] = true; list[#list + 1] = input.id end
  end
  return list
end

function P.submit(ctx, part)
  -- Generated once per part and kept: a resend re-attaches to the same run.
  part.idempotency_key = part.idempotency_key or new_key()
  local res, err = ctx:call {
    method = "POST", path = "/api/enrichment",
    json = { enrichmentId = part.inputs[1].slug, mode = "persisted",
             scope = { type = "explicit_leads", leadIds = leads_of(part) },
             idempotencyKey = part.idempotency_key },
    idempotent = true,
  }
  if not res then return nil, err end
  local body = res.json
  local id = N.text(body.enrichmentRunId) or N.text(body.runId)
  if not id then return nil, ctx:error("protocol", "start answer has no enrichmentRunId") end
  part.reused = body.reusedExistingRun == true
  part.lead_count = N.count(body.leadCount)
  return id
end

--- Credits of a run: cost.actual, else cost.preview (see ASSUMPTIONS).
function P.credits(run)
  local cost = N.object(run) and N.object(run.cost)
  if not cost then return nil end
  for _, k in ipairs({ "actual", "preview" }) do
    local c = cost[k]
    local o = N.object(c)
    if o and N.count(o.credits) then return o.credits end
    if N.count(c) then return c end
  end
  return nil
end

local function has_value(t)
  if type(t) ~= "table" then return t ~= nil end
  for _, v in pairs(t) do
    if N.value(v) ~= nil then return true end
  end
  return false
end

--- One item of GET …/items -> a normalized item; `kind` is the input's
--- (email / phone / nil for another contract).
function P.item(it, kind)
  it = N.object(it)
  if not it then return N.unreadable("puffle", "item is not a JSON object") end
  local status = it.status
  if status == "pending" or status == "running" then return { status = "pending", raw = it } end
  if status == "failed" then
    local e = N.value(it.error)
    local details = N.object(e) and N.object(e.details)
    return { status = "failed", raw = it,
             error = errors.new("server", message_of(e) or "item failed", {
               provider = "puffle", retryable = false,
               provider_code = details and N.text(details.code) or nil }) }
  end
  if status == "skipped" then
    local reason = N.text(it.skippedReason)
    local code = reason == "run_cancelled" and "cancelled" or "invalid"
    return { status = "failed", raw = it,
             error = errors.new(code, "skipped" .. (reason and (": " .. reason) or ""),
                                { provider = "puffle", provider_code = reason, retryable = false }) }
  end
  if status ~= "completed" then                 -- not a documented status
    return N.unreadable("puffle", "unknown item status '" .. N.show(status) .. "'", it)
  end
  local result = N.value(it.result)
  local fields
  if type(result) == "table" then fields = result elseif result ~= nil then fields = { value = result } end
  local email, phone
  if fields then
    email = N.text(fields.email)
    phone = N.text(fields.phone) or N.text(fields.number)
    if type(result) == "string" and kind == "email" and result:find("@", 1, true) then email = result end
  end
  local item = { status = "not_found", fields = fields, raw = it, emails = {}, phones = {} }
  if email then item.email, item.emails = email, { { address = email, status = "unknown" } } end
  if phone then item.phone, item.phones = phone, { { number = phone, region = nil } } end
  local found
  if kind == "email" then found = email ~= nil
  elseif kind == "phone" then found = phone ~= nil
  else found = has_value(result) end
  if found then item.status = "found" end
  return item
end

-- A lead id as the answer gives it (a string; a number read as its text).
local function lead_of(it)
  local id = it.leadId
  if N.num(id) then return num(id) end
  return N.str(id)
end

-- Pages through the run's items and maps them onto part.items by leadId.
-- Paging follows what Puffle returns, not what was asked: a page may hold
-- fewer items than `limit` (its default is 50), and the next page starts at
-- page.nextCursor, else at the last item's id (documented: cursor = last
-- item id). Bounded: every page but the last must bring items and move the
-- cursor, and a run of n leads has n items, so n + 2 pages at most.
-- `finished` (the run is terminal): an input without any item is failed.
local function read_items(ctx, part, finished)
  local by_lead, n = {}, 0
  for _, input in ipairs(part.inputs) do
    if not by_lead[input.id] then n = n + 1 end
    by_lead[input.id] = true
  end
  local seen, unreadable = {}, false
  local cursor
  local max_pages = n + 2
  for page_no = 1, max_pages do
    local res, err = ctx:call {
      path = "/api/enrichment/" .. ctx.escape(part.id) .. "/items",
      query = { limit = PAGE, cursor = cursor },
    }
    if not res then return nil, err end
    local body = res.json
    local items = N.array(body.items)
    if not items and body.items ~= nil and body.items ~= N.null then
      return nil, ctx:error("protocol", "items answer whose items is not an array", { retryable = false })
    end
    local last_id
    for _, it in ipairs(items or {}) do
      local obj = N.object(it)
      local lead = obj and lead_of(obj)
      if obj then last_id = N.text(obj.id) or last_id end
      if lead and by_lead[lead] then
        seen[lead] = P.item(obj, part.inputs[1].kind)
      elseif not lead then
        unreadable = true                        -- an item we cannot place: whose is it?
      end
    end
    local page = N.object(body.page) or {}
    if page.hasMore ~= true then break end
    local next_cursor = N.text(page.nextCursor) or last_id
    if not next_cursor or next_cursor == cursor or not items or #items == 0 then
      return nil, ctx:error("protocol", "items page " .. page_no .. " says hasMore but does not move on",
                            { retryable = false })
    end
    if page_no == max_pages then
      return nil, ctx:error("protocol", "items did not end after " .. max_pages .. " pages for "
                            .. n .. " leads", { retryable = false })
    end
    cursor = next_cursor
  end
  for k, input in ipairs(part.inputs) do
    local item = seen[input.id]
    if item then
      local copy = {}
      for f, v in pairs(item) do copy[f] = v end
      part.items[k] = copy
    elseif finished and unreadable then
      part.items[k] = N.unreadable("puffle", "no readable item for this lead (the answer had unreadable ones)")
    elseif finished then
      part.items[k] = { status = "failed",
                        error = errors.new("not_found", "puffle reports no item for this lead",
                                           { provider = "puffle", retryable = false }) }
    end
  end
  return true
end

function P.check(ctx, part)
  local res, err = ctx:call { path = "/api/enrichment/" .. ctx.escape(part.id) }
  if not res then return nil, err end
  local run = N.object(res.json.run)
  local done = run and RUN_STATES[run.status]
  if done == nil then
    return nil, ctx:error("protocol", run and ("unknown run status '" .. N.show(run.status) .. "'")
                                          or "status answer without a run object")
  end
  part.raw = res.json
  part.credits = P.credits(run) or part.credits
  if not done then return false end
  if run.status == "failed" then
    local e = N.value(run.error)
    local details = N.object(e) and N.object(e.details)
    part.error = ctx:error("server", message_of(e) or "puffle reports the run failed",
      { provider_code = details and N.text(details.code) or "failed", retryable = false })
    return true
  end
  local ok, ierr = read_items(ctx, part, true)
  if not ok then return nil, ierr end
  if run.status == "cancelled" then
    part.error = ctx:error("cancelled", "puffle reports the run cancelled", { provider_code = "cancelled" })
  else
    -- completed: every item reached a terminal state (sheet §4); one the
    -- answer left unset or still pending cannot be read.
    N.settle(part, "puffle")
  end
  return true
end

--- Cancels the run (best effort at Puffle: running items still finish),
--- then reads the items once so finished ones are not lost.
function P.cancel(ctx, part)
  local path = "/api/enrichment/" .. ctx.escape(part.id)
  local cancelled = false
  for _ = 1, 2 do                                -- once more after a run_status_changed race
    -- No body needed back: a 2xx, 204 No Content included, is the answer.
    local res, err = ctx:call { method = "POST", path = path .. "/cancel", idempotent = true,
                                expect_json = false }
    if res or (err.status == 409 and err.provider_code == "run_not_cancellable") then
      cancelled = true                           -- already terminal counts as done
      break
    end
    if not (err.status == 409 and err.provider_code == "run_status_changed") then return nil, err end
  end
  if not cancelled then return nil, ctx:error("invalid", "puffle run status kept changing during cancel") end
  -- Credits were charged at dispatch and are not refunded: keep the figure.
  local status = ctx:call { path = path }
  local run = status and N.object(status.json.run)
  if run then
    part.raw = status.json
    part.credits = P.credits(run) or part.credits
  end
  read_items(ctx, part, false)
  return true
end

-- { error }, { reason }, { required, balance }, { message }.
function P.error(c)
  local b = N.object(c.json) or {}
  local reason = N.text(b.reason)
  local err = message_of(b.error)
  local msg = err or N.text(b.message) or reason
  local fields = {}
  if N.num(b.required) or c.status == 402 then
    fields.code = "credits"
    fields.unprocessed = true                    -- nothing is created when the balance is short
    if N.num(b.required) then
      msg = (msg and (msg .. ": ") or "") .. "needs " .. num(b.required) .. " credits, balance "
        .. num(N.value(b.balance))
    end
  end
  return msg, reason or (type(b.error) == "string" and N.text(b.error)) or nil, fields
end

return P
