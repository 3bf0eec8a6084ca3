-- The `enrich` command's own cost: N rows through tamtam against the
-- simulator (its limits off), beside the same people sent through the
-- engine directly (the same 100-person jobs, no file, no dedupe, no store).
--   lua5.4 bench/cli_bench.lua SIM_URL [N]
-- Prints rows/s and CPU per row (os.clock: every thread of the process,
-- libcurl and the store's writer included) for both, and the difference:
-- the command's own CPU per row.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- The core built for this interpreter (make build: build/5.4, build/luajit).
package.cpath = "build/" .. ((jit and "luajit") or _VERSION:match("%d+%.%d+")) .. "/?.so;" .. package.cpath
local core = require "enrich.core"

local sim, N = assert(arg[1], "usage: cli_bench.lua SIM_URL [N]"), tonumber(arg[2] or "10000")
local mode = arg[3]
local dir = os.getenv("BENCH_DIR") or "build/bench"
os.execute("mkdir -p " .. dir)

local function person(i)
  return ("P%d"):format(i), ("Person%d"):format(i), ("example%d.com"):format(i % 97)
end

if mode == "engine" then
  local enrich = require "enrich"
  local client = assert(enrich.client("tamtam", { api_key = "bench-key", base_url = sim .. "/tamtam",
    poll = { interval = 0.05 }, rate = { per_second = 1e6, burst = 1e6 } }))
  local t0, c0 = core.now(), os.clock()
  local found = 0
  enrich.run(function()
    local jobs = {}
    for first = 1, N, 100 do
      local inputs = {}
      for i = first, math.min(first + 99, N) do
        local f, l, d = person(i)
        inputs[#inputs + 1] = { first_name = f, last_name = l, domain = d, custom = { row = i } }
      end
      jobs[#jobs + 1] = assert(client:submit(inputs, { kind = "email" }))
    end
    for _, job in ipairs(jobs) do job:wait(); found = found + job.counts.found end
  end)
  local wall, cpu = core.now() - t0, os.clock() - c0
  print(("engine rows=%d found=%d wall=%.2f cpu=%.3f"):format(N, found, wall, cpu))
  return
end

if mode == "cli" then
  local input, out = dir .. "/cli-bench.csv", dir .. "/cli-bench.out.csv"
  os.remove(out); os.remove(out .. ".state.db"); os.remove(out .. ".state.db-wal"); os.remove(out .. ".state.db-shm")
  local f = assert(io.open(input, "w"))
  f:write("first_name,last_name,domain,crm_id,note\n")
  for i = 1, N do
    local a, b, c = person(i)
    f:write(('%s,%s,%s,CRM-%d,"note, with a comma"\n'):format(a, b, c, i))
  end
  f:close()
  local t0, c0 = core.now(), os.clock()
  local code = require("enrich.cli.run").main({ "run", "--provider", "tamtam", "--in", input, "--out", out,
                                                "--poll-interval", "0.05" }, io.stdout, io.open("/dev/null", "w"))
  local wall, cpu = core.now() - t0, os.clock() - c0
  print(("cli rows=%d exit=%d wall=%.2f cpu=%.3f"):format(N, code, wall, cpu))
  return
end

error("mode: engine or cli")
