-- enrich.redis: the Lua client on the engine's loop, against a real
-- redis-server (spec/support/redis.lua).
local enrich = require "enrich"
local redis = require "enrich.redis"
local redis_server = require "support.redis"

describe("enrich.redis", function()
  local server, sched
  setup(function()
    server = redis_server.start()
    sched = enrich.scheduler()
  end)
  teardown(function() server:close() end)

  it("parses URLs and refuses wrong ones with code 'invalid'", function()
    local u = assert(redis.parse_url("redis://10.0.0.1:6380/3?ns=x"))
    assert.same({ host = "10.0.0.1", port = 6380, db = 3, params = { ns = "x" } }, u)
    assert.same(6379, redis.parse_url("redis://localhost").port)
    for _, bad in ipairs({ "http://x", "redis://h:99999/0", "redis://h:1/x", "redis://u:p@h/0" }) do
      local ok, err = redis.parse_url(bad)
      assert.is_nil(ok)
      assert.equals("invalid", err.code)
    end
    local r, err = redis.connect(sched, "sqlite:x")
    assert.is_nil(r)
    assert.equals("invalid", err.code)
  end)

  it("calls inside a task (parking it) and outside (driving the loop)", function()
    local r = assert(redis.connect(sched, server.url .. "?x=1"))
    assert.same({ ok = "OK" }, r:call { "SET", "a", "1" })
    local got = enrich.run(function()
      local others = 0
      enrich.spawn(function() for _ = 1, 5 do enrich.sleep(0.001); others = others + 1 end end)
      local v = r:call { "INCR", "a" }
      return v, others
    end)
    assert.equals(2, got)
    local f = r:script("return redis.call('GET', KEYS[1]) .. ARGV[1]")
    assert.equals("2x", f({ "a" }, { "x" }))
    server:cli("SCRIPT", "FLUSH")
    assert.equals("2y", f({ "a" }, { "y" }))    -- NOSCRIPT: once more in full
    local v, err = r:call { "INCR", "a", "b" }
    assert.is_nil(v)
    assert.equals("server", err.code)
    r:close()
  end)

  it("selects the URL's database", function()
    local r = assert(redis.connect(sched, "redis://127.0.0.1:" .. server.port .. "/5"))
    r:call { "SET", "in5", "yes" }
    assert.equals("yes", server:cli("-n", "5", "GET", "in5"))
    r:close()
  end)

  it("gives a clear network error when Redis cannot be reached", function()
    local port = require("helper").free_port()
    local r, err = redis.connect(sched, "redis://127.0.0.1:" .. port .. "/0", { retry_for = 0.3 })
    assert.is_nil(r)
    assert.equals("network", err.code)
    assert.matches("cannot reach Redis at 127.0.0.1:" .. port, tostring(err))
  end)

  it("waits and retries through a Redis restart", function()
    local r = assert(redis.connect(sched, server.url))
    r:call { "SET", "kept", "v" }
    server:stop()
    local restarted = false
    local v = enrich.run(function()
      enrich.spawn(function() enrich.sleep(0.3); server:start(); restarted = true end)
      return r:call { "GET", "kept" }
    end)
    assert.is_true(restarted)
    assert.equals("v", v)                  -- appendfsync always: the data came back
    assert.is_true(r.retries > 0)
    r:close()
  end)
end)
