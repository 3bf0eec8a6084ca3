-- ParseTx transaction-string enrichment, as providers/parsetx.md describes:
-- X-API-Key (wins) or Bearer, {"error": "..."} bodies with the documented
-- strings, sync (1..10) and async jobs (1..500) queued -> processing ->
-- complete | failed, `results: []` until complete, jobs bound to the key
-- that created them, a sanitiser + junk gate (rejected), a merchant cache
-- (source llm, then cache), and the monthly / daily-token quotas (429).
-- luacheck: ignore 212/self
local util = require "enrich.sim.util"

local ipairs, type, tonumber, setmetatable = ipairs, type, tonumber, setmetatable
local floor, min = math.floor, math.min
local upper = string.upper
local null, array = util.null, util.array

local MAX_SYNC, MAX_ASYNC = 10, 500
local MSG = {
  missing = "Missing API key. Provide your key via the X-API-Key header.",
  invalid_key = "Invalid or revoked API key.",
  not_found = "Job not found.",
  internal = "Internal Server Error",
  monthly = "Monthly quota exceeded.",
  daily = "Daily token budget exceeded. Your quota resets at midnight UTC.",
  -- ASSUMPTION: the validation texts are not documented.
  json = "Invalid JSON body.",
  shape = "\"transactions\" must be an array of strings.",
  empty = "\"transactions\" must contain at least one item.",
  sync_max = "Too many transactions: the synchronous endpoint accepts at most 10. "
    .. "Use /v1/enrich/async for larger batches.",
  async_max = "Too many transactions: the async endpoint accepts at most 500.",
}

-- Known merchants (matched on the sanitised, upper-cased string).
local KNOWN = {
  { "STREAMFLIX", "Streamflix", "streamflix.example", "Entertainment", "4899", true },
  { "NETFLIX", "Netflix", "netflix.com", "Entertainment", "4899", true },
  { "SPOTIFY", "Spotify", "spotify.com", "Digital Services", "5815", true },
  { "AMAZON WEB SERVICES", "Amazon Web Services", "aws.amazon.com", "Software", "4816", true },
  { "AWS", "Amazon Web Services", "aws.amazon.com", "Software", "4816", true },
  { "AMAZON", "Amazon", "amazon.com", "Shopping", "5942", false },
  { "AMZN", "Amazon", "amazon.com", "Shopping", "5942", false },
  { "UBER", "Uber", "uber.com", "Transportation", "4121", false },
  { "STARBUCKS", "Starbucks", "starbucks.com", "Food & Drink", "5814", false },
  { "SHELL", "Shell", "shell.com", "Gas & Fuel", "5541", false },
  { "WALMART", "Walmart", "walmart.com", "Groceries", "5411", false },
  { "GITHUB", "GitHub", "github.com", "Software", "5734", true },
  { "ADOBE", "Adobe", "adobe.com", "Software", "5734", true },
}
local KEYWORDS = {
  { { "COFFEE", "CAFE", "RESTAURANT", "PIZZA", "BAKERY", "BAR " }, "Food & Drink", "5814" },
  { { "MARKET", "GROCER", "FOODS", "SUPERMARKET" }, "Groceries", "5411" },
  { { "FUEL", "GAS", "PETRO" }, "Gas & Fuel", "5541" },
  { { "TAXI", "TRANSIT", "METRO", "PARKING", "RAIL" }, "Transportation", "4111" },
  { { "AIR", "HOTEL", "AIRBNB", "TRAVEL" }, "Travel", "4722" },
  { { "PHARM", "CLINIC", "DENTAL", "HEALTH" }, "Healthcare", "8062" },
  { { "TRANSFER", "ZELLE", "VENMO" }, "Transfer", "4829" },
  { { "PAYROLL", "IRS", "TAX" }, "Payroll & Tax", "9311" },
  { { "ELECTRIC", "WATER", "UTILIT", "POWER" }, "Utilities", "4900" },
  { { "FEE", "INTEREST", "OVERDRAFT" }, "Fees & Charges", null },
  { { "SOFTWARE", "CLOUD", "SAAS" }, "Software", "5734" },
  { { "CINEMA", "THEATER", "GAMES" }, "Entertainment", "7832" },
}
local PREFIXES = { "^SQ %*%s*", "^TST%*%s*", "^PAYPAL %*%s*", "^PP%*%s*", "^SP %s*", "^POS %s*" }
local INJECTIONS = { "IGNORE PREVIOUS INSTRUCTIONS", "IGNORE ALL PREVIOUS INSTRUCTIONS", "SYSTEM PROMPT" }

