-- `enrich run`: reads the file, groups the people, opens the store, runs the
-- waterfall with progress, writes the output and the summary, and returns
-- the exit code: 0 every row terminal, 1 some rows failed, 2 a usage error
-- or some rows skipped/unknown, 130 interrupted.
--
-- Keys come only from ENRICH_<PROVIDER>_API_KEY and go only into the
-- clients (which keep them in closures): never into a message, the output,
-- the store or a traceback (errors are printed as one line, without one).
local core = require "enrich.core"
local enrich = require "enrich"
local args = require "enrich.cli.args"
local budget = require "enrich.cli.budget"
local csvio = require "enrich.cli.csvio"
local dedupe = require "enrich.cli.dedupe"
local progress = require "enrich.cli.progress"
local records = require "enrich.cli.records"
local state_mod = require "enrich.cli.state"
local waterfall = require "enrich.cli.waterfall"

local ipairs, pairs, tostring, tonumber, getenv, pcall = ipairs, pairs, tostring, tonumber, os.getenv, pcall

local _M = { _VERSION = "0.1.0" }

-- Seconds a Ctrl-C waits for submits on the wire to get their provider id
-- (so resuming polls them instead of calling them unknown).
_M.INTERRUPT_GRACE = 30

local Usage = {}                  -- raised as { Usage, message } for exit 2

local function usage(msg) error({ Usage, msg }, 0) end

local function env_name(name, what) return "ENRICH_" .. name:upper() .. "_" .. what end

--- The clients of the waterfall, keys and base URLs from the environment,
--- journaling into `store`. -> clients (name -> client)
local function make_clients(o, store)
  local clients = {}
  for _, name in ipairs(o.providers) do
    local key = getenv(env_name(name, "API_KEY"))
    if not key or key == "" then usage(env_name(name, "API_KEY") .. " is not set (the key for " .. name .. ")") end
    local opts = { api_key = key, base_url = getenv(env_name(name, "BASE_URL")) }
    if opts.base_url == "" then opts.base_url = nil end
    if o.poll_interval then opts.poll = { interval = o.poll_interval } end
    -- A plan (or a simulator) with a higher rate than the documented one.
    local rate = tonumber(getenv(env_name(name, "RATE")) or "")
    if rate and rate > 0 then opts.rate = { per_second = rate, burst = math.max(1, math.floor(rate)) } end
    opts.store = store
    local ok, c, err = pcall(enrich.client, name, opts)
    opts.api_key = nil
    if not ok then usage(name .. ": " .. tostring(c):match("^[^\n]*")) end
    if not c then usage(name .. ": " .. tostring(err)) end
    clients[name] = c
  end
  return clients
end

local function exit_code(outcomes)
  local failed, left = false, false
  for _, o in ipairs(outcomes) do
    if o.status == "failed" then failed = true
    elseif o.status == "skipped" or o.status == "unknown" then left = true end
  end
  if left then return 2 end
  if failed then return 1 end
  return 0
end

--- Refuses an output that would overwrite the input or the store file
--- (also through a symlink, a hard link or another spelling of the path).
local function check_paths(o)
  local in_key, out_key = core.file_key(o.input), core.file_key(o.output)
  if in_key == out_key then
    usage("--out " .. o.output .. " is the input file: it would be overwritten (choose another --out)")
  end
  local store_path = o.store:match("^sqlite:(.+)$")
  if store_path then
    local store_key = core.file_key(store_path)
    if store_key == out_key then
      usage("--out " .. o.output .. " is the store file " .. o.store .. " (choose another --out or --store)")
    end
    if store_key == in_key then
      usage("--store " .. o.store .. " is the input file " .. o.input .. " (choose another --store)")
    end
  end
end

