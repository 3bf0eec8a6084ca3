-- enrich.core's Redis connections: commands on the engine's own loop, the
-- replies as completion records from engine:poll. Against a real
-- redis-server on loopback (spec/support/redis.lua). Each case runs with
-- libcurl driven by poll and again with the engine's I/O thread.
local core = require "enrich.core"
local redis_server = require "support.redis"

-- Polls until every id has its record (bounded), returns them by id.
local function await(engine, ids, polls)
  local want, got, left = {}, {}, 0
  for _, id in ipairs(ids) do want[id] = true; left = left + 1 end
  for _ = 1, polls or 400 do
    for _, c in ipairs(engine:poll(0.05)) do
      if want[c.id] then
        assert.is_nil(got[c.id], "a command completed twice")
        got[c.id] = c
        left = left - 1
      end
    end
    if left == 0 then return got end
  end
  error("no reply for " .. left .. " command(s)")
end

local function one(engine, conn, argv)
  local id = assert(conn:command(argv))
  return await(engine, { id })[id]
end

local server
setup(function() server = redis_server.start() end)
teardown(function() if server then server:close() end end)

for _, io_thread in ipairs({ false, true }) do
  describe("enrich.core Redis connection" .. (io_thread and " (I/O thread)" or ""), function()
    local engine, conn
    before_each(function()
      engine = assert(core.new { io_thread = io_thread })
      conn = assert(engine:redis { host = "127.0.0.1", port = server.port })
    end)
    after_each(function() engine:close() end)

    it("returns at once and connects on the loop", function()
      assert.equals("connecting", conn:status())
      local c = one(engine, conn, { "PING" })
      assert.same({ ok = "PONG" }, c.reply)
      assert.is_true(c.redis)
      assert.equals("connected", conn:status())
    end)

    it("converts replies as Redis's Lua scripting does", function()
      local key = "t:" .. tostring(io_thread)
      one(engine, conn, { "DEL", key, key .. ":l", key .. ":n" })
      local bin = "a\0b\r\nc\255"
      assert.same({ ok = "OK" }, one(engine, conn, { "SET", key, bin }).reply)
      assert.equals(bin, one(engine, conn, { "GET", key }).reply)
      assert.equals(false, one(engine, conn, { "GET", key .. ":missing" }).reply)
      -- Past 2^53 where integers exist (5.3+): no trip through a double.
      local big = math.type and tonumber("9007199254740993") or 12345
      local n = one(engine, conn, { "INCRBY", key .. ":n", big }).reply
      assert.equals(big, n)
      if math.type then assert.equals("integer", math.type(n)) end
      one(engine, conn, { "RPUSH", key .. ":l", "x", 42 })
      assert.same({ "x", "42" }, one(engine, conn, { "LRANGE", key .. ":l", 0, -1 }).reply)
      assert.same({ bin, false }, one(engine, conn, { "MGET", key, key .. ":missing" }).reply)
      local nested = one(engine, conn, { "EVAL",
        "return {1, {2, 'x'}, redis.status_reply('OK'), redis.error_reply('E1 bad')}", 0 })
      assert.same({ 1, { 2, "x" }, { ok = "OK" }, { err = "E1 bad" } }, nested.reply)
      assert.same({}, one(engine, conn, { "LRANGE", key .. ":none", 0, -1 }).reply)
    end)

    it("gives an error reply as error code 'redis'", function()
      local c = one(engine, conn, { "NOSUCHCOMMAND", "x" })
      assert.is_nil(c.reply)
      assert.equals("redis", c.error.code)
      assert.matches("unknown command", c.error.message)
    end)

    it("pipelines many commands and answers each exactly once, in order", function()
      local ids = {}
      for i = 1, 2000 do ids[i] = assert(conn:command { "ECHO", "m" .. i }) end
      assert.equals(2000, conn:pending())
      assert.equals(2000, engine:pending())
      local got = await(engine, ids)
      for i = 1, 2000 do assert.equals("m" .. i, got[ids[i]].reply) end
      assert.equals(0, conn:pending())
      assert.equals(0, engine:pending())
    end)

    it("wakes a waiting poll when Redis answers", function()
      one(engine, conn, { "PING" })
      local id = assert(conn:command { "BLPOP", "nothing:" .. tostring(io_thread), "0.2" })
      -- A long poll returns with the reply (nil after BLPOP's 0.2 s), not at its timeout.
      local got
      for _ = 1, 20 do
        for _, c in ipairs(engine:poll(30)) do if c.id == id then got = c end end
        if got then break end
      end
      assert.equals(false, got.reply)
    end)

    it("fails pending commands with code 'network' on close, once each", function()
      one(engine, conn, { "PING" })
      local ids = {}
      for i = 1, 3 do ids[i] = assert(conn:command { "BLPOP", "never", "5" }) end
      conn:close()
      conn:close()
      assert.equals("closed", conn:status())
      local got = await(engine, ids)
      for i = 1, 3 do assert.equals("network", got[ids[i]].error.code) end
      local id, err = conn:command { "PING" }
      assert.is_nil(id)
      assert.equals("network", err.code)
    end)

    it("reports a refused connection on the command, not by raising", function()
      local port = require("helper").free_port()
      local c2 = assert(engine:redis { port = port })
      local id = assert(c2:command { "PING" })
      local c = await(engine, { id })[id]
      assert.equals("network", c.error.code)
      assert.matches("refused", c.error.message)
      local status, why = c2:status()
      assert.equals("closed", status)
      assert.matches("refused", why)
    end)

    it("raises on misuse", function()
      assert.has_error(function() conn:command {} end)
      assert.has_error(function() conn:command { "GET", {} } end)
      assert.has_error(function() engine:redis { hots = "x" } end)
      assert.has_error(function() engine:redis { port = 70000 } end)
    end)

    it("closes its connections with the engine, and is collected", function()
      local id = assert(conn:command { "PING" })
      assert.is_number(id)
      engine:close()
      assert.equals("closed", conn:status())
      local weak = setmetatable({ assert(core.new { io_thread = io_thread }) }, { __mode = "v" })
      weak[2] = weak[1]:redis { port = server.port }
      weak[2]:command { "PING" }
      for _ = 1, 3 do collectgarbage() end
      assert.is_nil(weak[1])
      assert.is_nil(weak[2])
    end)
  end)
end

describe("enrich.core Redis connection, server gone", function()
  it("fails what was in flight with 'network' when redis-server dies, then refuses", function()
    local s = redis_server.start()
    local engine = assert(core.new())
    local conn = assert(engine:redis { port = s.port })
    assert.same({ ok = "PONG" }, one(engine, conn, { "PING" }).reply)
    local id = assert(conn:command { "BLPOP", "never", "10" })
    engine:poll(0.05)
    os.execute("kill -9 " .. s.pid)
    local c = await(engine, { id })[id]
    assert.equals("network", c.error.code)
    assert.equals("closed", (conn:status()))
    -- Restarted on the same port with its data: a new connection works.
    s:start()
    local conn2 = assert(engine:redis { port = s.port })
    assert.same({ ok = "PONG" }, one(engine, conn2, { "PING" }).reply)
    engine:close()
    s:close()
  end)
end)

describe("enrich.core.sha256", function()
  it("matches FIPS 180-4 test vectors, across block boundaries", function()
    assert.equals("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", core.sha256(""))
    assert.equals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", core.sha256("abc"))
    assert.equals("9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318", core.sha256(("a"):rep(55)))
    assert.equals("b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a", core.sha256(("a"):rep(56)))
    assert.equals("ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb", core.sha256(("a"):rep(64)))
  end)
end)
