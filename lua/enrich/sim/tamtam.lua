-- Tamtam Public API v2 (people enrichment), as providers/tamtam.md describes:
-- raw key in Authorization (no "Bearer " for keys), problem+json errors with
-- errors[], a bare {"Message":"Too Many Requests"} 429 from a 10 req/s
-- token bucket per key shared by every route, batches of 1..100 people,
-- PROCESSING -> COMPLETED | FAILED, `results: null` while processing,
-- credits reserved at submit (email 1, phone 10), charged for completed
-- items and released for failed ones.
-- luacheck: ignore 212/self
local util = require "enrich.sim.util"

local ipairs, pairs, type, tostring, setmetatable =
  ipairs, pairs, type, tostring, setmetatable
local lower, concat = string.lower, table.concat
local null, array = util.null, util.array
local REASONS = util.REASONS

local MAX_BATCH = 100
local COST = { email = 1, phone = 10 }
local ITEM_FIELDS = {
  enrichment_type = "string", linkedin_url = "string", first_name = "string",
  last_name = "string", firstname = "string", lastname = "string",
  company_name = "string", company_domain = "string", custom = "table",
}
local ITEM_ERRORS = {
  failed = "person could not be resolved",
  timeout = "enrichment timed out",
  retry = "temporary failure, try again",
  rejected = "input rejected",
  cancelled = "enrichment cancelled",
  never = "enrichment did not finish",
}

local _M = {
  _VERSION = "0.1.0",
  DEFAULTS = {
    rate_limit = { rate = 10, burst = 10 },   -- per key, all routes; false = off
    credits = 100000,                          -- total MaxPeopleEnrichments credits
  },
  ROUTES = {
    { "POST", "^/v2/people/enrich$", "POST /v2/people/enrich", "submit" },
    { "GET", "^/v2/people/enrich/([^/]+)$", "GET /v2/people/enrich/{id}", "poll" },
    { "GET", "^/v2/credits$", "GET /v2/credits", "credits" },
  },
}
local mt = { __index = _M }

function _M.new(sim, name)
  return setmetatable({ sim = sim, name = name, buckets = {}, reserved = 0, charged = 0 }, mt)
end

local function problem(status, detail, req, errors)
  return util.json(status, {
    type = "about:blank",
    title = REASONS[status] or "Error",
    status = status,
    detail = detail,
    instance = "/api" .. (req and req.path or ""),
    errors = errors and array(errors) or nil,
  }, nil, "application/problem+json")
end

local function too_many()
  return util.json(429, { Message = "Too Many Requests" })
end

function _M:error_response(status, detail, req)
  return problem(status, detail, req)
end

function _M:fault_response(status, req)
  if status == 429 then return too_many() end
  return problem(status, "simulated fault", req)
end

function _M:balance()
  local total = tonumber(self.sim:cfg(self.name).credits) or 0
  return { total = total, used = self.charged + self.reserved,
           remaining = total - self.charged - self.reserved }
end

-- Auth, then the shared per-key bucket, then the route.
function _M:dispatch(route, req, caps)
  local auth = req.headers.authorization
  if type(auth) ~= "string" or auth:match("^%s*$") then
    return problem(401, "missing API key: send it raw in the Authorization header", req)
  end
  local key = auth
  local bearer = util.bearer(req.headers)
  if bearer then
    -- bearerAuth is for dashboard JWTs; API keys must not carry "Bearer ".
    if not bearer:match("^[%w_-]+%.[%w_-]+%.[%w_-]+$") then
      return problem(401, "API keys are sent raw in the Authorization header, without the Bearer prefix", req)
    end
    key = bearer
  end
  if self.sim:is_revoked(key) then
    return problem(401, "invalid or revoked API key", req)
  end
  local rl = self.sim:cfg(self.name).rate_limit
  if rl then
    local b = self.buckets[key]
    if not b then b = {}; self.buckets[key] = b end
    local rate = tonumber(rl.rate) or 10
    if not util.bucket_take(b, self.sim:now(), rate, tonumber(rl.burst) or rate) then
      return too_many()
    end
  end
  return self[route[4]](self, req, key, caps)
end

local function person_text(it)
  return concat({ it.linkedin_url or "", it.first_name or it.firstname or "",
    it.last_name or it.lastname or "", it.company_name or "", it.company_domain or "" }, " ")
end

-- Stable key of one input: the person and the enrichment type (not custom).
function _M.input_key(it)
  return lower(concat({ it.enrichment_type or "", it.linkedin_url or "",
    it.first_name or it.firstname or "", it.last_name or it.lastname or "",
    it.company_name or "", it.company_domain or "" }, "|"))
end

