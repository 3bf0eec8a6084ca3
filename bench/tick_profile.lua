-- Where a tick's time goes: a game script for the ticking host
-- (build/host/enrich-host) that runs examples/host/game.lua unchanged but
-- wraps the scheduler's step and its engine to time, per tick, the C
-- engine's poll (libcurl + JSON decode of the completions), its submits,
-- and the Lua around them (resumes, request building, normalizing), with
-- the number of completions and submits. Prints the heaviest ticks and the
-- cost per completion at the end (to stderr).
--   ENRICH_HOST_SCRIPT=bench/tick_profile.lua build/host/enrich-host SIM_URL 500
local enrich = require "enrich"
local core = require "enrich.core"
local now = core.now

-- ENRICH_PROFILE_GAME: the game script to profile (default examples/host/game.lua).
local root = os.getenv("ENRICH_ROOT") or "."
local game = assert(loadfile(os.getenv("ENRICH_PROFILE_GAME") or (root .. "/examples/host/game.lua")))(...)

local sched = enrich.scheduler()
local engine = sched.engine
local cur                                   -- the record of the tick in progress
local ticks = {}
local start = now()

-- The engine behind a proxy that times every call (the scheduler only ever
-- calls methods on it).
local proxy = setmetatable({}, { __index = function(t, name)
  local method = engine[name]
  local f = function(_, ...)
    if not cur then return method(engine, ...) end
    if name == "poll" then cur.inflight = math.max(cur.inflight, engine:pending()) end
    local t0 = now()
    local r = method(engine, ...)
    local dt = now() - t0
    if name == "poll" then
      cur.poll, cur.completions, cur.bytes = cur.poll + dt, cur.completions + #r, cur.bytes
      for i = 1, #r do cur.bytes = cur.bytes + #(r[i].body or "") end
    elseif name == "submit" then
      cur.submit, cur.submits = cur.submit + dt, cur.submits + 1
    elseif name == "flush" then              -- the I/O thread's wakeup: handing over, too
      cur.submit = cur.submit + dt
    end
    return r
  end
  rawset(t, name, f)
  return f
end })
sched.engine = proxy

-- enrich.tick() runs sched:tick(budget) with a budget, sched:step(0) without.
local function timed(turn)
  return function(self, arg)
    cur = { poll = 0, submit = 0, completions = 0, submits = 0, bytes = 0, inflight = 0,
            gc0 = collectgarbage("count") }
    local t0 = now()
    local live = turn(self, arg)
    cur.total, cur.at = now() - t0, t0 - start
    cur.kb = collectgarbage("count") - cur.gc0
    ticks[#ticks + 1] = cur
    cur = nil
    return live
  end
end
sched.step, sched.tick = timed(sched.step), timed(sched.tick)

local summary = game.summary
function game.summary()
  table.sort(ticks, function(a, b) return a.total > b.total end)
  local err = io.stderr
  err:write("heaviest ticks (ms, at s): total = poll (C: libcurl + JSON) + submit (C, with flush) + Lua;" ..
    " completions, submits\n")
  for i = 1, math.min(8, #ticks) do
    local t = ticks[i]
    err:write(("  %5.2fs %6.3f = poll %6.3f + submit %6.3f + lua %6.3f   completions %3d (%6d bytes)  submits %3d" ..
      "  in flight %3d  alloc %+.0f KiB\n"):format(t.at, 1e3 * t.total, 1e3 * t.poll, 1e3 * t.submit,
      1e3 * (t.total - t.poll - t.submit), t.completions, t.bytes, t.submits, t.inflight, t.kb))
  end
  local c, s, p, sb, tot, lua = 0, 0, 0, 0, 0, 0
  for _, t in ipairs(ticks) do
    c, s, p, sb, tot = c + t.completions, s + t.submits, p + t.poll, sb + t.submit, tot + t.total
    lua = lua + t.total - t.poll - t.submit
  end
  err:write(("all %d ticks: %d completions, %d submits; per completion: poll %.1f us, Lua %.1f us" ..
    " (Lua per transfer incl. its submit); per submit %.1f us\n"):format(#ticks, c, s,
    1e6 * p / math.max(c, 1), 1e6 * lua / math.max(c, 1), 1e6 * sb / math.max(s, 1)))
  -- The fixed part: median tick by the number of transfers it touched.
  local buckets = { { 0, 0 }, { 1, 4 }, { 5, 16 }, { 17, math.huge } }
  for _, b in ipairs(buckets) do
    local totals, polls = {}, {}
    for _, t in ipairs(ticks) do
      local n = t.completions + t.submits
      if n >= b[1] and n <= b[2] then totals[#totals + 1], polls[#polls + 1] = t.total, t.poll end
    end
    table.sort(totals); table.sort(polls)
    local mid = (#totals + 1) // 2
    if #totals > 0 then
      err:write(("ticks touching %d..%s transfers: %d, median %.3f ms (poll %.3f ms)\n"):format(b[1],
        tostring(b[2]), #totals, 1e3 * totals[mid], 1e3 * polls[mid]))
    end
  end
  return summary()
end

return game
