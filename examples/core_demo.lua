-- The C core on its own: submit a tamtam batch to the simulator and poll it
-- until done, with nothing but enrich.core. (The engine, `require "enrich"`,
-- does all of this — cadence, retries, normalization — for every provider.)
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- The core built for this interpreter (make build: build/5.4, build/luajit).
package.cpath = "build/" .. ((jit and "luajit") or _VERSION:match("%d+%.%d+")) .. "/?.so;" .. package.cpath
local core = require "enrich.core"
local cjson = require "cjson"

local base = (os.getenv("ENRICH_SIM_URL") or "http://127.0.0.1:8800") .. "/tamtam"
local engine = core.new { timeout = 10 }
local headers = { Authorization = "demo-key", ["Content-Type"] = "application/json" }

-- Sends one request and waits for its completion (bounded).
local function request(req)
  local id = engine:submit(req)
  for _ = 1, 100 do
    for _, c in ipairs(engine:poll(0.1)) do
      if c.id == id then return c end
    end
  end
  error("no answer from " .. req.url)
end

local people = {
  { first_name = "Ada", last_name = "Byron", company_domain = "example.com" },
  { first_name = "Grace", last_name = "Hopper", company_domain = "example.org" },
  { first_name = "Nobody", last_name = "Notfound", company_domain = "example.net" },
}
local batch = {}
for i, p in ipairs(people) do
  batch[i] = { enrichment_type = "email", first_name = p.first_name, last_name = p.last_name,
               company_domain = p.company_domain, custom = { row = tostring(i) } }
end

local accepted = request { method = "POST", url = base .. "/v2/people/enrich", headers = headers,
                           body = cjson.encode { requests = batch } }
assert(accepted.status == 202, "submit failed: HTTP " .. accepted.status)
local job_id = accepted.json.request_id
print("submitted " .. #batch .. " people, request id " .. job_id)

local status
for attempt = 1, 20 do
  status = request { url = base .. "/v2/people/enrich/" .. job_id, headers = headers }
  print(string.format("poll %d: %s", attempt, status.json.status))
  if status.json.status ~= "PROCESSING" then break end
  require("socket").sleep(0.2)
end

print(string.format("\n%-4s %-8s %-10s %s", "row", "first", "status", "best email"))
for _, r in ipairs(status.json.results or {}) do
  local best = r.most_probable_email
  print(string.format("%-4s %-8s %-10s %s", r.custom.row, people[tonumber(r.custom.row)].first_name,
    r.status, (best ~= "" and best) or "-"))
end
engine:close()
