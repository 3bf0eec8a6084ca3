-- `enrich run` after kill -9 (enrich.crash points) and after Ctrl-C: the
-- same command finishes the output without a second submit (the
-- simulator's counters say so).
local support = require "cli.support"
local helper = require "helper"

local function people(n, extra)
  local lines = { "first_name,last_name,domain,lance_id" }
  for i = 1, n do
    lines[#lines + 1] = ("P%d,%s%d,example.com,%s"):format(i, extra and extra(i) or "Person", i, support.uuid(i))
  end
  return table.concat(lines, "\n") .. "\n"
end

local count = support.count

describe("enrich run resumes", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end support.cleanup() end)
  before_each(function()
    support.reset(sim)
    os.execute("rm -f " .. support.path("out") .. "*")
  end)

  local function run(argv, env) return support.enrich_run(sim, argv, env) end

  local function all_found(path, n)
    local rows = support.csv(path)
    assert.equal(n, #rows)
    for _, r in ipairs(rows) do assert.equal("found", r.enrich_status) end
  end

  -- in_commit:2 dies inside the intent's commit (the first is the run's
  -- fingerprint): nothing durable, nothing sent, so the rerun sends it.
  for _, point in ipairs { "id_committed:1", "terminal_read:1", "in_commit:2" } do
    it("after kill -9 at " .. point .. ", without a second submit", function()
      local input = support.write("crash.csv", people(80))
      local out = support.path("out.csv")
      local code = run({ "--provider", "tamtam", "--in", input, "--out", out, "--budget", "1000" },
                       { ENRICH_CRASH_AT = point })
      assert.equal(137, code)                       -- SIGKILL
      assert.is_false(support.exists(out))
      local before = support.stats(sim, "tamtam").submissions
      assert.equal(point == "in_commit:2" and 0 or 1, before)
      local err
      code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out, "--budget", "1000" }
      assert.equal(0, code, err)
      all_found(out, 80)
      assert.matches("credits 80 of 1000 %(tamtam 80%)", err)     -- counted once
      local tamtam = support.stats(sim, "tamtam")
      assert.equal(1, tamtam.submissions)
      assert.same({}, tamtam.duplicates)
      assert.equal(80, count(tamtam.inputs))
    end)
  end

  it("after kill -9 with the intent committed and nothing sent: unknown, never resent (tamtam)", function()
    local input = support.write("intent.csv", people(10))
    local out = support.path("out.csv")
    assert.equal(137, (run({ "--provider", "tamtam", "--in", input, "--out", out },
                           { ENRICH_CRASH_AT = "intent_committed:1" })))
    local code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out }
    assert.equal(2, code, err)
    for _, r in ipairs(support.csv(out)) do
      assert.equal("unknown", r.enrich_status)
      assert.equal("unknown", r.enrich_error)
    end
    assert.equal(0, support.stats(sim, "tamtam").submissions)
    -- And again: still never sent.
    assert.equal(2, (run { "--provider", "tamtam", "--in", input, "--out", out }))
    assert.equal(0, support.stats(sim, "tamtam").submissions)
  end)

  it("after kill -9 in the second provider of a waterfall: provider 1 is not asked again", function()
    local input = support.write("wf.csv", people(20, function(i) return i % 2 == 0 and "Notfound" or "Person" end))
    local out = support.path("out.csv")
    assert.equal(137, (run({ "--provider", "tamtam,lance", "--in", input, "--out", out },
                           { ENRICH_CRASH_AT = "id_committed:2" })))
    local s = support.stats(sim)
    assert.equal(1, s.providers.tamtam.submissions)
    assert.equal(1, s.providers.lance.submissions)
    local code, _, err = run { "--provider", "tamtam,lance", "--in", input, "--out", out }
    assert.equal(0, code, err)
    all_found(out, 20)
    s = support.stats(sim)
    assert.equal(1, s.providers.tamtam.submissions)
    assert.equal(10, count(s.providers.lance.inputs))
    for _, n in pairs(s.providers.tamtam.inputs) do assert.equal(1, n) end
  end)

  it("after Ctrl-C: exits 130 with the jobs in flight recorded, and the same command finishes", function()
    support.control(sim, "POST", "/_sim/config", { tamtam = { ms = 600000 } })   -- jobs stay in progress
    local input = support.write("int.csv", people(250))
    local out, errf = support.path("out.csv"), support.path("int.err")
    local q = helper.shell_quote
    local env = {}
    for _, k in ipairs { "API_KEY", "BASE_URL" } do
      env[#env + 1] = q("ENRICH_TAMTAM_" .. k .. "=" .. (k == "API_KEY" and support.KEY or (sim.url .. "/tamtam")))
    end
    -- In the background of a shell that reports its exit code (LuaJIT's
    -- popen close does not): the command installs its own SIGINT handler.
    local cmd = "sh -c " .. q("env " .. table.concat(env, " ") .. " "
      .. (os.getenv("ENRICH_CLI_LUA") or "lua5.4") .. " bin/enrich run --provider tamtam --poll-interval 0.05 --in "
      .. q(input) .. " --out " .. q(out) .. " >/dev/null 2>" .. q(errf) .. " & echo $!; wait $!; echo \"exit $?\"")
    local pipe = assert(io.popen(cmd, "r"))
    local pid = tonumber(pipe:read("*l"))
    local socket = require "socket"
    for _ = 1, 200 do                                 -- up to 10 s for all three submits
      if support.stats(sim, "tamtam").submissions >= 3 then break end
      socket.sleep(0.05)
    end
    assert.equal(3, support.stats(sim, "tamtam").submissions)
    os.execute("kill -INT " .. pid)
    local status = pipe:read("*l")
    pipe:close()
    assert.equal("exit 130", status)
    assert.matches("interrupted; 3 job%(s%) in flight are recorded", support.read(errf))
    assert.is_false(support.exists(out))
    support.control(sim, "POST", "/_sim/clock", { advance = 700 })   -- the provider finishes them
    local rcode, _, err = support.run(sim, { "run", "--provider", "tamtam", "--poll-interval", "0.05",
                                             "--in", input, "--out", out })
    assert.equal(0, rcode, err)
    all_found(out, 250)
    local tamtam = support.stats(sim, "tamtam")
    assert.equal(3, tamtam.submissions)
    assert.same({}, tamtam.duplicates)
  end)
end)
