-- One rate limit per (provider, key) for every worker of one nginx: a GCRA
-- (a token bucket written as one "theoretical arrival time") kept in a
-- lua_shared_dict. Without the dict each worker gets the rate divided by
-- the worker count, and says so once in the error log.
--
--   lua_shared_dict enrich 1m;          -- nginx.conf, http block
--   enrich.configure { shared_dict = "enrich" }   -- the default name
--
-- Races between workers: reading the arrival time and writing the next one
-- must be one step, and a shared dict offers no compare-and-set. So each
-- take holds a per-key lock made with dict:add (atomic: it fails while the
-- key exists) for the few microseconds of its arithmetic; nothing yields in
-- between. The lock expires by itself (LOCK_TTL), so a worker that dies
-- holding it stalls the others for at most that long. A worker that finds
-- the lock taken is told to come back in a millisecond.
--
-- Times are enrich.core's monotonic clock (CLOCK_MONOTONIC), the same for
-- every process of the machine. Keys are never stored in clear: the dict
-- key is a hash (core.sha256) of provider .. "\0" .. api key.
-- luacheck: read_globals ngx
local ratelimit = require "enrich.ratelimit"
local core = require "enrich.core"

local max, floor, tostring = math.max, math.floor, tostring

local _M = { _VERSION = "0.1.0" }

_M.DICT = "enrich"        -- enrich.configure { shared_dict = ... } sets it
_M.LOCK_TTL = 0.05        -- seconds
_M.RETRY = 0.001          -- seconds to come back after finding the lock held

local bucket_mt = {}
bucket_mt.__index = bucket_mt

local warned = false

local function log(level, ...)
  if ngx and ngx.log then ngx.log(level, ...) end
end

--- Takes one token at `now` (enrich.core.now): 0, or the seconds to wait.
function bucket_mt:take(now)
  local dict, key, lock = self.dict, self.key, self.lock
  local ok, err = dict:add(lock, true, _M.LOCK_TTL)
  if not ok then
    if err == "exists" then return _M.RETRY end
    -- The dict is full or broken: this worker's share alone keeps us under.
    if not self.failed then
      self.failed = true
      log(ngx.ERR, "enrich: shared dict '", self.dict_name, "' refused the rate limit lock (",
          tostring(err), "); this worker keeps its own share of the rate from now on")
    end
    return self.fallback:take(now)
  end
  local interval = self.interval
  local tat = dict:get(key)
  if not tat or tat < now then tat = now end
  local next_tat = tat + interval
  local allow_at = next_tat - self.window
  local wait = 0
  if allow_at > now then
    wait = max(allow_at - now, 0.001)
  else
    -- The entry outlives its use by a second; a stale one reads as "now".
    local set_ok, set_err = dict:set(key, next_tat, next_tat - now + 1)
    if not set_ok then log(ngx.WARN, "enrich: shared dict set failed: ", tostring(set_err)) end
  end
  dict:delete(lock)
  return wait
end

-- The rate a worker takes when it cannot share: rate / workers.
local function local_share(rate, burst, workers, why)
  if not warned then
    warned = true
    log(ngx.WARN, "enrich: ", why, "; each of the ", workers, " workers sends at most 1/",
        workers, " of a provider's rate (add `lua_shared_dict ", _M.DICT,
        " 1m;` to share one limit between workers)")
  end
  return ratelimit.new(rate / workers, max(floor(burst / workers), 1))
end

--- A bucket for `id` (provider .. "\0" .. key) shared by the workers of
--- this nginx, or nil outside nginx (the caller keeps its own bucket).
function _M.new(rate, burst, id)
  if not (ngx and ngx.shared and ngx.worker) then return nil end
  burst = burst or rate
  local workers = (ngx.worker.count and ngx.worker.count()) or 1
  local name = _M.DICT
  local dict = name and ngx.shared[name]
  if not dict then
    if workers <= 1 then return nil end
    return local_share(rate, burst, workers, "no lua_shared_dict '" .. tostring(name) .. "'")
  end
  local h = core.sha256(id)             -- as enrich.ratelimit_redis names its keys
  return setmetatable({
    dict = dict, dict_name = name,
    key = "enrich:rl:" .. h, lock = "enrich:rl:lock:" .. h,
    interval = 1 / rate, window = burst / rate,
    fallback = ratelimit.new(rate / workers, max(floor(burst / workers), 1)),
  }, bucket_mt)
end

return _M
