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

local LUA = (jit and "luajit") or "lua" .. _VERSION:match("%d+%.%d+")
local TERMINAL = { succeeded = true, partial = true, failed = true, cancelled = true, timed_out = true,
                   unknown = true }

-- A part may end `unknown` only where the kill came after its intent was
-- committed and before its provider id was (for this job or another one
-- running beside it): the provider made a job whose id we never learnt,
-- so each unknown part must match one provider job the store does not
-- know. (At intent_committed nothing is on the wire yet, but a restart
-- cannot tell that from a send whose answer was lost: unknown, to be safe.)
-- A part surely on the wire when killed: its job must end unknown.
local MUST_BE_UNKNOWN = { request_sent = true, answer_read = true }
local RESENDS = { puffle = true, lance = true }   -- resent with the same identity: never unknown

-- (No in_commit: a Redis script is atomic, there is no transaction to cut.)
local POINTS = { "intent_committed:1", "intent_committed:2", "request_sent:1", "answer_read:1",
                 "id_committed:1", "id_committed:2", "terminal_read:1" }

local function child(sim, db, provider, phase, crash_at)
  local cmd = (crash_at and ("ENRICH_CRASH_AT=" .. crash_at .. " ") or "ENRICH_CRASH_AT= ")
    .. LUA .. " spec/store/crash_child.lua " .. sim.url .. " '" .. db .. "' " .. provider .. " " .. phase .. " 2>&1"
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  local jobs = {}
  for uid, state, code in out:gmatch("JOB (%S+) (%S+) (%S+)") do
    jobs[#jobs + 1] = { uid = uid, state = state, code = code }
  end
  return out, out:find("\nDONE\n", 1, true) ~= nil or out:sub(1, 5) == "DONE\n", jobs
end

-- A store URL per test: its own namespace, and one worker name, so the
-- restarted child takes back at once what the killed one held.
local server, n = nil, 0
local function tmpdb()
  n = n + 1
  return server.url .. "?ns=crash" .. n .. "&worker=crash-child&retry_for=5"
end
local function cleanup() end

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
        assert(finished2, "the resume did not finish:\n" .. out2)
        local facts = store_facts(db)
        local stats = support.stats(sim, provider)
        cleanup()
        local context = "\nrun:\n" .. out1 .. "\nresume:\n" .. out2

        if os.getenv("ENRICH_CRASH_REPORT") then
          local states = {}
          for _, j in ipairs(jobs) do states[#states + 1] = j.state end
          io.stderr:write(("%-7s %-19s killed=%-5s states=%-28s provider_jobs=%d ids_known=%d "
                           .. "unknown_parts=%d dups=%d reused=%d\n")
            :format(provider, at, tostring(not finished1), table.concat(states, ","), stats.jobs, facts.ids,
                    facts.unknown_parts, #stats.duplicates, stats.reused or 0))
        end
        -- No input submitted twice (a lance record or a puffle replay
        -- answered again is `reused`, not submitted).
        assert.same({}, stats.duplicates, context)
        -- Every job ends terminal (or unknown); none left open in the store.
        for _, j in ipairs(jobs) do
          assert.is_true(TERMINAL[j.state] == true, "job " .. j.uid .. " is " .. j.state .. context)
        end
        assert.equal(0, facts.open, context)
        -- unknown only where the kill came between intent and id commits.
        local point = at:match("^[%w_]+")
        local unknown = 0
        for _, j in ipairs(jobs) do
          if j.state == "unknown" then
            unknown = unknown + 1
            assert.equal("unknown", j.code)
          end
        end
        if RESENDS[provider] then
          assert.equal(0, unknown, "unexpected unknown" .. context)
        end
        if not finished1 and not RESENDS[provider] and MUST_BE_UNKNOWN[point] then
          assert.is_true(unknown > 0, "a submit on the wire when killed must end unknown" .. context)
        end
        -- A submit on the wire went again with the same identity, and the
        -- provider answered it with the work it had (free).
        if not finished1 and RESENDS[provider] and MUST_BE_UNKNOWN[point] then
          assert.is_true((stats.reused or 0) > 0, "the resend was not a replay" .. context)
        end
        -- No provider id lost: every job the provider made is known to the
        -- store, but one per part that ended unknown; and (past the intent
        -- point) each unknown part is a job the provider really made.
        if provider ~= "lance" then   -- lance's ids are per-person records, resent for free
          local detail = ("provider jobs %d, ids known %d, unknown parts %d"):format(stats.jobs, facts.ids,
                                                                                   facts.unknown_parts)
          assert.is_true(facts.ids <= stats.jobs, detail .. context)
          assert.is_true(stats.jobs <= facts.ids + facts.unknown_parts, detail .. context)
          if point ~= "intent_committed" then
            assert.equal(stats.jobs, facts.ids + facts.unknown_parts, detail .. context)
          end
        end
      end)
    end
  end
end)
