-- The simulator's control API under /_sim/ (tests drive a simulator in
-- another process through it). Every answer is JSON.
--
--   GET    /_sim/health
--   POST   /_sim/reset
--   GET    /_sim/config          POST /_sim/config   {provider|all = {...}, revoked_keys = [...]}
--   GET    /_sim/faults          POST /_sim/faults   {type, provider, method, path, count, ...}
--   DELETE /_sim/faults                              (a JSON array queues several)
--   GET    /_sim/stats
--   GET    /_sim/jobs/{provider}/{id}   POST ... {outcome, polls, ms, finish}
--   GET    /_sim/clock           POST /_sim/clock    {advance = seconds}
local util = require "enrich.sim.util"

local ipairs, pairs, type = ipairs, pairs, type

local _M = { _VERSION = "0.1.0" }

local function ok(value, status) return util.json(status or 200, value) end
local function fail(status, message) return util.json(status, { error = message }) end

local function body_of(req)
  if req.body == nil or req.body == "" then return {} end
  local v, err = util.decode(req.body)
  if v == nil then return nil, err end
  if type(v) ~= "table" then return nil, "body must be a JSON object or array" end
  return v
end

local ROUTES = {
  { "GET", "^/_sim/health$", function(sim)
      return ok({ ok = true, providers = sim.names, now = sim:now() })
    end },
  { "POST", "^/_sim/reset$", function(sim)
      sim:reset()
      return ok({ ok = true })
    end },
  { "GET", "^/_sim/config$", function(sim) return ok(sim:config_snapshot()) end },
  { "POST", "^/_sim/config$", function(sim, body)
      local snap, err = sim:configure(body)
      if not snap then return fail(400, err) end
      return ok(snap)
    end },
  { "GET", "^/_sim/faults$", function(sim) return ok({ faults = util.array(sim.faults) }) end },
  { "DELETE", "^/_sim/faults$", function(sim)
      sim:clear_faults()
      return ok({ ok = true })
    end },
  { "POST", "^/_sim/faults$", function(sim, body)
      local list = util.is_array(body) and body or { body }
      local ids = {}
      for i, f in ipairs(list) do
        local id, err = sim:fault(f)
        if not id then return fail(400, "fault " .. i .. ": " .. err) end
        ids[#ids + 1] = id
      end
      return ok({ ids = ids })
    end },
  { "GET", "^/_sim/stats$", function(sim)
      local s = sim:stats()
      for _, p in pairs(s.providers) do p.duplicates = util.array(p.duplicates) end
      return ok(s)
    end },
  { "GET", "^/_sim/jobs/([%w_]+)/(.+)$", function(sim, _, name, id)
      local job = sim:job(name, id)
      if not job then return fail(404, "no such job") end
      return ok(sim:job_view(job))
    end },
  { "POST", "^/_sim/jobs/([%w_]+)/(.+)$", function(sim, body, name, id)
      if not sim:job(name, id) then return fail(404, "no such job") end
      local view, err = sim:control_job(name, id, body)
      if not view then return fail(409, err) end
      return ok(view)
    end },
  { "GET", "^/_sim/clock$", function(sim) return ok({ now = sim:now(), offset = sim.offset }) end },
  { "POST", "^/_sim/clock$", function(sim, body)
      sim:advance(body.advance or 0)
      return ok({ now = sim:now(), offset = sim.offset })
    end },
}

function _M.handle(sim, req)
  local allowed = false
  for _, r in ipairs(ROUTES) do
    local caps = { req.path:match(r[2]) }
    if caps[1] ~= nil then
      allowed = true
      if r[1] == req.method then
        local body, err = body_of(req)
        if not body then return fail(400, err) end
        if r[2]:find("%(") then
          return r[3](sim, body, caps[1], caps[2])
        end
        return r[3](sim, body)
      end
    end
  end
  if allowed then return fail(405, "method not allowed") end
  return fail(404, "unknown control endpoint")
end

return _M
