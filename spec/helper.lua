-- Shared by every spec: puts the freshly built C module first on cpath and
-- starts loopback servers in child processes (the C core blocks in poll, so
-- a server in the same process could not answer it).
local helper = {}

local lua_tag = (jit and "luajit") or _VERSION:match("%d+%.%d+")
-- ENRICH_CORE_DIR points at another build of the C module (the portable
-- non-epoll one, say) without touching anything else.
package.cpath = (os.getenv("ENRICH_CORE_DIR") or ("build/" .. lua_tag)) .. "/?.so;" .. package.cpath
helper.lua_tag = lua_tag

-- The interpreter that runs the specs also runs the servers unless told.
helper.server_lua = os.getenv("ENRICH_SERVER_LUA") or "lua5.4"

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helper.shell_quote = shell_quote

-- Starts `lua <script> <args...>` in the background. The script must print
-- one line "listening <port>" once it accepts connections. Returns a handle
-- with .port, .url and :stop(); the child also stops by itself after
-- max_seconds (every server here takes --max-seconds).
function helper.spawn(script, args, opts)
  opts = opts or {}
  local argv = { helper.server_lua, script }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = "--max-seconds"
  argv[#argv + 1] = tostring(opts.max_seconds or 300)
  local quoted = {}
  for i, a in ipairs(argv) do quoted[i] = shell_quote(a) end
  -- `echo $$; exec` gives us the server's own pid without luaposix.
  local cmd = "sh -c " .. shell_quote("echo $$; exec " .. table.concat(quoted, " "))
    .. " 2>" .. (opts.stderr or "/dev/null")
  local pipe = assert(io.popen(cmd, "r"))
  local pid = tonumber(pipe:read("*l"))
  local line = pipe:read("*l")
  local port = line and tonumber(line:match("^listening (%d+)"))
  if not (pid and port) then
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    pipe:close()
    error("server " .. script .. " did not start: " .. tostring(line))
  end
  local h = { pid = pid, port = port, url = "http://127.0.0.1:" .. port, pipe = pipe }
  function h:stop()
    if self.pipe then
      os.execute("kill " .. self.pid .. " 2>/dev/null")
      self.pipe:close()
      self.pipe = nil
    end
  end
  return h
end

--- Runs a shell command in the background: its stderr, its stdout unless
--- `stdout` names a file for it, then "exit N" go to a temporary file.
--- The handle's :wait(seconds) -> that text, the exit code; it raises when
--- the command has not ended after `seconds` (default 120).
function helper.background(cmd, stdout)
  local tmp = os.tmpname()
  local redirect = stdout and (" >" .. shell_quote(stdout) .. " 2>" .. shell_quote(tmp))
    or (" >" .. shell_quote(tmp) .. " 2>&1")
  os.execute("(" .. cmd .. redirect .. "; echo \"exit $?\" >>" .. shell_quote(tmp) .. ") &")
  return { wait = function(_, seconds)
    for _ = 1, (seconds or 120) * 20 do
      local f = io.open(tmp)
      local text = f and f:read("*a") or ""
      if f then f:close() end
      local code = text:match("exit (%d+)")
      if code then os.remove(tmp) return text, tonumber(code) end
      require("socket").sleep(0.05)
    end
    error("a background command did not end in " .. (seconds or 120) .. " s (output: " .. tmp .. ")")
  end }
end

-- A free loopback port: bind port 0, read it, let it go (for servers such as
-- nginx that need a number up front; the race with other binders is tiny).
function helper.free_port()
  local socket = require "socket"
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

return helper
