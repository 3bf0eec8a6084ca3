-- A real redis-server for a spec: a free loopback port, a temporary
-- directory, appendonly yes + appendfsync always (scripts/redis-test-server).
--   local server = require("support.redis").start()
--   server.port, server.url ("redis://127.0.0.1:PORT/0")
--   server:stop()     -- SHUTDOWN NOSAVE; the data stays in its directory
--   server:restart()  -- the same port and data
--   server:cli("GET", "k") -> the redis-cli output (for checks)
--   server:close()    -- stops and removes the directory
local helper = require "helper"

local _M = {}
local q = helper.shell_quote

local function sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end

local server_mt = {}
server_mt.__index = server_mt

function server_mt:start()
  local out = sh("sh scripts/redis-test-server start " .. q(self.dir) .. " 2>&1")
  local port, pid = out:match("^(%d+) (%d+)")
  if not port then error("redis-server did not start: " .. out) end
  self.port, self.pid = tonumber(port), tonumber(pid)
  self.url = "redis://127.0.0.1:" .. port .. "/0"
  return self
end

function server_mt:stop()
  sh("sh scripts/redis-test-server stop " .. q(self.dir) .. " 2>&1")
end

function server_mt:restart()
  self:stop()
  return self:start()
end

function server_mt:cli(...)
  local args = { "redis-cli", "-h", "127.0.0.1", "-p", tostring(self.port) }
  for _, a in ipairs({ ... }) do args[#args + 1] = q(a) end
  return (sh(table.concat(args, " ") .. " 2>&1"):gsub("\n$", ""))
end

function server_mt:close()
  self:stop()
  os.execute("rm -rf " .. q(self.dir))
end

function _M.start()
  local dir = sh("mktemp -d /tmp/enrich-redis.XXXXXX"):gsub("%s+$", "")
  return setmetatable({ dir = dir }, server_mt):start()
end

return _M
