-- Token buckets that keep us under a provider's documented request rate.
-- One bucket per (provider, API key), shared by every client using that key,
-- because providers count per key, not per client object.
local min, max, type, pairs, tonumber = math.min, math.max, type, pairs, tonumber

local _M = { _VERSION = "0.1.0" }
local bucket_mt = {}
bucket_mt.__index = bucket_mt

-- Rates a provider documents are used at this fraction, so that timing
-- jitter between our clock and the provider's does not earn a 429. The one
-- rule: MARGIN applies to a number from the provider's documentation (the
-- provider file's default rate), and to nothing else. A rate the caller
-- sets (client option `rate`) is used as given; so is a hint from the
-- provider's own rate headers (bucket:hint): it is the provider's live
-- count of what is left, and headers_hint already keeps its own spare (one
-- request, one second). The configured rate of a default bucket is thus
-- the documented rate x MARGIN; the hinted one is the headers' rate.
_M.MARGIN = 0.9

--- rate: requests per second; burst: how many may go at once.
--- opts (optional): `id` = provider .. "\0" .. key, so that every worker of
--- an nginx shares one limit (enrich.ratelimit_shared); `documented` = the
--- rate is the provider's documented one: keep MARGIN under it.
function _M.new(rate, burst, opts)
  burst = burst or rate
  if opts then
    if opts.documented then
      rate, burst = rate * _M.MARGIN, math.max(math.floor(burst * _M.MARGIN), 1)
    end
    if opts.id and ngx then   -- luacheck: ignore 113 (OpenResty's global)
      local shared = require("enrich.ratelimit_shared").new(rate, burst, opts.id)
      if shared then return shared end
    end
  end
  return setmetatable({ rate = rate, burst = burst or rate, tokens = burst or rate, t = nil }, bucket_mt)
end

--- Takes one token at time `now`: returns 0, or the seconds to wait before
--- a token will be there (the caller sleeps, then takes again).
function bucket_mt:take(now)
  local rate = self:current_rate(now)
  if self.t then self.tokens = min(self.burst, self.tokens + (now - self.t) * rate) end
  self.t = now
  if self.tokens >= 1 then
    self.tokens = self.tokens - 1
    return 0
  end
  return max((1 - self.tokens) / rate, 0.001)
end

---------------------------------------------------------------------------
-- Adaptive rate. The configured rate (`rate`) is where a bucket starts and
-- what it returns to. Two signals move it:
--  * hint(per_second, allowance, now): what the provider's own headers say
--    is left (instaview's X-RateLimit-Remaining-* / Reset-*, read by
--    headers_hint below). It replaces the configured rate until the next
--    hint, up or down, and caps the tokens to the requests left, so a long
--    run uses the allowance and never spends what is not there.
--  * throttled(now): a 429. The rate drops to BETA times what it was and
--    grows back along a cubic (CUBIC, as AWS's adaptive retry mode does):
--    slowly near the rate that was refused, then faster past it, until it
--    is back at the nominal rate (the hint's, else the configured one).
---------------------------------------------------------------------------
local BETA, CUBIC_C = 0.7, 0.4
_M.BETA, _M.CUBIC_C = BETA, CUBIC_C
local MIN_RATE = 0.01                  -- never stop for good: one request per 100 s

-- The nominal rate: the last hint, else the configured rate.
function bucket_mt:nominal() return self.hinted or self.rate end

--- The rate in force at `now` (requests per second).
function bucket_mt:current_rate(now)
  local nominal = self.hinted or self.rate
  local t0 = self.throttled_at
  if not t0 then return nominal end
  local w = self.w_max
  local d = now - t0 - self.k
  local cubic = CUBIC_C * d * d * d + w
  if cubic >= nominal then
    self.throttled_at = nil            -- grown back: the nominal rate again
    return nominal
  end
  return max(cubic, MIN_RATE)
end

-- Tokens up to `now` at the rate in force until now.
local function refill(self, now)
  if self.t then
    self.tokens = min(self.burst, self.tokens + (now - self.t) * self:current_rate(now))
  end
  self.t = now
end

--- Sets the configured rate (and burst) from `now` on.
function bucket_mt:set_rate(rate, burst, now)
  refill(self, now)
  self.rate = rate
  if burst then self.burst = burst; self.tokens = min(self.tokens, burst) end
end

--- A provider's own count of what is left: `per_second` from now on, and at
--- most `allowance` requests before that rate's first new token.
function bucket_mt:hint(per_second, allowance, now)
  refill(self, now)
  self.hinted = max(per_second, MIN_RATE)
  if allowance then self.tokens = min(self.tokens, allowance) end
end

--- A 429 at `now`: shrink to BETA x the rate in force, then grow back.
function bucket_mt:throttled(now)
  refill(self, now)
  local w = self:current_rate(now)
  self.w_max = w
  self.k = (w * (1 - BETA) / CUBIC_C) ^ (1 / 3)
  self.throttled_at = now
  self.tokens = min(self.tokens, 0)    -- what was saved up is not spent into a 429
end

-- From a response's headers (names lower-cased): per tier, "remaining" and
-- "reset" (Unix seconds, or seconds from now when small) -> the rate that
-- spends what is left evenly until that reset, keeping one request spare
-- for one in flight and one second for the clocks' granularity; the
-- slowest tier wins. `wall` is the Unix time now. Returns per_second,
-- allowance; nil when the headers say nothing.
local EPOCH_SECONDS = 1e9              -- a reset above this is a Unix time
function _M.headers_hint(headers, wall)
  if type(headers) ~= "table" then return nil end
  local rate, allowance
  for name, value in pairs(headers) do
    local tier = type(name) == "string" and name:match("^x%-ratelimit%-remaining(.*)$")
    local remaining = tier and tonumber(value)
    local reset = remaining and tonumber(headers["x-ratelimit-reset" .. tier])
    if reset then
      local left = reset > EPOCH_SECONDS and reset - wall or reset
      left = max(left, 0) + 1
      local spare = max(remaining - 1, 0)
      local r = spare >= 1 and spare / left or 1 / left
      if not rate or r < rate then rate = r end
      if not allowance or spare < allowance then allowance = spare end
    end
  end
  return rate, allowance
end

--- Every answer (the core's completion record `c`) passes here once: a 429
--- throttles the bucket, rate headers hint it (`read_hint(headers, wall)`,
--- a provider's spec.rate_hint, replaces headers_hint). A bucket the caller
--- set explicitly (`fixed`: the client's `rate` option) takes no hints: the
--- caller knows the plan; a 429 still slows it down.
--- A bucket of another kind (a shared-dict one, say) without throttled()
--- or hint() is left alone.
function _M.observe(bucket, c, now, read_hint)
  if not bucket or not c.status then return end
  if c.status == 429 and bucket.throttled then bucket:throttled(now) end
  if bucket.fixed or not bucket.hint then return end
  local rate, allowance = (read_hint or _M.headers_hint)(c.headers, os.time())
  if rate then bucket:hint(rate, allowance, now) end
end

return _M
