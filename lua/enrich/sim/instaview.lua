-- InstaView Sourcing API enrichment runs, as providers/instaview.md
-- describes: Bearer keys, the {success,data,error,timestamp} envelope, the
-- NestJS-style 429 body with Retry-After, per-minute and per-hour windows
-- with the six X-RateLimit-* headers on every response, 1..10 profile ids
-- per run, 202 `processing` on the results route, then 200 `completed` or
-- `failed`, 1 credit per successfully enriched profile (prepaid pre-check).
local util = require "enrich.sim.util"

local ipairs, pairs, type, tostring, tonumber, setmetatable, next =
  ipairs, pairs, type, tostring, tonumber, setmetatable, next
local floor, ceil, max = math.floor, math.ceil, math.max
local null, array = util.null, util.array

local MAX_BATCH = 10
local FIRST = { "Ilse", "Tomas", "Ada", "Mara", "Oskar", "Rina", "Nell", "Ivo", "Lena", "Pavol" }
local LAST = { "Marrow", "Vey", "Kettle", "Quill", "Fenn", "Holloway", "Ortega", "Novak", "Hruska", "Bell" }
local ITEM_ERRORS = {
  failed = "Profile enrichment failed",
  timeout = "Profile enrichment timed out",
  retry = "Profile enrichment failed, try again later",
  rejected = "Profile id rejected",
}

local _M = {
  _VERSION = "0.1.0",
  DEFAULTS = {
    rate_limit = { minute = 60, hour = 2000 },  -- per key; false = off
    credits = 100000,       -- prepaid balance; false = postpaid (never blocked)
    -- webhookId -> "no_enrich_events" (422) | "other_company" (403); any
    -- other UUID is a valid webhook. UUIDs ending 000000000422 / 000000000403
    -- behave the same without configuration.
    webhooks = {},
  },
  ROUTES = {
    { "POST", "^/sourcing/enrich$", "POST /sourcing/enrich", "submit" },
    { "GET", "^/sourcing/enrich/([^/]+)/results$", "GET /sourcing/enrich/{id}/results", "results" },
  },
}
local mt = { __index = _M }

function _M.new(sim, name)
  return setmetatable({ sim = sim, name = name, windows = {}, consumed = 0 }, mt)
end

local UNLIMITED = 1000000

-- The fixed windows of one key; counts only when `take` is set.
-- Returns allowed, headers, and on refusal the window that refused.
function _M:rate(key, take)
  local rl = self.sim:cfg(self.name).rate_limit
  local now = self.sim:now()
  local lim_m = rl and tonumber(rl.minute) or UNLIMITED
  local lim_h = rl and tonumber(rl.hour) or UNLIMITED
  local m_start, h_start = floor(now / 60) * 60, floor(now / 3600) * 3600
  local w = self.windows[key or ""]
  if not w then w = { m = m_start, h = h_start, mc = 0, hc = 0 }; self.windows[key or ""] = w end
  if w.m ~= m_start then w.m, w.mc = m_start, 0 end
  if w.h ~= h_start then w.h, w.hc = h_start, 0 end
  local refused
  if take and rl then
    if w.hc >= lim_h then refused = "hour"
    elseif w.mc >= lim_m then refused = "minute" end
  end
  if take and not refused then w.mc, w.hc = w.mc + 1, w.hc + 1 end
  local headers = {
    ["X-RateLimit-Limit-Minute"] = tostring(lim_m),
    ["X-RateLimit-Limit-Hour"] = tostring(lim_h),
    ["X-RateLimit-Remaining-Minute"] = tostring(max(0, lim_m - w.mc)),
    ["X-RateLimit-Remaining-Hour"] = tostring(max(0, lim_h - w.hc)),
    ["X-RateLimit-Reset-Minute"] = tostring(m_start + 60),
    ["X-RateLimit-Reset-Hour"] = tostring(h_start + 3600),
  }
  return not refused, headers, refused, now, lim_m, lim_h
end

local function with_headers(res, headers)
  res.headers = res.headers or {}
  for k, v in pairs(headers) do res.headers[k] = v end
  return res
end

function _M:envelope(status, code, message, details)
  return util.json(status, {
    success = false, data = null,
    error = { code = code, message = message, details = details or null },
    timestamp = util.iso(self.sim:now()),
  })
end

