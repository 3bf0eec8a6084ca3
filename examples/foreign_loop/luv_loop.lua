-- Driving enrich from a foreign event loop (luv, libuv's Lua binding): the
-- loop waits on what enrich exposes and calls enrich.tick() only when
-- there is something to do, never busy-looping.
--
--   * enrich.fd() — a descriptor that turns readable when libcurl has
--     socket work (an epoll set; with ENRICH_IO_THREAD=1, libcurl runs on a
--     thread of its own and fd() is a pipe, readable while answers wait;
--     nil on the portable core): watched with a uv poll handle;
--   * enrich.timeout() — seconds until the loop wants a tick anyway (0 when
--     work is ready, else the sooner of libcurl's own timer and the loop's
--     next one: a job's next poll, a retry back-off, an enrich.sleep; nil
--     when nothing is scheduled): one uv timer, re-armed after every tick.
--
-- usage: ENRICH_SIM_URL=http://127.0.0.1:PORT lua5.4 examples/foreign_loop/luv_loop.lua [JOBS]
-- Prints one line per job, then "jobs=N succeeded=N ticks=N io_thread=0|1"; exits 1 unless all succeeded.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- The core built for this interpreter (make build: build/5.4, build/luajit).
package.cpath = "build/" .. ((jit and "luajit") or _VERSION:match("%d+%.%d+")) .. "/?.so;" .. package.cpath
local uv = require "luv"
local enrich = require "enrich"

local io_thread = os.getenv("ENRICH_IO_THREAD") == "1"
if io_thread then assert(enrich.configure { io_thread = true }) end

local sim = os.getenv("ENRICH_SIM_URL")
local jobs_n = math.tointeger(tonumber(arg[1] or "")) or 5
local MAX_SECONDS = 30

-- The host side: a uv poll on enrich.fd() and one uv timer. drive(on_idle)
-- ticks when either fires and calls on_idle() once no job or task is live;
-- returns a function that stops and closes both handles.
local function drive(on_idle)
  local fd = enrich.fd()
  local timer = uv.new_timer()
  local watcher = fd and uv.new_poll(fd)
  local ticks = 0
  local arm

  local function tick()
    ticks = ticks + 1
    local live = enrich.tick()
    if live == 0 then return on_idle(ticks) end
    arm()
  end

  -- Without an fd (the portable core) the timer also covers libcurl's
  -- socket waits, capped at 10 ms so sockets are looked at often enough.
  function arm()
    local wait = enrich.timeout()
    if not fd and (not wait or wait > 0.01) then wait = 0.01 end
    timer:stop()
    -- Nothing scheduled at all: the fd alone wakes us (a 1 s guard all the same).
    timer:start(math.ceil((wait or 1) * 1000), 0, tick)
  end

  if watcher then watcher:start("r", function(err)
    assert(not err, err)
    tick()
  end) end
  arm()

  return function()
    timer:stop()
    timer:close()
    if watcher then
      watcher:stop()
      watcher:close()
    end
  end
end

local client = assert(enrich.client("tamtam", {
  api_key = os.getenv("TAMTAM_API_KEY") or "luv-key",
  base_url = sim and (sim .. "/tamtam") or nil,
  poll = sim and { interval = 0.05, factor = 1.5, max_interval = 0.5, deadline = MAX_SECONDS } or nil,
}))

local jobs = {}
for i = 1, jobs_n do
  jobs[i] = assert(client:submit({ { first_name = "Luv" .. i, last_name = "Loop", domain = "example.com",
                                     custom = { row = i } } }, { kind = "email" }))
end

local stop, finished_ticks
stop = drive(function(ticks)
  finished_ticks = ticks
  stop()
end)

-- The rest of the program lives on the same loop: a guard that gives up
-- after MAX_SECONDS (and an idle loop ends uv.run by itself).
local guard = uv.new_timer()
guard:start(MAX_SECONDS * 1000, 0, function()
  io.stderr:write("luv_loop: jobs still live after ", MAX_SECONDS, " s\n")
  stop()
  guard:close()
end)
guard:unref()                         -- the guard alone does not keep the loop alive

uv.run()
if not guard:is_closing() then guard:close() end
uv.run("nowait")                      -- let the closes complete

local succeeded = 0
for i, job in ipairs(jobs) do
  local r = job.results and job.results[1]
  print(("job %d %s %s %s"):format(i, job.state, r and r.status or "-", r and r.email or "-"))
  if job.state == "succeeded" and r.email == ("luv%d.loop@example.com"):format(i) then succeeded = succeeded + 1 end
end
print(("jobs=%d succeeded=%d ticks=%s io_thread=%d"):format(jobs_n, succeeded, tostring(finished_ticks),
  io_thread and 1 or 0))
enrich.close()                        -- ends the loop and frees libcurl
os.exit(succeeded == jobs_n and 0 or 1)
