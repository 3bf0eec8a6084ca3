-- Shared by the host specs, which run a host as a child process against the
-- simulator (started with engine.support).
local helper = require "helper"

local support = {}

--- Runs a shell command; returns its stdout, stderr and exit code (read from
-- the shell: LuaJIT's popen:close() does not give it).
function support.run(cmd)
  local err = os.tmpname()
  local p = assert(io.popen("(" .. cmd .. ") 2>" .. helper.shell_quote(err) .. '; echo "exit=$?"', "r"))
  local out = p:read("*a")
  p:close()
  local f = io.open(err, "r")
  local errtext = f and f:read("*a") or ""
  if f then f:close() end
  os.remove(err)
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return out:gsub("exit=%d+%s*$", ""), errtext, code
end

return support