local function too_many(limit, reset, retry_after_body)
  return util.json(429, {
    statusCode = 429, message = "Rate limit exceeded", error = "Too Many Requests",
    retryAfter = retry_after_body, limit = limit, remaining = 0, reset = reset,
  })
end

local STATUS_CODES = {
  [400] = "VALIDATION_ERROR", [401] = "INVALID_API_KEY", [403] = "FORBIDDEN",
  [404] = "RESOURCE_NOT_FOUND", [405] = "METHOD_NOT_ALLOWED", [409] = "CONFLICT",
}

function _M:error_response(status, message, req)
  local _, headers = self:rate(util.bearer(req.headers), false)
  return with_headers(self:envelope(status, STATUS_CODES[status] or "INTERNAL_ERROR", message), headers)
end

function _M:fault_response(status, req)
  local _, headers, _, now, lim_m = self:rate(util.bearer(req.headers), false)
  if status == 429 then
    return with_headers(too_many(lim_m, floor(now / 60) * 60 + 60, 60), headers)
  end
  local res = self:envelope(status, STATUS_CODES[status] or "INTERNAL_ERROR", "simulated fault")
  return with_headers(res, headers)
end

function _M:balance()
  local c = self.sim:cfg(self.name).credits
  return { prepaid = type(c) == "number", balance = type(c) == "number" and c - self.consumed or null,
           consumed = self.consumed }
end

function _M:dispatch(route, req, caps)
  local key = util.bearer(req.headers)
  if not key then
    local _, headers = self:rate(nil, false)
    return with_headers(self:envelope(401, "INVALID_API_KEY",
      "Missing or malformed Authorization header; expected 'Bearer sk_...'"), headers)
  end
  if self.sim:is_revoked(key) then
    local _, headers = self:rate(key, false)
    return with_headers(self:envelope(401, "INVALID_API_KEY", "API key is invalid, revoked or expired"), headers)
  end
  local allowed, headers, window, now, lim_m, lim_h = self:rate(key, true)
  if not allowed then
    local reset = (window == "hour") and (floor(now / 3600) * 3600 + 3600) or (floor(now / 60) * 60 + 60)
    -- Header: seconds until the window resets. Body retryAfter: the window
    -- length — they disagree, as in the documented example; prefer the header.
    local res = too_many(window == "hour" and lim_h or lim_m, reset, window == "hour" and 3600 or 60)
    headers["Retry-After"] = tostring(max(1, ceil(reset - now)))
    return with_headers(res, headers)
  end
  return with_headers(self[route[4]](self, req, key, caps), headers)
end

local function webhook_problem(self, id)
  local setting = (self.sim:cfg(self.name).webhooks or {})[id]
  local code = id:lower():match("%-00000000(%x%x%x%x)$")
  if setting == "no_enrich_events" or code == "0422" then
    return self:envelope(422, "VALIDATION_ERROR",
      "Webhook is not subscribed to any enrichment event (ENRICH_COMPLETED, ENRICH_FAILED)",
      { field = "webhookId" })
  elseif setting == "other_company" or code == "0403" then
    return self:envelope(403, "FORBIDDEN", "Webhook belongs to another company", { field = "webhookId" })
  end
  return nil
end

