-- The credit budget. Before a submit the most it can cost (the provider's
-- documented price per item x its items) is reserved; when the job ends the
-- reservation is settled to the real charge. A submit starts only if
-- charged + reserved + its own most stays within the limit.
local ipairs, floor, huge, type, setmetatable, error = ipairs, math.floor, math.huge, type, setmetatable, error

local _M = { _VERSION = "0.1.0" }

-- Worst case per item, from each provider's sheet (shared/providers/*.md).
-- ASSUMPTION (lance): prices are not published; tamtam's are used, as the
-- simulator does. puffle: EMAIL_LOOKUP 2, PHONE_LOOKUP 8, charged per lead
-- at dispatch. instaview: 1 per enriched profile. parsetx: 1 per
-- transaction that misses its cache.
_M.PRICES = {
  tamtam = { email = 1, phone = 10 },
  lance = { email = 1, phone = 10 },
  puffle = { email = 2, phone = 8 },
  instaview = { email = 1, phone = 1 },
  parsetx = { email = 1, phone = 1 },
}

-- Which item outcomes a provider charges for: the estimate of an item's
-- cost when the provider reports no credits for the job (lance), and how a
-- job's reported credits are shared out over its items.
_M.BILLED = {
  tamtam = { found = true, not_found = true },       -- completed items
  lance = { found = true },                           -- finished with data
  puffle = { found = true, not_found = true, failed = true, pending = true },  -- at dispatch, no refund
  instaview = { found = true },
  parsetx = { found = true, not_found = true },
}

function _M.price(name, kind)
  local p = _M.PRICES[name]
  return p and (p[kind] or p.email) or 1
end

local B = {}
B.__index = B

--- A budget of `limit` credits (nil: no limit, only counting).
function _M.new(limit)
  return setmetatable({ limit = limit, charged = 0, reserved = 0, earlier = 0, by_provider = {} }, B)
end

--- How many of `n` items at `price` fit now.
function B:fit(n, price)
  if not self.limit or price <= 0 then return n end
  local room = self.limit - self.charged - self.reserved
  if room <= 0 then return 0 end
  local k = floor(room / price + 1e-9)
  return k < n and k or n
end

function B:reserve(amount) self.reserved = self.reserved + amount end

--- Fit and reserve in one: grants up to `n` items at `price` (reserving
--- them). When not all fit and something is reserved (it may settle
--- cheaper), grants nothing: 'wait'; when nothing fits and nothing is
--- reserved: 'none'. -> granted, 'ok'|'wait'|'none'
function B:grant(n, price)
  local k = self:fit(n, price)
  if k < n and self.reserved > 0 then return 0, "wait" end
  if k == 0 and n > 0 then return 0, "none" end
  self:reserve(k * price)
  return k, "ok"
end

--- A chunk taken over (scale-out only; nothing to do here).
function B.adopt() end

--- Settles a reservation to what was really charged (job: the job it was
--- for, nil if none; the shared budget counts each job once).
function B:settle(reserved, actual, name)
  self.reserved = self.reserved - reserved
  if self.reserved < 1e-9 then self.reserved = 0 end
  self.charged = self.charged + actual
  if name then self.by_provider[name] = (self.by_provider[name] or 0) + actual end
end

--- Counts credits spent outside a reservation: answers of this run found
--- in the store, paid by an earlier invocation of the same run (a rerun or
--- a resume). They count against the limit (the budget is the run's, not
--- one invocation's) and are kept apart in `earlier` for the summary.
function B:charge(actual, name)
  self.charged = self.charged + actual
  self.earlier = self.earlier + actual
  if name then self.by_provider[name] = (self.by_provider[name] or 0) + actual end
end

--- The run's budget, shared by every worker of a scale-out run through
--- Redis (enrich.scaleout): the same methods, for one chunk's holder.
--- Charged credits are counted in Redis once, when a job's charge settles
--- (or when the taker of a chunk adopts its dead holder's jobs); answers
--- met in the cache are never charged again here.
local S = {}
S.__index = S

function _M.shared(run, chunk, limit, totals)
  return setmetatable({ run = run, chunk = chunk, limit = limit, charged = 0, reserved = 0, earlier = 0,
                        by_provider = totals or {} }, S)
end

local function must(...)
  local v, e = ...
  if v == nil then error(e, 0) end
  return ...
end

function S:grant(n, price)
  if not self.limit then return n, "ok" end
  local k, why, charged, reserved = self.run:budget_reserve(self.chunk, self.limit, price, n)
  -- The chunk was taken over: send nothing more for it (its answers will
  -- be refused; the taker answers it).
  if not k and type(why) == "table" and why.reason == "lease_lost" then return 0, "none" end
  must(k, why)
  self.charged, self.reserved = charged, reserved
  return k, why
end

function S:settle(reserved, actual, name, job)
  if not self.limit then return end
  local _, charged, res = must(self.run:budget_settle(self.chunk, reserved, actual, job and job.uid))
  self.charged, self.reserved = charged, res
  if name then self.by_provider[name] = (self.by_provider[name] or 0) + actual end
end

--- Answers met in the cache: counted when their job settled, not again.
function S.charge() end

--- The jobs of a chunk's dead holder, ended here: { [uid] = credits }.
function S:adopt(charges)
  if not self.limit then return end
  local released, charged, res = self.run:budget_adopt(self.chunk, charges)
  if not released and type(charged) == "table" and charged.reason == "lease_lost" then return end
  must(released, charged)
  self.charged, self.reserved = charged, res
end

function S:room()
  if not self.limit then return huge end
  return self.limit - self.charged - self.reserved
end

function B:room()
  if not self.limit then return huge end
  return self.limit - self.charged - self.reserved
end

--- Credits per result item of a finished job: the job's reported credits
--- shared over its billed items, or the price of each billed item when the
--- provider reports none. -> per-item array, total
function _M.item_credits(name, kind, job)
  local billed, price = _M.BILLED[name] or {}, _M.price(name, kind)
  local est, sum = {}, 0
  local results = job.results or {}
  for i, r in ipairs(results) do
    est[i] = billed[r.status] and price or 0
    sum = sum + est[i]
  end
  local reported = job.cost and job.cost.credits
  -- Sent, answer never read: it may all have been charged.
  local unknown = require("enrich.cli.answers").unknown
  for i, r in ipairs(results) do
    if unknown(job, r) and est[i] < price then sum = sum + price - est[i]; est[i] = price end
  end
  if not reported then return est, sum end
  if sum > 0 then
    for i = 1, #results do est[i] = est[i] * reported / sum end
  elseif #results > 0 then
    for i = 1, #results do est[i] = reported / #results end
  end
  return est, reported
end

return _M
