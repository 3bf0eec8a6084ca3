-- The engine's own cost: N one-person tamtam jobs (submit + one status read)
-- through `require "enrich"` with the C core replaced by a fake that answers
-- every request at once with canned bodies. No network, no server, no JSON
-- decoding: what is left is the engine's Lua (scheduler, jobs, ctx:call,
-- the tamtam mapping). usage: lua5.4 bench/engine_overhead.lua [N]
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "build/5.4/?.so;" .. package.cpath
local cjson = require "cjson"
local enrich = require "enrich"

local n = tonumber(arg[1]) or 10000
local sched = enrich.scheduler()

local completed = cjson.decode([[{"request_id":"r1","status":"COMPLETED","item_count":1,"results":[
  {"status":"COMPLETED","enrichment_type":"email","emails":[{"email":"a@b.c","status":"DELIVERABLE"}],
   "phones":[],"most_probable_email":"a@b.c","custom":{"row":"1"},"error":""}]}]])
local queue, next_id, requests = {}, 0, 0
local fake = {}
function fake.submit(_, req)
  next_id, requests = next_id + 1, requests + 1
  local c = { id = next_id, status = 200, headers = { ["content-type"] = "application/json" }, body = "{}" }
  if req.method == "POST" then
    c.status, c.json = 202, { request_id = "req-" .. next_id, item_count = 1 }
  else
    c.json = completed
  end
  queue[#queue + 1] = c
  return next_id
end
function fake.poll() local q = queue; queue = {}; return q end
function fake.pending() return #queue end
function fake.timeout() return #queue > 0 and 0 or nil end
sched.engine = fake

local client = assert(enrich.client("tamtam", {
  api_key = "k", base_url = "http://fake/tamtam",
  poll = { interval = 0, factor = 1, jitter = 0, deadline = 300 }, rate = { per_second = 1e9, burst = 1e9 },
  coalesce = false,          -- one request per job: the engine's own path (3b measures coalescing)
}))
local t0 = os.clock()
local ok = 0
enrich.run(function()
  local jobs = {}
  for i = 1, n do jobs[i] = assert(client:submit({ { first_name = "P" .. i, last_name = "B" } })) end
  for i = 1, n do
    assert(jobs[i]:wait())
    if jobs[i].state == "succeeded" then ok = ok + 1 end
  end
end)
local cpu = os.clock() - t0
print(string.format("jobs=%d succeeded=%d requests=%d cpu_us_per_job=%.1f cpu_us_per_request=%.1f",
  n, ok, requests, cpu / n * 1e6, cpu / requests * 1e6))
os.exit(ok == n and 0 or 1)
