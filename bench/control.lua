-- The simulator's control API for the benchmarks (blocking; luasocket).
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local _M = {}

local function call(method, base, path, body)
  local out, payload = {}, body and cjson.encode(body)
  local _, status = http.request {
    method = method, url = base .. path, sink = ltn12.sink.table(out),
    source = payload and ltn12.source.string(payload),
    headers = payload and { ["Content-Type"] = "application/json", ["Content-Length"] = #payload },
  }
  assert(status == 200, method .. " " .. path .. " -> " .. tostring(status))
  return cjson.decode(table.concat(out))
end

function _M.get(base, path) return call("GET", base, path) end
function _M.post(base, path, body) return call("POST", base, path, body) end

return _M
