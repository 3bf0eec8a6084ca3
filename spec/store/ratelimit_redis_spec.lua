-- The shared rate limit (GCRA in a Redis script): many buckets on one key,
-- each on its own connection as separate workers would be, stay under the
-- rate together; the key is stored only hashed.
local core = require "enrich.core"
local scheduler = require "enrich.scheduler"
local redis = require "enrich.redis"
local shared = require "enrich.ratelimit_redis"
local redis_server = require "support.redis"

describe("enrich.ratelimit_redis", function()
  local server, sched
  setup(function()
    server = redis_server.start()
    sched = assert(scheduler.new())
  end)
  teardown(function() sched:close(); server:close() end)

  it("keeps five workers on one key under the rate together", function()
    local rate, burst, workers = 20, 4, 5
    local granted, t0, t1 = 0, nil, nil
    sched:run(function()
      local buckets = {}
      for i = 1, workers do
        local r = assert(redis.connect(sched, server.url))
        buckets[i] = shared.new(r, "tamtam", "SECRET-KEY-1", rate, burst, { margin = 1 })
      end
      t0 = core.now()
      for i = 1, workers do
        sched:go(function()
          for _ = 1, 1000 do
            if core.now() - t0 > 1.5 then return end
            local wait = buckets[i]:take()
            if wait == 0 then granted = granted + 1 else sched:sleep(wait) end
          end
        end)
      end
      sched:sleep(1.6)
      t1 = core.now()
    end)
    -- At most the burst plus the rate over the time they tried (no lower
    -- bound: a slow machine grants fewer, never more).
    assert.is_true(granted <= burst + rate * (t1 - t0) + 1, "granted " .. granted)
    assert.is_true(granted > 0)
  end)

  it("stores only a hash of the key, under the namespace's tag", function()
    sched:run(function()
      local r = assert(redis.connect(sched, server.url))
      local b = shared.new(r, "lance", "SECRET-KEY-2", 5, 5, { ns = "runx" })
      assert.equals(0, b:take())
      assert.equals("{runx}:rate:" .. core.sha256("lance\0SECRET-KEY-2"), b.redis_key)
    end)
    local keys = server:cli("KEYS", "*")
    assert.is_nil(keys:find("SECRET", 1, true))
    assert.matches("{runx}:rate:" .. core.sha256("lance\0SECRET-KEY-2"), keys, 1, true)
  end)

  it("takes the place of a client's own bucket, for every client of that key", function()
    sched:run(function()
      local enrich_client = require "enrich.client"
      local c = assert(enrich_client.new(sched, "tamtam",
        { api_key = "SECRET-KEY-3", base_url = "http://127.0.0.1:9" }))
      local r = assert(redis.connect(sched, server.url))
      local b = assert(shared.attach(c, r, { key = "SECRET-KEY-3" }))
      assert.equals(b, c.shared.bucket)
      assert.equals(9, b.rate)                   -- tamtam's 10/s with the engine's 0.9 margin, as given
      local c2 = assert(enrich_client.new(sched, "tamtam",
        { api_key = "SECRET-KEY-3", base_url = "http://127.0.0.1:9" }))
      assert.equals(b, c2.shared.bucket)
      c:throttle()
    end)
  end)
end)
