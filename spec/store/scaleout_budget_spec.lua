-- The run's shared budget (enrich.scaleout BUDGET_* scripts) on a real
-- redis-server: a grant is cut to what fits, a settle gives back the unused
-- reservation and counts a job's charge once, the taker of a chunk gives
-- back what its dead holder had reserved, and reserves sent at once by many
-- clients never grant more than the limit.
local helper = require "helper"
local scaleout = require "enrich.scaleout"
local redis_server = require "support.redis"

local q = helper.shell_quote

describe("scale-out budget scripts", function()
  local server
  local RUN, SETTLED, CHUNKS = "{b}:run", "{b}:settled", "{b}:chunks"
  local function chunk(i) return "{b}:chunk:" .. i end
  local function eval(script, keys, argv)
    local args = { script, tostring(#keys) }
    for _, k in ipairs(keys) do args[#args + 1] = k end
    for _, a in ipairs(argv) do args[#args + 1] = a end
    local out = server:cli("EVAL", table.unpack(args))
    local list = {}
    for line in (out .. "\n"):gmatch("([^\n]*)\n") do list[#list + 1] = line end
    return list, out
  end
  local function reserve(c, limit, price, n, fence)
    return eval(scaleout.BUDGET_RESERVE, { RUN, chunk(c), CHUNKS }, { limit, price, n, fence or "1", "{b}:chunk:" })
  end
  local function settle(c, reserved, charged, uid, fence)
    return eval(scaleout.BUDGET_SETTLE, { RUN, chunk(c), SETTLED }, { fence or "1", reserved, charged, uid or "" })
  end
  local function field(key, f) return tonumber(server:cli("HGET", key, f)) or 0 end

  setup(function() server = redis_server.start() end)
  teardown(function() if server then server:close() end end)
  before_each(function()
    server:cli("FLUSHALL")
    for i = 1, 40 do server:cli("HSET", chunk(i), "fence", "1", "terminal", "0") end
  end)

  it("grants what fits, waits while something is reserved, says none when nothing fits", function()
    assert.same({ "25", "ok", "0", "25" }, (reserve(1, 25, 1, 100)))  -- cut to what fits
    assert.same({ "0", "wait", "0", "25" }, (reserve(2, 25, 1, 1)))   -- may settle cheaper
    assert.same({ "13", "12", "0" }, (settle(1, 25, 12, "job-a")))
    assert.same({ "1", "ok", "12", "10" }, (reserve(2, 25, 10, 1)))
    -- 1 of 3 at 3 would fit (12 + 10 + 3 <= 25): not all fit, something reserved: wait.
    assert.same({ "0", "wait", "12", "10" }, (reserve(3, 25, 3, 3)))
    settle(2, 10, 1, "job-b")
    assert.same({ "4", "ok", "13", "12" }, (reserve(3, 25, 3, 10)))  -- 4 of 10, nothing else reserved
    assert.equal(12, field(chunk(3), "b_reserved"))
    settle(3, 12, 12, "job-c")
    assert.same({ "0", "none", "25", "0" }, (reserve(4, 25, 1, 1)))  -- nothing fits, nothing reserved
  end)

  it("does not wait for a reservation whose chunk's lease ran out (it still counts)", function()
    server:cli("ZADD", CHUNKS, "0", "2", "0", "3")
    assert.same({ "4", "ok", "0", "20" }, (reserve(1, 25, 5, 4)))
    server:cli("ZADD", CHUNKS, "1", "1")                -- chunk 1's holder died, its lease ran out
    assert.same({ "1", "ok", "0", "25" }, (reserve(2, 25, 5, 4)))   -- cut, not waiting
    -- Chunk 2's holder is alive (its lease not run out): waited for.
    server:cli("ZADD", CHUNKS, tostring(4102444800000), "2")
    assert.same({ "0", "wait", "0", "25" }, (reserve(3, 25, 5, 1)))
    server:cli("ZADD", CHUNKS, "1", "2")                -- it died too: nothing fits, none
    assert.same({ "0", "none", "0", "25" }, (reserve(3, 25, 5, 1)))
  end)

  it("settle returns the unused reservation, counts a job once, and is refused nothing by a lost fence", function()
    reserve(1, 100, 10, 5)
    assert.same({ "30", "20", "0" }, (settle(1, 50, 20, "job-a")))
    assert.equal(0, field(chunk(1), "b_reserved"))
    -- The same job settled again (the taker, or a retry): not counted twice.
    assert.same({ "0", "20", "0" }, (settle(1, 0, 20, "job-a")))
    -- A holder that lost the chunk gives back nothing (the taker did).
    reserve(2, 100, 10, 3)
    server:cli("HSET", chunk(2), "fence", "2")
    assert.same({ "0", "20", "30" }, (settle(2, 30, 0, "job-c", "1")))
    assert.truthy(reserve(2, 100, 1, 1, "1")[1]:find("LEASE", 1, true))
  end)

  it("the taker of a chunk charges its dead holder's jobs once and gives back the rest", function()
    reserve(1, 100, 10, 4)                               -- job-a: 2 items, job-b: 2 items
    settle(1, 20, 20, "job-a")                           -- job-a settled before the crash
    server:cli("HSET", chunk(1), "fence", "2")           -- taken over
    local out = eval(scaleout.BUDGET_ADOPT, { RUN, chunk(1), SETTLED }, { "2", "job-a", "20", "job-b", "15" })
    assert.same({ "20", "35", "0" }, out)                -- job-a not counted again
    assert.equal(0, field(chunk(1), "b_reserved"))
    assert.truthy(eval(scaleout.BUDGET_ADOPT, { RUN, chunk(1), SETTLED }, { "1" })[1]:find("LEASE", 1, true))
  end)

  it("concurrent reserves from many clients never grant more than the limit", function()
    local cmd = {}
    for i = 1, 40 do
      cmd[#cmd + 1] = ("redis-cli -p %d EVAL %s 3 %s %s %s 103 7 1 1 %s > %s 2>&1 &")
        :format(server.port, q(scaleout.BUDGET_RESERVE), q(RUN), q(chunk(i)), q(CHUNKS), q("{b}:chunk:"),
                q(server.dir .. "/r" .. i))
    end
    os.execute("{ " .. table.concat(cmd, " ") .. " wait; }")
    local granted = 0
    for i = 1, 40 do
      local f = assert(io.open(server.dir .. "/r" .. i))
      granted = granted + tonumber(f:read("l"))
      f:close()
    end
    assert.equal(14, granted)                            -- floor(103 / 7): every credit that fits, no more
    assert.equal(98, field(RUN, "b_reserved"))
  end)
end)
