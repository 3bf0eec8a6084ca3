-- bin/enrich-sim in a child process, driven over loopback HTTP: the control
-- API, one provider flow, and the faults only a real socket can show.
local helper = require "helper"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local function request(base, method, path, body, headers)
  local out = {}
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  local text = body and (type(body) == "string" and body or cjson.encode(body)) or nil
  if text then h["Content-Length"] = tostring(#text) end
  local _, status, resp_headers = http.request {
    url = base .. path, method = method, headers = h,
    source = text and ltn12.source.string(text) or nil,
    sink = ltn12.sink.table(out),
  }
  local raw = table.concat(out)
  local ok, decoded = pcall(cjson.decode, raw)
  return status, ok and decoded or nil, resp_headers, raw
end

-- One raw exchange: returns everything received, the close reason, the
-- client socket and the time taken. Reads at most `limit` seconds and
-- keeps at most `keep` bytes (counts the rest).
local function raw_get(port, path, headers, opts)
  opts = opts or {}
  local c = assert(socket.tcp())
  c:settimeout(opts.limit or 5)
  assert(c:connect("127.0.0.1", port))
  local lines = { "GET " .. path .. " HTTP/1.1", "Host: 127.0.0.1", "Connection: close" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n"))
  c:settimeout(0.01)   -- short reads, so each dripped piece is seen
  local t0 = socket.gettime()
  local kept, total, err, stamps = {}, 0, nil, {}
  local keep = opts.keep or 1e6
  for _ = 1, 1e6 do
    local data, e, partial = c:receive(65536)
    local chunk = data or partial
    if chunk and #chunk > 0 then
      total = total + #chunk
      stamps[#stamps + 1] = socket.gettime() - t0
      if #table.concat(kept) < keep then kept[#kept + 1] = chunk end
    end
    if e and e ~= "timeout" then err = e; break end
    if socket.gettime() - t0 > (opts.limit or 5) then err = "limit"; break end
  end
  return table.concat(kept), total, err, c, socket.gettime() - t0, stamps
end

describe("bin/enrich-sim over the wire", function()
  local srv, base
  setup(function()
    srv = helper.spawn("bin/enrich-sim", { "--port", "0" }, { max_seconds = 60 })
    base = srv.url
  end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    assert.equal(200, (request(base, "POST", "/_sim/reset")))
  end)

  local PT = { ["X-API-Key"] = "pt_live_WIRE" }

  it("prints its port and answers the health check", function()
    local status, body = request(base, "GET", "/_sim/health")
    assert.equal(200, status)
    assert.is_true(body.ok)
  end)

  it("runs a parsetx async job to completion and counts it", function()
    request(base, "POST", "/_sim/config", { parsetx = { polls = 1 } })
    local status, job = request(base, "POST", "/parsetx/v1/enrich/async",
      { transactions = { "UBER TRIP", "NETFLIX MONTHLY" } }, PT)
    assert.equal(202, status)
    local _, q = request(base, "GET", "/parsetx/v1/enrich/jobs/" .. job.job_id, nil, PT)
    assert.equal("queued", q.status)
    local _, c = request(base, "GET", "/parsetx/v1/enrich/jobs/" .. job.job_id, nil, PT)
    assert.equal("complete", c.status)
    assert.equal("Netflix", c.results[2].merchant)
    local _, stats = request(base, "GET", "/_sim/stats")
    assert.equal(1, stats.providers.parsetx.submissions)
    assert.equal(1, stats.providers.parsetx.inputs["UBER TRIP"])
  end)

  it("sends a 429 with an HTTP-date Retry-After", function()
    request(base, "POST", "/_sim/faults", { provider = "tamtam", type = 429, retry_after_date = 30 })
    local status, body, headers = request(base, "GET", "/tamtam/v2/credits", nil, { Authorization = "k" })
    assert.equal(429, status)
    assert.same({ Message = "Too Many Requests" }, body)
    assert.matches("GMT$", headers["retry-after"])
  end)

  it("resets the connection: nothing arrives and the socket is dead", function()
    request(base, "POST", "/_sim/faults", { provider = "parsetx", type = "reset" })
    local got, _, err, c = raw_get(srv.port, "/parsetx/v1/enrich/jobs/x", PT)
    assert.equal("", got)
    assert.equal("closed", err)
    assert.is_nil((c:send("x")))
    c:close()
  end)

  it("closes without answering", function()
    request(base, "POST", "/_sim/faults", { provider = "parsetx", type = "close" })
    local got, _, err, c = raw_get(srv.port, "/parsetx/v1/enrich/jobs/x", PT)
    assert.equal("", got)
    assert.equal("closed", err)
    c:close()
  end)

  it("truncates a body below its Content-Length", function()
    request(base, "POST", "/_sim/faults", { provider = "parsetx", type = "truncate" })
    local got, _, _, c = raw_get(srv.port, "/parsetx/v1/enrich/jobs/x", PT)
    c:close()
    local head, body = got:match("^(.-)\r\n\r\n(.*)$")
    local length = tonumber(head:match("Content%-Length: (%d+)"))
    assert.equal(404, tonumber(head:match("^HTTP/1%.1 (%d+)")))
    assert.is_true(#body < length)
    assert.is_true(#body > 0)
  end)

  it("drips a body slowly in small pieces", function()
    request(base, "POST", "/_sim/faults", { provider = "parsetx", type = "drip", chunk = 5, interval = 0.05 })
    local got, _, _, c, took, stamps = raw_get(srv.port, "/parsetx/v1/enrich/jobs/x", PT)
    c:close()
    assert.equal('{"error":"Job not found."}', got:match("\r\n\r\n(.*)$"))
    assert.is_true(took >= 0.2)
    assert.is_true(#stamps >= 4)
  end)

  it("adds latency before answering", function()
    request(base, "POST", "/_sim/faults", { provider = "parsetx", type = "latency", seconds = 0.3 })
    local got, _, _, c, took = raw_get(srv.port, "/parsetx/v1/enrich/jobs/x", PT)
    c:close()
    assert.matches("^HTTP/1%.1 404", got)
    assert.is_true(took >= 0.29)
  end)

  it("streams a 64 MiB body without holding it", function()
    local size = 64 * 1024 * 1024
    request(base, "POST", "/_sim/faults", { provider = "parsetx", type = "huge", size = size })
    local got, total, err, c = raw_get(srv.port, "/parsetx/v1/enrich/jobs/x", PT, { keep = 1024, limit = 20 })
    c:close()
    local head = got:match("^(.-)\r\n\r\n")
    assert.equal(size, tonumber(head:match("Content%-Length: (%d+)")))
    assert.equal(size, total - #head - 4)
    assert.equal("closed", err)
  end)

  it("serves 200 concurrent connections", function()
    local clients = {}
    for i = 1, 200 do
      local c = assert(socket.tcp())
      assert(c:connect("127.0.0.1", srv.port))
      c:settimeout(0)
      assert(c:send("GET /_sim/health HTTP/1.1\r\nHost: x\r\n\r\n"))
      clients[i] = { sock = c, buf = "" }
    end
    local done, deadline = 0, socket.gettime() + 10
    while done < 200 and socket.gettime() < deadline do
      local ready = socket.select((function()
        local t = {}
        for _, cl in ipairs(clients) do if not cl.done then t[#t + 1] = cl.sock end end
        return t
      end)(), nil, 0.1)
      for _, s in ipairs(ready) do
        for _, cl in ipairs(clients) do
          if cl.sock == s and not cl.done then
            local data, _, partial = s:receive(65536)
            cl.buf = cl.buf .. (data or partial or "")
            if cl.buf:find('"ok":true', 1, true) then cl.done = true; done = done + 1 end
          end
        end
      end
    end
    for _, cl in ipairs(clients) do cl.sock:close() end
    assert.equal(200, done)
  end)

  it("refuses a non-loopback address unless forced", function()
    local ok, how, code = os.execute("lua5.4 bin/enrich-sim --host 0.0.0.0 --max-seconds 1 >/dev/null 2>&1")
    assert.is_not_true(ok == true or ok == 0)
    if how then assert.equal(2, code) end
  end)
end)
