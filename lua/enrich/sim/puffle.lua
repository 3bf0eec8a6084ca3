-- Puffle enrichment runs, as providers/puffle.md describes: Bearer keys, a
-- catalog of contracts, runs over explicit leads or a list, credits charged
-- up front (402 {required, balance} when short), idempotencyKey replays
-- (same run, reusedExistingRun: true, free), pending -> running ->
-- completed/failed/cancelled with live counts, cursor-paged items (default
-- 50, max 100), best-effort cancel (pending items skipped, no refund) with
-- 409 reasons.
-- luacheck: ignore 212/self
local util = require "enrich.sim.util"

local ipairs, pairs, type, tonumber, setmetatable =
  ipairs, pairs, type, tonumber, setmetatable
local floor, format = math.floor, string.format
local null, array = util.null, util.array

local MAX_LEADS = 500          -- ASSUMPTION (sheet §3.2): the list-import limit
local DEFAULT_LIMIT, MAX_LIMIT = 50, 100
local ITEM_STATUSES = { pending = true, running = true, completed = true, skipped = true, failed = true }
local COSTS = { EMAIL_LOOKUP = 2, PHONE_LOOKUP = 8, WEBSITE_ENRICHMENT = 1 }

local function contract(slug, name, subject, action, out_key, out_type)
  return {
    id = "enr_def_" .. slug, slug = slug, name = name,
    description = name .. " (simulated contract)", subject = subject, version = "3",
    enabled = true, visibility = "public",
    inputSchema = { type = "object", properties = {} },
    outputSchema = { type = "object", properties = { [out_key] = { type = out_type } } },
    defaultOutput = { target = "lead", attributeKey = slug },
    defaultOutputAttributeKey = slug,
    outputOverridePolicy = { allowAttributeKeyOverride = true },
    costModel = { creditAction = action },
    toolBinding = { type = "task", payloadMapper = { id = slug, version = 1 }, taskId = "task_" .. slug },
  }
end

-- ASSUMPTION (DESIGN.md): the phone contract's slug is phone_number.
local CATALOG = {
  contract("work_email", "Work email", "person", "EMAIL_LOOKUP", "email", "string"),
  contract("phone_number", "Phone number", "person", "PHONE_LOOKUP", "phone", "string"),
  contract("website_overview", "Website overview", "company", "WEBSITE_ENRICHMENT", "overview", "string"),
}
local BY_SLUG = {}
for _, c in ipairs(CATALOG) do BY_SLUG[c.slug] = c end

local ITEM_ERRORS = {
  not_found_work_email = "No work email found",
  failed = "Provider returned an error",
  timeout = "Provider timed out",
  retry = "Provider rate limited, gave up",
  rejected = "Lead has no usable identifiers",
}

local _M = {
  _VERSION = "0.1.0",
  CATALOG = CATALOG,
  DEFAULTS = {
    credits = 100000,  -- workspace balance
    lists = {},        -- listId -> array of lead ids, for { type = "list" } scopes
    page_max = false,  -- a number: serve at most that many items a page, whatever
                       -- `limit` asked (a provider that keeps to its default)
  },
  ROUTES = {
    { "GET", "^/api/enrichments$", "GET /api/enrichments", "catalog" },
    { "POST", "^/api/enrichment$", "POST /api/enrichment", "create" },
    { "GET", "^/api/enrichment/([^/]+)$", "GET /api/enrichment/{id}", "status" },
    { "GET", "^/api/enrichment/([^/]+)/items$", "GET /api/enrichment/{id}/items", "items" },
    { "POST", "^/api/enrichment/([^/]+)/cancel$", "POST /api/enrichment/{id}/cancel", "cancel" },
  },
}
local mt = { __index = _M }

function _M.new(sim, name)
  return setmetatable({ sim = sim, name = name, charged = 0, item_seq = 0, idem = {} }, mt)
end

local function err(status, message, extra)
  local body = { error = message }
  for k, v in pairs(extra or {}) do body[k] = v end
  return util.json(status, body)
