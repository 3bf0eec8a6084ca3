-- Quickstart: enrich three people with tamtam and print the results.
-- Runs against the provider simulator (`make demo` starts one and sets
-- ENRICH_SIM_URL); against the real API, drop base_url and set TAMTAM_API_KEY.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- The core built for this interpreter (make build: build/5.4, build/luajit).
package.cpath = "build/" .. ((jit and "luajit") or _VERSION:match("%d+%.%d+")) .. "/?.so;" .. package.cpath
local enrich = require "enrich"

local sim = os.getenv("ENRICH_SIM_URL")
local client = assert(enrich.client("tamtam", {
  api_key = os.getenv("TAMTAM_API_KEY") or "demo-key",     -- never printed, never logged
  base_url = sim and (sim .. "/tamtam") or nil,
  poll = sim and { interval = 0.2, max_interval = 1 } or nil,  -- the simulator is quick
}))

local people = {
  { first_name = "Ada", last_name = "Byron", domain = "example.com", custom = { row = "17" } },
  { full_name = "Grace Hopper", company = "Example Navy", custom = { row = "18" } },
  { first_name = "Nemo", last_name = "Notfound", domain = "example.net", custom = { row = "19" } },
}

local job = assert(client:submit(people, { kind = "email" }))
print(("submitted %d people to %s"):format(#people, job.provider))
assert(job:wait())     -- submit returned at once; wait drives the loop until the job ends

print(("job %s (request %s): %d found, %d not found, %d failed; %s credits\n"):format(
  job.state, job.id, job.counts.found, job.counts.not_found, job.counts.failed,
  job.cost and job.cost.credits or "?"))
print(("%-4s %-14s %-10s %-32s %s"):format("row", "name", "status", "best email", "all (verdict)"))
print(("-"):rep(100))
for _, r in ipairs(job.results) do
  local p = r.input
  local all = {}
  for _, e in ipairs(r.emails or {}) do all[#all + 1] = e.address .. " (" .. e.status .. ")" end
  print(("%-4s %-14s %-10s %-32s %s"):format(r.custom.row, p.full_name or (p.first_name .. " " .. p.last_name),
    r.status, r.email or "-", table.concat(all, ", ")))
end
