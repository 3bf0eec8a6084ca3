-- Token buckets that keep us under a provider's documented request rate.
-- One bucket per (provider, API key), shared by every client using that key,
-- because providers count per key, not per client object.
local min, max = math.min, math.max

local _M = { _VERSION = "0.1.0" }
local bucket_mt = {}
bucket_mt.__index = bucket_mt

--- rate: requests per second; burst: how many may go at once.
function _M.new(rate, burst)
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
