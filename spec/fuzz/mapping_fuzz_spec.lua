-- A short seeded run of the mapping fuzzer (spec/fuzz/fuzz.lua) for every
-- provider: part of the suite. `make fuzz` runs it long. FUZZ_SEED and
-- FUZZ_SPEC_CASES change the seed and the number of cases here.
local fuzz = require "fuzz.fuzz"

local SEED = tonumber(os.getenv("FUZZ_SEED")) or 20261201
local CASES = tonumber(os.getenv("FUZZ_SPEC_CASES")) or 1500

describe("mapping fuzz (seed " .. SEED .. ")", function()
  for _, name in ipairs(fuzz.NAMES) do
    it(name .. ": " .. CASES .. " mutated answers never raise, never run away, always map to documented outcomes",
       function()
      local res = fuzz.run(name, SEED, CASES, 5)
      local lines = {}
      for _, f in ipairs(res.failures) do lines[#lines + 1] = fuzz.describe(f) end
      assert(#res.failures == 0, table.concat(lines, "\n"))
      -- every kind of step was tried
      for _, op in ipairs({ "prepare", "submit", "check", "error" }) do
        assert(res.ops[op] and res.ops[op] > 0, "no " .. op .. " case ran")
      end
    end)
  end

  it("rebuilds any case alone from its seed and number", function()
    local a, b = fuzz.case("puffle", SEED, 17), fuzz.case("puffle", SEED, 17)
    assert.equal(a.op, b.op)
    assert.equal(a.ok, b.ok)
  end)
end)
