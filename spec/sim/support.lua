-- Shared by the simulator specs: an in-process simulator on a clock the
-- spec moves by hand, and one-line request helpers.
local cjson = require "cjson"
local enrich_sim = require "enrich.sim"

local support = {}

--- A simulator whose clock only moves with t:tick(seconds).
function support.new_sim(opts)
  local clock = { now = 1780000000 }   -- 2026-05-28, a fixed instant
  opts = opts or {}
  opts.clock = function() return clock.now end
  local sim = assert(enrich_sim.new(opts))
  sim.test_clock = clock
  return sim
end

--- Sends one request; returns status, decoded JSON body (or nil), response.
function support.call(sim, method, path, body, headers, args)
  local query = nil
  if type(path) == "string" and path:find("?", 1, true) then
    local q
    path, q = path:match("^([^?]*)%?(.*)$")
    query = q
    args = args or require("enrich.sim.httpd").parse_query(q)
  end
  local res = sim:handle {
    method = method, path = path, query = query or "", args = args or {},
    headers = headers or {},
    body = (type(body) == "table") and cjson.encode(body) or body or "",
  }
  local ok, decoded = pcall(cjson.decode, res.body or "")
  return res.status, ok and decoded or nil, res
end

--- A caller bound to one provider and one set of headers.
function support.client(sim, prefix, headers)
  return function(method, path, body, extra)
    local h = {}
    for k, v in pairs(headers or {}) do h[k] = v end
    for k, v in pairs(extra or {}) do h[k] = v end
    return support.call(sim, method, prefix .. path, body, h)
  end
end

--- Polls `path` until `done(status, body)` or `max` polls; returns the last.
function support.poll_until(call, path, done, max)
  local status, body, res
  for _ = 1, max or 10 do
    status, body, res = call("GET", path)
    if done(status, body) then break end
  end
  return status, body, res
end

--- True when the raw JSON text has `"<name>":[]`.
function support.has_empty_array(raw, name)
  return raw:find('"' .. name .. '":[]', 1, true) ~= nil
end

return support
