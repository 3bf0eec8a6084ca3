-- Lance contact enrichment, as providers/lance.md describes: one record per
-- (person UUID, field), Bearer auth, {error:{code,message,details}} errors,
-- idempotent triggers (an existing pending/finished record comes back and
-- costs nothing), batch (1..100 ids), bulk (manual selection), batch query
-- (1..200 tasks, tasks without a record omitted), and the person record
-- where found emails/phones land. Records end finished/failed/timeout/
-- cancelled; credits are charged only for finished records with data.
-- luacheck: ignore 212/self
local util = require "enrich.sim.util"

local ipairs, type, tonumber, setmetatable = ipairs, type, tonumber, setmetatable
local floor = math.floor
local null, array = util.null, util.array

local MAX_BATCH, MAX_QUERY, MAX_BULK = 100, 200, 1000
local FIELDS = { emails = true, phones = true }
local QUERY_FIELDS = { emails = true, phones = true, summary = true }
-- ASSUMPTION: prices are not published; these mirror tamtam's.
local COST = { emails = 1, phones = 10 }
local FIRST = { "Rina", "Mara", "Oskar", "Ada", "Nell", "Ivo", "Lena", "Tomas" }
local LAST = { "Holloway", "Quill", "Fenn", "Kettle", "Ortega", "Novak", "Marrow", "Vey" }
local ERRORS = {
  failed = "All providers returned errors",
  timeout = "Enrichment exceeded maximum processing time",
  retry = "All providers returned errors",
  rejected = "All providers returned errors",
}

local _M = {
  _VERSION = "0.1.0",
  DEFAULTS = {
    credits = 100000,     -- organisation balance
    ceiling_ms = 800000,  -- a pending record turns `timeout` after this long
  },
  ROUTES = {
    { "POST", "^/api/v1/operations/enrichment/batch/query$",
      "POST /api/v1/operations/enrichment/batch/query", "batch_query" },
    { "POST", "^/api/v1/operations/enrichment/batch$", "POST /api/v1/operations/enrichment/batch", "batch" },
    { "POST", "^/api/v1/operations/enrichment/bulk$", "POST /api/v1/operations/enrichment/bulk", "bulk" },
    { "POST", "^/api/v1/operations/enrichment/([^/]+)$", "POST /api/v1/operations/enrichment/{personId}", "trigger" },
    { "GET", "^/api/v1/operations/enrichment/([^/]+)$", "GET /api/v1/operations/enrichment/{personId}", "get" },
    { "GET", "^/api/v1/entities/prospects/person/([^/]+)$", "GET /api/v1/entities/prospects/person/{id}", "person" },
  },
}
local mt = { __index = _M }

function _M.new(sim, name)
  -- records: "personId|field" -> the current record's job
  return setmetatable({ sim = sim, name = name, records = {}, charged = 0, found = {} }, mt)
end

local CODES = {
  [400] = "VALIDATION_ERROR", [401] = "UNAUTHORIZED", [402] = "INSUFFICIENT_CREDITS",
  [403] = "FORBIDDEN", [404] = "NOT_FOUND", [405] = "METHOD_NOT_ALLOWED", [429] = "RATE_LIMITED",
}

local function err(status, code, message, details)
  return util.json(status, { error = { code = code, message = message, details = details } })
end

function _M:error_response(status, message)
  return err(status, CODES[status] or "INTERNAL_ERROR", message)
end

function _M:fault_response(status)
  local messages = { [429] = "Too many requests", [500] = "Internal server error" }
  return err(status, CODES[status] or "INTERNAL_ERROR", messages[status] or "Simulated fault")
end

function _M:balance()
  local total = tonumber(self.sim:cfg(self.name).credits) or 0
  return { balance = total - self.charged, charged = self.charged }
end

function _M:dispatch(route, req, caps)
  local token = util.bearer(req.headers)
  local is_person = route[4] == "person"
  -- The person GET is documented as not requiring authentication.
  if not token and not is_person then
    -- The enrichment pages document VALIDATION_ERROR for a missing user/org.
    return err(401, "VALIDATION_ERROR", "User ID or Organization ID is missing")
  end
  if token and self.sim:is_revoked(token) then
    return err(401, "UNAUTHORIZED", "Invalid or revoked token")
  end
  -- Simulator convention: a token containing "noorg" carries no organisation.
  if token and token:lower():find("noorg", 1, true) and not is_person then
    return err(400, "VALIDATION_ERROR", "Organization ID is missing")
  end
  return self[route[4]](self, req, token, caps)
end

local function record_key(person, field) return person .. "|" .. field end

local function bad_field(field)
  if not FIELDS[field] then
    return err(400, "VALIDATION_ERROR", "field must be one of: phones, emails", { field = "field" })
  end
