-- kill -9 at every crash point, for tamtam (no idempotent submit), puffle
-- (an idempotency key) and lance (an idempotent submit), against the
-- simulator; then a restart resumes from the store. From the simulator's
-- counters and the store: no input submitted twice, no provider id lost,
-- every job terminal or `unknown`, and `unknown` only where the kill came
-- after the intent was committed and before the provider id was.
local support = require "engine.support"
local estore = require "enrich.store"

local matrix = require "store.crash_matrix"
local store_support = require "store.support"

local POINTS = { "intent_committed:1", "request_sent:1", "answer_read:1", "id_committed:1",
                 "terminal_read:1", "in_commit:1", "in_commit:2", "in_commit:3" }

local child, finish = store_support.child, store_support.finish

local tmpdb, cleanup = store_support.tmpdb, store_support.cleanup

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
        local unknown, context = matrix.check(provider, at, r)
        local finished1, jobs, facts, stats = r.finished1, r.jobs, r.facts, r.stats
        local point = at:match("^[%w_]+")
        if provider == "tamtam-coalesced" then
          -- The parts of the run share one provider request, so unknown
          -- parts (all from that request: a resume is never killed) stand
          -- for one provider job the store does not know, however many.
          -- Unknown only where the kill came after an intent commit and
          -- before the shared id's; never once it was. Where the kill
          -- surely came after the send, each unknown request is one the
          -- provider really made. The members' intents share ONE commit
          -- (in_commit:1): killed in it, nothing is recorded and nothing
          -- sent; once it is durable (intent_committed) every member is
          -- recorded and nothing sent yet; the next commit (in_commit:2)
          -- comes after the send: the shared request is made, its id not
          -- durable.
          local lost = facts.unknown_parts > 0 and 1 or 0
          local detail = ("provider jobs %d, ids known %d, unknown parts %d"):format(stats.jobs, facts.ids,
                                                                                   facts.unknown_parts)
          assert.is_true(facts.ids <= stats.jobs, detail .. context)
          assert.is_true(stats.jobs <= facts.ids + lost, detail .. context)
          local after_send = matrix.MUST_BE_UNKNOWN[point] or point == "id_committed" or point == "terminal_read"
            or at == "in_commit:2"
          if after_send then assert.equal(stats.jobs, facts.ids + lost, detail .. context) end
          if not finished1 and at == "in_commit:1" then
            assert.equal(0, stats.jobs, "killed in the intents' commit: nothing sent" .. context)
            assert.equal(0, #jobs, "killed in the intents' commit: nothing recorded" .. context)
          end
          if not finished1 and point == "intent_committed" then
            assert.equal(0, stats.jobs, "the intents durable: nothing sent yet" .. context)
            assert.equal(2, unknown, "every member's intent was durable at once" .. context)
          end
          if not finished1 and at == "in_commit:2" then
            assert.equal(1, stats.jobs, "the commit after the intents' one comes after the send" .. context)
            assert.same({ 0, 2 }, { facts.ids, unknown }, detail .. context)
          end
          if point == "id_committed" or point == "terminal_read" then assert.equal(0, unknown, detail .. context) end
          if finished1 then assert.equal(1, stats.jobs, "the three people went in one request" .. context) end
        end
      end)
    end
  end
end)
