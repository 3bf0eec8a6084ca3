-- The same handlers under nginx + lua-nginx-module (scripts/sim-nginx).
-- Skipped when nginx or the lua module is not installed.
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local function available()
  return os.execute("command -v nginx >/dev/null 2>&1") and
    io.open("/usr/lib/nginx/modules/ngx_http_lua_module.so", "r") ~= nil
end

local function request(base, method, path, body, headers)
  local out = {}
  local text = body and cjson.encode(body) or nil
  local h = { ["Content-Length"] = text and tostring(#text) or nil }
  for k, v in pairs(headers or {}) do h[k] = v end
  local _, status, rh = http.request {
    url = base .. path, method = method, headers = h,
    source = text and ltn12.source.string(text) or nil, sink = ltn12.sink.table(out),
  }
  local ok, decoded = pcall(cjson.decode, table.concat(out))
  return status, ok and decoded or nil, rh
end

local function raw_get(port, path, headers)
  local c = assert(socket.tcp())
  c:settimeout(3)
  assert(c:connect("127.0.0.1", port))
  local head = "GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
  for k, v in pairs(headers) do head = head .. k .. ": " .. v .. "\r\n" end
  assert(c:send(head .. "\r\n"))
  local data, err, partial = c:receive("*a")
  c:close()
  return data or partial or "", err
end

local describe_if = available() and describe or pending

describe_if("enrich.sim under nginx", function()
  local dir, port, base
  setup(function()
    local p = assert(io.popen("scripts/sim-nginx start --port 0 2>&1"))
    for _ = 1, 10 do
      local line = p:read("*l")
      if not line then break end
      dir = dir or line:match("^DIR (.+)$")
      port = port or tonumber(line:match("^listening (%d+)$"))
    end
    p:close()
    assert(dir and port, "scripts/sim-nginx did not start")
    base = "http://127.0.0.1:" .. port
  end)
  teardown(function()
    if dir then
      os.execute("scripts/sim-nginx stop '" .. dir .. "'")
      os.execute("rm -rf '" .. dir .. "'")
    end
  end)
  before_each(function() assert.equal(200, (request(base, "POST", "/_sim/reset"))) end)

  local PT = { ["X-API-Key"] = "pt_live_NGX" }

  it("runs a provider flow and keeps one state across requests", function()
    request(base, "POST", "/_sim/config", { parsetx = { polls = 0 } })
    local status, job = request(base, "POST", "/parsetx/v1/enrich/async", { transactions = { "UBER TRIP" } }, PT)
    assert.equal(202, status)
    local _, done = request(base, "GET", "/parsetx/v1/enrich/jobs/" .. job.job_id, nil, PT)
    assert.equal("complete", done.status)
    assert.equal("Uber", done.results[1].merchant)
    local _, stats = request(base, "GET", "/_sim/stats")
    assert.equal(1, stats.providers.parsetx.submissions)
  end)

  it("sends instaview's rate-limit headers through nginx", function()
    local _, _, h = request(base, "GET", "/instaview/sourcing/enrich/x/results", nil, { Authorization = "Bearer k" })
    assert.equal("60", h["x-ratelimit-limit-minute"])
  end)

  it("closes without an answer for reset and close", function()
    request(base, "POST", "/_sim/faults", { { provider = "parsetx", type = "reset" },
                                            { provider = "parsetx", type = "close" } })
    assert.equal("", (raw_get(port, "/parsetx/v1/enrich/jobs/x", PT)))
    assert.equal("", (raw_get(port, "/parsetx/v1/enrich/jobs/x", PT)))
  end)

  it("truncates, drips and streams bodies", function()
    request(base, "POST", "/_sim/faults", {
      { provider = "parsetx", type = "truncate" },
      { provider = "parsetx", type = "drip", chunk = 8, interval = 0.02 },
      { provider = "parsetx", type = "huge", size = 4 * 1024 * 1024 },
    })
    local got = raw_get(port, "/parsetx/v1/enrich/jobs/x", PT)
    local head, body = got:match("^(.-)\r\n\r\n(.*)$")
    assert.is_true(#body < tonumber(head:match("Content%-Length: (%d+)")))
    local t0 = socket.gettime()
    got = raw_get(port, "/parsetx/v1/enrich/jobs/x", PT)
    assert.equal('{"error":"Job not found."}', got:match("\r\n\r\n(.*)$"))
    assert.is_true(socket.gettime() - t0 >= 0.05)
    got = raw_get(port, "/parsetx/v1/enrich/jobs/x", PT)
    assert.equal(4 * 1024 * 1024, #got:match("\r\n\r\n(.*)$"))
  end)
end)
