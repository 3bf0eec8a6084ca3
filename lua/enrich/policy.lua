-- The two policies, as plain data and small functions anyone can replace:
-- poll cadence (how often to ask whether a job is done) and request retry
-- (what to do when one HTTP request fails). Defaults here; providers and
-- clients override them field by field.
local random, min, max, floor = math.random, math.min, math.max, math.floor
local tonumber, type, pairs, os_time = tonumber, type, pairs, os.time

local _M = { _VERSION = "0.1.0" }

-- Seconds throughout.
_M.DEFAULT_POLL = {
  interval = 2,        -- first wait after submit (providers advise their own)
  factor = 1.5,        -- each wait grows by this factor...
  max_interval = 30,   -- ...up to this cap
  jitter = 0.2,        -- ± this fraction, so many jobs do not poll in step
  deadline = 600,      -- then the job is timed_out (its provider id is kept)
  max_retry_after = 300, -- a provider's "come back in N s" is clamped to this
}

_M.DEFAULT_RETRY = {
  attempts = 5,        -- tries in all, the first included
  base = 0.5,          -- backoff: random(0, min(cap, base * 2^n)) ("full jitter")
  cap = 30,
  max_retry_after = 120, -- a Retry-After longer than this is not waited for
  -- The retry budget of a provider key, shared by every client on it (AWS's
  -- "standard" retry mode): each retry spends `budget_cost` tokens (twice
  -- that after a timeout), each success gives one back (a success after
  -- retries gives back what they cost); with too few tokens left a failure
  -- surfaces at once instead of being retried, so an outage does not
  -- multiply the traffic by `attempts`.
  budget = 500,
  budget_cost = 5,
}

--- Copies `over` onto a copy of `base` for the keys `base` has; an unknown
--- key or a wrongly typed value raises (misuse of the API) with `prefix`
--- ("enrich.client: ") at `level` (default 3: the caller's caller).
function _M.merge(base, over, what, prefix, level)
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  if over == nil then return out end
  prefix, level = prefix or "", level or 3
  if type(over) ~= "table" then error(prefix .. "'" .. what .. "' must be a table", level) end
  for k, v in pairs(over) do
    if base[k] == nil then error(prefix .. "unknown " .. what .. " option '" .. tostring(k) .. "'", level) end
    if type(v) ~= "number" or v < 0 then error(prefix .. what .. "." .. k .. " must be a number >= 0", level) end
    out[k] = v
  end
  return out
end

local function jittered(seconds, jitter)
  if jitter <= 0 then return seconds end
  return seconds * (1 - jitter + 2 * jitter * random())
end

--- Seconds to wait before poll number n (0 = the first after submit).
--- `hint` is the provider's own "come back in" (a Retry-After header, on a
--- 2xx "still running" answer as on an error, or a body's hint): it wins,
--- clamped to max_retry_after, and never below the cadence's first
--- `interval`, so a zero, negative or past hint cannot make a tight loop.
function _M.poll_delay(p, n, hint)
  if hint then return min(max(hint, p.interval), p.max_retry_after) end
  local d = min(p.interval * p.factor ^ n, p.max_interval)
  return jittered(d, p.jitter)
end

--- Seconds to wait before retry number n (1 = the first retry), or nil when
--- no retry is left or the wait asked for is too long. A Retry-After is
--- honoured, never below `base` (a zero hint is no reason to hammer).
function _M.retry_delay(r, n, retry_after)
  if n >= r.attempts then return nil end
  if retry_after then
    if retry_after > r.max_retry_after then return nil end
    return max(retry_after, r.base)
  end
  return random() * min(r.cap, r.base * 2 ^ (n - 1))
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
                 Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Seconds between os.time() read as UTC and the true epoch (the TZ offset).
local function utc_offset(t)
  local u = os.date("!*t", t)
  u.isdst = false
  return os.difftime(t, os_time(u))
end

--- Retry-After: delta seconds, or an HTTP-date (IMF-fixdate, RFC 850 or
--- asctime). Returns seconds from now (>= 0), or nil when unreadable.
function _M.parse_retry_after(value, now)
  if type(value) == "table" then value = value[1] end
  if type(value) ~= "string" and type(value) ~= "number" then return nil end
  local n = tonumber(value)
  if n then return (n >= 0 and n < math.huge) and n or nil end   -- "1e999" reads as inf: no hint
  local d, mon, y, h, mi, s = value:match("^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d then d, mon, y, h, mi, s = value:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if y then y = tonumber(y) + (tonumber(y) < 70 and 2000 or 1900) end
  end
  if not d then mon, d, h, mi, s, y = value:match("^%a+ (%a%a%a) +(%d+) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$") end
  if not (d and MONTHS[mon]) then return nil end
  local t = os_time { year = tonumber(y), month = MONTHS[mon], day = tonumber(d),
                      hour = tonumber(h), min = tonumber(mi), sec = tonumber(s), isdst = false }
  local epoch = t + utc_offset(t)
  return max(0, epoch - (now or os_time()))
end

-- The last second formatted: jobs stamp many times a second.
local last_t, last_iso

--- ISO 8601 UTC for a wall-clock time in seconds (fractions dropped).
function _M.iso8601(t)
  t = floor(t or os_time())
  if t ~= last_t then last_t, last_iso = t, os.date("!%Y-%m-%dT%H:%M:%SZ", t) end
  return last_iso
end

return _M