end

local function bad_person(id, name)
  if not util.is_uuid_v4(id) then
    return err(400, "VALIDATION_ERROR", (name or "personId") .. " must be a UUID v4", { field = name or "personId" })
  end
end

-- The current record for (person, field), moving it on the clock.
function _M:current(person, field, count_poll)
  local job = self.records[record_key(person, field)]
  if job then self:advance(job, count_poll) end
  return job
end

function _M:advance(job, count_poll)
  local sim = self.sim
  local phase = sim:job_phase(job, count_poll)
  if phase ~= "done" and not job.status_final then
    local ceiling = tonumber(sim:cfg(self.name).ceiling_ms) or 800000
    if (sim:now() - job.created) * 1000 >= ceiling then
      job.status_final, job.error, job.updated = "timeout", ERRORS.timeout, sim:now()
      job.done = true
    end
  end
end

-- Outcome -> terminal record fields; runs once when the record is done.
function _M:on_done(job)
  local o = job.outcome or job.item_outcome
  job.updated = self.sim:now()
  if o == "found" then
    job.status_final, job.data_found = "finished", true
    job.global_id = self.sim:uuid()
    job.credit_tx = self.sim:uuid()
    self.charged = self.charged + job.cost
    self.sim:count_credits(self.name, "charged", job.cost)
    self.found[record_key(job.entity, job.field)] = true
  elseif o == "not_found" then
    job.status_final, job.data_found = "finished", false
  elseif o == "timeout" then
    job.status_final, job.error = "timeout", ERRORS.timeout
  elseif o == "cancelled" then
    job.status_final, job.error = "cancelled", "Enrichment cancelled"
  else
    job.status_final, job.error = "failed", ERRORS[o] or ERRORS.failed
  end
end

local function view(job)
  local status = job.done and job.status_final or "pending"
  local data_found = null
  if status == "finished" then data_found = job.data_found == true end
  return {
    id = job.id, createdAt = util.iso(job.created), updatedAt = util.iso(job.updated or job.created),
    entityId = job.entity, entityType = "person", field = job.field, status = status,
    error = job.error or null,
    dataFound = data_found,
    createdBy = "user_sim", orgId = "org_sim",
    globalEnrichmentId = (status == "finished" and job.global_id) or null,
    creditTransactionId = (status == "finished" and job.credit_tx) or null,
  }
end

