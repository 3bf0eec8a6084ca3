-- A foreign event loop (luv) driving enrich: examples/foreign_loop/luv_loop.lua
-- watches enrich.fd() with a uv poll handle and enrich.timeout() with a uv
-- timer, and ticks only when one fires (no private field of the loop read). Run as a child (lua5.4, luv) against
-- the simulator; asserts every job finished correctly and the loop did not spin.
local support = require "engine.support"
local helper = require "helper"
local hosts = require "hosts.support"

local q = helper.shell_quote

local run = hosts.run    -- stdout, stderr, exit code

describe("a luv loop driving enrich", function()
  local sim

  setup(function()
    local _, err, code = run("lua5.4 -e 'require \"luv\"'")
    assert(code == 0, "luv for Lua 5.4 is missing (Debian: lua-luv): " .. err)
    sim = support.start()
  end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function()
    support.reset(sim)
    support.configure(sim, { tamtam = { polls = 2, rate_limit = false } })
  end)

  local function example(jobs, env)
    return run(("%sENRICH_SIM_URL=%s timeout 40 lua5.4 examples/foreign_loop/luv_loop.lua %d"):format(
      env or "", q(sim.url), jobs))
  end

  it("reads nothing private of the loop: only enrich.fd(), enrich.timeout() and enrich.tick()", function()
    local f = assert(io.open("examples/foreign_loop/luv_loop.lua"))
    local text = f:read("*a")
    f:close()
    assert.is_nil(text:find("scheduler", 1, true))
    assert.is_nil(text:find("engine", 1, true))
    assert.is_truthy(text:find("enrich.fd()", 1, true))
    assert.is_truthy(text:find("enrich.timeout()", 1, true))
  end)

  it("runs every job to its end and prints the results", function()
    local out, err, code = example(8)
    assert.equal(0, code, out .. err)
    for i = 1, 8 do
      assert.matches(("job %d succeeded found luv%d.loop@example.com"):format(i, i), out, 1, true)
    end
    local ticks = tonumber(out:match("jobs=8 succeeded=8 ticks=(%d+)"))
    assert.is_number(ticks, out)
    -- Woken by the fd and the timers only: a busy loop would tick thousands of times.
    assert.is_true(ticks < 1000, "ticks: " .. ticks)
    local sent = 0                         -- every person sent once (in shared requests)
    for _, times in pairs(support.stats(sim, "tamtam").inputs) do sent = sent + times end
    assert.equal(8, sent)
  end)

  it("waits on the I/O thread's pipe just the same", function()
    local out, err, code = example(8, "ENRICH_IO_THREAD=1 ")
    assert.equal(0, code, out .. err)
    assert.matches("io_thread=1", out, 1, true)
    local ticks = tonumber(out:match("jobs=8 succeeded=8 ticks=(%d+)"))
    assert.is_number(ticks, out)
    assert.is_true(ticks < 1000, "ticks: " .. ticks)
    local sent = 0                         -- every person sent once (in shared requests)
    for _, times in pairs(support.stats(sim, "tamtam").inputs) do sent = sent + times end
    assert.equal(8, sent)
  end)

  it("reports a job that did not find its person, and exits 1", function()
    support.configure(sim, { tamtam = { outcomes = { ["email||luv2|loop||example.com"] = "not_found" } } })
    local out, err, code = example(3)
    assert.equal(1, code, out .. err)
    assert.matches("job 2 succeeded not_found -", out, 1, true)
    assert.matches("jobs=3 succeeded=2 ", out, 1, true)
  end)
end)