local _M = {
  _VERSION = "0.1.0",
  MSG = MSG,
  DEFAULTS = {
    -- false turns both quotas off; usage/token_usage start the counters.
    quota = { monthly = 50000, usage = 0, daily_tokens = 1000000, token_usage = 0,
              tokens_per_miss = 500, plan = "pay_as_you_go" },
  },
  ROUTES = {
    { "POST", "^/v1/enrich$", "POST /v1/enrich", "sync" },
    { "POST", "^/v1/enrich/async$", "POST /v1/enrich/async", "async" },
    { "GET", "^/v1/enrich/jobs/([^/]+)$", "GET /v1/enrich/jobs/{id}", "poll" },
  },
}
local mt = { __index = _M }

function _M.new(sim, name)
  return setmetatable({ sim = sim, name = name, cache = {}, usage = 0, tokens = 0,
                        month = nil, day = nil, misses = 0 }, mt)
end

local function err(status, message, extra)
  local body = { error = message }
  for k, v in pairs(extra or {}) do body[k] = v end
  return util.json(status, body)
end

function _M:error_response(status)
  if status == 404 then return err(404, "Not found.") end
  if status == 405 then return err(405, "Method not allowed.") end
  return err(status, MSG.internal)
end

function _M:fault_response(status)
  if status == 429 then
    local q = self:quota_state()
    return err(429, MSG.monthly, { usage = q.usage, limit = q.monthly, plan = q.plan })
  end
  if status == 500 then return err(500, MSG.internal) end
  return err(status, status >= 500 and "Service unavailable." or "Error.")
end

function _M:balance()
  local q = self:quota_state()
  return { usage = q.usage, token_usage = q.token_usage, billed_transactions = self.misses }
end

-- The quota counters, rolled over at month / UTC-day boundaries.
function _M:quota_state()
  local cfg = self.sim:cfg(self.name).quota
  local now = self.sim:now()
  local month, day = os.date("!%Y-%m", floor(now)), floor(now / 86400)
  if self.month ~= month then self.month, self.usage = month, 0 end
  if self.day ~= day then self.day, self.tokens = day, 0 end
  local q = type(cfg) == "table" and cfg or {}
  return {
    on = type(cfg) == "table",
    monthly = tonumber(q.monthly) or 50000, daily = tonumber(q.daily_tokens) or 1000000,
    usage = (tonumber(q.usage) or 0) + self.usage,
    token_usage = (tonumber(q.token_usage) or 0) + self.tokens,
    per_miss = tonumber(q.tokens_per_miss) or 500, plan = q.plan or "pay_as_you_go",
  }
end

function _M:dispatch(route, req, caps)
  local h = req.headers
  local key = h["x-api-key"]
  if type(key) ~= "string" or key:match("^%s*$") then key = util.bearer(h) end
  if not key or key == "" then return err(401, MSG.missing) end
  if self.sim:is_revoked(key) then return err(401, MSG.invalid_key) end
  return self[route[4]](self, req, key, caps)
end

local function transactions(req, max, too_many)
  local body, why = util.json_object(req.body)
  if not body then return nil, err(400, why == "invalid" and MSG.json or MSG.shape) end
  local list = body.transactions
  if type(list) ~= "table" or not util.is_array(list) then return nil, err(400, MSG.shape) end
  if #list == 0 then return nil, err(400, MSG.empty) end
  if #list > max then return nil, err(400, too_many) end
  for _, s in ipairs(list) do
    if type(s) ~= "string" then return nil, err(400, MSG.shape) end
  end
  return list
end

-- Refuses when a quota is spent; otherwise counts the transactions.
function _M:take_quota(n)
  local q = self:quota_state()
  if not q.on then return nil end
  if q.usage + n > q.monthly then
    return err(429, MSG.monthly, { usage = q.usage, limit = q.monthly, plan = q.plan })
  end
  if q.token_usage >= q.daily then
    return err(429, MSG.daily, { token_usage = q.token_usage, token_limit = q.daily, plan = q.plan })
  end
  self.usage = self.usage + n
  return nil
end

