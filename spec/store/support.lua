-- Shared by the store's specs: temporary SQLite files, a job as the store
-- sees one, and the crash child (spec/store/crash_child.lua) that runs or
-- resumes jobs with a store and may be killed on the way.
local helper = require "helper"

local support = {}

local LUA = (jit and "luajit") or "lua" .. _VERSION:match("%d+%.%d+")

--- A path for a new SQLite file (nothing there yet).
function support.tmpdb()
  local path = os.tmpname()
  os.remove(path)
  return path
end

--- Removes a SQLite file and what SQLite and the store put beside it.
function support.cleanup(path)
  for _, suffix in ipairs { "", "-wal", "-shm", ".lock", "-journal" } do os.remove(path .. suffix) end
end

--- A job as the store sees one: uid, provider, state, id, parts,
--- client.sched, snapshot().
function support.fake_job(sched, uid, nparts)
  local job = { uid = uid, provider = "tamtam", state = "queued", parts = {},
                opts = { kind = "email" }, client = { sched = sched, api_key = "SECRET-KEY" },
                updated_at = "2026-12-01T00:00:00Z" }
  for k = 1, nparts or 1 do
    job.parts[k] = { uid = uid .. "/" .. k, count = 1, inputs = { { first = "ada" .. k } } }
  end
  function job.snapshot(j)
    local parts = {}
    for k, p in ipairs(j.parts) do parts[k] = { uid = p.uid, count = p.count, id = p.id, done = p.done } end
    return { v = 2, provider = j.provider, uid = j.uid, id = j.id, state = j.state, opts = j.opts,
             parts = parts, deadline = 600, results = j.results }
  end
  return job
end

--- Starts the crash child on a store (a SQLite file's path or a redis://
--- URL; it runs at once); finish() waits for it and reads it. extra: the
--- child's last argument ("resubmit").
function support.child(sim, store, provider, phase, crash_at, extra)
  local cmd = "ENRICH_CRASH_AT=" .. (crash_at or "") .. " " .. LUA .. " spec/store/crash_child.lua " .. sim.url
    .. " " .. helper.shell_quote(store) .. " " .. provider .. " " .. phase .. " " .. (extra or "") .. " 2>&1"
  return assert(io.popen(cmd))
end

--- -> the child's output, whether it finished, its jobs ({ uid, state, code }).
function support.finish(p)
  local out = p:read("*a")
  p:close()
  local jobs = {}
  for uid, state, code in out:gmatch("JOB (%S+) (%S+) (%S+)") do
    jobs[#jobs + 1] = { uid = uid, state = state, code = code }
  end
  return out, out:find("\nDONE\n", 1, true) ~= nil or out:sub(1, 5) == "DONE\n", jobs
end

return support
