-- A finished job -> one answer per person, the form kept in the store's
-- answer cache (key = provider \0 kind \0 person key, carried on each input
-- as custom.key) and applied to every row of that person.
local budget = require "enrich.cli.budget"

local ipairs, type = ipairs, type

local _M = { _VERSION = "0.1.0" }

--- The cache key of a person's answer from one provider.
function _M.key(name, kind, person_key)
  return name .. "\0" .. kind .. "\0" .. person_key
end

local function email_status(r)
  if not r.email or type(r.emails) ~= "table" then return nil end
  for _, e in ipairs(r.emails) do
    if e.address == r.email then return e.status end
  end
  return nil
end

--- Whether an item's submit may have reached the provider with its answer
--- never read (a restart cut it off): it is never sent again.
function _M.unknown(job, r)
  if job.state == "unknown" then return true end
  if type(r.error) == "table" and r.error.code == "unknown" then return true end
  return r.status ~= "found" and r.status ~= "not_found"
     and type(job.error) == "table" and job.error.code == "unknown"
end

--- One result item -> an answer table (JSON-able).
local function answer(job, r, credits, run)
  local a = { provider = job.provider, credits = credits, run = run }
  local status = r.status
  if _M.unknown(job, r) then
    a.status, a.error = "unknown", "unknown"
  elseif status == "found" or status == "not_found" then
    a.status = status
    if status == "found" then a.email, a.email_status, a.phone = r.email, email_status(r), r.phone end
  elseif status == "pending" then               -- the job ended (timed out, cancelled) first
    a.status = "failed"
    a.error = (job.error and job.error.code) or "timeout"
  else
    a.status = "failed"
    a.error = (type(r.error) == "table" and r.error.code) or (job.error and job.error.code) or "server"
  end
  return a
end

--- Whether an answer is kept for later runs: anything definite, and
--- anything that may have cost credits (never paid for twice). A failure
--- that cost nothing (a bad key, out of credits, the provider down) is
--- asked again next time.
function _M.keep(a)
  return a.status == "found" or a.status == "not_found" or a.status == "unknown"
      or (a.credits or 0) > 0 or a.error == "timeout"
end

--- job -> { {key, answer}, ... } in result order, and the job's credits.
function _M.of_job(job, run)
  local kind = (type(job.opts) == "table" and job.opts.kind) or "email"
  local per_item, total = budget.item_credits(job.provider, kind, job)
  local out = {}
  for i, r in ipairs(job.results or {}) do
    local custom = r.custom or (type(r.input) == "table" and r.input.custom)
    local key = type(custom) == "table" and custom.key or nil
    out[i] = { key = key, answer = answer(job, r, per_item[i] or 0, run) }
  end
  return out, total
end

return _M
