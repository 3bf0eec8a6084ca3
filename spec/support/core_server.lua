-- Loopback server for the C core specs: a handful of routes that each
-- produce one kind of response (JSON, delays, caps, faults, odd headers).
-- Run as: lua5.4 spec/support/core_server.lua [--max-seconds N]
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local httpd = require "enrich.sim.httpd"
local cjson = require "cjson"

local max_seconds = 300
for i = 1, #arg do
  if arg[i] == "--max-seconds" then max_seconds = tonumber(arg[i + 1]) or max_seconds end
end


local function json(status, body, extra)
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(extra or {}) do headers[k] = v end
  return { status = status, headers = headers, body = body }
end

local ROUTES = {}

ROUTES["/json"] = function()
  return json(200, '{"ok":true,"n":42,"list":[1,2,3],"empty":[],"nothing":null,'
    .. '"nested":{"a":{"b":"c"}},"text":"caf\\u00e9"}')
end

ROUTES["/echo"] = function(req)
  return json(200, cjson.encode({
    method = req.method, path = req.path, query = req.query,
    headers = req.headers, body = req.body,
  }))
end

ROUTES["/status"] = function(req)
  local code = tonumber(req.args.code) or 200
  return json(code, '{"status":' .. code .. '}', { ["Retry-After"] = req.args.retry_after })
end

ROUTES["/delay"] = function(req)
  local res = json(200, '{"delayed":true}')
  res.delay = tonumber(req.args.s) or 1
  return res
end

ROUTES["/big"] = function(req)
  return { status = 200, headers = { ["Content-Type"] = "text/plain" },
           body = "", body_size = tonumber(req.args.bytes) or 1024 }
end

ROUTES["/malformed"] = function()
  return json(200, '{"a": [1, 2,')
end

ROUTES["/truncated"] = function()
  local res = json(200, '{"items":[' .. string.rep('"x",', 200) .. '"end"]}')
  res.fault = "truncate"
  return res
end

ROUTES["/redirect"] = function()
  return { status = 302, headers = { Location = "/json" }, body = "" }
end

ROUTES["/reset"] = function() return { fault = "reset" } end
ROUTES["/close"] = function() return { fault = "close" } end

ROUTES["/deep"] = function(req)
  local n = tonumber(req.args.n) or 10
  return json(200, string.rep("[", n) .. string.rep("]", n))
end

ROUTES["/repeated"] = function()
  return { status = 200, headers = {
    ["Content-Type"] = "text/plain", ["Set-Cookie"] = { "a=1", "b=2" }, ["X-Mixed-Case"] = "yes",
  }, body = "ok" }
end

ROUTES["/text"] = function()
  return { status = 200, headers = { ["Content-Type"] = "text/plain" }, body = "hello" }
end

ROUTES["/untyped"] = function()
  return { status = 200, headers = {}, body = '  {"x":1}' }
end

-- The body given as hex bytes (?hex=...), typed as JSON unless ?type=none:
-- byte-order marks, bodies JSON forbids.
ROUTES["/raw"] = function(req)
  local body = (req.args.hex or ""):gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  local headers = req.args.type == "none" and {} or { ["Content-Type"] = "application/json" }
  return { status = 200, headers = headers, body = body }
end

ROUTES["/problem"] = function()
  return { status = 422, headers = { ["Content-Type"] = "application/problem+json" },
           body = '{"title":"Unprocessable Entity","status":422}' }
end

ROUTES["/drip"] = function()
  local res = json(200, '{"drip":"' .. string.rep("d", 64) .. '"}')
  res.fault, res.drip_chunk, res.drip_interval = "drip", 8, 0.05
  return res
end

local srv = assert(httpd.new {
  host = "127.0.0.1", port = 0, log = function() end,
  handler = function(req)
    local route = ROUTES[req.path]
    if route then return route(req) end
    return json(404, '{"error":"no route"}')
  end,
})
io.stdout:write("listening ", srv.port, "\n")
io.stdout:flush()
srv:run { max_seconds = max_seconds }
srv:close()
