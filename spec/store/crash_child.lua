-- A child process of the crash specs (spec/store/crash_matrix.lua): runs two jobs of one
-- provider against the simulator with a store, and may be killed on the
-- way (ENRICH_CRASH_AT); or resumes what the store holds and waits for it.
-- usage: lua spec/store/crash_child.lua SIM_URL DB_PATH|REDIS_URL PROVIDER run|resume [resubmit]
-- (PROVIDER tamtam-multi: tamtam, with a job of two parts; tamtam-coalesced:
-- tamtam's two jobs gathered into one provider request. Plain tamtam and
-- tamtam-multi run uncoalesced: their accounting is one request per part.)
-- Prints one line per job at the end, "JOB uid state error_code", then DONE.
local tag = (jit and "luajit") or _VERSION:match("%d+%.%d+")
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "build/" .. tag .. "/?.so;" .. package.cpath
local enrich = require "enrich"
local estore = require "enrich.store"

local sim, db, provider, phase, resubmit = arg[1], arg[2], arg[3], arg[4], arg[5] == "resubmit"
local variant = provider
provider = provider:gsub("%-%a+$", "")

local INPUTS = {
  tamtam = {
    { { first_name = "Ada", last_name = "Byron", domain = "example.com" },
      { first_name = "Alan", last_name = "Turing", domain = "example.com" } },
    { { first_name = "Grace", last_name = "Hopper", domain = "example.com" } },
  },
  puffle = { { { id = "lead_a1" }, { id = "lead_a2" } }, { { id = "lead_b1" } } },
  lance = {
    { { id = "0b6c7f7e-7d5a-4c3b-9a2f-1e2d3c4b5a61" }, { id = "1c7d8a8f-8e6b-4d4c-8b3a-2f3e4d5c6b72" } },
    { { id = "2d8e9b9a-9f7c-4e5d-9c4b-3a4f5e6d7c83" } },
  },
}

-- tamtam-multi: a job of 101 people is two provider requests (parts).
local multi = {}
for i = 1, 101 do multi[i] = { first_name = "M" .. i, last_name = "Multi", domain = "example.com" } end
INPUTS["tamtam-multi"] = { multi, { { first_name = "Single", last_name = "One", domain = "example.com" } } }
INPUTS["tamtam-coalesced"] = INPUTS.tamtam
-- tamtam coalesces by default; the crash matrix counts one provider
-- request per part, so it runs uncoalesced but for its coalesced case.
local COALESCE = { tamtam = false, ["tamtam-multi"] = false, ["tamtam-coalesced"] = { window = 0.05 } }

-- DB: a file for SQLite, or a redis:// URL (spec/store/redis_crash_spec.lua).
local store = assert(estore.open(db:match("^redis://") and db or ("sqlite:" .. db)))
local client = assert(enrich.client(provider, {
  api_key = "crash-spec-key", base_url = sim .. "/" .. provider, store = store,
  poll = { interval = 0.02, factor = 1, max_interval = 0.05, jitter = 0, deadline = 20 },
  retry = { attempts = 3, base = 0.01, cap = 0.05 },
  rate = { per_second = 1000, burst = 100 },     -- the simulator's limits are not under test here
  coalesce = COALESCE[variant],                  -- nil: the provider's default
}))

local jobs
if phase == "run" then
  enrich.run(function()
    jobs = {}
    for i, inputs in ipairs(INPUTS[variant]) do
      jobs[i] = assert(client:submit(inputs, { kind = "email" }))
    end
    for _, job in ipairs(jobs) do job:wait(20) end
  end)
else
  jobs = assert(enrich.resume(store, { [provider] = client },
                                                { resubmit_unknown = resubmit or nil }))
  enrich.run(function()
    for _, job in ipairs(jobs) do job:wait(20) end
  end)
end
assert(store:close())
for _, job in ipairs(jobs) do
  print(("JOB %s %s %s"):format(job.uid, job.state, job.error and job.error.code or "-"))
end
print("DONE")