local function validate(body)
  local errors = {}
  local function add(location, message, value)
    if #errors < 50 then
      errors[#errors + 1] = { location = location, message = message, value = value }
    end
  end
  for k in pairs(body) do
    if k ~= "requests" then add("body." .. tostring(k), "unexpected property", k) end
  end
  local list = body.requests
  if list == nil then
    add("body.requests", "expected required property requests to be present", null)
  elseif not util.is_array(list) then
    add("body.requests", "expected array", null)
  elseif #list < 1 then
    add("body.requests", "expected at least 1 items", 0)
  elseif #list > MAX_BATCH then
    add("body.requests", "expected at most " .. MAX_BATCH .. " items", #list)
  else
    for i, it in ipairs(list) do
      local loc = "body.requests[" .. (i - 1) .. "]"
      if type(it) ~= "table" or util.is_array(it) and next(it) ~= nil then
        add(loc, "expected object", null)
      else
        for k, v in pairs(it) do
          local want = ITEM_FIELDS[k]
          if not want then
            add(loc .. "." .. tostring(k), "unexpected property", k)
          elseif type(v) ~= want then
            add(loc .. "." .. k, "expected " .. (want == "table" and "object" or want), null)
          end
        end
        if it.enrichment_type == nil then
          add(loc .. ".enrichment_type", "expected required property enrichment_type to be present", null)
        elseif not COST[it.enrichment_type] then
          add(loc .. ".enrichment_type", "expected value to be one of \"email, phone\"", it.enrichment_type)
        end
        local first = it.first_name or it.firstname
        local last = it.last_name or it.lastname
        if not it.linkedin_url and not (first and last) then
          add(loc, "expected linkedin_url, or first_name and last_name", null)
        end
      end
    end
  end
  return errors
end

function _M:submit(req, key)
  local body, why = util.json_object(req.body)
  if not body then
    if why == "invalid" then
      return problem(400, "request body is not valid JSON", req,
        { { location = "body", message = "invalid JSON", value = null } })
    end
    return problem(422, "validation failed", req, { { location = "body", message = "expected object", value = null } })
  end
  local errors = validate(body)
  if #errors > 0 then return problem(422, "validation failed", req, errors) end

  local cost, texts = 0, {}
  for i, it in ipairs(body.requests) do
    cost = cost + COST[it.enrichment_type]
    texts[i] = person_text(it)
  end
  local bal = self:balance()
  if cost > bal.remaining then
    -- ASSUMPTION (sheet §8): 402 problem+json when credits are short.
    return problem(402, "insufficient credits", req, { { location = "body.requests",
      message = "requires " .. cost .. " MaxPeopleEnrichments credits, " .. bal.remaining .. " remaining",
      value = cost } })
  end

  local sim = self.sim
  local items = {}
  for i, it in ipairs(body.requests) do
    local ikey = _M.input_key(it)
    items[i] = { input = it, key = ikey, cost = COST[it.enrichment_type],
                 outcome = sim:item_outcome(self.name, ikey, texts[i]) }
    sim:count_input(self.name, ikey)
  end
  local job = sim:new_job(self.name, {
    id = sim:uuid(), key = key, items = items, cost = cost,
    outcome = util.job_outcome(texts),
  })
  self.reserved = self.reserved + cost
  sim:count_credits(self.name, "reserved", cost)
  sim:count_submission(self.name)
  return util.json(202, { request_id = job.id, item_count = #items })
end

local function names_of(it)
  local first = it.first_name or it.firstname
  local last = it.last_name or it.lastname
  if not (first and last) and it.linkedin_url then
    local slug = it.linkedin_url:match("/in/([^/?#]+)") or ""
    first, last = slug:match("^([%a]+)%-([%a]+)")
  end
  return util.slug(first or "alex"), util.slug(last or "doe")
end

local function domain_of(it)
  if it.company_domain and it.company_domain ~= "" then return lower(it.company_domain) end
  if it.company_name and it.company_name ~= "" then return util.slug(it.company_name) .. ".example" end
  return "example.com"
end

local function result_of(item, job_failed)
  local it = item.input
  local r = {
    status = "COMPLETED", enrichment_type = it.enrichment_type,
    emails = array(), phones = array(), most_probable_email = "",
    custom = it.custom or null, error = "",
  }
  if job_failed then return r end
  if item.outcome == "found" then
    if it.enrichment_type == "email" then
      local first, last = names_of(it)
      local d = domain_of(it)
      r.emails = {
        { email = first .. "." .. last .. "@" .. d, status = "DELIVERABLE" },
        { email = first:sub(1, 1) .. last .. "@" .. d, status = "CATCH_ALL" },
        { email = first .. "@" .. d, status = "UNKNOWN" },
      }
      r.most_probable_email = r.emails[1].email
    else
      r.phones = { { number = util.phone_of(item.key), region = "US" } }
    end
  elseif item.outcome ~= "not_found" then
    r.status = "FAILED"
    r.error = ITEM_ERRORS[item.outcome] or ITEM_ERRORS.failed
  end
  return r
end

-- Settles the ledger once: completed items are charged, failed ones and
-- whole failed requests released.
function _M:on_done(job)
  local sim = self.sim
  local failed_job = job.outcome == "failed" or job.outcome == "cancelled"
  for _, item in ipairs(job.items) do
    local charge = not failed_job and (item.outcome == "found" or item.outcome == "not_found")
    self.reserved = self.reserved - item.cost
    if charge then
      self.charged = self.charged + item.cost
      sim:count_credits(self.name, "charged", item.cost)
    else
      sim:count_credits(self.name, "released", item.cost)
    end
  end
end

function _M:poll(req, _, caps)
  local job = self.sim:job(self.name, caps[1])
  if not job then return problem(404, "enrichment request not found", req) end
  local phase = self.sim:job_phase(job, true)
  local out = { request_id = job.id, item_count = #job.items }
  if phase ~= "done" then
    out.status, out.results = "PROCESSING", null
  elseif job.outcome == "failed" or job.outcome == "cancelled" then
    out.status, out.results = "FAILED", array()
  else
    out.status = "COMPLETED"
    local results = {}
    for i, item in ipairs(job.items) do results[i] = result_of(item) end
    out.results = results
  end
  return util.json(200, out)
end

function _M:credits()
  local b = self:balance()
  return util.json(200, { credits = { {
    credit_type = "MaxPeopleEnrichments", used_credits = b.used,
    total_credits = b.total, remaining_credits = b.remaining,
  } } })
end

return _M
