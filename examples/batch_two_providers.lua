-- 1,000 people through two providers at once, in one enrich.run: tamtam
-- finds work emails, puffle finds phone numbers (the people are puffle leads
-- too). Both jobs run concurrently; results come back in input order, so the
-- two lists zip together by index.
--   ENRICH_SIM_URL=http://127.0.0.1:PORT lua5.4 examples/batch_two_providers.lua [N]
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- The core built for this interpreter (make build: build/5.4, build/luajit).
package.cpath = "build/" .. ((jit and "luajit") or _VERSION:match("%d+%.%d+")) .. "/?.so;" .. package.cpath
local enrich = require "enrich"

local sim = assert(os.getenv("ENRICH_SIM_URL"), "set ENRICH_SIM_URL (make demo starts a simulator)")
local n = tonumber(arg[1]) or 1000

-- Against the simulator: quick polls and no rate limits. Against the real
-- APIs drop base_url, poll and rate: each provider's documented defaults apply.
local function client(name)
  return assert(enrich.client(name, {
    api_key = os.getenv(name:upper() .. "_API_KEY") or "example-key",
    base_url = sim .. "/" .. name,
    poll = { interval = 0.1, max_interval = 0.5 },
    rate = { per_second = 500, burst = 100 },
  }))
end
local tamtam, puffle = client("tamtam"), client("puffle")

local people = {}
for i = 1, n do
  -- Every 7th person is unknown to both providers (the simulator's marker).
  local last = i % 7 == 0 and "Notfound" or "Person"
  people[i] = { first_name = "P" .. i, last_name = last, domain = "example.com",
                lead_id = "ld_" .. i .. (i % 7 == 0 and "_notfound" or ""), custom = { row = i } }
end

local t0 = enrich.scheduler().now()
local emails, phones = enrich.run(function()
  local leads = {}
  for i, p in ipairs(people) do leads[i] = { id = p.lead_id, custom = p.custom } end
  local e = assert(tamtam:submit(people, { kind = "email" }))
  local f = assert(puffle:submit(leads, { kind = "phone" }))
  e:wait()                               -- both are polled meanwhile
  f:wait()
  return e, f
end)

local both, none = 0, 0
for i = 1, n do
  local has_email = emails.results[i].email ~= nil
  local has_phone = phones.results[i].phone ~= nil
  if has_email and has_phone then both = both + 1 end
  if not has_email and not has_phone then none = none + 1 end
end
print(("%d people in %.1f s: tamtam %s (%d emails), puffle %s (%d phones); both %d, neither %d"):format(
  n, enrich.scheduler().now() - t0, emails.state, emails.counts.found, phones.state, phones.counts.found,
  both, none))
print(("%-5s %-10s %-28s %s"):format("row", "name", "email", "phone"))
for i = 1, math.min(n, 8) do
  print(("%-5d %-10s %-28s %s"):format(people[i].custom.row, people[i].first_name .. " " .. people[i].last_name,
    emails.results[i].email or "-", phones.results[i].phone or "-"))
end
