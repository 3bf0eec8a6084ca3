-- The simulator (bin/enrich-sim) for a spec file: one process on a free
-- loopback port, and its control API. spec/engine/support.lua and
-- spec/cli/support.lua hand these on.
local helper = require "helper"
local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"

local _M = {}

--- Starts the simulator; args: more of its command line.
function _M.start(args)
  local argv = { "--port", "0" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  return helper.spawn("bin/enrich-sim", argv, { max_seconds = 300 })
end

--- One call to the simulator's control API; returns the decoded answer.
function _M.control(sim, method, path, body)
  local out = {}
  local payload = body and cjson.encode(body) or nil
  local _, status = http.request {
    method = method, url = sim.url .. path, sink = ltn12.sink.table(out),
    source = payload and ltn12.source.string(payload) or nil,
    headers = payload and { ["Content-Type"] = "application/json", ["Content-Length"] = #payload } or nil,
  }
  local text = table.concat(out)
  assert(status == 200, "control " .. method .. " " .. path .. ": " .. tostring(status) .. " " .. text)
  return cjson.decode(text)
end

function _M.reset(sim) return _M.control(sim, "POST", "/_sim/reset") end
function _M.configure(sim, t) return _M.control(sim, "POST", "/_sim/config", t) end
function _M.fault(sim, t) return _M.control(sim, "POST", "/_sim/faults", t) end

--- The counters of one provider, or all of them without one.
function _M.stats(sim, provider)
  local s = _M.control(sim, "GET", "/_sim/stats")
  return provider and s.providers[provider] or s
end

return _M
