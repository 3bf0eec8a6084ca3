-- The examples are documentation that runs: each one against the simulator.
local helper = require "helper"

describe("the examples", function()
  local sim

  setup(function() sim = helper.spawn("bin/enrich-sim", { "--port", "0", "--no-limits" }) end)
  teardown(function() if sim then sim:stop() end end)

  local function run(script, args)
    -- Under the interpreter that runs the specs: an example must run on each.
    local lua = helper.lua_tag == "luajit" and "luajit" or ("lua" .. helper.lua_tag)
    local cmd = "ENRICH_SIM_URL=" .. sim.url .. " timeout 60 " .. lua .. " " .. script .. " " .. (args or "")
      .. " 2>&1; echo \"exit=$?\""
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    return out, tonumber(out:match("exit=(%d+)%s*$"))
  end

  it("quickstart enriches three people and prints a table", function()
    local out, code = run("examples/quickstart.lua")
    assert.equal(0, code, out)
    assert.matches("job succeeded", out)
    assert.matches("17%s+Ada Byron%s+found%s+ada%.byron@example%.com", out)
    assert.matches("19%s+Nemo Notfound%s+not_found", out)
  end)

  it("batch_two_providers runs 1,000 people through tamtam and puffle in one run", function()
    local out, code = run("examples/batch_two_providers.lua", "1000")
    assert.equal(0, code, out)
    assert.matches("1000 people in", out)
    assert.matches("tamtam succeeded %(858 emails%), puffle succeeded %(858 phones%); both 858, neither 142", out)
  end)

  it("custom_provider registers a provider from a user's file and runs it", function()
    local out, code = run("examples/custom_provider.lua")
    assert.equal(0, code, out)
    assert.matches("acme_phones job succeeded: 1 found", out)
    assert.matches("row 2: not_found", out)
  end)

  it("core_demo drives enrich.core alone", function()
    local out, code = run("examples/core_demo.lua")
    assert.equal(0, code, out)
    assert.matches("poll %d+: COMPLETED", out)
  end)
end)
