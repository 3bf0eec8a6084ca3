-- Handlers of the OpenResty example (examples/openresty/nginx.conf.in).
-- luacheck: globals ngx
local enrich = require "enrich"
local cjson = require "cjson"

local _M = {}

local client

local function get_client()
  if client then return client end
  client = assert(enrich.client("tamtam", {
    api_key = os.getenv("TAMTAM_API_KEY") or "openresty-demo-key",
    base_url = ngx.var.enrich_base_url .. "/tamtam",
    poll = { interval = 0.05, factor = 1.5, max_interval = 0.5 },
    -- The simulator runs without limits here; against tamtam itself drop
    -- this line and the documented 10 requests/s per key applies.
    rate = { per_second = 1000, burst = 100 },
  }))
  return client
end

function _M.enrich()
  local n = tonumber(ngx.var.arg_n) or 10
  if n < 1 or n > 10000 then return ngx.exit(400) end
  local c = get_client()
  local t0 = ngx.now()
  local jobs = {}
  for i = 1, n do
    local job, err = c:submit({ { first_name = "Person" .. i, last_name = "Example", custom = { row = i } } })
    if not job then
      ngx.status = 502
      return ngx.say(cjson.encode { error = tostring(err) })
    end
    jobs[i] = job
  end
  local counts, wrong = {}, 0
  for i, job in ipairs(jobs) do
    job:wait(60)
    counts[job.state] = (counts[job.state] or 0) + 1
    local r = job.results and job.results[1]
    if not (r and r.custom and r.custom.row == i and r.email) then wrong = wrong + 1 end
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode { jobs = n, states = counts, wrong_results = wrong,
                         seconds = ngx.now() - t0, worker = ngx.worker.pid() })
end

return _M
