-- enrich.ratelimit_shared against a stand-in for ngx.shared (the same
-- add/get/set/delete semantics, with expiry on a clock the spec moves):
-- several "workers" on one dict stay under one rate together.
-- luacheck: globals ngx
local function fake_ngx(clock, workers, with_dict)
  local store = {}
  local dict = {}
  local function live(k)
    local e = store[k]
    if e and e.exp and e.exp <= clock.t then store[k] = nil; e = nil end
    return e
  end
  function dict.add(_, k, v, ttl)
    if live(k) then return false, "exists" end
    store[k] = { v = v, exp = ttl and ttl > 0 and clock.t + ttl or nil }
    return true
  end
  function dict.get(_, k) local e = live(k); return e and e.v end
  function dict.set(_, k, v, ttl) store[k] = { v = v, exp = ttl and ttl > 0 and clock.t + ttl or nil }; return true end
  function dict.delete(_, k) store[k] = nil end
  local logs = {}
  return {
    shared = with_dict and { enrich = dict } or {},
    worker = { count = function() return workers end },
    log = function(_, ...) logs[#logs + 1] = table.concat({ ... }) end,
    ERR = 1, WARN = 2,
    store = store, logs = logs,
  }
end

describe("enrich.ratelimit_shared", function()
  local clock, saved

  before_each(function()
    clock = { t = 1000 }
    saved = rawget(_G, "ngx")
    package.loaded["enrich.ratelimit_shared"] = nil
    package.loaded["enrich.ratelimit"] = nil
  end)
  after_each(function() _G.ngx = saved end)

  -- Takes for `seconds` from every bucket in turn, each retrying when told
  -- to wait (as the client's throttle does); returns the grant times.
  local function drive(buckets, seconds, step)
    local granted, next_try = {}, {}
    for i = 1, #buckets do next_try[i] = clock.t end
    local stop = clock.t + seconds
    while clock.t < stop do
      for i, b in ipairs(buckets) do
        if next_try[i] <= clock.t then
          local wait = b:take(clock.t)
          if wait == 0 then granted[#granted + 1] = clock.t; next_try[i] = clock.t
          else next_try[i] = clock.t + wait end
        end
      end
      clock.t = clock.t + step
    end
    return granted
  end

  -- The most grants in any window of `w` seconds.
  local function most_in(granted, w)
    local best, j = 0, 1
    for i = 1, #granted do
      while granted[i] - granted[j] >= w do j = j + 1 end
      best = math.max(best, i - j + 1)
    end
    return best
  end

  it("lets four workers on one dict send a key's burst, then its rate, together", function()
    _G.ngx = fake_ngx(clock, 4, true)
    local shared = require "enrich.ratelimit_shared"
    local buckets = {}
    for i = 1, 4 do buckets[i] = assert(shared.new(9, 9, "tamtam\0secret-key")) end
    local granted = drive(buckets, 10, 0.0005)
    assert.is_true(#granted >= 9 + 9 * 10 - 2 and #granted <= 9 + 9 * 10 + 1, #granted)
    assert.is_true(most_in(granted, 0.001) <= 9)             -- the burst at once, no more
    for _, w in ipairs { 0.5, 1, 2 } do
      -- the provider's bucket: 10 at once, 10/s; ours stays under it
      assert.is_true(most_in(granted, w) <= 9 + 9 * w + 1e-9, w)
    end
  end)

  it("keeps the key out of the dict: entries are named by a hash", function()
    local n = fake_ngx(clock, 2, true)
    _G.ngx = n
    local b = require("enrich.ratelimit_shared").new(10, 10, "tamtam\0secret-key")
    assert.equal(0, b:take(clock.t))
    for k in pairs(n.store) do assert.falsy(k:find("secret", 1, true), k) end
  end)

  it("tells a worker that finds the lock held to come back in a moment, and the lock expires", function()
    _G.ngx = fake_ngx(clock, 2, true)
    local shared = require "enrich.ratelimit_shared"
    local b = shared.new(10, 10, "p\0k")
    assert(ngx.shared.enrich:add(b.lock, true, shared.LOCK_TTL))   -- another worker holds it
    assert.equal(shared.RETRY, b:take(clock.t))
    clock.t = clock.t + shared.LOCK_TTL + 0.001                   -- that worker died holding it
    assert.equal(0, b:take(clock.t))
  end)

  it("without the dict gives each worker rate / workers, and says so once", function()
    _G.ngx = fake_ngx(clock, 4, false)
    local shared = require "enrich.ratelimit_shared"
    local a, b = shared.new(8, 8, "p\0k1"), shared.new(8, 8, "p\0k2")
    assert.equal(2, a.rate)
    assert.equal(2, a.burst)
    assert.equal(2, b.rate)
    assert.equal(1, #ngx.logs)
    assert.truthy(ngx.logs[1]:match("each of the 4 workers sends at most 1/4"))
  end)

  it("keeps a documented rate 10% under, and a rate the caller sets as it is", function()
    _G.ngx = nil
    local ratelimit = require "enrich.ratelimit"
    local doc = ratelimit.new(10, 10, { id = "p\0k", documented = true })
    assert.equal(9, doc.rate)
    assert.equal(9, doc.burst)
    local own = ratelimit.new(10, 10, { id = "p\0k" })
    assert.equal(10, own.rate)
  end)

  it("hands out a shared bucket through enrich.ratelimit in nginx", function()
    _G.ngx = fake_ngx(clock, 4, true)
    local b = require("enrich.ratelimit").new(10, 10, { id = "p\0k", documented = true })
    assert.truthy(b.dict)
    assert.near(1 / 9, b.interval, 1e-12)
  end)
end)
