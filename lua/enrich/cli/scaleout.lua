-- `enrich run --store redis://… --run NAME [--lease S]`: this process is one
-- worker of a run shared through Redis (enrich.scaleout). Every worker reads
-- the same input file; the rows are cut into chunks of whole dedupe groups,
-- each taken under a lease and run through the waterfall here; a chunk
-- whose worker died is taken over once its lease has run out, and the jobs
-- that worker had sent are brought back (polled, or read) instead of being
-- sent again. Once every chunk is answered, every worker still alive writes
-- the whole run's output to its own --out.
--
-- --budget is the run's, shared by every worker in Redis
-- (enrich.cli.budget.shared, enrich.scaleout BUDGET_* scripts): each
-- submit's worst case is granted atomically on the run's hash (cut to what
-- fits) and settled to the real charge when its job ends, each job's
-- charge counted once; answers met in the cache are not charged again. A
-- reservation belongs to its chunk: the taker of a dead worker's chunk
-- charges the jobs it brings back and gives back the rest of the chunk's
-- reservation (which counts against the limit until then, so the run never
-- spends more than N).
-- Dedupe is the run's: a chunk is a range of whole dedupe groups (every
-- worker computes the same groups from the same file), so one person's rows
-- are always in one chunk, sent once; a group's answer is its rows'
-- outcomes, written on every row. Per worker (not shared): the progress line.
local enrich = require "enrich"
local budget = require "enrich.cli.budget"
local core = require "enrich.core"
local csvio = require "enrich.cli.csvio"
local dedupe = require "enrich.cli.dedupe"
local state_mod = require "enrich.cli.state"
local waterfall = require "enrich.cli.waterfall"
local scaleout = require "enrich.scaleout"
local shared_rate = require "enrich.ratelimit_redis"

local ipairs, pairs, getenv = ipairs, pairs, os.getenv

local _M = { _VERSION = "0.1.0" }

_M.CHUNK = 100          -- dedupe groups (people) per chunk
_M.PARALLEL = 4         -- chunks one worker runs at once

function _M.run(o, data, recs, _, err, h)
  local run, oerr = scaleout.open(o.store, o.run, { lease = o.lease })
  if not run then h.usage(state_mod.message(o.store, oerr)) end
  local fingerprint = h.fingerprint
  -- Chunks are made of whole dedupe groups (every worker computes the same
  -- groups from the same file): the run's units are groups, not rows, so
  -- one person's rows are always in one chunk and sent once.
  local all_groups = dedupe.group(recs)
  local info, lerr = run:load(#all_groups, core.digest(fingerprint .. "\0groups"), o.chunk or _M.CHUNK)
  if not info then
    run:close()
    if lerr.reason == "changed" then
      h.usage("run '" .. o.run .. "' was started with another input file, providers or kind")
    end
    h.usage(state_mod.message(o.store, lerr))
  end
  local st = state_mod.wrap(run.store, o.store)
  st.run = fingerprint
  local clients = h.make_clients(o, st:client_store())
  -- The provider's rate per key is shared by every worker (hashed key).
  for name, c in pairs(clients) do
    shared_rate.attach(c, run.store, { key = getenv("ENRICH_" .. name:upper() .. "_API_KEY") })
  end
  local totals = {}                         -- credits this worker settled, by provider
  local failure
  enrich.run(function()
    local ok, werr = run:work(function(chunk)
      local revived, rerr = run:revive_all(chunk, clients)
      if not revived then return nil, rerr end
      local sub, at = {}, {}                -- the chunk's rows, group after group
      for g = chunk.first, chunk.last do
        for _, r in ipairs(all_groups[g].rows) do
          sub[#sub + 1] = recs[r]
          at[#at + 1] = g
        end
      end
      local groups, _, row_keys = dedupe.group(sub)
      local w = waterfall.new {
        recs = sub, groups = groups, row_keys = row_keys, names = o.providers, kind = o.kind, state = st,
        budget = budget.shared(run, chunk, o.budget, totals), run_id = st.run, fresh_store = false, clients = clients,
        interrupted = function() return false end,
        on_job = function(job) run:link(chunk, job) end,
      }
      -- Jobs a dead worker sent for these rows: their answers reach the
      -- cache, and the waterfall finds them there (nothing sent again).
      -- Their charges are counted in the run's budget once, and whatever
      -- reservation the dead holder left on the chunk is given back (on
      -- every chunk: a holder may have died between a reserve and its
      -- job's link, leaving a reservation and no job).
      w.budget:adopt(w:finish_resumed(revived))
      w:run()
      -- A group's answer: its rows' outcomes, in the group's row order.
      local answers = {}
      for g = chunk.first, chunk.last do answers[g] = {} end
      for i, outcome in ipairs(w:outcomes()) do
        local list = answers[at[i]]
        list[#list + 1] = outcome
      end
      return answers
    end, { parallel = _M.PARALLEL })
    if not ok then failure = werr end
  end)
  if failure then
    run:close()
    h.usage(o.store .. ": run '" .. o.run .. "': " .. state_mod.message(o.store, failure):sub(#o.store + 3))
  end
  local all, aerr = run:answers()
  if not all then run:close(); h.usage(state_mod.message(o.store, aerr)) end
  local outcomes = {}
  for g, group in ipairs(all_groups) do
    local list = all[g] or {}
    for k, r in ipairs(group.rows) do
      outcomes[r] = list[k] or { status = "unknown", error = "unknown", credits = 0 }
    end
  end
  local wok, werr = csvio.write(o.output, o.out_format, data, outcomes)
  err:write(("enrich: run %s: %d rows; this worker answered %d of %d chunks (%d taken over)\n")
    :format(o.run, #recs, run.done_here, info.chunks, run.taken_over))
  run:close()
  if not wok then h.usage(o.output .. ": " .. werr) end
  return h.exit_code(outcomes)
end

return _M
