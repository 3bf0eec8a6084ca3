-- A provider's rate limit per API key, shared by every worker on every
-- machine through Redis: a GCRA (generic cell rate algorithm) in one Redis
-- script, on Redis's clock. Ten workers on one key together send no more
-- than the rate. The key is never stored or sent in clear: the Redis key
-- is a SHA-256 of the provider's name and the API key.
--
--   local shared = require "enrich.ratelimit_redis"
--   shared.attach(client, redis_client_or_store, { key = api_key [, per_second, burst, margin] })
--
-- attach replaces the client's per-key bucket (client.shared.bucket), so
-- every client of that key in this process uses the shared one too. A
-- bucket's take() asks Redis, so it yields: the engine calls it from a
-- task (ctx:call), where waiting is parking.
local core = require "enrich.core"

local co_running, now = coroutine.running, core.now
local type, tostring, tonumber, max, floor, format = type, tostring, tonumber, math.max, math.floor, string.format

local _M = { _VERSION = "0.1.0" }

-- The shared rate is this share of the rate asked for: requests granted at
-- one moment reach the provider a little apart (network, scheduling), and
-- a margin keeps that jitter from ever costing a 429.
_M.DEFAULT_MARGIN = 0.9

-- KEYS[1]: the key's theoretical arrival time (µs). ARGV: emission
-- interval (µs), burst. Reserves the caller the next conforming slot and
-- returns the µs until it (0: go now). One round trip per request: the
-- caller sleeps until its slot and goes without asking again.
_M.GCRA = [=[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local wait = tat - (burst - 1) * interval - now
if wait < 0 then wait = 0 end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return math.ceil(wait)
]=]

local bucket_mt = {}
bucket_mt.__index = bucket_mt

--- A shared bucket. r: an enrich.redis client; name: provider; key: the
--- API key (hashed here, then dropped); rate: per second; burst.
function _M.new(r, name, key, rate, burst, opts)
  opts = opts or {}
  local margin = opts.margin or _M.DEFAULT_MARGIN
  rate = rate * margin
  burst = max(1, floor((burst or 1) * margin))
  local ns = opts.ns or "enrich"
  return setmetatable({
    r = r, rate = rate, burst = burst,
    redis_key = "{" .. ns .. "}:rate:" .. core.sha256(tostring(name) .. "\0" .. tostring(key)),
    interval = format("%.0f", 1e6 / rate),
    taken = 0, waited = 0, errors = 0,
    tickets = setmetatable({}, { __mode = "k" }),   -- task's coroutine -> its reserved slot (core.now)
    script = r:script(_M.GCRA),
  }, bucket_mt)
end

--- Takes one token: 0, or the seconds to wait before asking again. A
--- wait is a slot reserved for the calling task: asked again once it has
--- come, take() gives 0 without asking Redis. When Redis cannot be
--- reached, waits (a second) rather than send unmetered.
function bucket_mt:take()
  local co = co_running()
  local at = self.tickets[co]
  if at then
    local left = at - now()
    if left <= 0.0005 then self.tickets[co] = nil return 0 end
    return left
  end
  local wait, err = self.script({ self.redis_key }, { self.interval, tostring(self.burst) })
  if not wait then
    self.errors = self.errors + 1
    if self.errors == 1 then
      io.stderr:write("enrich: the shared rate limit cannot reach Redis (", tostring(err and err.message),
                      "); waiting\n")
    end
    return 1
  end
  wait = tonumber(wait) or 0
  if wait == 0 then self.taken = self.taken + 1 return 0 end
  self.waited = self.waited + 1
  self.tickets[co] = now() + wait / 1e6
  return max(wait / 1e6, 0.001)
end

--- Makes `client` (and every client with its key in this process) take its
--- tokens from the shared bucket. `via`: an enrich.redis client, or a
--- Redis store (its connection is used). opts: per_second and burst
--- (default: the client's own rate), margin, ns (default the store's).
--- The burst defaults to 1, not the provider's: tokens granted by Redis
--- reach the provider from several processes and machines, and its own
--- bucket counts them when it processes them, not when they were sent (a
--- busy server reads a backlog at once). Evenly spaced requests keep the
--- provider's bucket near full, so such bunching never empties it.
--- opts.key: the client's API key (hashed at once; the client keeps its
--- own only in closures).
function _M.attach(client, via, opts)
  opts = opts or {}
  local r = via.r or via
  local own = client.shared.bucket or {}
  local rate = opts.per_second or own.rate
  if not rate then return nil, "the client has no rate limit to share: give per_second" end
  if type(opts.key) ~= "string" then error("ratelimit_redis.attach: opts.key (the client's API key) is required", 2) end
  -- The client's rate is used as given: the engine already keeps its
  -- margin under a documented default (enrich.ratelimit.MARGIN).
  local b = _M.new(r, client.spec.name, opts.key, rate, opts.burst or 1,
                   { margin = opts.margin or (opts.per_second and nil) or 1, ns = opts.ns or via.ns })
  client.shared.bucket = b
  return b
end

return _M
