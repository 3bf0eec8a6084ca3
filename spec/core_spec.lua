-- enrich.core: the C transfer engine, against a loopback server of its own.
local helper = require "helper"
local core = require "enrich.core"

-- Polls until `want` completions arrived or `seconds` passed; returns them
-- keyed by id. Every wait here is bounded.
local function collect(engine, want, seconds)
  local got, n = {}, 0
  local deadline = os.time() + (seconds or 10)
  while n < want and os.time() <= deadline do
    for _, c in ipairs(engine:poll(0.2)) do
      assert.is_nil(got[c.id], "id delivered twice")
      got[c.id] = c
      n = n + 1
    end
  end
  return got, n
end

-- Waits up to `seconds`, without polling, until the engine says an answer
-- waits (timeout() 0): what only an I/O thread brings about by itself.
local function await_answer(engine, seconds)
  for _ = 1, math.ceil(seconds / 0.02) do
    if engine:timeout() == 0 then return true end
    require("socket").sleep(0.02)
  end
  return engine:timeout() == 0
end

-- "\239\187\191" → "efbbbf": bodies for the server's /raw route.
local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- fork() for the specs that prove an engine stays inert in a child
-- process: LuaJIT's FFI only (nothing in Lua 5.4's standard library forks).
-- Runs child() in the child, which exits with its return value (0: fine);
-- returns the child's exit code, or nil if it hung (and was killed).
local function in_child(child)
  local ffi = require "ffi"
  pcall(ffi.cdef, "int fork(void); void _exit(int); int waitpid(int, int *, int); int getpid(void);")
  local pid = ffi.C.fork()
  if pid == 0 then
    local ok, code = pcall(child)
    ffi.C._exit(ok and code or 4)
  end
  assert(pid > 0, "fork failed")
  local status, done = ffi.new("int[1]"), 0
  for _ = 1, 500 do                   -- 5 s at most
    done = ffi.C.waitpid(pid, status, 1)  -- WNOHANG
    if done == pid then break end
    require("socket").sleep(0.01)
  end
  if done ~= pid then os.execute("kill -9 " .. pid) return nil end
  if status[0] % 128 ~= 0 then return "signal " .. (status[0] % 128) end
  return math.floor(status[0] / 256) % 256
end

local function fetch(engine, req, seconds)
  local id = engine:submit(req)
  local got = collect(engine, 1, seconds)
  return assert(got[id], "no completion for " .. req.url)
end

-- Every behaviour holds for both ways of driving libcurl: from poll on the
-- Lua thread, and on an I/O thread of the engine's own (io_thread).
local MODES = {
  { name = "enrich.core", opts = {} },
  { name = "enrich.core with an I/O thread", opts = { io_thread = true } },
}

for _, mode in ipairs(MODES) do
local threaded = mode.opts.io_thread == true

