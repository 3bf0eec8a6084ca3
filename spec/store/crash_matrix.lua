-- What the two crash specs share (spec/store/crash_spec.lua with the SQLite
-- store, redis_crash_spec.lua with the Redis store; the crash child that
-- runs and resumes their jobs is in spec/store/support.lua): the checks of
-- one kill. No input submitted twice, every job terminal or `unknown`, none
-- left open in the store, `unknown` only where the kill came after the
-- intent was committed and before the provider id was, and no provider id
-- lost. Each spec reads its own store's facts:
--   facts = { ids = distinct provider ids known, open = unfinished jobs,
--             unknown_parts = parts that ended unknown }
local assert = require "luassert"

local _M = {}

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
_M.MUST_BE_UNKNOWN = MUST_BE_UNKNOWN
local RESENDS = { puffle = true, lance = true }   -- resent with the same identity: never unknown

--- The checks of one kill. r = { out1, finished1 (the killed run), out2,
--- finished2, jobs (the resume), facts, stats (support.stats) }. Returns
--- the jobs that ended unknown and the context for messages. The id
--- accounting is per part, so "tamtam-coalesced" (parts sharing one
--- provider request) does its own.
function _M.check(provider, at, r)
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
    assert.is_true(unknown > 0 and facts.unknown_parts > 0,
                   "a submit on the wire when killed must end unknown" .. context)
  end
  -- A submit on the wire went again with the same identity, and the
  -- provider answered it with the work it had (free).
  if not finished1 and RESENDS[provider] and MUST_BE_UNKNOWN[point] then
    assert.is_true((stats.reused or 0) > 0, "the resend was not a replay" .. context)
  end
  -- No provider id lost: every job the provider made is known to the
  -- store, but one per part that ended unknown; and (past the intent
  -- point) each unknown part is a job the provider really made.
  -- (lance's ids are per-person records, resent for free.)
  if provider ~= "lance" and provider ~= "tamtam-coalesced" then
    local detail = ("provider jobs %d, ids known %d, unknown parts %d"):format(stats.jobs, facts.ids,
                                                                             facts.unknown_parts)
    assert.is_true(facts.ids <= stats.jobs, detail .. context)
    assert.is_true(stats.jobs <= facts.ids + facts.unknown_parts, detail .. context)
    if point ~= "intent_committed" then
      assert.equal(stats.jobs, facts.ids + facts.unknown_parts, detail .. context)
    end
  end
  return unknown, context
end

return _M
