-- `make bench`, side (b): the same GETs as the C baseline, through
-- enrich.core from Lua, each JSON body decoded. Prints requests/s.
-- usage: lua5.4 bench/core_bench.lua URL N C [nodecode]
package.cpath = "build/5.4/?.so;" .. package.cpath
local core = require "enrich.core"

local url, total, conc = arg[1], tonumber(arg[2]), tonumber(arg[3])
assert(url and total and conc, "usage: core_bench.lua URL N C")

local engine = core.new { max_host_connections = conc, max_connections = conc }
local started, done, bad = 0, 0, 0
local decode = arg[4] ~= "nodecode"
local request = { url = url, decode = decode }
local clock = require("socket").gettime
local t0 = clock()
for _ = 1, math.min(conc, total) do
  engine:submit(request)
  started = started + 1
end
local limit = t0 + 300
while done < total and clock() < limit do
  for _, c in ipairs(engine:poll(1)) do
    done = done + 1
    if c.status ~= 200 or (decode and type(c.json) ~= "table") or #c.body == 0 then bad = bad + 1 end
    if started < total then
      engine:submit(request)
      started = started + 1
    end
  end
end
local secs = clock() - t0
print(string.format("requests=%d failed=%d seconds=%.3f rps=%.0f", done, bad, secs, done / secs))
engine:close()
os.exit(bad == 0 and done == total and 0 or 1)
