-- What a per-tick budget in the scheduler would buy: a game script for the
-- ticking host that runs examples/host/game.lua unchanged but lets at most
-- ENRICH_TICK_BUDGET (default 6) HTTP transfers start per tick; the others
-- wait for the next tick. An experiment from outside (it overrides the
-- scheduler's transfer method on the instance), not a proposal for how the
-- engine should do it.
--   ENRICH_HOST_SCRIPT=bench/tick_budget.lua build/host/enrich-host SIM_URL 500 25
local enrich = require "enrich"

local co_running, co_yield = coroutine.running, coroutine.yield
local budget = tonumber(os.getenv("ENRICH_TICK_BUDGET")) or 6

local game = assert(loadfile((os.getenv("ENRICH_ROOT") or ".") .. "/examples/host/game.lua"))(...)

local sched = enrich.scheduler()
local used, deferred = 0, {}

local transfer = sched.transfer
sched.transfer = function(self, req)
  for _ = 1, 1e6 do
    if used < budget then break end
    deferred[#deferred + 1] = co_running()
    co_yield()                             -- woken at the next tick
  end
  used = used + 1
  return transfer(self, req)
end

local step = sched.step
sched.step = function(self, max_wait)
  used = 0
  local waiting = deferred
  deferred = {}
  for i = 1, #waiting do self:wake(waiting[i]) end
  return step(self, max_wait)
end

return game
