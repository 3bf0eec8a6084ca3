-- The ticking host (examples/host): a C program embedding Lua 5.4 that calls
-- enrich.tick() once per frame at 60 fps. Built here with its own Makefile,
-- run against the simulator; asserts that every job finished correctly and
-- that failures are reported, never how fast a tick is (that is `make bench`).
local support = require "engine.support"
local helper = require "helper"
local hosts = require "hosts.support"

local HOST = "build/host/enrich-host"
local q = helper.shell_quote

local run = hosts.run    -- stdout, stderr, exit code

local function summary(out)
  local line = out:match("(jobs=%d+[^\n]*)")
  if not line then return nil end
  local t = {}
  for k, v in line:gmatch("([%w_]+)=([%d%.]+)") do t[k] = tonumber(v) end
  return t
end

describe("the ticking host", function()
  local sim

  setup(function()
    local out, err, code = run("make -s -C examples/host")
    assert(code == 0, "building the host failed:\n" .. out .. err)
    sim = support.start()
  end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function()
    support.reset(sim)
    support.configure(sim, { tamtam = { polls = 2, rate_limit = false, credits = 1e9 } })
  end)

  it("ticks 50 jobs submitted in the first frame to their end", function()
    local out, err, code = run(("%s %s 50 0 20"):format(HOST, q(sim.url)))
    assert.equal(0, code, out .. err)
    local s = assert(summary(out), out)
    assert.same({ 50, 50, 0, 0, 0, 1 }, { s.jobs, s.succeeded, s.wrong, s.unfinished, s.live, s.io_thread })
    assert.is_true(s.frames >= 2 and s.frames < 20 * 60)
    for _, k in ipairs { "median_ms", "p99_ms", "worst_ms", "cpu_worst_ms" } do assert.is_number(s[k]) end
    assert.is_true(s.median_ms <= s.p99_ms and s.p99_ms <= s.worst_ms)
    local sent = 0                         -- every person sent once (in shared requests)
    for _, times in pairs(support.stats(sim, "tamtam").inputs) do sent = sent + times end
    assert.equal(50, sent)
  end)

  it("ticks the same jobs with libcurl inside tick(), without the I/O thread", function()
    local out, err, code = run(("ENRICH_IO_THREAD=0 %s %s 50 5 20"):format(HOST, q(sim.url)))
    assert.equal(0, code, out .. err)
    local s = assert(summary(out), out)
    assert.same({ 50, 50, 0, 0 }, { s.jobs, s.succeeded, s.live, s.io_thread })
  end)

  it("ticks jobs submitted a few per frame, as a game's update step would", function()
    local out, err, code = run(("%s %s 50 5 20"):format(HOST, q(sim.url)))
    assert.equal(0, code, out .. err)
    local s = assert(summary(out), out)
    assert.same({ 50, 50, 0 }, { s.jobs, s.succeeded, s.live })
    assert.is_true(s.frames >= 10)          -- 5 per frame: at least 10 frames of submitting
  end)

  it("exits non-zero when jobs are still live at the time limit", function()
    support.configure(sim, { tamtam = { job_outcome = "never" } })
    local out, err, code = run(("%s %s 3 0 0.5"):format(HOST, q(sim.url)))
    assert.equal(1, code)
    assert.matches("still live", err)
    local s = assert(summary(out), out)
    assert.same({ 3, 0, 3 }, { s.jobs, s.succeeded, s.live })
  end)

  it("reports a Lua error with its message and exits non-zero", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write('return { update = function() error("boom in update") end, summary = function() end }\n')
    f:close()
    local _, err, code = run(("ENRICH_HOST_SCRIPT=%s %s %s 1"):format(q(script), HOST, q(sim.url)))
    os.remove(script)
    assert.equal(1, code)
    assert.matches("game.update: .*boom in update", err)
  end)

  it("refuses bad arguments with its usage", function()
    local _, err, code = run(HOST .. " only-one-argument")
    assert.equal(2, code)
    assert.matches("usage: enrich%-host", err)
  end)
end)
