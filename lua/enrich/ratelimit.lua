-- Token buckets that keep us under a provider's documented request rate.
-- One bucket per (provider, API key), shared by every client using that key,
-- because providers count per key, not per client object.
local min, max = math.min, math.max

local _M = { _VERSION = "0.1.0" }
local bucket_mt = {}
bucket_mt.__index = bucket_mt

-- Rates a provider documents are used at this fraction, so that timing
-- jitter between our clock and the provider's does not earn a 429. A rate
-- the caller sets (client option `rate`) is used as given.
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
  if self.t then self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate) end
  self.t = now
  if self.tokens >= 1 then
    self.tokens = self.tokens - 1
    return 0
  end
  return max((1 - self.tokens) / self.rate, 0.001)
end

return _M
