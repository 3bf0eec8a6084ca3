-- The nginx front for enrich.sim (lua-nginx-module / OpenResty):
--
--   init_worker_by_lua_block { require("enrich.sim.ngx").init { seed = 1 } }
--   location / { content_by_lua_block { require("enrich.sim.ngx").serve() } }
--
-- One simulator per worker: run worker_processes 1 so every request sees the
-- same jobs and counters (scripts/sim-nginx does). Faults map onto nginx:
-- delay -> ngx.sleep; close -> ngx.exit(444); reset -> 444 as well (the
-- Lua API cannot set SO_LINGER, so nginx closes with a FIN, not an RST);
-- truncate -> full Content-Length, part of the body, then 444; drip ->
-- ngx.print + ngx.flush + ngx.sleep per piece; body_size -> streamed chunks.
-- luacheck: globals ngx
local enrich_sim = require "enrich.sim"

local ngx = ngx
local type, pairs, tostring, tonumber, concat = type, pairs, tostring, tonumber, table.concat
local floor, min, max = math.floor, math.min, math.max

local DEFAULTS = { stream_chunk = 64 * 1024, drip_chunk = 16, drip_interval = 0.05 }

local _M = { _VERSION = "0.1.0", DEFAULTS = DEFAULTS }

local sim

--- Creates this worker's simulator (call from init_worker_by_lua*).
function _M.init(opts)
  local s, err = enrich_sim.new(opts or {})
  if not s then return nil, err end
  sim = s
  return sim
end

function _M.sim()
  if not sim then assert(_M.init {}) end
  return sim
end

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then return body end
  local file = ngx.req.get_body_file()
  if not file then return "" end
  local f = io.open(file, "rb")
  if not f then return "" end
  body = f:read("*a")
  f:close()
  return body or ""
end

-- Repeated headers join with ", " and repeated args keep the last value,
-- as in the luasocket front.
local function flatten(t)
  local out = {}
  for k, v in pairs(t or {}) do
    if type(v) == "table" then
      out[k] = (type(v[1]) == "string") and concat(v, ", ") or v[#v]
    else
      out[k] = v
    end
  end
  return out
end

local function last_values(t)
  local out = {}
  for k, v in pairs(t or {}) do
    out[k] = (type(v) == "table") and v[#v] or v
  end
  return out
end

local function send_headers(res, length)
  ngx.status = res.status
  for k, v in pairs(res.headers or {}) do
    local l = k:lower()
    if l ~= "content-length" and l ~= "connection" and l ~= "date" then ngx.header[k] = v end
  end
  ngx.header["Content-Length"] = length
end

local function streamed(res)
  local body, suffix = res.body or "", res.body_suffix or ""
  local total = max(floor(tonumber(res.body_size)), #body + #suffix)
  local limit = total
  if res.fault == "truncate" then limit = tonumber(res.truncate_at) or floor(total / 2) end
  send_headers(res, total)
  local unit = res.body_fill or "x"
  if unit == "" then unit = "x" end
  local chunk_len = DEFAULTS.stream_chunk
  unit = unit:rep(math.ceil(chunk_len / #unit)):sub(1, chunk_len)
  local sent = 0
  local function emit(s)
    if sent + #s > limit then s = s:sub(1, limit - sent) end
    if #s == 0 then return true end
    sent = sent + #s
    ngx.print(s)
    return ngx.flush(true)
  end
  if not emit(body) then return ngx.exit(444) end
  local filler = total - #body - #suffix
  while filler > 0 and sent < limit do
    local n = min(filler, chunk_len)
    if not emit(n == chunk_len and unit or unit:sub(1, n)) then return ngx.exit(444) end
    filler = filler - n
  end
  if sent < limit then emit(suffix) end
  if res.fault == "truncate" then return ngx.exit(444) end
  return ngx.exit(ngx.HTTP_OK)
end

--- content_by_lua handler: builds the request table, runs the simulator
--- and executes the response's delay and fault fields.
function _M.serve()
  local s = _M.sim()
  local req = {
    method = ngx.req.get_method(),
    path = ngx.var.uri,
    query = ngx.var.args or "",
    args = last_values(ngx.req.get_uri_args(100)),
    headers = flatten(ngx.req.get_headers(100)),
    body = read_body(),
  }
  local ok, res = pcall(s.handle, s, req)
  if not ok then
    ngx.log(ngx.ERR, "enrich.sim: handler error: ", tostring(res))
    res = { status = 500, headers = { ["Content-Type"] = "text/plain" }, body = "internal error\n" }
  end
  local delay = tonumber(res.delay)
  if delay and delay > 0 then ngx.sleep(delay) end

  local fault = res.fault
  if fault == "reset" or fault == "close" then return ngx.exit(444) end
  if res.body_size then return streamed(res) end

  local body = res.body or ""
  if fault == "truncate" then
    send_headers(res, #body)
    ngx.print(body:sub(1, tonumber(res.truncate_at) or floor(#body / 2)))
    ngx.flush(true)
    return ngx.exit(444)
  elseif fault == "drip" then
    send_headers(res, #body)
    local piece = max(1, floor(tonumber(res.drip_chunk) or DEFAULTS.drip_chunk))
    local interval = tonumber(res.drip_interval) or DEFAULTS.drip_interval
    local i = 1
    while i <= #body do
      ngx.print(body:sub(i, i + piece - 1))
      if not ngx.flush(true) then return ngx.exit(444) end
      i = i + piece
      if i <= #body then ngx.sleep(interval) end
    end
    return ngx.exit(ngx.HTTP_OK)
  end
  send_headers(res, #body)
  ngx.print(body)
  return ngx.exit(ngx.HTTP_OK)
end

return _M