function _M:submit(req, key)
  local body, why = util.json_object(req.body)
  if not body then
    return self:envelope(400, "VALIDATION_ERROR",
      why == "invalid" and "Request body is not valid JSON" or "Request body must be a JSON object")
  end
  local ids = body.profileIds
  if ids == nil then
    return self:envelope(400, "VALIDATION_ERROR", "profileIds is required", { field = "profileIds" })
  end
  if not util.is_array(ids) or next(ids) == nil then
    return self:envelope(400, "VALIDATION_ERROR", "profileIds must be a non-empty array of profile ids",
      { field = "profileIds" })
  end
  if #ids > MAX_BATCH then
    return self:envelope(400, "VALIDATION_ERROR", "profileIds must contain at most 10 ids",
      { field = "profileIds", max = MAX_BATCH, received = #ids })
  end
  for i, id in ipairs(ids) do
    if type(id) ~= "string" or id == "" then
      return self:envelope(400, "VALIDATION_ERROR", "profileIds[" .. (i - 1) .. "] must be a non-empty string",
        { field = "profileIds" })
    end
  end
  local webhook = body.webhookId
  if webhook ~= nil and webhook ~= null then
    if not util.is_uuid(webhook) then
      return self:envelope(400, "VALIDATION_ERROR", "webhookId must be a UUID", { field = "webhookId" })
    end
    local res = webhook_problem(self, webhook)
    if res then return res end
  end
  local bal = self:balance()
  if bal.prepaid and bal.balance < #ids then
    return self:envelope(402, "INSUFFICIENT_CREDITS",
      "Balance " .. bal.balance .. " is below the " .. #ids .. " credits required",
      { required = #ids, balance = bal.balance })
  end

  local sim = self.sim
  local items = {}
  for i, id in ipairs(ids) do
    items[i] = { id = id, outcome = sim:item_outcome(self.name, id, id) }
    sim:count_input(self.name, id)
  end
  local job = sim:new_job(self.name, {
    id = "enr_" .. sim:uuid(), key = key, items = items,
    outcome = util.job_outcome(ids), webhook = webhook,
  })
  sim:count_submission(self.name)
  return util.json(202, {
    success = true, requestId = job.id, status = "processing",
    message = "Enrichment request accepted and queued.",
    createdAt = util.iso(job.created), webhookId = (webhook ~= null) and webhook or nil,
  })
end

local function candidate(item)
  local h = util.hash(item.id)
  local first, last = FIRST[h % #FIRST + 1], LAST[floor(h / 16) % #LAST + 1]
  local handle = util.slug(first) .. "-" .. util.slug(last)
  local company = "Example " .. LAST[floor(h / 256) % #LAST + 1] .. " Labs"
  local emails = array()
  if item.outcome == "found" then
    emails = { util.slug(first) .. "." .. util.slug(last) .. "@" .. util.slug(company) .. ".example" }
  end
  return {
    profileId = item.id, name = first .. " " .. last,
    linkedinUrl = "https://www.linkedin.com/in/" .. handle .. "-" .. (h % 1000),
    matchScore = 50 + h % 50, rationale = "Simulated candidate.",
    skills = { "Lua", "SQL" }, headline = "Engineer at " .. company,
    location = "Bratislava, SK", currentCompany = company, currentRole = "Engineer",
    aiFitPoints = { "simulated fit" }, aiRedFlags = array(),
    aiDetailedRationale = array(), detailedExperience = array(),
    emails = emails,
  }
end

function _M:on_done(job)
  if job.outcome == "failed" or job.outcome == "cancelled" then job.enriched = 0; return end
  local n = 0
  for _, item in ipairs(job.items) do
    if item.outcome == "found" or item.outcome == "not_found" then n = n + 1 end
  end
  job.enriched = n
  self.consumed = self.consumed + n
  self.sim:count_credits(self.name, "charged", n)
end

function _M:results(_, key, caps)
  local id = caps[1]
  local job = self.sim:job(self.name, id)
  if not job or job.key ~= key then
    return self:envelope(404, "RESOURCE_NOT_FOUND", "Enrichment request not found",
      { resourceType = "EnrichmentRequest", resourceId = id })
  end
  local phase = self.sim:job_phase(job, true)
  if phase ~= "done" then
    return util.json(202, {
      success = true, requestId = job.id, status = "processing",
      message = "Enrichment is still processing. Poll again shortly.",
      createdAt = util.iso(job.created),
    })
  end
  local out = {
    success = true, requestId = job.id, createdAt = util.iso(job.created),
    completedAt = util.iso(job.finished_at),
  }
  if job.outcome == "failed" or job.outcome == "cancelled" then
    out.status, out.enrichedCount, out.failureCount, out.creditsConsumed = "failed", 0, #job.items, 0
    out.data = array()
    out.error = { code = "INTERNAL_ERROR", message = "Upstream index unavailable" }
    return util.json(200, out)
  end
  local data = {}
  for i, item in ipairs(job.items) do
    if item.outcome == "found" or item.outcome == "not_found" then
      data[i] = { profileId = item.id, success = true, candidate = candidate(item) }
    else
      data[i] = { profileId = item.id, success = false,
                  error = ITEM_ERRORS[item.outcome] or ITEM_ERRORS.failed }
    end
  end
  out.status, out.data = "completed", data
  out.enrichedCount, out.failureCount = job.enriched, #job.items - job.enriched
  out.creditsConsumed = job.enriched
  return util.json(200, out)
end

return _M