local function run(argv, out, err)
  local o, msg = args.parse(argv)
  if not o then usage(msg) end
  check_paths(o)
  local data, rerr = csvio.read(o.input, o.in_format)
  if not data then usage(rerr) end
  local taken = csvio.taken_column(data, o.out_format)
  if taken then
    usage(o.input .. ": the column '" .. taken .. "' is one the " .. o.out_format
          .. " output adds itself (rename it in the input)")
  end
  local recs, cerr = records.extract(data, o.providers)
  if not recs then usage(o.input .. ": " .. cerr) end
  -- What a run's answers belong to: the input, the providers, the kind.
  local fingerprint = core.digest(data.digest .. "\0" .. o.provider_list .. "\0" .. o.kind)
  if o.run and not o.dry_run then            -- scale-out: the rows are shared through Redis
    return require("enrich.cli.scaleout").run(o, data, recs, out, err,
      { usage = usage, make_clients = make_clients, exit_code = exit_code, fingerprint = fingerprint })
  end
  local groups, _, row_keys = dedupe.group(recs)
  if not o.dry_run then                     -- keys are checked before the store is touched
    for _, name in ipairs(o.providers) do
      local v = getenv(env_name(name, "API_KEY"))
      if not v or v == "" then usage(env_name(name, "API_KEY") .. " is not set (the key for " .. name .. ")") end
    end
  end

  local st, serr = state_mod.open(o.store, { dry_run = o.dry_run })
  if not st then usage(serr) end
  st.run = fingerprint
  local seen = st:meta_get("input")
  if seen and seen ~= data.digest and not o.force and not o.dry_run then
    st:close()
    usage(o.input .. " changed since the run recorded in " .. o.store
          .. " (--force keeps the answers paid for and sends only what is new)")
  end

  local b = budget.new(o.budget)
  local interrupts = 0
  local w = waterfall.new {
    recs = recs, groups = groups, row_keys = row_keys, names = o.providers, kind = o.kind, state = st,
    budget = b, run_id = st.run,
    -- A store that never recorded a run holds no answers: no lookups.
    fresh_store = (seen == nil),
    interrupted = function() return core.sigint_count() > interrupts end,
  }
  if o.dry_run then
    local dups, hits, worst = w:dry()
    st:close()
    out:write(("dry run: %d rows, %d duplicates, %d cache hits, worst case %s credits\n")
      :format(#recs, dups, hits, (worst == math.floor(worst)) and ("%d"):format(worst) or tostring(worst)))
    return 0
  end

  -- The clients first: a key they refuse (a line break in it) is a usage
  -- error that must leave the store as it was (no input fingerprint of a
  -- run that never ran) and closed.
  local cok, clients = pcall(make_clients, o, st:client_store())
  if not cok then st:close(); error(clients, 0) end
  w.clients = clients
  local ok, perr = st:meta_put("input", data.digest)
  if not ok then st:close(); usage(state_mod.message(o.store, perr)) end
  core.sigint_catch(true)
  interrupts = core.sigint_count()
  local prog = progress.new { out = err, limit = o.budget }
  local finished, interrupted, resume_error = false, false, nil

  enrich.run(function()
    enrich.spawn(function()                   -- the status line, until the end
      while not finished do
        local live = 0                        -- status reads of the jobs still out
        for job in pairs(w.inflight or {}) do live = live + (tonumber(job.polls) or 0) end
        w.stats.requests_live = live
        prog:update(w.stats, b.charged)
        enrich.sleep(0.1)
      end
    end)
    local resumed, rsm = st:resume(w.clients)
    if not resumed then finished = true; resume_error = rsm; return end
    for _, job in ipairs(resumed) do
      b:reserve(budget.price(job.provider, o.kind) * #(job.inputs or job.results or {}))
    end
    w:finish_resumed(resumed)
    -- Their answers are in the cache now, marked as this run's: the stages
    -- count their credits when they meet them there (not twice here).
    for _, job in ipairs(resumed) do
      b:settle(budget.price(job.provider, o.kind) * #(job.inputs or job.results or {}), 0)
    end
    if not w.interrupted() then w:run() end
    if w.interrupted() then
      interrupted = true
      -- What is on the wire gets its provider id recorded first; a second
      -- Ctrl-C stops waiting.
      local deadline = core.now() + _M.INTERRUPT_GRACE
      local second = core.sigint_count() > interrupts + 1
      while not second and core.now() < deadline do
        local open = false
        for job in pairs(w.inflight or {}) do
          if job.state == "queued" then open = true end
        end
        if not open then break end
        enrich.sleep(0.05)
        second = core.sigint_count() > interrupts + 1
      end
      st:flush()
      prog:close()
      local n = 0
      for _ in pairs(w.inflight or {}) do n = n + 1 end
      err:write(("enrich: interrupted; %d job(s) in flight are recorded in %s; run the same command to finish\n")
        :format(n, o.store))
      err:flush()
      os.exit(130)                          -- the jobs in flight stay in the journal
    end
    finished = true
  end)

  if resume_error then st:close(); usage(resume_error) end
  local outcomes = w:outcomes()
  local wok, werr = csvio.write(o.output, o.out_format, data, outcomes)
  st:close()
  if not wok then usage(o.output .. ": " .. werr) end
  prog:summary(outcomes, b.by_provider, o.providers, b.earlier)
  return exit_code(outcomes), interrupted
end

--- argv -> exit code. Prints one line, never a traceback, on any error.
function _M.main(argv, out, err)
  out, err = out or io.stdout, err or io.stderr
  local ok, code = xpcall(run, function(e)
    if type(e) == "table" and e[1] == Usage then return e end
    return { nil, tostring(e):match("^[^\n]*") }
  end, argv, out, err)
  if ok then return code end
  if code[1] == Usage then
    err:write("enrich: ", tostring(code[2]):match("^[^\n]*"), "\n")
    return 2
  end
  err:write("enrich: error: ", code[2] or "?", "\n")
  return 2
end

return _M
