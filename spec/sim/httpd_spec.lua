-- The luasocket front, driven in-process: client sockets are non-blocking and
-- the test turns the server's loop itself between reads.
local socket = require "socket"
local cjson = require "cjson"
local httpd = require "enrich.sim.httpd"

local function echo(req)
  if req.path == "/boom" then error("boom") end
  return {
    status = 200,
    headers = { ["Content-Type"] = "application/json", ["X-Multi"] = { "a", "b" } },
    body = cjson.encode({ method = req.method, path = req.path, query = req.query,
                          args = req.args, headers = req.headers, body = req.body }),
  }
end

local function parse_response(raw)
  local head_end = raw:find("\r\n\r\n", 1, true)
  if not head_end then return nil end
  local head = raw:sub(1, head_end - 1)
  local status = tonumber(head:match("^HTTP/1%.1 (%d+)"))
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    local l = name:lower()
    headers[l] = headers[l] and (headers[l] .. ", " .. value) or value
  end
  local len = tonumber(headers["content-length"] or "")
  local body = raw:sub(head_end + 4)
  return { status = status, headers = headers, body = body, length = len,
           complete = len and #body >= len, rest = len and body:sub(len + 1) }
end

-- Sends raw bytes on a (new or given) client socket and turns the server
-- until a whole response arrived, the peer closed, or `limit` seconds passed.
local function exchange(srv, raw, opts)
  opts = opts or {}
  local c = opts.client
  if not c then
    c = assert(socket.tcp())
    assert(c:connect("127.0.0.1", srv.port))
    c:settimeout(0)
  end
  if raw then assert(c:send(raw)) end
  local got, closed, err = {}, false, nil
  local deadline = socket.gettime() + (opts.limit or 5)
  local arrivals = {}
  while socket.gettime() < deadline do
    srv:step(0.005)
    local data, e, partial = c:receive(65536)
    local chunk = data or partial
    if chunk and #chunk > 0 then
      got[#got + 1] = chunk
      arrivals[#arrivals + 1] = socket.gettime()
    end
    if e and e ~= "timeout" then closed, err = true, e; break end
    if not opts.until_close then
      local r = parse_response(table.concat(got))
      if r and r.complete then break end
    end
  end
  local raw_in = table.concat(got)
  return parse_response(raw_in), raw_in, closed, err, c, arrivals
end

describe("enrich.sim.httpd", function()
  local srv
  before_each(function()
    srv = assert(httpd.new { port = 0, handler = echo, log = function() end })
  end)
  after_each(function() srv:close() end)

  it("picks a free port when asked for port 0", function()
    assert.is_number(srv.port)
    assert.is_true(srv.port > 0)
  end)

  it("returns nil and a message without a handler", function()
    local s, err = httpd.new { port = 0 }
    assert.is_nil(s)
    assert.matches("handler", err)
  end)

  it("decodes the path, the query and lower-cases header names", function()
    local r = exchange(srv, "GET /a%20b/c?x=1&y=two%20words&z=a+b HTTP/1.1\r\n"
      .. "Host: t\r\nX-Api-Key: k\r\n\r\n")
    assert.equal(200, r.status)
    local j = cjson.decode(r.body)
    assert.equal("GET", j.method)
    assert.equal("/a b/c", j.path)
    assert.equal("x=1&y=two%20words&z=a+b", j.query)
    assert.same({ x = "1", y = "two words", z = "a b" }, j.args)
    assert.equal("k", j.headers["x-api-key"])
    assert.equal("a, b", r.headers["x-multi"])
    assert.is_string(r.headers.date)
  end)

  it("reads a Content-Length body and answers 100-continue first when asked", function()
    local body = string.rep("z", 3000)
    local c = assert(socket.tcp())
    assert(c:connect("127.0.0.1", srv.port))
    c:settimeout(0)
    local _, raw2 = exchange(srv, "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 3000\r\n"
      .. "Expect: 100-continue\r\n\r\n", { client = c, limit = 0.2 })
    assert.matches("100 Continue", raw2)
    local r2 = exchange(srv, body, { client = c })
    assert.equal(200, r2.status)
    assert.equal(body, cjson.decode(r2.body).body)
    c:close()
  end)

  it("reads a 4 MiB request body sent in pieces", function()
    local body = string.rep("0123456789abcdef", 256 * 1024)
    local c = assert(socket.tcp())
    assert(c:connect("127.0.0.1", srv.port))
    c:settimeout(0)
    assert(c:send("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: " .. #body .. "\r\n\r\n"))
    local i = 1
    for _ = 1, 100000 do   -- the server must read while we write
      if i > #body then break end
      local last, _, partial = c:send(body, i)
      i = (last or partial) + 1
      srv:step(0)
    end
    local r = exchange(srv, nil, { client = c, limit = 10 })
    assert.equal(200, r.status)
    assert.equal(#body, #cjson.decode(r.body).body)
    c:close()
  end)

  it("keeps the connection alive for a second request", function()
    local r1, _, closed, _, c = exchange(srv, "GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
    assert.is_false(closed)
    assert.equal("keep-alive", r1.headers.connection)
    local r2 = exchange(srv, "POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
      { client = c })
    assert.equal("/two", cjson.decode(r2.body).path)
    assert.equal("hi", cjson.decode(r2.body).body)
    assert.equal(2, srv.requests)
    c:close()
  end)

  it("answers two pipelined requests in order", function()
    local _, raw = exchange(srv, "GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n"
      .. "Connection: close\r\n\r\n", { until_close = true })
    local first = raw:find('"path":"\\/1"', 1, true)
    local second = raw:find('"path":"\\/2"', 1, true)
    assert.truthy(first and second and first < second)
  end)

  local refusals = {
    { "a chunked request body", "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411 },
    { "a malformed request line", "HELLO\r\n\r\n", 400 },
    { "a bad Content-Length", "POST /x HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400 },
    { "an unknown HTTP version", "GET / HTTP/2.0\r\n\r\n", 505 },
  }
  for _, case in ipairs(refusals) do
    it("refuses " .. case[1] .. " with " .. case[3], function()
      local r, _, closed = exchange(srv, case[2], { until_close = true })
      assert.equal(case[3], r.status)
      assert.is_true(closed)
    end)
  end

  it("answers 500 when the handler raises", function()
    local r = exchange(srv, "GET /boom HTTP/1.1\r\n\r\n")
    assert.equal(500, r.status)
  end)

  describe("faults", function()
    local function with(res)
      srv.handler = function() return res end
    end

    it("delays the answer by `delay` seconds", function()
      with { status = 200, body = "late", delay = 0.2 }
      local t0 = socket.gettime()
      local r = exchange(srv, "GET / HTTP/1.1\r\n\r\n")
      assert.equal("late", r.body)
      assert.is_true(socket.gettime() - t0 >= 0.19)
    end)

    it("resets the connection with fault = reset", function()
      with { status = 200, body = "never", fault = "reset" }
      local _, raw, closed, err, c = exchange(srv, "GET / HTTP/1.1\r\n\r\n", { until_close = true })
      assert.equal("", raw)
      assert.is_true(closed)
      assert.equal("closed", err)   -- luasocket's word for ECONNRESET too
      -- After an RST the socket is dead: even the first write fails (after a
      -- FIN it would still succeed, see the next case).
      assert.is_nil((c:send("x")))
    end)

    it("closes without answering with fault = close", function()
      with { status = 200, body = "never", fault = "close" }
      local _, raw, closed, err, c = exchange(srv, "GET / HTTP/1.1\r\n\r\n", { until_close = true })
      assert.equal("", raw)
      assert.is_true(closed)
      assert.equal("closed", err)
      assert.equal(1, (c:send("x")))   -- a FIN, not an RST
    end)

    it("sends the full Content-Length but half the body with fault = truncate", function()
      with { status = 200, body = string.rep("a", 100), fault = "truncate" }
      local r, _, closed = exchange(srv, "GET / HTTP/1.1\r\n\r\n", { until_close = true })
      assert.equal(100, r.length)
      assert.equal(50, #r.body)
      assert.is_true(closed)
    end)

    it("drips the body in small pieces with fault = drip", function()
      with { status = 200, body = string.rep("d", 40), fault = "drip",
             drip_chunk = 10, drip_interval = 0.05 }
      local t0 = socket.gettime()
      local r, _, _, _, _, arrivals = exchange(srv, "GET / HTTP/1.1\r\n\r\n", { until_close = true })
      assert.equal(string.rep("d", 40), r.body)
      assert.is_true(socket.gettime() - t0 >= 0.14)
      assert.is_true(#arrivals >= 3)
    end)

    it("streams a body of body_size bytes with prefix, filler and suffix", function()
      local size = 5 * 1024 * 1024 + 3
      with { status = 200, body = '{"pad":"', body_fill = "ab", body_suffix = '"}', body_size = size }
      local r = exchange(srv, "GET / HTTP/1.1\r\n\r\n", { limit = 10 })
      assert.equal(size, r.length)
      assert.equal(size, #r.body)
      assert.equal('{"pad":"abab', r.body:sub(1, 12))
      assert.equal('"}', r.body:sub(-2))
      assert.equal(size - 10, #cjson.decode(r.body).pad)
    end)
  end)

  it("serves 250 concurrent connections", function()
    local clients = {}
    for i = 1, 250 do
      local c = assert(socket.tcp())
      assert(c:connect("127.0.0.1", srv.port))
      c:settimeout(0)
      assert(c:send("GET /c" .. i .. " HTTP/1.1\r\nHost: t\r\n\r\n"))
      clients[i] = { sock = c, buf = "" }
      if i % 50 == 0 then srv:step(0) end
    end
    local done, deadline = 0, socket.gettime() + 10
    while done < 250 and socket.gettime() < deadline do
      srv:step(0.01)
      for i, cl in ipairs(clients) do
        if not cl.done then
          local data, _, partial = cl.sock:receive(65536)
          cl.buf = cl.buf .. (data or partial or "")
          local r = parse_response(cl.buf)
          if r and r.complete then
            cl.done = true
            done = done + 1
            assert.equal("/c" .. i, cjson.decode(r.body).path)
          end
        end
      end
    end
    assert.equal(250, done)
    assert.is_true(srv.nconns >= 250)
    for _, cl in ipairs(clients) do cl.sock:close() end
  end)

  it("stops run() after max_seconds", function()
    local t0 = socket.gettime()
    srv:run { max_seconds = 0.1 }
    assert.is_true(socket.gettime() - t0 < 1)
  end)
end)
