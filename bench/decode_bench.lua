-- How long cjson takes to decode the benchmark body, next to the whole
-- request of the raw C baseline. usage: lua5.4 bench/decode_bench.lua BODY RAW_RPS
local cjson = require "cjson"
local body = assert(io.open(arg[1])):read("a")
local n, t0 = 20000, os.clock()
for _ = 1, n do cjson.decode(body) end
print(string.format("  decoding this body alone with cjson: %.1f us; raw C spends %.1f us on a whole request",
  (os.clock() - t0) / n * 1e6, 1e6 / tonumber(arg[2])))
