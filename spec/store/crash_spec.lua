-- kill -9 at every crash point, for tamtam (no idempotent submit), puffle
-- (an idempotency key) and lance (an idempotent submit), against the
-- simulator; then a restart resumes from the store. From the simulator's
-- counters and the store: no input submitted twice, no provider id lost,
-- every job terminal or `unknown`, and `unknown` only where the kill came
-- after the intent was committed and before the provider id was.
local support = require "engine.support"
local estore = require "enrich.store"

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

local POINTS = { "intent_committed:1", "request_sent:1", "answer_read:1", "id_committed:1",
                 "terminal_read:1", "in_commit:1", "in_commit:2", "in_commit:3" }

-- Starts a child (it runs at once); finish() waits for it and reads it.
local function child(sim, db, provider, phase, crash_at)
  local cmd = (crash_at and ("ENRICH_CRASH_AT=" .. crash_at .. " ") or "ENRICH_CRASH_AT= ")
    .. LUA .. " spec/store/crash_child.lua " .. sim.url .. " " .. db .. " " .. provider .. " " .. phase .. " 2>&1"
  return assert(io.popen(cmd))
end

local function finish(p)
  local out = p:read("*a")
  p:close()
  local jobs = {}
  for uid, state, code in out:gmatch("JOB (%S+) (%S+) (%S+)") do
    jobs[#jobs + 1] = { uid = uid, state = state, code = code }
  end
  return out, out:find("\nDONE\n", 1, true) ~= nil or out:sub(1, 5) == "DONE\n", jobs
end

local function tmpdb()
  local path = os.tmpname()
  os.remove(path)
  return path
end

local function cleanup(path)
  for _, suffix in ipairs { "", "-wal", "-shm", ".lock" } do os.remove(path .. suffix) end
end

-- Distinct provider ids the store knows, and parts that ended unknown.
local function store_facts(db)
  local s = assert(estore.open("sqlite:" .. db))
  local ids, n = {}, 0
  local q = assert(s.db:prepare("SELECT provider_id FROM parts WHERE provider_id IS NOT NULL"))
  while q:step() do
    local id = q:row()[1]
    if not ids[id] then ids[id], n = true, n + 1 end
  end
  q:finalize()
  local open = assert(s:jobs_unfinished())
  local unknown_parts = 0
  q = assert(s.db:prepare("SELECT snapshot FROM jobs"))
  local cjson = require "cjson"
  while q:step() do
    local snap = cjson.decode(q:row()[1])
    for _, p in ipairs(snap.parts or {}) do
      if type(p.error) == "table" and p.error.code == "unknown" then unknown_parts = unknown_parts + 1 end
    end
  end
  q:finalize()
  s:close()
  return { ids = n, open = #open, unknown_parts = unknown_parts }
end

describe("kill -9 at every crash point, then resume", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)

  -- The three providers of one point run side by side (their own store
  -- files; the simulator counts per provider): the first test of a point
  -- runs them, each test checks its provider. Then "tamtam-multi": one
  -- job of 101 people (two parts, sent one after the other) and one of one.
  -- These run uncoalesced (one provider request per part: the accounting
  -- below). Then "tamtam-coalesced": tamtam's two jobs (three people) in
  -- ONE provider request, coalescing on as by default.
  local ROUNDS = { { "tamtam", "puffle", "lance" }, { "tamtam-multi" }, { "tamtam-coalesced" } }
  local outcomes = {}
  local function run_round(at, names, results)
    support.reset(sim)
    support.configure(sim, { all = { polls = 1 }, tamtam = { rate_limit = false } })
    local runs, dbs = {}, {}
    for i, name in ipairs(names) do
      dbs[i] = tmpdb()
      runs[i] = child(sim, dbs[i], name, "run", at)
    end
    for i, name in ipairs(names) do
      local out1, finished1 = finish(runs[i])
      results[name] = { out1 = out1, finished1 = finished1 }
    end
    for i, name in ipairs(names) do runs[i] = child(sim, dbs[i], name, "resume") end
    for i, name in ipairs(names) do
      local r = results[name]
      r.out2, r.finished2, r.jobs = finish(runs[i])
      r.facts = store_facts(dbs[i])
      r.stats = support.stats(sim, (name:gsub("%-%a+$", "")))
      cleanup(dbs[i])
    end
  end
  local function outcome(at, provider)
    if not outcomes[at] then
      local results = {}
      for _, names in ipairs(ROUNDS) do run_round(at, names, results) end
      outcomes[at] = results
    end
    return outcomes[at][provider]
  end

  for _, at in ipairs(POINTS) do
    for _, provider in ipairs { "tamtam", "puffle", "lance", "tamtam-multi", "tamtam-coalesced" } do
      it(provider .. " killed at " .. at .. ": nothing paid twice, no id lost, all terminal", function()
        local r = outcome(at, provider)
        local out1, finished1, out2, finished2, jobs = r.out1, r.finished1, r.out2, r.finished2, r.jobs
        local facts, stats = r.facts, r.stats
        assert(finished2, "the resume did not finish:\n" .. out2)
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
          assert.is_true(facts.unknown_parts > 0, "a submit on the wire when killed must end unknown" .. context)
        end
        -- A submit on the wire went again with the same identity, and the
        -- provider answered it with the work it had (free).
        if not finished1 and RESENDS[provider] and MUST_BE_UNKNOWN[point] then
          assert.is_true((stats.reused or 0) > 0, "the resend was not a replay" .. context)
        end
        -- No provider id lost: every job the provider made is known to the
        -- store, but one per part that ended unknown; and (past the intent
        -- point) each unknown part is a job the provider really made.
        if provider == "tamtam-coalesced" then
          -- The parts of the run share one provider request, so unknown
          -- parts (all from that request: a resume is never killed) stand
          -- for one provider job the store does not know, however many.
          -- Unknown only where the kill came after an intent commit and
          -- before the shared id's; never once it was. Where the kill
          -- surely came after the send, each unknown request is one the
          -- provider really made. (in_commit:N is an intent commit or a
          -- later one: the members' intents commit one after the other.)
          local lost = facts.unknown_parts > 0 and 1 or 0
          local detail = ("provider jobs %d, ids known %d, unknown parts %d"):format(stats.jobs, facts.ids,
                                                                                   facts.unknown_parts)
          assert.is_true(facts.ids <= stats.jobs, detail .. context)
          assert.is_true(stats.jobs <= facts.ids + lost, detail .. context)
          local after_send = MUST_BE_UNKNOWN[point] or point == "id_committed" or point == "terminal_read"
          if after_send then assert.equal(stats.jobs, facts.ids + lost, detail .. context) end
          if point == "id_committed" or point == "terminal_read" then assert.equal(0, unknown, detail .. context) end
          if finished1 then assert.equal(1, stats.jobs, "the three people went in one request" .. context) end
        elseif provider ~= "lance" then   -- lance's ids are per-person records, resent for free
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