-- Reused pending/finished records, new ones for the rest; 402 (nothing
-- created) when the new ones cost more than the balance.
function _M:create(persons, field)
  local sim = self.sim
  local out, new, cost, seen = {}, {}, 0, {}
  for i, person in ipairs(persons) do
    -- A repeated POST doubles as a status read, so it counts as a poll.
    local job = self:current(person, field, true)
    local live = job and (not job.done or job.status_final == "finished")
    if live then
      out[i] = job
      sim:count_reused(self.name)
    elseif seen[person] then
      out[i] = seen[person]
    else
      new[#new + 1] = i
      cost = cost + COST[field]
      seen[person] = i
    end
  end
  local bal = self:balance()
  if cost > bal.balance then
    return nil, err(402, "INSUFFICIENT_CREDITS",
      "Not enough credits for " .. #new .. " " .. field:sub(1, -2) .. " enrichments",
      { required = cost, available = bal.balance })
  end
  for _, i in ipairs(new) do
    local person = persons[i]
    sim:count_input(self.name, record_key(person, field))
    local job = sim:new_job(self.name, {
      id = sim:uuid(), entity = person, field = field, cost = COST[field],
      item_outcome = sim:item_outcome(self.name, record_key(person, field), person),
    })
    -- Job-level outcomes (cancelled / never) come from the UUID code too.
    local o = job.item_outcome
    if (o == "cancelled" or o == "never") and not job.outcome then job.outcome = o end
    self.records[record_key(person, field)] = job
    out[i] = job
  end
  for i, person in ipairs(persons) do
    if type(out[i]) == "number" then out[i] = self.records[record_key(person, field)] end
  end
  if #new > 0 then sim:count_submission(self.name) end
  return out
end

function _M:trigger(req, _, caps)
  local person, field = caps[1], req.args.field
  local res = bad_person(person) or bad_field(field)
  if res then return res end
  local jobs, fail = self:create({ person }, field)
  if not jobs then return fail end
  return util.json(200, view(jobs[1]))
end

function _M:get(req, _, caps)
  local person, field = caps[1], req.args.field
  local res = bad_person(person) or bad_field(field)
  if res then return res end
  local job = self:current(person, field, true)
  if not job then
    return err(404, "NOT_FOUND", "No enrichment found for this person and field",
      { personId = person, field = field })
  end
  return util.json(200, view(job))
end

local function id_list(ids, name, max)
  if not util.is_array(ids) or #ids < 1 then
    return nil, err(400, "VALIDATION_ERROR", name .. " must be a non-empty array of UUIDs", { field = name })
  end
  if #ids > max then
    return nil, err(400, "VALIDATION_ERROR", name .. " must contain at most " .. max .. " items",
      { field = name, max = max, received = #ids })
  end
  for i, id in ipairs(ids) do
    if not util.is_uuid_v4(id) then
      return nil, err(400, "VALIDATION_ERROR", name .. "[" .. (i - 1) .. "] must be a UUID v4", { field = name })
    end
  end
  return ids
end

local function object_body(req)
  local body, why = util.json_object(req.body)
  if not body then
    return nil, err(400, "VALIDATION_ERROR",
      why == "invalid" and "Request body is not valid JSON" or "Request body must be a JSON object")
  end
  return body
end

local function many(self, body, ids, name, max)
  local list, res = id_list(ids, name, max)
  if not list then return res end
  res = bad_field(body.field)
  if res then return res end
  local jobs, fail = self:create(list, body.field)
  if not jobs then return fail end
  local out = {}
  for i, job in ipairs(jobs) do out[i] = view(job) end
  return util.json(200, out)
end

function _M:batch(req)
  local body, res = object_body(req)
  if not body then return res end
  return many(self, body, body.personIds, "personIds", MAX_BATCH)
end

function _M:bulk(req)
  local body, res = object_body(req)
  if not body then return res end
  local sel = body.selection
  if type(sel) ~= "table" or sel.mode ~= "manual" then
    -- Filter-based selections reference searches the simulator does not keep.
    return err(400, "VALIDATION_ERROR", "selection.mode must be \"manual\" in the simulator",
      { field = "selection.mode" })
  end
  return many(self, body, sel.includedIds, "selection.includedIds", MAX_BULK)
end

function _M:batch_query(req)
  local body, res = object_body(req)
  if not body then return res end
  local tasks = body.tasks
  if not util.is_array(tasks) or #tasks < 1 then
    return err(400, "VALIDATION_ERROR", "tasks must be a non-empty array", { field = "tasks" })
  end
  if #tasks > MAX_QUERY then
    return err(400, "VALIDATION_ERROR", "tasks must contain at most " .. MAX_QUERY .. " items",
      { field = "tasks", max = MAX_QUERY, received = #tasks })
  end
  local out = {}
  for i, t in ipairs(tasks) do
    local where = "tasks[" .. (i - 1) .. "]"
    if type(t) ~= "table" or not util.is_uuid(t.entityId) then
      return err(400, "VALIDATION_ERROR", where .. ".entityId must be a UUID", { field = where .. ".entityId" })
    end
    if not QUERY_FIELDS[t.field] then
      return err(400, "VALIDATION_ERROR", where .. ".field must be one of: phones, emails, summary",
        { field = where .. ".field" })
    end
    if t.entityType ~= nil and t.entityType ~= "person" and t.entityType ~= "company" then
      return err(400, "VALIDATION_ERROR", where .. ".entityType must be one of: person, company",
        { field = where .. ".entityType" })
    end
    if (t.entityType or "person") == "person" and FIELDS[t.field] then
      local job = self:current(t.entityId, t.field, true)
      if job then out[#out + 1] = view(job) end
    end
  end
  return util.json(200, array(out))
end

function _M:person(_, _, caps)
  local id = caps[1]
  if not util.is_uuid(id) then
    return err(400, "VALIDATION_ERROR", "id must be a UUID", { field = "id" })
  end
  local h = util.hash(id)
  local first, last = FIRST[h % #FIRST + 1], LAST[floor(h / 8) % #LAST + 1]
  local emails, phones = array(), array()
  if self.found[record_key(id, "emails")] then
    local l = first:lower() .. "." .. last:lower()
    emails = { l .. "@example.com", first:sub(1, 1):lower() .. last:lower() .. "@example.com" }
  end
  if self.found[record_key(id, "phones")] then
    local digits = util.phone_of(id):sub(6)
    phones = { "+1-555-" .. digits:sub(1, 3) .. "-" .. digits:sub(4) }
  end
  return util.json(200, {
    id = id, firstName = first, lastName = last, jobTitle = "Head of Data",
    city = "London", postalCode = null, country = "United Kingdom",
    linkedinUrl = "https://www.linkedin.com/in/" .. first:lower() .. "-" .. last:lower() .. "-" .. (h % 1000),
    emails = emails, phones = phones, companyId = null, seniority = "head",
    industry = "Software", departments = { "data" }, subDepartments = array(),
    functions = array(), skills = { "SQL" }, languages = array(), educations = array(),
    workExperiences = array(), birthDate = null,
  })
end

return _M
