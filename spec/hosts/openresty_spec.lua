-- OpenResty host: the example config under a real nginx + lua-nginx-module,
-- against the simulator. Jobs are submitted and waited for in a request
-- handler; a plain location must keep answering meanwhile.
local helper = require "helper"
local support = require "engine.support"
local http = require "socket.http"
local cjson = require "cjson"

local function nginx_available()
  return os.execute("command -v nginx >/dev/null 2>&1 && test -f /usr/lib/nginx/modules/ngx_http_lua_module.so")
end

describe("the OpenResty host", function()
  local sim, port, dir

  setup(function()
    assert(nginx_available(), "nginx with the Lua module is needed (make deps installs it)")
    assert(io.open("build/luajit/enrich/core.so"), "enrich.core for LuaJIT is needed (make build)")
    sim = helper.spawn("bin/enrich-sim", { "--port", "0", "--no-limits" })
    -- Jobs take a few polls, so they are still being polled while we ping.
    support.configure(sim, { tamtam = { polls = 4 } })
    port = helper.free_port()
    dir = os.tmpname()
    os.remove(dir)
    local p = io.popen("examples/openresty/serve start " .. port .. " " .. sim.url .. " " .. dir .. " 2>&1")
    local out = p:read("*a")
    p:close()
    assert(out:match("listening " .. port), "nginx did not start: " .. out)
  end)

  teardown(function()
    if dir then os.execute("examples/openresty/serve stop " .. dir) end
    if sim then sim:stop() end
  end)

  it("answers a plain location while 200 jobs are polled, and finishes every job right", function()
    local url = "http://127.0.0.1:" .. port
    -- The enrich request runs in the background (curl); we ping meanwhile.
    local bg = assert(io.popen("curl -s --max-time 60 '" .. url .. "/enrich?n=200'"))
    local pongs, checked = 0, 0
    for _ = 1, 40 do                               -- bounded: ~1 s of pings
      local body, status = http.request(url .. "/ping")
      checked = checked + 1
      if status == 200 and body == "pong\n" then pongs = pongs + 1 end
      require("socket").sleep(0.025)
    end
    local answer = cjson.decode(bg:read("*a"))
    bg:close()
    assert.equal(checked, pongs)
    assert.equal(200, answer.jobs)
    assert.same({ succeeded = 200 }, answer.states)
    assert.equal(0, answer.wrong_results)
    local stats = support.stats(sim, "tamtam")
    -- every person sent once (the client gathers them into shared requests)
    local sent = 0
    for _, times in pairs(stats.inputs) do sent = sent + times end
    assert.equal(200, sent)
    assert.same({}, stats.duplicates)
    -- The jobs really were in progress while we pinged: each took 5 reads.
    assert.is_true(answer.seconds > 0.2)
  end)

  it("keeps the error log quiet while it works: no warning per driver turn", function()
    -- Debian's lua-nginx-module lacks OpenResty's delayed-events patch: there
    -- every ngx.sleep(0) writes "[warn] ngx.sleep(0) called without delayed
    -- events patch" to the error log (the example logs at warn level).
    local url = "http://127.0.0.1:" .. port
    local body = http.request(url .. "/enrich?n=20")
    assert.same({ succeeded = 20 }, cjson.decode(body).states)
    local f = assert(io.open(dir .. "/logs/error.log", "rb"))
    local log = f:read("*a")
    f:close()
    assert.is_nil(log:find("ngx.sleep(0)", 1, true), log:sub(1, 400))
  end)
end)