end

function _M:error_response(status, message)
  return err(status, message)
end

function _M:fault_response(status)
  if status == 409 then return err(409, "run_status_changed", { reason = "run_status_changed" }) end
  if status == 402 then return util.json(402, { required = 1, balance = 0 }) end
  return err(status, status == 429 and "Too many requests" or "Internal server error")
end

function _M:balance()
  local total = tonumber(self.sim:cfg(self.name).credits) or 0
  return { balance = total - self.charged, charged = self.charged }
end

function _M:dispatch(route, req, caps)
  local key = util.bearer(req.headers)
  if not key then return err(401, "Unauthorized") end
  if self.sim:is_revoked(key) then return err(401, "Invalid or revoked API key") end
  return self[route[4]](self, req, key, caps)
end

function _M:catalog(req)
  local out = {}
  local id, q = req.args.id, req.args.q
  for _, c in ipairs(CATALOG) do
    local hit = true
    if type(id) == "string" and id ~= c.slug and id ~= c.id then hit = false end
    if hit and type(q) == "string" and q ~= "" then
      local l = q:lower()
      hit = c.slug:find(l, 1, true) or c.name:lower():find(l, 1, true) or c.description:lower():find(l, 1, true)
    end
    if hit then out[#out + 1] = c end
  end
  return util.json(200, { enrichments = array(out) })
end

local function scope_leads(self, scope)
  if type(scope) ~= "table" then return nil, err(400, "scope is required") end
  if scope.type == "explicit_leads" then
    local ids = scope.leadIds
    if not util.is_array(ids) or #ids < 1 then
      return nil, err(400, "scope.leadIds must be a non-empty array of lead ids")
    end
    if #ids > MAX_LEADS then
      return nil, err(400, "scope.leadIds must contain at most " .. MAX_LEADS .. " ids")
    end
    for _, id in ipairs(ids) do
      if type(id) ~= "string" or id == "" then return nil, err(400, "scope.leadIds must be strings") end
    end
    return ids
  elseif scope.type == "list" then
    if type(scope.listId) ~= "string" then return nil, err(400, "scope.listId is required") end
    local ids = (self.sim:cfg(self.name).lists or {})[scope.listId]
    if not util.is_array(ids) then return nil, err(404, "List not found") end
    return ids
  elseif scope.type == "filtered_list" then
    return nil, err(400, "filtered_list scopes are not supported yet")
  end
  return nil, err(400, "scope.type must be one of: explicit_leads, list, filtered_list")
end

local function start_answer(job, reused)
  return util.json(200, {
    enrichmentRunId = job.id, runId = job.id, status = job.view_status,
    leadCount = #job.items, triggerRunId = job.trigger, reusedExistingRun = reused,
  })
end

function _M:create(req, key)
  local body, why = util.json_object(req.body)
  if not body then
    return err(400, why == "invalid" and "Invalid JSON body" or "Body must be a JSON object")
  end
  if type(body.enrichmentId) ~= "string" or body.enrichmentId == "" then
    return err(400, "enrichmentId is required")
  end
  local c = BY_SLUG[body.enrichmentId]
  if not c then return err(404, "Enrichment not found: " .. body.enrichmentId) end
  local mode = body.mode or "persisted"
  if mode ~= "persisted" and mode ~= "preview" then
    return err(400, "mode must be one of: persisted, preview")
  end
  local idem = body.idempotencyKey
  if idem ~= nil and (type(idem) ~= "string" or idem == "") then
    return err(400, "idempotencyKey must be a non-empty string")
  end
  local sim = self.sim
  if idem then
    local job = self.idem[key .. "\0" .. idem]
    if job then
      self:refresh(job, false)
      sim:count_reused(self.name)
      return start_answer(job, true)
    end
  end
  local leads, res = scope_leads(self, body.scope)
  if not leads then return res end

  local required = (mode == "persisted") and #leads * COSTS[c.costModel.creditAction] or 0
  local bal = self:balance()
  if required > bal.balance then
    return util.json(402, { required = required, balance = bal.balance })
  end
  local items = {}
  for i, lead in ipairs(leads) do
    self.item_seq = self.item_seq + 1
    local ikey = lead .. "|" .. c.slug
    items[i] = { id = format("it_%08d", self.item_seq), lead = lead, key = ikey,
                 outcome = sim:item_outcome(self.name, ikey, lead) }
    sim:count_input(self.name, ikey)
  end
  local job = sim:new_job(self.name, {
    id = "run_" .. sim.rng:hex(16), key = key, items = items, contract = c, mode = mode,
    scope = body.scope, trigger = "trg_" .. sim.rng:hex(12), cost = required,
    attribute = type(body.output) == "table" and body.output.attributeKey or c.slug,
    write_policy = type(body.writePolicy) == "string" and body.writePolicy or "overwrite",
    outcome = util.job_outcome(leads),
  })
  job.view_status = "pending"
  if idem then self.idem[key .. "\0" .. idem] = job end
  if required > 0 then
    self.charged = self.charged + required
    sim:count_credits(self.name, "charged", required)
  end
  sim:count_submission(self.name)
  return start_answer(job, false)
end

-- Terminal item state for an outcome.
local function final_item(job, item)
  local o = item.outcome
  if job.outcome == "failed" then
    return "failed", null, { message = "Worker crashed while calling provider", details = null }
  end
  if o == "found" then
    if job.contract.slug == "phone_number" then
      return "completed", { phone = util.phone_of(item.key) }
    elseif job.contract.slug == "website_overview" then
      return "completed", { overview = "Simulated overview of " .. item.lead }
    end
    local l = util.slug(item.lead)
    return "completed", { email = l .. "@" .. l .. ".example" }
  elseif o == "not_found" then
    return "completed", null
  end
  return "failed", null, { message = ITEM_ERRORS[o] or ITEM_ERRORS.failed, details = null }
end

-- Moves the run on the clock and fixes each item's status.
function _M:refresh(job, count_poll)
  local sim = self.sim
  local phase = sim:job_phase(job, count_poll)
  local n = #job.items
  local done_upto, running_at
  if job.cancelled then
    done_upto = job.cancel_upto
  elseif phase == "done" then
    done_upto = n
  elseif phase == "queued" then
    done_upto = 0
  else
    done_upto = floor(sim:job_progress(job) * n)
    running_at = done_upto + 1
  end
  local counts = { pending = 0, running = 0, completed = 0, skipped = 0, failed = 0 }
  for i, item in ipairs(job.items) do
    if i <= done_upto then
      item.status, item.result, item.error = final_item(job, item)
      item.finished = item.finished or sim:now()
      item.started = item.started or item.finished
    elseif job.cancelled then
      item.status, item.result, item.error, item.skipped = "skipped", null, nil, "run_cancelled"
    elseif i == running_at then
      item.status = "running"
      item.started = item.started or sim:now()
    else
      item.status = "pending"
    end
    counts[item.status] = counts[item.status] + 1
  end
  job.counts = counts
  if job.cancelled then
    job.view_status = "cancelled"
  elseif phase == "done" then
    job.view_status = (job.outcome == "failed") and "failed" or "completed"
  else
    job.view_status = (phase == "queued") and "pending" or "running"
  end
  return job
end

function _M:on_done(job)
  if job.outcome == "cancelled" then
    -- Cancelled on the provider's side: nothing ran, pending items skipped.
    job.cancelled, job.cancel_upto, job.cancelled_at = true, 0, self.sim:now()
  end
end

local function ts(t) return t and util.iso(t) or null end

local function run_view(job)
  local done = job.done
  return { run = {
    id = job.id, status = job.view_status, mode = job.mode,
    enrichment = { id = job.contract.id, slug = job.contract.slug, version = 3, snapshot = null },
    scope = { type = job.scope.type, listId = job.scope.listId or null, requested = null,
              resolvedCount = #job.items, counts = job.counts },
    output = { target = "lead", attributeKey = job.attribute, writePolicy = job.write_policy,
               persistResults = job.mode == "persisted" },
    cost = { preview = { credits = job.cost }, actual = done and { credits = job.cost } or null },
    trigger = { correlationId = "corr_" .. job.id, triggerRunId = job.trigger, dispatchMetadata = null },
    error = (job.view_status == "failed")
      and { message = "Worker crashed while calling provider", details = { code = "upstream_timeout" } } or null,
    timing = {
      startedAt = (job.polls_seen > 0 or done) and util.iso(job.created) or null,
      completedAt = (done and not job.cancelled) and ts(job.finished_at) or null,
      cancelledAt = ts(job.cancelled_at),
      createdAt = util.iso(job.created),
      updatedAt = util.iso(job.finished_at or job.created),
    },
  } }
end

function _M:find(key, id)
  local job = self.sim:job(self.name, id)
  if job and job.key == key then return job end
  return nil
end

function _M:status(_, key, caps)
  local job = self:find(key, caps[1])
  if not job then return err(404, "Run not found") end
  return util.json(200, run_view(self:refresh(job, true)))
end

local function item_view(job, item)
  return {
    id = item.id, runId = job.id, leadId = item.lead,
    listId = job.scope.listId or null, membershipId = null,
    status = item.status, result = item.result or null,
    skippedReason = item.skipped or null, error = item.error or null,
    attempts = (item.status == "failed") and 2 or ((item.status == "completed") and 1 or 0),
    metadata = { inputSnapshot = null, leadSnapshot = null, result = item.result or null,
                 provider = "sim", providerSubmissionId = "sub_" .. item.id },
    timing = { startedAt = ts(item.started), completedAt = ts(item.finished),
               createdAt = util.iso(job.created), updatedAt = util.iso(item.finished or job.created) },
  }
end

function _M:items(req, key, caps)
  local job = self:find(key, caps[1])
  if not job then return err(404, "Run not found") end
  local a = req.args
  if a.status ~= nil and not ITEM_STATUSES[a.status] then
    return err(400, "status must be one of: pending, running, completed, skipped, failed")
  end
  local limit = DEFAULT_LIMIT
  if a.limit ~= nil then
    limit = tonumber(a.limit)
    if not limit or limit ~= floor(limit) or limit < 1 or limit > MAX_LIMIT then
      return err(400, "limit must be an integer between 1 and " .. MAX_LIMIT)
    end
  end
  local page_max = tonumber(self.sim:cfg(self.name).page_max)
  if page_max and page_max >= 1 and page_max < limit then limit = floor(page_max) end
  self:refresh(job, false)
  local cursor = type(a.cursor) == "string" and a.cursor ~= "" and a.cursor or nil
  local page, more = {}, false
  for _, item in ipairs(job.items) do   -- items are created in id order
    if (not cursor or item.id > cursor)
      and (a.status == nil or item.status == a.status)
      and (a.leadId == nil or item.lead == a.leadId) then
      if #page >= limit then more = true; break end
      page[#page + 1] = item_view(job, item)
    end
  end
  return util.json(200, {
    items = array(page),
    page = { limit = limit, nextCursor = more and page[#page].id or null, hasMore = more },
  })
end

function _M:cancel(_, key, caps)
  local job = self:find(key, caps[1])
  if not job then return err(404, "Run not found") end
  self:refresh(job, false)
  if job.done then
    return err(409, "run_not_cancellable", { reason = "run_not_cancellable" })
  end
  -- Best effort: finished items stay, the running one finishes, the rest skip.
  local upto = 0
  for i, item in ipairs(job.items) do
    if item.status ~= "pending" then upto = i end
  end
  job.cancelled, job.cancel_upto, job.cancelled_at = true, upto, self.sim:now()
  job.done, job.finished_at = true, self.sim:now()
  self:refresh(job, false)
  return util.json(200, { run = { id = job.id, status = "cancelled", cancelledAt = util.iso(job.cancelled_at) } })
end

return _M