--- The sanitiser: injection phrases out, digit runs longer than 4 out,
--- trailing dates dropped, upper-cased, at most 64 characters.
function _M.sanitise(raw)
  local s = upper(raw)
  for _, phrase in ipairs(INJECTIONS) do
    local i = s:find(phrase, 1, true)
    if i then s = s:sub(1, i - 1) .. s:sub(i + #phrase) end
  end
  s = s:gsub("%d%d%d%d%d+", " ")
  s = s:gsub("%s+%d%d?/%d%d?/?%d*%s*$", " ")
  s = s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  return s:sub(1, 64)
end

--- The entropy gate: no letters, or too few vowels and no spaces.
function _M.is_junk(s)
  local letters = select(2, s:gsub("%a", ""))
  if letters == 0 then return true end
  if not s:find(" ", 1, true) then
    local vowels = select(2, s:gsub("[AEIOUY]", ""))
    if vowels * 5 < letters then return true end
  end
  return false
end

local function merchant_of(s)
  for _, k in ipairs(KNOWN) do
    if s:find(k[1], 1, true) then
      return { merchant = k[2], domain = k[3], category = k[4], mcc_code = k[5], is_subscription = k[6],
               known = true }
    end
  end
  local rest = s
  for _, p in ipairs(PREFIXES) do rest = rest:gsub(p, "") end
  local words = {}
  for w in rest:gmatch("[%a][%a%.'&]*") do
    if #words < 2 and not w:match("^#") then words[#words + 1] = w end
  end
  local name = util.title(#words > 0 and table.concat(words, " ") or rest)
  local category, mcc = "Shopping", "5999"
  for _, kw in ipairs(KEYWORDS) do
    for _, word in ipairs(kw[1]) do
      if (s .. " "):find(word, 1, true) then category, mcc = kw[2], kw[3]; break end
    end
    if category ~= "Shopping" then break end
  end
  local sub = s:find("MONTHLY", 1, true) or s:find("SUBSCRIPTION", 1, true) or s:find("RECURRING", 1, true)
  return { merchant = name, domain = util.slug(name) .. ".example", category = category,
           mcc_code = mcc, is_subscription = sub ~= nil }
end

-- One result item; counts cache misses (billed, and AI tokens).
function _M:enrich_one(raw)
  local s = _M.sanitise(raw)
  local outcome = self.sim:item_outcome(self.name, raw, raw)
  if outcome == "rejected" or _M.is_junk(s) then return { input = raw, status = "rejected" } end
  if outcome ~= "found" and outcome ~= "not_found" then return { input = raw, status = "retry" } end
  local item = merchant_of(s)
  if outcome == "not_found" then
    item.domain, item.category, item.mcc_code, item.is_subscription = null, "Unknown", null, false
  end
  local known = item.known
  item.input, item.status, item.known = raw, "complete", nil
  if self.cache[s] then
    item.source, item.confidence = "cache", 1
  else
    item.source = "llm"
    -- Known merchants come back sure (and get cached); others vary by input.
    item.confidence = known and 0.97 or min(0.99, 0.85 + (util.hash(s) % 15) / 100)
    self.misses = self.misses + 1
    self.tokens = self.tokens + (self:quota_state().per_miss)
    self.sim:count_credits(self.name, "charged", 1)
    if item.confidence >= 0.9 then self.cache[s] = true end
  end
  return item
end

function _M:sync(req)
  local list, res = transactions(req, MAX_SYNC, MSG.sync_max)
  if not list then return res end
  if util.job_outcome(list) == "failed" then return err(500, MSG.internal) end
  res = self:take_quota(#list)
  if res then return res end
  local results, status = {}, "complete"
  for i, raw in ipairs(list) do
    self.sim:count_input(self.name, raw)
    results[i] = self:enrich_one(raw)
    if results[i].status == "retry" then status = "partial" end
  end
  self.sim:count_submission(self.name)
  return util.json(200, { results = results, job_id = null, status = status })
end

function _M:async(req, key)
  local list, res = transactions(req, MAX_ASYNC, MSG.async_max)
  if not list then return res end
  res = self:take_quota(#list)
  if res then return res end
  local sim = self.sim
  for _, raw in ipairs(list) do sim:count_input(self.name, raw) end
  local job = sim:new_job(self.name, { id = sim:uuid(), key = key, inputs = list,
                                       outcome = util.job_outcome(list) })
  sim:count_submission(self.name)
  return util.json(202, { results = array(), job_id = job.id, status = "queued" })
end

function _M:on_done(job)
  if job.outcome == "failed" or job.outcome == "cancelled" then return end
  local results = {}
  for i, raw in ipairs(job.inputs) do results[i] = self:enrich_one(raw) end
  job.results = results
end

function _M:poll(_, key, caps)
  local job = self.sim:job(self.name, caps[1])
  if not job then return err(404, MSG.not_found) end
  if job.key ~= key then return err(401, MSG.invalid_key) end
  local phase = self.sim:job_phase(job, true)
  local out = { id = job.id, results = array(), created_at = util.iso(job.created) }
  if phase == "queued" then
    out.status, out.updated_at = "queued", util.iso(job.created)
  elseif phase == "running" then
    out.status, out.item_count, out.updated_at = "processing", #job.inputs, util.iso(job.created)
  else
    out.item_count, out.updated_at = #job.inputs, util.iso(job.finished_at)
    if job.results then
      out.status, out.results = "complete", job.results
    else
      out.status = "failed"
    end
  end
  return util.json(200, out)
end

return _M
