-- A small HTTP/1.1 server on LuaSocket for loopback tests: non-blocking, one
-- coroutine per connection driven by socket.select, timers for delays and
-- slow drips, keep-alive, Content-Length request bodies.
--
-- The handler is plain Lua: request table in, response table out.
--   request  = { method, path, query = "raw", args = {decoded}, headers =
--                {lower-cased names}, body = "string", version = "1.1" }
--   response = { status, headers = { name = value }, body = "string",
--                delay = seconds,                -- wait before answering
--                fault = "reset" | "close" | "truncate" | "drip",
--                drip_chunk = bytes, drip_interval = seconds,
--                truncate_at = bytes,            -- default: half the body
--                body_size = N, body_fill = "x", body_suffix = "" }
-- new{} options: host, port, handler, log = function(msg) (default: stderr),
-- and the limits in DEFAULTS (max_connections, idle_timeout, ...).
-- With body_size the front sends body, then body_fill repeated, then
-- body_suffix, N bytes in all, chunk by chunk (never whole in memory).
local socket = require "socket"

local gettime = socket.gettime
local select = socket.select
local co_create, co_resume, co_yield, co_status =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.status
local concat = table.concat
local floor, min, max = math.floor, math.min, math.max
local tonumber, tostring, type, pairs, ipairs, pcall =
  tonumber, tostring, type, pairs, ipairs, pcall
local char = string.char

local DEFAULTS = {
  host = "127.0.0.1",
  port = 0,
  backlog = 1024,
  -- LuaSocket's select cannot take descriptors >= FD_SETSIZE (1024).
  max_connections = 900,
  max_fd = 1000,
  max_header_bytes = 64 * 1024,
  max_body_bytes = 32 * 1024 * 1024,
  idle_timeout = 30,        -- seconds a kept-alive connection may sit idle
  io_timeout = 30,          -- seconds a half-read request or a stalled write may take
  drip_chunk = 16,
  drip_interval = 0.05,
  stream_chunk = 64 * 1024,
  accept_per_step = 128,
  run_max_seconds = 3600,
}

-- Reason phrases live in util so the handlers need no sockets.
local REASONS = require("enrich.sim.util").REASONS

local _M = { _VERSION = "0.1.0", DEFAULTS = DEFAULTS, REASONS = REASONS }

local function url_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end
_M.url_decode = url_decode

-- "a=1&b=x%20y" -> { a = "1", b = "x y" }; a repeated name keeps the last.
local function parse_query(q)
  local args = {}
  if not q or q == "" then return args end
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k then
      args[url_decode(k)] = url_decode(v)
    else
      args[url_decode(pair)] = true
    end
  end
  return args
end
_M.parse_query = parse_query

local function default_log(msg)
  io.stderr:write("enrich.sim.httpd: ", msg, "\n")
end

local srv_mt = {}
srv_mt.__index = srv_mt

-- Suspends the running connection coroutine until its socket is ready
-- ("r"/"w") or the deadline passes ("t" waits only for the deadline).
-- Returns true when ready, false on deadline.
local function wait(conn, what, deadline)
  conn.want = what
  conn.deadline = deadline
  local ok = co_yield()
  conn.want = nil
  conn.deadline = nil
  return ok
end

local function sleep(conn, seconds)
  if seconds and seconds > 0 then
    wait(conn, "t", gettime() + seconds)
  end
end

-- Reads the next bytes available; nil on EOF, error or deadline.
local function read_some(conn, deadline)
  local sock = conn.sock
  while true do
    local data, err, partial = sock:receive(65536)
    local got = data or partial
    if got and #got > 0 then return got end
    if err ~= "timeout" then return nil end
    if not wait(conn, "r", deadline) then return nil end
  end
end

-- Appends the next bytes to conn.buf; false on EOF, error or deadline.
local function fill(conn, deadline)
  local got = read_some(conn, deadline)
  if not got then return false end
  conn.buf = conn.buf .. got
  return true
end

