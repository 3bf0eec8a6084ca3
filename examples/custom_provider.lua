-- Registers the provider from examples/providers/acme_phones.lua and runs a
-- job with it. Against the simulator: ENRICH_SIM_URL=http://127.0.0.1:PORT
-- (Acme's API is tamtam's, so the simulator's /tamtam answers for it).
package.path = "lua/?.lua;lua/?/init.lua;examples/?.lua;" .. package.path
-- The core built for this interpreter (make build: build/5.4, build/luajit).
package.cpath = "build/" .. ((jit and "luajit") or _VERSION:match("%d+%.%d+")) .. "/?.so;" .. package.cpath
local enrich = require "enrich"

enrich.providers.register("acme_phones", require "providers.acme_phones")

local sim = os.getenv("ENRICH_SIM_URL") or "http://127.0.0.1:8800"
local client = assert(enrich.client("acme_phones", {
  api_key = "demo-key", base_url = sim .. "/tamtam", poll = { interval = 0.1 },
}))
local job = assert(client:submit {
  { linkedin_url = "https://www.linkedin.com/in/oskar-fenn-example", custom = { row = 1 } },
  { linkedin_url = "https://www.linkedin.com/in/notfound-example", custom = { row = 2 } },
})
assert(job:wait())
print(("acme_phones job %s: %d found"):format(job.state, job.counts.found))
for _, r in ipairs(job.results) do
  print(("  row %d: %-9s %s"):format(r.custom.row, r.status, r.phone or "-"))
end
