-- A test hook for durability: with ENRICH_CRASH_AT=<point>:<n> in the
-- environment, the n-th time the process reaches <point> it kills itself
-- with SIGKILL, as a power cut or the OOM killer would. Without the
-- variable every point is a no-op (one upvalue test).
--
-- Points (where the engine and the store call point()):
--   intent_committed  the intent is durable, nothing sent yet
--   request_sent      the submit went out, its answer is not read
--   answer_read       the provider id is read, not yet committed
--   id_committed      the provider id is durable, no poll scheduled yet
--   terminal_read     a terminal answer is read, results not committed
--   in_commit         inside a store transaction, before COMMIT
local getenv, execute = os.getenv, os.execute

local _M = { _VERSION = "0.1.0" }

_M.POINTS = {
  intent_committed = true, request_sent = true, answer_read = true,
  id_committed = true, terminal_read = true, in_commit = true,
}

local armed_point, armed_n
do
  local spec = getenv("ENRICH_CRASH_AT")
  if spec and spec ~= "" then
    local name, n = spec:match("^([%w_]+):(%d+)$")
    if not name or not _M.POINTS[name] then
      error("ENRICH_CRASH_AT: expected <point>:<n> with a known point, got '" .. spec .. "'")
    end
    armed_point, armed_n = name, tonumber(n)
  end
end

local seen = 0

--- Counts a pass at `name` like point(), without killing: true when this
--- is the pass that must crash. For a point reached on another thread
--- (the store's writer commits there): the caller has it killed there.
function _M.due(name)
  if name ~= armed_point then return false end
  seen = seen + 1
  return seen == armed_n
end

--- Marks that the process reached `name`. Kills the process (SIGKILL, no
--- cleanup, no flush) when ENRICH_CRASH_AT names this point and count.
function _M.point(name)
  if name ~= armed_point then return end
  if _M.due(name) then
    io.stdout:flush(); io.stderr:flush()
    -- The shell's parent is this process: $PPID is our pid.
    execute("kill -9 $PPID")
    -- Not reached; if kill failed, refuse to go on as if nothing happened.
    error("enrich.crash: could not kill the process at " .. name)
  end
end

return _M
