-- `make fuzz`: the mapping fuzzer, long. Environment:
--   FUZZ_CASES     cases per provider (100000)
--   FUZZ_SEED      the seed (default: the time); printed, with any failure's case
--   FUZZ_PROVIDER  only this provider
--   FUZZ_CASE      only this case (with FUZZ_SEED): reruns one failure
-- Exits 1 when a case fails.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
local fuzz = require "fuzz.fuzz"

local cases = tonumber(os.getenv("FUZZ_CASES")) or 100000
local seed = tonumber(os.getenv("FUZZ_SEED")) or os.time()
local only = os.getenv("FUZZ_PROVIDER")
local one = tonumber(os.getenv("FUZZ_CASE"))
local lua = (jit and jit.version) or _VERSION

print(("fuzz: seed %d, %d cases per provider, %s"):format(seed, one and 1 or cases, lua))
local failed = 0
for _, name in ipairs(fuzz.NAMES) do
  if not only or only == name then
    if one then
      local res = fuzz.case(name, seed, one)
      if res.ok then print(name .. ": case " .. one .. " passes (" .. res.op .. ")")
      else failed = failed + 1; print("FAIL " .. fuzz.describe(res)) end
    else
      local res = fuzz.run(name, seed, cases)
      local ops = {}
      for op, n in pairs(res.ops) do ops[#ops + 1] = op .. " " .. n end
      table.sort(ops)
      print(("%-9s %d cases in %.1f s (%.0f cases/s; %s), %d failed"):format(name, res.cases, res.seconds,
        res.cases / math.max(res.seconds, 1e-9), table.concat(ops, ", "), #res.failures))
      for _, f in ipairs(res.failures) do failed = failed + 1; print("FAIL " .. fuzz.describe(f)) end
    end
  end
end
if failed > 0 then
  print(("fuzz: %d failing case(s), seed %d"):format(failed, seed))
  os.exit(1)
end
print(("fuzz: no failure, seed %d"):format(seed))
