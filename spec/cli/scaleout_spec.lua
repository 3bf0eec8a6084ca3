-- `enrich run --store redis://… --run NAME`: worker processes of the command
-- share one run through a real redis-server, against the simulator (its
-- rate limit on); one is killed mid-run.
local helper = require "helper"
local support = require "cli.support"
local redis_server = require "support.redis"

local q = helper.shell_quote

-- Starts bin/enrich in the background; :wait() -> exit code, stderr.
local function start(sim, argv, env)
  local e = { "env", "ENRICH_TAMTAM_API_KEY=" .. support.KEY, "ENRICH_TAMTAM_BASE_URL=" .. sim.url .. "/tamtam" }
  for k, v in pairs(env or {}) do e[#e + 1] = k .. "=" .. v end
  local cmd = table.concat(e, " ") .. " " .. (os.getenv("ENRICH_CLI_LUA") or "lua5.4") .. " bin/enrich"
  for _, a in ipairs(argv) do cmd = cmd .. " " .. q(a) end
  local run = helper.background(cmd, "/dev/null")
  return { wait = function()
    local text, code = run:wait(180)
    return code, text
  end }
end

describe("enrich run --run (scale-out on Redis)", function()
  local sim, server
  setup(function()
    sim = support.start()
    server = redis_server.start()
  end)
  teardown(function()
    if sim then sim:stop() end
    if server then server:close() end
    support.cleanup()
  end)

  it("refuses --run without a Redis store, and a Redis store without --run", function()
    local input = support.write("few.csv", "first_name,last_name,domain\nAda,Byron,example.com\n")
    local code, _, err = support.run(sim, { "run", "--provider", "tamtam", "--in", input,
                                            "--out", support.path("o.csv"), "--run", "x" })
    assert.equal(2, code)
    assert.truthy(err:find("needs --store redis://", 1, true), err)
    code, _, err = support.run(sim, { "run", "--provider", "tamtam", "--in", input,
                                      "--out", support.path("o.csv"), "--store", server.url })
    assert.equal(2, code)
    assert.truthy(err:find("--run NAME", 1, true), err)
  end)

  it("three workers, --budget below the worst case: the run's, never exceeded; rows left skipped (budget), exit 2",
     function()
    support.reset(sim)
    local lines = { "first_name,last_name,domain,row" }
    local P, N = 60, 23                    -- 60 people at 1 credit each, a budget of 23
    for i = 1, P do lines[#lines + 1] = ("Ada%d,Byron,example.com,%d"):format(i, i) end
    local input = support.write("budget.csv", table.concat(lines, "\n") .. "\n")
    local ws = {}
    for i = 1, 3 do
      ws[i] = start(sim, { "run", "--provider", "tamtam", "--in", input, "--out", support.path("bu" .. i .. ".csv"),
                           "--store", server.url, "--run", "budgeted", "--budget", tostring(N), "--chunk", "4",
                           "--poll-interval", "0.05" })
    end
    for i = 1, 3 do
      local code, text = ws[i]:wait()
      assert.equal(2, code, text)
    end
    local stats = support.stats(sim, "tamtam")
    assert.is_true(stats.credits.charged <= N, "charged " .. stats.credits.charged .. " > " .. N)
    assert.is_true(stats.credits.charged >= N - 4, "charged only " .. stats.credits.charged)
    for _, times in pairs(stats.inputs) do assert.equal(1, times) end
    local first
    for i = 1, 3 do
      local rows = support.csv(support.path("bu" .. i .. ".csv"))
      assert.equal(P, #rows)
      local found, skipped, credits = 0, 0, 0
      for r = 1, P do
        assert.equal(tostring(r), rows[r].row)
        if rows[r].enrich_status == "found" then
          found = found + 1
          assert.equal("ada" .. r .. ".byron@example.com", rows[r].enrich_email)
        else
          assert.equal("skipped", rows[r].enrich_status)
          assert.equal("budget", rows[r].enrich_error)
          skipped = skipped + 1
        end
        credits = credits + (tonumber(rows[r].enrich_credits) or 0)
      end
      assert.equal(P, found + skipped)
      assert.is_true(skipped > 0)
      assert.equal(stats.credits.charged, credits)
      first = first or found
      assert.equal(first, found)             -- every worker writes the same run
    end
    -- The run's budget in Redis: everything settled, charged as the simulator's counters.
    assert.equal(stats.credits.charged, tonumber(server:cli("HGET", "{enrich:run:budgeted}:run", "b_charged")))
    assert.equal(0, tonumber(server:cli("HGET", "{enrich:run:budgeted}:run", "b_reserved")))
  end)

  it("a budgeted run, one worker killed: its jobs charged once, its reservation given back by the taker", function()
    support.reset(sim)
    local lines = { "first_name,last_name,domain,row" }
    local P, N = 120, 70
    for i = 1, P do lines[#lines + 1] = ("Ada%d,Byron,example.com,%d"):format(i, i) end
    local input = support.write("budget_kill.csv", table.concat(lines, "\n") .. "\n")
    local ws = {}
    for i = 1, 3 do
      ws[i] = start(sim, { "run", "--provider", "tamtam", "--in", input, "--out", support.path("bk" .. i .. ".csv"),
                           "--store", server.url, "--run", "budget-kill", "--budget", tostring(N), "--lease", "1",
                           "--chunk", "5", "--poll-interval", "0.05" },
                    i == 2 and { ENRICH_CRASH_AT = "id_committed:1" } or nil)
    end
    local codes, texts = {}, {}
    for i = 1, 3 do codes[i], texts[i] = ws[i]:wait() end
    assert.equal(137, codes[2], texts[2])
    local stats = support.stats(sim, "tamtam")
    assert.is_true(stats.credits.charged <= N, "charged " .. stats.credits.charged .. " > " .. N)
    for key, times in pairs(stats.inputs) do assert.equal(1, times, key) end
    for _, i in ipairs({ 1, 3 }) do
      assert.equal(2, codes[i], texts[i])
      local rows = support.csv(support.path("bk" .. i .. ".csv"))
      assert.equal(P, #rows)
      local credits, skipped = 0, 0
      for r = 1, P do
        if rows[r].enrich_status ~= "found" then
          assert.equal("skipped", rows[r].enrich_status)
          assert.equal("budget", rows[r].enrich_error)
          skipped = skipped + 1
        end
        credits = credits + (tonumber(rows[r].enrich_credits) or 0)
      end
      assert.is_true(skipped > 0)
      assert.equal(stats.credits.charged, credits)
    end
    local taken = 0
    for _, i in ipairs({ 1, 3 }) do taken = taken + tonumber(texts[i]:match("%((%d+) taken over%)")) end
    assert.is_true(taken >= 1, "the killed worker's chunk was not taken over")
    -- Counted once in Redis (the dead worker's job by its taker), nothing left reserved.
    assert.equal(stats.credits.charged, tonumber(server:cli("HGET", "{enrich:run:budget-kill}:run", "b_charged")))
    assert.equal(0, tonumber(server:cli("HGET", "{enrich:run:budget-kill}:run", "b_reserved")))
  end)

  it("three workers: a person's rows in both halves of the input are sent once, the answer on every row", function()
    support.reset(sim)
    local lines = { "first_name,last_name,domain,row" }
    local P = 40                           -- rows 1..40, then the same people again, reversed
    for i = 1, P do lines[#lines + 1] = ("Ada%d,Byron,example.com,%d"):format(i, i) end
    for i = P, 1, -1 do lines[#lines + 1] = ("Ada%d,Byron,example.com,%d"):format(i, 2 * P + 1 - i) end
    local input = support.write("twice.csv", table.concat(lines, "\n") .. "\n")
    local ws = {}
    for i = 1, 3 do
      ws[i] = start(sim, { "run", "--provider", "tamtam", "--in", input, "--out", support.path("tw" .. i .. ".csv"),
                           "--store", server.url, "--run", "twice", "--chunk", "5", "--poll-interval", "0.05" })
    end
    for i = 1, 3 do
      local code, text = ws[i]:wait()
      assert.equal(0, code, text)
    end
    local stats = support.stats(sim, "tamtam")
    assert.same({}, stats.duplicates)
    local inputs = 0
    for key, times in pairs(stats.inputs) do
      assert.equal(1, times, key)
      inputs = inputs + 1
    end
    assert.equal(P, inputs)
    for i = 1, 3 do
      local rows = support.csv(support.path("tw" .. i .. ".csv"))
      assert.equal(2 * P, #rows)
      local credits = 0
      for r = 1, 2 * P do
        assert.equal(tostring(r), rows[r].row)
        assert.equal("found", rows[r].enrich_status)
        local person = r <= P and r or 2 * P + 1 - r
        assert.equal("ada" .. person .. ".byron@example.com", rows[r].enrich_email)
        credits = credits + (tonumber(rows[r].enrich_credits) or 0)
      end
      assert.equal(stats.credits.charged, credits)
    end
  end)

  it("three workers, one killed: every row answered once in each live worker's output, nothing sent twice", function()
    support.reset(sim)
    local lines = { "first_name,last_name,domain,row" }
    local N = 250
    for i = 1, N do lines[#lines + 1] = ("Ada%d,Byron,example.com,%d"):format(i, i) end
    local input = support.write("people.csv", table.concat(lines, "\n") .. "\n")
    local ws = {}
    for i = 1, 3 do
      ws[i] = start(sim, { "run", "--provider", "tamtam", "--in", input, "--out", support.path("out" .. i .. ".csv"),
                           "--store", server.url, "--run", "cli250", "--lease", "1", "--chunk", "10",
                           "--poll-interval", "0.05" },
                    i == 2 and { ENRICH_CRASH_AT = "id_committed:1" } or nil)
    end
    local codes, texts = {}, {}
    for i = 1, 3 do codes[i], texts[i] = ws[i]:wait() end
    assert.equal(137, codes[2], texts[2])
    for _, i in ipairs({ 1, 3 }) do
      assert.equal(0, codes[i], texts[i])
      local rows = support.csv(support.path("out" .. i .. ".csv"))
      assert.equal(N, #rows)
      for r = 1, N do
        assert.equal(tostring(r), rows[r].row)
        assert.equal("found", rows[r].enrich_status)
        assert.equal("ada" .. r .. ".byron@example.com", rows[r].enrich_email)
      end
    end
    local taken = 0
    for _, i in ipairs({ 1, 3 }) do taken = taken + tonumber(texts[i]:match("%((%d+) taken over%)")) end
    assert.is_true(taken >= 1, "the killed worker's chunk was not taken over")
    local stats = support.stats(sim, "tamtam")
    local inputs = 0
    for key, times in pairs(stats.inputs) do
      assert.equal(1, times, key)
      inputs = inputs + 1
    end
    assert.equal(N, inputs)
    assert.is_nil(stats.responses["429"])
  end)
end)