-- Sends all of s; false when the peer is gone or the deadline passes.
local function send_all(conn, s, deadline)
  local sock = conn.sock
  local i, n = 1, #s
  while i <= n do
    local last, err, partial = sock:send(s, i)
    if last then
      i = last + 1
    else
      if err ~= "timeout" then return false end
      i = partial + 1
      if i <= n and not wait(conn, "w", deadline or gettime() + conn.srv.opts.io_timeout) then
        return false
      end
    end
  end
  return true
end

local function status_line(status)
  status = tonumber(status) or 200
  return "HTTP/1.1 " .. status .. " " .. (REASONS[status] or "Status") .. "\r\n"
end

local function header_block(res, content_length, keep_alive)
  local parts = { status_line(res.status) }
  local has_date = false
  for name, value in pairs(res.headers or {}) do
    local lname = name:lower()
    if lname ~= "content-length" and lname ~= "connection" then
      if lname == "date" then has_date = true end
      if type(value) == "table" then
        for _, v in ipairs(value) do
          parts[#parts + 1] = name .. ": " .. tostring(v) .. "\r\n"
        end
      else
        parts[#parts + 1] = name .. ": " .. tostring(value) .. "\r\n"
      end
    end
  end
  if not has_date then
    parts[#parts + 1] = "Date: " .. os.date("!%a, %d %b %Y %H:%M:%S GMT") .. "\r\n"
  end
  parts[#parts + 1] = "Content-Length: " .. content_length .. "\r\n"
  parts[#parts + 1] = keep_alive and "Connection: keep-alive\r\n" or "Connection: close\r\n"
  parts[#parts + 1] = "\r\n"
  return concat(parts)
end

local function abort_with_reset(sock)
  pcall(sock.setoption, sock, "linger", { on = true, timeout = 0 })
  sock:close()
end

-- Sends one response, executing the fault fields. Returns true when the
-- connection may be kept alive.
local function respond(conn, res, keep_alive, is_head)
  local opts = conn.srv.opts
  if type(res) ~= "table" then
    res = { status = 500, body = "handler returned no response\n" }
  end
  sleep(conn, tonumber(res.delay))
  local fault = res.fault
  if fault == "reset" then
    abort_with_reset(conn.sock)
    conn.closed = true
    return false
  elseif fault == "close" then
    return false
  end
  if fault == "truncate" or fault == "drip" then keep_alive = false end
  local body = res.body or ""
  local size = tonumber(res.body_size)
  local total = size and max(size, #body + #(res.body_suffix or "")) or #body
  if not send_all(conn, header_block(res, total, keep_alive)) then return false end
  if is_head then return keep_alive end

  if size then
    -- Streamed body: prefix, filler, suffix; one chunk in memory at a time.
    local suffix = res.body_suffix or ""
    local fill_unit = res.body_fill or "x"
    if fill_unit == "" then fill_unit = "x" end
    local chunk_len = opts.stream_chunk
    local unit = fill_unit:rep(math.ceil(chunk_len / #fill_unit)):sub(1, chunk_len)
    local limit = total
    if fault == "truncate" then limit = tonumber(res.truncate_at) or floor(total / 2) end
    local sent = 0
    local function emit(s)
      if sent + #s > limit then s = s:sub(1, limit - sent) end
      if #s == 0 then return true end
      sent = sent + #s
      return send_all(conn, s)
    end
    if not emit(body) then return false end
    local filler = total - #body - #suffix
    while filler > 0 and sent < limit do
      local n = min(filler, chunk_len)
      if not emit(n == chunk_len and unit or unit:sub(1, n)) then return false end
      filler = filler - n
    end
    if sent < limit and not emit(suffix) then return false end
    return keep_alive and fault == nil
  end

  if fault == "truncate" then
    local at = tonumber(res.truncate_at) or floor(#body / 2)
    send_all(conn, body:sub(1, at))
    return false
  elseif fault == "drip" then
    local piece = max(1, floor(tonumber(res.drip_chunk) or opts.drip_chunk))
    local interval = tonumber(res.drip_interval) or opts.drip_interval
    local i = 1
    while i <= #body do
      if not send_all(conn, body:sub(i, i + piece - 1)) then return false end
      i = i + piece
      if i <= #body then sleep(conn, interval) end
    end
    return false
  end
  if #body > 0 and not send_all(conn, body) then return false end
  return keep_alive
end

local function simple(conn, status, text)
  respond(conn, { status = status, headers = { ["Content-Type"] = "text/plain" },
                  body = text .. "\n" }, false)
end

-- Parses the head in conn.buf (up to and including the blank line).
local function parse_head(head)
  local line, rest = head:match("^([^\r\n]*)\r?\n(.*)$")
  if not line then return nil end
  local method, target, version = line:match("^(%u+) (%S+) HTTP/(%d%.%d)$")
  if not method then return nil end
  local headers = {}
  for hline in rest:gmatch("([^\r\n]+)") do
    local name, value = hline:match("^([^:%s]+):%s*(.-)%s*$")
    if not name then return nil end
    name = name:lower()
    if headers[name] then
      headers[name] = headers[name] .. ", " .. value
    else
      headers[name] = value
    end
  end
  local path, query = target:match("^([^?]*)%??(.*)$")
  return {
    method = method, path = url_decode((path:gsub("+", "%%2B"))), query = query,
    args = parse_query(query), headers = headers, version = version, target = target,
  }
end

-- One connection: read requests, call the handler, answer; repeat while
-- keep-alive holds.
local function serve(conn)
  local srv, opts = conn.srv, conn.srv.opts
  for _ = 1, 1e9 do
    -- Head.
    local idle_deadline = gettime() + opts.idle_timeout
    local head_end
    while true do
      head_end = conn.buf:find("\r\n\r\n", 1, true)
      if head_end then break end
      if #conn.buf > opts.max_header_bytes then
        return simple(conn, 431, "request head too large")
      end
      local deadline = (#conn.buf == 0) and idle_deadline or gettime() + opts.io_timeout
      if not fill(conn, deadline) then return end
    end
    if head_end - 1 > opts.max_header_bytes then
      return simple(conn, 431, "request head too large")
    end
    local head = conn.buf:sub(1, head_end + 1)
    conn.buf = conn.buf:sub(head_end + 4)
    local req = parse_head(head)
    if not req then return simple(conn, 400, "malformed request") end
    if req.version ~= "1.1" and req.version ~= "1.0" then
      return simple(conn, 505, "HTTP version not supported")
    end
    local h = req.headers
    if h["transfer-encoding"] then
      return simple(conn, 411, "only Content-Length request bodies are supported")
    end
    local length = 0
    if h["content-length"] then
      length = h["content-length"]:match("^%d+$") and tonumber(h["content-length"])
      if not length then return simple(conn, 400, "bad Content-Length") end
      if length > opts.max_body_bytes then return simple(conn, 413, "request body too large") end
    end
    if length > 0 and h.expect and h.expect:lower() == "100-continue" and #conn.buf == 0 then
      if not send_all(conn, "HTTP/1.1 100 Continue\r\n\r\n") then return end
    end
    -- Body.
    -- Big bodies arrive in pieces: collect them, join once.
    local body_deadline = gettime() + opts.io_timeout
    local parts, have = { conn.buf }, #conn.buf
    while have < length do
      local got = read_some(conn, body_deadline)
      if not got then return end
      parts[#parts + 1] = got
      have = have + #got
    end
    local all = concat(parts)
    req.body = all:sub(1, length)
    conn.buf = all:sub(length + 1)

    local conn_hdr = (h.connection or ""):lower()
    local keep_alive
    if req.version == "1.0" then
      keep_alive = conn_hdr:find("keep-alive", 1, true) ~= nil
    else
      keep_alive = conn_hdr:find("close", 1, true) == nil
    end
    if srv.closing then keep_alive = false end

    srv.requests = srv.requests + 1
    local ok, res = pcall(srv.handler, req)
    if not ok then
      srv.log("handler error: " .. tostring(res))
      res = { status = 500, headers = { ["Content-Type"] = "text/plain" },
              body = "internal error\n" }
    end
    if not respond(conn, res, keep_alive, req.method == "HEAD") then return end
  end
end

--- Creates a server listening on opts.host:opts.port (0 picks a free port).
function _M.new(opts)
  if type(opts) ~= "table" or type(opts.handler) ~= "function" then
    return nil, "httpd.new needs { handler = function(req) ... end }"
  end
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  local listener, err = socket.tcp()
  if not listener then return nil, err end
  listener:setoption("reuseaddr", true)
  local ok
  ok, err = listener:bind(o.host, o.port)
  if not ok then listener:close(); return nil, "bind " .. o.host .. ":" .. o.port .. ": " .. err end
  ok, err = listener:listen(o.backlog)
  if not ok then listener:close(); return nil, "listen: " .. err end
  listener:settimeout(0)
  local _, port = listener:getsockname()
  local srv = setmetatable({
    opts = o, handler = o.handler, listener = listener, log = o.log or default_log,
    host = o.host, port = tonumber(port),
    conns = {}, nconns = 0, requests = 0, accepted = 0,
  }, srv_mt)
  return srv
end

local function finish(srv, conn)
  if srv.conns[conn.sock] then
    srv.conns[conn.sock] = nil
    srv.nconns = srv.nconns - 1
  end
  if not conn.closed then
    conn.closed = true
    conn.sock:close()
  end
end

local function resume(srv, conn, value)
  local ok, err = co_resume(conn.co, value)
  if not ok then
    srv.log("connection error: " .. tostring(err))
  end
  if not ok or co_status(conn.co) == "dead" then finish(srv, conn) end
end

local function accept(srv)
  local o = srv.opts
  for _ = 1, o.accept_per_step do
    if srv.nconns >= o.max_connections then return end
    local sock = srv.listener:accept()
    if not sock then return end
    if sock:getfd() >= o.max_fd then
      abort_with_reset(sock)
    else
      sock:settimeout(0)
      sock:setoption("tcp-nodelay", true)
      local conn = { srv = srv, sock = sock, buf = "" }
      conn.co = co_create(function() return serve(conn) end)
      srv.conns[sock] = conn
      srv.nconns = srv.nconns + 1
      srv.accepted = srv.accepted + 1
      resume(srv, conn)
    end
  end
end

--- One turn of the loop: waits at most `timeout` seconds for I/O or a timer,
--- then runs every connection that can make progress. Returns true while open.
function srv_mt:step(timeout)
  if self.closed then return false end
  timeout = tonumber(timeout) or 0
  local now = gettime()
  local recvt, sendt = {}, {}
  if self.nconns < self.opts.max_connections then recvt[1] = self.listener end
  local next_deadline
  local expired = {}
  for sock, conn in pairs(self.conns) do
    local d = conn.deadline
    if d and d <= now then
      expired[#expired + 1] = conn
    else
      if d and (not next_deadline or d < next_deadline) then next_deadline = d end
      if conn.want == "r" then recvt[#recvt + 1] = sock
      elseif conn.want == "w" then sendt[#sendt + 1] = sock end
    end
  end
  for _, conn in ipairs(expired) do
    -- "t" waits end in success (a sleep), I/O waits in failure (timeout).
    resume(self, conn, conn.want == "t")
  end
  if #expired > 0 then timeout = 0 end
  if next_deadline then timeout = min(timeout, max(0, next_deadline - now)) end
  local readable, writable = select(recvt, sendt, timeout)
  for _, sock in ipairs(writable or {}) do
    local conn = self.conns[sock]
    if conn and conn.want == "w" then resume(self, conn, true) end
  end
  for _, sock in ipairs(readable or {}) do
    if sock == self.listener then
      accept(self)
    else
      local conn = self.conns[sock]
      if conn and conn.want == "r" then resume(self, conn, true) end
    end
  end
  return true
end

--- Runs until close() or opts.max_seconds (default 3600) have passed.
function srv_mt:run(opts)
  opts = opts or {}
  local limit = gettime() + (tonumber(opts.max_seconds) or DEFAULTS.run_max_seconds)
  while not self.closed do
    local now = gettime()
    if now >= limit then break end
    self:step(min(0.5, limit - now))
  end
  return true
end

--- Closes the listener and every connection; idempotent.
function srv_mt:close()
  if self.closed then return end
  self.closed = true
  self.listener:close()
  for _, conn in pairs(self.conns) do
    if not conn.closed then conn.closed = true; conn.sock:close() end
  end
  self.conns = {}
  self.nconns = 0
end

return _M