-- core.new with this mode's options.
local function new(opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  for k, v in pairs(mode.opts) do o[k] = v end
  return core.new(o)
end

describe(mode.name, function()
  local server, base, engine

  setup(function()
    server = helper.spawn("spec/support/core_server.lua")
    base = server.url
  end)

  teardown(function()
    if server then server:stop() end
  end)

  before_each(function() engine = new { timeout = 10 } end)
  after_each(function() engine:close() end)

  describe("the module", function()
    it("names itself and reports the libcurl it runs on", function()
      assert.equal("enrich.core", core._NAME)
      assert.matches("^%d+%.%d+%.%d+$", core._VERSION)
      local v = core.versions()
      assert.matches("^%d+%.%d+", v.curl)
      assert.is_boolean(v.http2)
    end)

    it("has a monotonic clock in seconds", function()
      local a = core.now()
      local b = core.now()
      assert.is_number(a)
      assert.is_true(b >= a)
    end)

    it("reports the process id, for the Lua side to notice a fork", function()
      assert.is_number(core.getpid())
      assert.equal(core.getpid(), core.getpid())
      if jit then
        local ffi = require "ffi"
        pcall(ffi.cdef, "int getpid(void);")
        assert.equal(ffi.C.getpid(), core.getpid())
      end
    end)

    it("exports the JSON null sentinel", function()
      assert.equal(require("cjson").null, core.null)
    end)
  end)

  describe("core.new", function()
    it("raises on an unknown option or a wrongly typed one", function()
      assert.has_error(function() core.new { bogus = 1 } end, "core.new: unknown option 'bogus'")
      assert.has_error(function() core.new { timeout = "soon" } end)
      assert.has_error(function() core.new { timeout = -1 } end)
      assert.has_error(function() core.new { verify_tls = "no" } end)
      assert.has_error(function() core.new { max_connections = 0 } end)
      assert.has_error(function() core.new("fast") end)
      assert.has_error(function() core.new { io_thread = "yes" } end, "core.new: 'io_thread' must be a boolean")
    end)

    it("keeps settings per engine: two engines side by side do not share them", function()
      local a = new { user_agent = "agent-a" }
      local b = new { user_agent = "agent-b" }
      local ida = a:submit { url = base .. "/echo" }
      local idb = b:submit { url = base .. "/echo" }
      local ca = collect(a, 1)[ida]
      local cb = collect(b, 1)[idb]
      assert.equal("agent-a", ca.json.headers["user-agent"])
      assert.equal("agent-b", cb.json.headers["user-agent"])
      a:close(); b:close()
    end)

    it("sends a lua-enrich user agent by default", function()
      local c = fetch(engine, { url = base .. "/echo" })
      assert.matches("^lua%-enrich/", c.json.headers["user-agent"])
    end)
  end)

  describe("submit", function()
    it("raises on misuse before anything is sent", function()
      local cases = {
        { {}, "'url' %(a string%) is required" },
        { { url = 42 }, "'url' %(a string%) is required" },
        { { url = "ftp://127.0.0.1/" }, "must start with http" },
        { { url = base, method = "BREW" }, "unknown method 'BREW'" },
        { { url = base, method = "GET", body = "x" }, "has no body" },
        { { url = base, body = {} }, "'body' must be a string" },
        { { url = base, headers = "x" }, "'headers' must be a table" },
        { { url = base, headers = { ["X-A"] = "a\r\nX-Injected: 1" } }, "line break" },
        { { url = base, headers = { ["Bad Name"] = "v" } }, "invalid header name" },
        { { url = base, headers = { ["X-A"] = {} } }, "must be a string" },
        { { url = base, timeout = 0 }, "positive number of seconds" },
        { { url = base, max_body = "big" }, "number of bytes" },
        { { url = base, decode = "yes" }, "'decode' must be" },
        { { url = base, retries = 3 }, "unknown option 'retries'" },
      }
      for _, case in ipairs(cases) do
        local ok, err = pcall(engine.submit, engine, case[1])
        assert.is_false(ok)
        assert.matches(case[2], err)
      end
      assert.has_error(function() engine:submit("http://x") end)
      assert.equal(0, engine:pending())
    end)

    it("returns an increasing id at once and counts the transfer as pending", function()
      local a = engine:submit { url = base .. "/delay?s=0.3" }
      local b = engine:submit { url = base .. "/json" }
      assert.is_number(a)
      assert.is_true(b > a)
      assert.equal(2, engine:pending())
      collect(engine, 2)
      assert.equal(0, engine:pending())
    end)

    it("sends the method, headers and body it was given", function()
      local c = fetch(engine, { method = "PATCH", url = base .. "/echo?x=1",
        headers = { ["X-Token"] = "t1", ["Content-Type"] = "application/json", ["X-Num"] = 7 },
        body = '{"a":1}' })
      assert.equal(200, c.status)
      assert.equal("PATCH", c.json.method)
      assert.equal("x=1", c.json.query)
      assert.equal("t1", c.json.headers["x-token"])
      assert.equal("7", c.json.headers["x-num"])
      assert.equal('{"a":1}', c.json.body)
    end)

    it("carries nothing over from one request to the next on a reused handle", function()
      local sequence = {
        { method = "POST", body = "first", want = "POST" },
        { method = "GET", want = "GET" },
        { method = "DELETE", want = "DELETE" },
        { method = "PUT", body = "third", want = "PUT" },
        { method = "GET", want = "GET" },
        { method = "HEAD", want = nil },
        { method = "GET", want = "GET" },
      }
      for _, step in ipairs(sequence) do     -- one at a time: each reuses the last handle
        local c = fetch(engine, { method = step.method, url = base .. "/echo", body = step.body,
                                  headers = step.body and { ["X-Step"] = step.method } or nil })
        assert.equal(200, c.status)
        if step.want then
          assert.equal(step.want, c.json.method)
          assert.equal(step.body or "", c.json.body)
          assert.equal(step.body and step.method or nil, c.json.headers["x-step"])
        else
          assert.equal("", c.body)
        end
      end
    end)

    it("takes request and option tables that are proxies (__index), whatever they return", function()
      -- Each read returns a fresh long string (not interned) and runs the
      -- collector first: what the core holds must be held by the core.
      local function proxy(real)
        return setmetatable({}, { __index = function(_, k)
          collectgarbage()
          local v = real[k]
          if type(v) == "string" then return (v .. "#"):sub(1, -2) end
          if type(v) == "table" then
            local copy = {}
            for hk, hv in pairs(v) do copy[hk] = (hv .. "#"):sub(1, -2) end
            return copy
          end
          return v
        end })
      end
      local long = string.rep("x", 64)
      local opts = { user_agent = "agent-" .. long }
      for k, v in pairs(mode.opts) do opts[k] = v end
      local e = core.new(proxy(opts))
      local c = fetch(e, proxy { method = "POST", url = base .. "/echo?q=" .. long,
                                 body = "body-" .. long, headers = { ["X-Long"] = "h-" .. long } })
      assert.equal(200, c.status)
      assert.equal("POST", c.json.method)
      assert.equal("q=" .. long, c.json.query)
      assert.equal("body-" .. long, c.json.body)
      assert.equal("h-" .. long, c.json.headers["x-long"])
      assert.equal("agent-" .. long, c.json.headers["user-agent"])
      e:close()
    end)

    it("sends an empty POST with a zero length", function()
      local c = fetch(engine, { method = "POST", url = base .. "/echo" })
      assert.equal("POST", c.json.method)
      assert.equal("0", c.json.headers["content-length"])
    end)
  end)

  describe("poll", function()
    it("returns at once with timeout 0 while a transfer is still running", function()
      engine:submit { url = base .. "/delay?s=2" }
      local t0 = os.clock()
      local started = os.time()
      local first = engine:poll(0)
      assert.same({}, first)
      assert.is_true(os.time() - started <= 1)
      assert.is_true(os.clock() - t0 < 0.5)
      assert.equal(1, engine:pending())
    end)

    it("makes progress when called with 0 once per frame, as a host loop does", function()
      local socket = require "socket"
      local id = engine:submit { url = base .. "/delay?s=0.1" }
      local done
      for _ = 1, 300 do                     -- ~60 frames a second, 5 s at most
        for _, c in ipairs(engine:poll(0)) do done = c end
        if done then break end
        socket.sleep(1 / 60)
      end
      assert.equal(id, done and done.id)
      assert.is_true(done.json.delayed)
    end)

    it("hands over at most `max` completions per call, keeping the rest", function()
      for i = 1, 5 do engine:submit { url = base .. "/json?i=" .. i } end
      local got = 0
      for _ = 1, 100 do
        local batch = engine:poll(0.05, 2)
        assert.is_true(#batch <= 2)
        got = got + #batch
        if got == 5 then break end
      end
      assert.equal(5, got)
      assert.has_error(function() engine:poll(0, -1) end)
    end)

    it("with a work bound of 0 services one ready socket per call, and still finishes", function()
      for i = 1, 5 do engine:submit { url = base .. "/json?w=" .. i } end
      local got, calls = 0, 0
      for _ = 1, 2000 do
        calls = calls + 1
        got = got + #engine:poll(0, 0, 0)
        if got == 5 then break end
        require("socket").sleep(0.001)
      end
      assert.equal(5, got)
      assert.has_error(function() engine:poll(0, 1, -1) end)
      assert.has_error(function() engine:poll(0, 1, "soon") end)
    end)

    it("takes flush() at any time (it only matters with an I/O thread)", function()
      engine:flush()
      local id = engine:submit { url = base .. "/json" }
      engine:flush()
      engine:flush()
      assert.equal(200, collect(engine, 1)[id].status)
    end)

    it("returns at once while completions wait, whatever its timeout (left by cancel or a bounded poll)", function()
      local a = engine:submit { url = base .. "/delay?s=8&a" }
      local b = engine:submit { url = base .. "/delay?s=8&b" }
      engine:poll(0.05)                     -- both under way
      assert.is_true(engine:cancel(a))
      assert.is_true(engine:cancel(b))
      assert.equal(0, engine:timeout())     -- says: poll now
      -- Nothing else in flight: a poll that waited would wait its whole
      -- timeout (the bound below is half of it, not a speed figure).
      local t0 = core.now()
      local first = engine:poll(10, 1)      -- takes one, leaves one waiting
      local second = engine:poll(10)        -- hands that one over
      local waited = core.now() - t0
      assert.equal(1, #first)
      assert.equal(1, #second)
      assert.same({ [a] = "cancelled", [b] = "cancelled" },
                  { [first[1].id] = first[1].error.code, [second[1].id] = second[1].error.code })
      assert.is_true(waited < 5, ("poll waited %.1f s while completions were ready"):format(waited))
      assert.equal(0, engine:pending())
    end)

    it("raises on a negative timeout", function()
      assert.has_error(function() engine:poll(-1) end)
    end)

    it("drives more than a hundred transfers in flight at once, each delivered once", function()
      local wide = new { max_host_connections = 0, max_connections = 200 }
      local ids = {}
      for i = 1, 150 do ids[wide:submit { url = base .. "/delay?s=0.2&i=" .. i }] = true end
      assert.equal(150, wide:pending())
      local got, n = collect(wide, 150, 30)
      assert.equal(150, n)
      for id in pairs(ids) do
        assert.equal(200, got[id].status)
        assert.is_true(got[id].json.delayed)
      end
      wide:close()
    end)

    it("reuses connections, and opens a fresh one when asked", function()
      fetch(engine, { url = base .. "/json" })
      local again = fetch(engine, { url = base .. "/json" })
      assert.equal(0, again.connects)
      local fresh = fetch(engine, { url = base .. "/json", fresh_connect = true })
      assert.equal(1, fresh.connects)
    end)

    it("leaves timings out when the engine is told to", function()
      local quiet = new { timings = false }
      local c = fetch(quiet, { url = base .. "/json" })
      assert.is_nil(c.time)
      assert.equal(200, c.status)
      quiet:close()
    end)

    it("reports timings in seconds", function()
      local c = fetch(engine, { url = base .. "/json" })
      assert.is_true(c.time.total > 0)
      assert.is_true(c.time.first_byte <= c.time.total)
      assert.equal("1.1", c.http_version)
    end)
  end)

  describe("responses", function()
    it("decodes a JSON body: values, null, empty arrays, nesting, unicode", function()
      local c = fetch(engine, { url = base .. "/json" })
      assert.equal(200, c.status)
      assert.is_nil(c.json_error)
      local j = c.json
      assert.is_true(j.ok)
      assert.equal(42, j.n)
      assert.same({ 1, 2, 3 }, { j.list[1], j.list[2], j.list[3] })
      assert.equal("table", type(j.empty))
      assert.is_nil(next(j.empty))
      assert.equal(core.null, j.nothing)
      assert.equal("c", j.nested.a.b)
      assert.equal("caf\195\169", j.text)
      assert.matches('"ok":true', c.body)
    end)

    it("decodes problem+json and bodies without a content type that look like JSON", function()
      local p = fetch(engine, { url = base .. "/problem" })
      assert.equal(422, p.status)
      assert.equal("Unprocessable Entity", p.json.title)
      local u = fetch(engine, { url = base .. "/untyped" })
      assert.equal(1, u.json.x)
    end)

    it("leaves other bodies undecoded, and decodes only when asked", function()
      local t = fetch(engine, { url = base .. "/text" })
      assert.equal("hello", t.body)
      assert.is_nil(t.json)
      assert.is_nil(t.json_error)
      local off = fetch(engine, { url = base .. "/json", decode = false })
      assert.is_nil(off.json)
      local forced = fetch(engine, { url = base .. "/text", decode = true })
      assert.is_string(forced.json_error)
    end)

    it("reports malformed JSON on the completion, keeping the body, never raising", function()
      local c = fetch(engine, { url = base .. "/malformed" })
      assert.equal(200, c.status)
      assert.is_nil(c.json)
      assert.matches("Expected", c.json_error)
      assert.equal('{"a": [1, 2,', c.body)
      assert.is_nil(c.error)
    end)

    it("ignores a UTF-8 byte-order mark before a JSON text (RFC 8259 8.1), keeping the body as sent", function()
      local bom = "\239\187\191"
      local typed = fetch(engine, { url = base .. "/raw?hex=" .. hex(bom .. '{"requestId":"r-1"}') })
      assert.is_nil(typed.json_error)
      assert.equal("r-1", typed.json.requestId)
      assert.equal(bom .. '{"requestId":"r-1"}', typed.body)
      local untyped = fetch(engine, { url = base .. "/raw?type=none&hex=" .. hex(bom .. ' [1,2]') })
      assert.same({ 1, 2 }, untyped.json)
      local seen
      local custom = new { json_decode = function(s) seen = s return {} end }
      fetch(custom, { url = base .. "/raw?hex=" .. hex(bom .. '{"a":1}') })
      assert.equal('{"a":1}', seen)         -- a caller's decoder gets the text without it
      custom:close()
    end)

    it("still refuses what RFC 8259 forbids, with or without a byte-order mark", function()
      local bom = "\239\187\191"
      local bad = {
        bom,                                 -- a mark and no text
        bom .. bom .. "{}",                  -- two marks
        "{}" .. bom,                         -- a mark after the text
        '{"a":' .. bom .. "1}",              -- one inside it
        "\254\255{}", "\255\254{}",          -- UTF-16 marks
        bom .. "[NaN]", "[Infinity]", "[-Infinity]", "[0x10]", "[+1]", "[01]",
        bom .. "{'a':1}", "[1,]",
      }
      for _, body in ipairs(bad) do
        local c = fetch(engine, { url = base .. "/raw?hex=" .. hex(body) })
        assert.is_nil(c.json, ("%q"):format(body))
        assert.is_string(c.json_error, ("%q"):format(body))
        assert.equal(body, c.body)
      end
    end)

    it("refuses JSON nested deeper than json_max_depth", function()
      local deep = fetch(engine, { url = base .. "/deep?n=200" })
      assert.matches("nested", deep.json_error)
      local fine = fetch(engine, { url = base .. "/deep?n=100" })
      assert.is_nil(fine.json_error)
      local shallow = new { json_max_depth = 10 }
      local c = fetch(shallow, { url = base .. "/deep?n=20" })
      assert.matches("nested", c.json_error)
      shallow:close()
    end)

    it("uses a caller's JSON decoder when given one", function()
      local custom = new { json_decode = function(s) return { length = #s } end }
      local c = fetch(custom, { url = base .. "/json" })
      assert.equal(#c.body, c.json.length)
      custom:close()
    end)

    it("lower-cases header names and keeps repeated headers as arrays", function()
      local c = fetch(engine, { url = base .. "/repeated" })
      assert.equal("yes", c.headers["x-mixed-case"])
      assert.same({ "a=1", "b=2" }, c.headers["set-cookie"])
      assert.equal("2", c.headers["content-length"])
    end)

    it("passes status codes and headers through untouched", function()
      local c = fetch(engine, { url = base .. "/status?code=429&retry_after=7" })
      assert.equal(429, c.status)
      assert.equal("7", c.headers["retry-after"])
      assert.equal(429, c.json.status)
    end)

    it("does not follow redirects unless the engine is told to", function()
      local c = fetch(engine, { url = base .. "/redirect" })
      assert.equal(302, c.status)
      local follower = new { follow_redirects = true }
      local f = fetch(follower, { url = base .. "/redirect" })
      assert.equal(200, f.status)
      assert.is_true(f.json.ok)
      follower:close()
    end)
  end)

  describe("transport errors", function()
    it("times out with code 'timeout'", function()
      local c = fetch(engine, { url = base .. "/delay?s=3", timeout = 0.3 })
      assert.equal("timeout", c.error.code)
      assert.equal(28, c.error.curl_code)
      assert.is_nil(c.body)
    end)

    it("reports a refused connection as 'connect'", function()
      local port = helper.free_port()
      local c = fetch(engine, { url = "http://127.0.0.1:" .. port .. "/" })
      assert.equal("connect", c.error.code)
      assert.equal(0, c.status)
    end)

    it("stops a body over max_body with 'too_large'", function()
      local c = fetch(engine, { url = base .. "/big?bytes=100000", max_body = 1000 })
      assert.equal("too_large", c.error.code)
      assert.is_nil(c.body)
      local ok = fetch(engine, { url = base .. "/big?bytes=100000", max_body = 100000 })
      assert.equal(100000, #ok.body)
    end)

    it("caps bodies at 16 MiB by default", function()
      local c = fetch(engine, { url = base .. "/big?bytes=" .. (16 * 1024 * 1024 + 1) }, 20)
      assert.equal("too_large", c.error.code)
    end)

    it("reports a reset connection and a truncated body as 'network'", function()
      local r = fetch(engine, { url = base .. "/reset" })
      assert.equal("network", r.error.code)
      local t = fetch(engine, { url = base .. "/truncated" })
      assert.equal("network", t.error.code)
      assert.is_nil(t.json)
    end)

    it("waits out a slow drip and decodes what arrived", function()
      local c = fetch(engine, { url = base .. "/drip" })
      assert.is_nil(c.error)
      assert.equal(64, #c.json.drip)
    end)
  end)

  describe("cancel", function()
    it("cancels a transfer mid-flight; the next poll delivers it as 'cancelled'", function()
      local slow = engine:submit { url = base .. "/delay?s=3" }
      local quick = engine:submit { url = base .. "/json" }
      engine:poll(0.05)
      assert.is_true(engine:cancel(slow))
      assert.is_false(engine:cancel(slow))
      local got = collect(engine, 2, 5)
      assert.equal("cancelled", got[slow].error.code)
      assert.equal(200, got[quick].status)
      assert.equal(0, engine:pending())
    end)

    it("answers false for an unknown id or one already delivered", function()
      assert.is_false(engine:cancel(987654))
      local id = engine:submit { url = base .. "/json" }
      collect(engine, 1)
      assert.is_false(engine:cancel(id))
      assert.has_error(function() engine:cancel("one") end)
    end)
  end)

  describe("timeout()", function()
    if threaded then
      it("is nil while transfers run on the I/O thread, 0 once a completion or a submit waits", function()
        assert.is_nil(engine:timeout())
        engine:submit { url = base .. "/delay?s=0.2" }
        assert.equal(0, engine:timeout())   -- waiting for a flush: poll now, poll hands it over
        engine:flush()
        assert.is_nil(engine:timeout())
        assert.is_true(await_answer(engine, 5))
        assert.equal(1, #engine:poll(0))
        assert.is_nil(engine:timeout())
      end)
      return
    end
    it("is nil when idle, a number of seconds while transfers run, 0 with completions waiting", function()
      assert.is_nil(engine:timeout())
      local id = engine:submit { url = base .. "/delay?s=1" }
      local t = engine:timeout()
      assert.is_number(t)
      assert.is_true(t >= 0)
      engine:cancel(id)
      assert.equal(0, engine:timeout())
    end)
  end)

  describe("fd()", function()
    it("lets a foreign loop wait on one descriptor, with timeout() for timers", function()
      local fd = engine:fd()
      if fd == nil then return pending("no pollable descriptor on this platform") end
      assert.is_true(fd >= 0)
      local socket = require "socket"
      local watched = { getfd = function() return fd end, dirty = function() return false end }
      local id = engine:submit { url = base .. "/delay?s=0.3" }
      local done
      for _ = 1, 200 do                     -- bounded: about 4 s at most
        local wait = engine:timeout()
        socket.select({ watched }, nil, math.min(wait or 0.02, 0.02))
        for _, c in ipairs(engine:poll(0)) do done = c end
        if done then break end
      end
      assert.equal(id, done.id)
      assert.equal(200, done.status)
    end)
  end)

  if threaded then
    describe("the I/O thread", function()
      it("wakes the thread for submits at flush, without a poll", function()
        require("socket").sleep(0.1)        -- the idle thread sleeps (1 s at most)
        engine:submit { url = base .. "/json" }
        engine:flush()
        assert.is_true(await_answer(engine, 0.5))   -- the idle thread alone would not be up yet
        assert.equal(200, engine:poll(0)[1].status)
      end)

      it("runs transfers while the Lua thread does not poll", function()
        for i = 1, 10 do engine:submit { url = base .. "/delay?s=0.1&i=" .. i } end
        engine:flush()
        assert.is_true(await_answer(engine, 5))
        require("socket").sleep(0.3)        -- the ten run side by side: all done by now
        local got = engine:poll(0)
        assert.equal(10, #got)
        for _, c in ipairs(got) do assert.equal(200, c.status) end
      end)

      it("cancels a transfer it has not picked up yet", function()
        local id = engine:submit { url = base .. "/delay?s=2" }
        assert.is_true(engine:cancel(id))
        local got = collect(engine, 1, 5)
        assert.equal("cancelled", got[id].error.code)
      end)

      it("delivers each of many transfers exactly once while cancels race their completion", function()
        local ids, cancelled, early = {}, {}, {}
        for i = 1, 120 do ids[i] = engine:submit { url = base .. "/delay?s=0.0" .. (i % 5) .. "&i=" .. i } end
        for i = 1, 120, 3 do
          if engine:cancel(ids[i]) then cancelled[ids[i]] = true end
          if i % 9 == 1 then
            for _, c in ipairs(engine:poll(0.002)) do early[#early + 1] = c end
          end
        end
        local got, n = collect(engine, 120 - #early, 20)
        for _, c in ipairs(early) do
          assert.is_nil(got[c.id], "id delivered twice")
          got[c.id], n = c, n + 1
        end
        assert.equal(120, n)
        for _, id in ipairs(ids) do
          local c = got[id]
          if cancelled[id] then assert.equal("cancelled", c.error.code)
          else assert.equal(200, c.status) end
        end
        assert.equal(0, engine:pending())
      end)
    end)
  end

  describe("lifetime", function()
    it("closes idempotently; a closed engine refuses work with a clear error", function()
      local e = new()
      e:submit { url = base .. "/delay?s=2" }
      e:close()
      e:close()
      assert.has_error(function() e:submit { url = base } end, "enrich.core: engine is closed")
      assert.has_error(function() e:poll(0) end, "enrich.core: engine is closed")
      assert.matches("closed", tostring(e))
    end)

    it("refuses to be used from inside its own json_decode: never a transfer freed under poll", function()
      local tries = {
        close = function(e) e:close() end,
        poll = function(e) e:poll(0) end,
        cancel = function(e) e:cancel(1) end,
        submit = function(e) e:submit { url = base .. "/json" } end,
      }
      for name, try in pairs(tries) do
        local e
        e = new { json_decode = function() try(e) return { decoded = true } end }
        local ids = {}
        for i = 1, 3 do ids[i] = e:submit { url = base .. "/json?" .. name .. i } end
        local got, n = collect(e, 3)
        assert.equal(3, n, name)
        for _, id in ipairs(ids) do
          assert.matches("inside its own poll", got[id].json_error, 1, true)
        end
        assert.equal(0, e:pending())
        local after = new { json_decode = function() return { fine = true } end }
        assert.is_true(fetch(after, { url = base .. "/json" }).json.fine)
        after:close()
        e:close()
      end
    end)

    it("refuses work in a forked child with a clear error; closing it there spares the parent's transfers", function()
      if not jit then return pending("fork() from a spec needs LuaJIT's FFI") end
      local ffi = require "ffi"
      local parent = core.getpid()
      local dropped = new()
      local slow = engine:submit { url = base .. "/delay?s=0.5" }
      local other = dropped:submit { url = base .. "/delay?s=0.5" }
      engine:poll(0.05); dropped:poll(0.05)  -- both under way: sockets in the parent's sets
      local code = in_child(function()
        if core.getpid() == parent or core.getpid() ~= ffi.C.getpid() then return 5 end
        local want = "enrich.core: engine was made in process " .. parent .. ", used in "
          .. core.getpid() .. "; make a new one after fork"
        for _, call in ipairs { "submit", "poll", "cancel", "pending", "timeout", "fd", "flush" } do
          local ok, err = pcall(engine[call], engine, call == "submit" and { url = base .. "/json" } or 0)
          if ok or not tostring(err):find(want, 1, true) then return 3 end
        end
        engine:close()
        engine:close()
        dropped = nil
        collectgarbage(); collectgarbage()      -- __gc in the child, as a worker dropping it would
        local fresh = new()                      -- a new engine in the child works
        local id = fresh:submit { url = base .. "/json" }
        local c = collect(fresh, 1, 5)[id]
        fresh:close()
        return c and c.status == 200 and 0 or 6
      end)
      assert.equal(0, code)
      local got = collect(engine, 1)            -- the parent's engines go on as before
      assert.equal(200, got[slow] and got[slow].status)
      assert.equal(200, collect(dropped, 1)[other].status)
      dropped:close()
    end)

    it("frees an engine dropped with transfers in flight", function()
      local weak = setmetatable({}, { __mode = "v" })
      do
        local e = new()
        for i = 1, 20 do e:submit { url = base .. "/delay?s=2&i=" .. i } end
        e:poll(0.05)
        weak[1] = e
      end
      collectgarbage()
      collectgarbage()
      assert.is_nil(weak[1])
    end)

    if _VERSION == "Lua 5.4" then
      it("closes at the end of a <close> scope", function()
        local run = assert(load([[
          local core, opts, url = ...
          local kept
          do
            local e <close> = core.new(opts)
            e:submit { url = url }
            kept = e
          end
          return kept
        ]]))
        local e = run(core, mode.opts, base .. "/delay?s=2")
        assert.has_error(function() e:pending() end, "enrich.core: engine is closed")
      end)
    end
  end)
end)
end
