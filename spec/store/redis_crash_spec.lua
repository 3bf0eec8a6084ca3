-- The same as spec/store/crash_spec.lua, with the Redis store (a real
-- redis-server, appendfsync always): kill -9 at every crash point, for tamtam (no idempotent submit), puffle
-- (an idempotency key) and lance (an idempotent submit), against the
-- simulator; then a restart resumes from the store. From the simulator's
-- counters and the store: no input submitted twice, no provider id lost,
-- every job terminal or `unknown`, and `unknown` only where the kill came
-- after the intent was committed and before the provider id was.
local support = require "engine.support"
local estore = require "enrich.store"
local redis_server = require "support.redis"

local matrix = require "store.crash_matrix"
local store_support = require "store.support"

-- (No in_commit: a Redis script is atomic, there is no transaction to cut.)
local POINTS = { "intent_committed:1", "intent_committed:2", "request_sent:1", "answer_read:1",
                 "id_committed:1", "id_committed:2", "terminal_read:1" }

local function child(sim, db, provider, phase, crash_at)
  return store_support.finish(store_support.child(sim, db, provider, phase, crash_at))
end

-- A store URL per test: its own namespace, and one worker name, so the
-- restarted child takes back at once what the killed one held.
local server, n = nil, 0
local function tmpdb()
  n = n + 1
  return server.url .. "?ns=crash" .. n .. "&worker=crash-child&retry_for=5"
end

-- Distinct provider ids the store knows, and parts that ended unknown.
local function store_facts(url)
  local s = assert(estore.open(url, { worker = "facts", release_on_close = false }))
  local cjson = require "cjson"
  local flat = s.r:eval([[
    local out = {}
    for _, uid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
      local h = redis.call('HGETALL', ARGV[1] .. uid)
      out[#out + 1] = cjson.encode(h)
    end
    return out]], { s.P .. ":jobs" }, { s.P .. ":job:" })
  local ids, count, unknown_parts, open = {}, 0, 0, 0
  for _, enc in ipairs(flat or {}) do
    local pairs_ = cjson.decode(enc)
    local h = {}
    for i = 1, #pairs_, 2 do h[pairs_[i]] = pairs_[i + 1] end
    for field, v in pairs(h) do
      if field:match("^pid:") and not ids[v] then ids[v], count = true, count + 1 end
    end
    if h.terminal ~= "1" then open = open + 1 end
    local snap = cjson.decode(h.snap or "{}")
    for _, p in ipairs(snap.parts or {}) do
      if type(p.error) == "table" and p.error.code == "unknown" then unknown_parts = unknown_parts + 1 end
    end
  end
  s:close()
  return { ids = count, open = open, unknown_parts = unknown_parts }
end

describe("kill -9 at every crash point, then resume (Redis store)", function()
  local sim
  setup(function()
    sim = support.start()
    server = redis_server.start()
  end)
  teardown(function()
    if sim then sim:stop() end
    if server then server:close() end
  end)

  for _, provider in ipairs { "tamtam", "puffle", "lance" } do
    for _, at in ipairs(POINTS) do
      it(provider .. " killed at " .. at .. ": nothing paid twice, no id lost, all terminal", function()
        support.reset(sim)
        support.configure(sim, { all = { polls = 1 }, tamtam = { rate_limit = false } })
        local db = tmpdb()
        local out1, finished1 = child(sim, db, provider, "run", at)
        local out2, finished2, jobs = child(sim, db, provider, "resume")
        local facts = store_facts(db)
        local stats = support.stats(sim, provider)
        matrix.check(provider, at, { out1 = out1, finished1 = finished1, out2 = out2, finished2 = finished2,
                                     jobs = jobs, facts = facts, stats = stats })
      end)
    end
  end
end)
