-- Scale-out: many workers, on one machine or several, share one run of
-- rows through Redis (`enrich run --store redis://… --run NAME`).
--
--   local scaleout = require "enrich.scaleout"
--   local run = assert(scaleout.open("redis://10.0.0.5:6379/0", "people-2026", { lease = 30 }))
--   assert(run:load(#rows, fingerprint))       -- the first worker cuts the run into chunks
--   run:work(function(chunk)                     -- each worker, as long as chunks are left:
--     local job = assert(run:submit(chunk, client, inputs_of(chunk.first, chunk.last), { kind = "email" }, "tamtam"))
--     job:wait()
--     return answers_of(job)                      -- { [row] = answer } for chunk.first..chunk.last
--   end)
--   local answers = run:answers()               -- the whole run, every row: write your --out
--
-- A chunk (rows first..last) is taken under a lease its worker renews
-- (every lease/3); a worker that dies loses its chunks once their lease
-- has run out, and another worker takes them over. run:submit records
-- which job a chunk's step made, in the same Redis script as the job's
-- intent: a worker that takes a chunk over resumes that job (polls it,
-- or reads its results) instead of sending its rows again. A chunk's
-- answers are written with its fencing token in one script: a worker that
-- lost the chunk cannot write them, and a chunk is answered once.
--
-- Keys under the run's hash tag "{enrich:run:NAME}": the store's (jobs,
-- due, answers cache, meta) and run (rows, chunk size, fingerprint, done
-- count), chunks (sorted set: a chunk's score is when a worker must next
-- act on it: 0 free, else its lease's end), chunk:I (owner, fence,
-- terminal, job:STEP), owned_chunks:WORKER, rows (hash: row -> answer JSON).
local estore = require "enrich.store"
local redis_store = require "enrich.store.redis"
local resume = require "enrich.resume"
local cjson = require("cjson.safe").new()

local type, tostring, tonumber, pairs, ipairs, setmetatable, min, max =
  type, tostring, tonumber, pairs, ipairs, setmetatable, math.min, math.max
local encode, decode = cjson.encode, cjson.decode
cjson.encode_sparse_array(true)

local _M = { _VERSION = "0.1.0" }

_M.DEFAULT_CHUNK = 100        -- rows per chunk
_M.DEFAULT_PARALLEL = 4       -- chunks one worker works on at once

local NOW = redis_store.NOW    -- Redis's clock in ms, as the store's scripts read it

-- KEYS: run, chunks. ARGV: fingerprint, rows, chunk size, chunk key prefix.
-- Makes the run once; later calls check the fingerprint.
_M.LOAD = [=[
local fp = redis.call('HGET', KEYS[1], 'fingerprint')
if fp then
  if fp ~= ARGV[1] then return redis.error_reply('CHANGED the run was started with other input') end
  return redis.call('HMGET', KEYS[1], 'rows', 'chunk', 'chunks', 'done')
end
local rows, size = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = math.ceil(rows / size)
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'rows', rows, 'chunk', size, 'chunks', n, 'done', 0)
for i = 1, n do
  redis.call('HSET', ARGV[4] .. i, 'terminal', '0')
  redis.call('ZADD', KEYS[2], 0, i)
end
return { tostring(rows), tostring(size), tostring(n), '0' }
]=]

-- KEYS: chunk, chunks, rows, run, owned chunks. ARGV: fence, index, then
-- row, answer JSON pairs. 1: written; 0: written before (a retry).
_M.COMPLETE = [=[
local h = redis.call('HMGET', KEYS[1], 'fence', 'terminal')
if h[1] ~= ARGV[1] then return redis.error_reply('LEASE chunk ' .. ARGV[2] .. ' is held by another worker') end
if h[2] == '1' then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'terminal', '1')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[5], ARGV[2])
redis.call('HINCRBY', KEYS[4], 'done', 1)
return 1
]=]

-- Takes one job over for a chunk taken over. KEYS: job, due, fence
-- counter, this worker's owned jobs. ARGV: worker, lease ms, uid, owned
-- key prefix. { 'terminal', hash } | { 'taken', fence, hash } |
-- { 'wait', ms } (its worker's lease has not run out) | { 'gone' }.
_M.TAKE_JOB = NOW .. [=[
local h = redis.call('HMGET', KEYS[1], 'terminal', 'owner')
if not h[1] then return { 'gone' } end
if h[1] == '1' then return { 'terminal', redis.call('HGETALL', KEYS[1]) } end
local due = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[3]) or '0')
if h[2] ~= ARGV[1] and due > now then return { 'wait', tostring(due - now) } end
if h[2] and h[2] ~= ARGV[1] then redis.call('SREM', ARGV[4] .. h[2], ARGV[3]) end
local fence = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('SADD', KEYS[4], ARGV[3])
return { 'taken', tostring(fence), redis.call('HGETALL', KEYS[1]) }
]=]

-- Gives a chunk back at once. KEYS: chunks, owned chunks, chunk. ARGV:
-- index, fence.
_M.RELEASE = NOW .. [=[
local h = redis.call('HMGET', KEYS[3], 'fence', 'terminal')
if h[1] == ARGV[2] and h[2] == '0' then
  redis.call('ZADD', KEYS[1], now - 1, ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 1
]=]

-- The run's credit budget (--budget N, shared by every worker). The run
-- hash keeps b_charged and b_reserved; a chunk's hash keeps b_reserved,
-- what its holder has reserved and not settled yet; the set `settled`
-- holds the job uids whose charge is counted (once).
--
-- Grants up to `items` at `price` that fit: charged + reserved + k x price
-- <= limit. When not all fit and something is reserved (it may settle
-- cheaper), grants nothing and says 'wait'; when nothing fits and nothing
-- is reserved, says 'none'. Reservations of chunks whose lease ran out (a
-- dead worker's, given back when its chunk is taken over) still count
-- against the limit but are not waited for: a run whose live workers all
-- wait would never take those chunks over. KEYS: run, chunk, chunks.
-- ARGV: limit, price, items, fence, chunk key prefix.
-- -> { granted, 'ok'|'wait'|'none', charged, reserved }
_M.BUDGET_RESERVE = NOW .. [=[
if redis.call('HGET', KEYS[2], 'fence') ~= ARGV[4] then
  return redis.error_reply('LEASE the chunk is held by another worker')
end
local r = redis.call('HMGET', KEYS[1], 'b_charged', 'b_reserved')
local charged, reserved = tonumber(r[1] or '0'), tonumber(r[2] or '0')
local limit, price, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local k = n
if price > 0 then
  local room = limit - charged - reserved
  k = room > 0 and math.floor(room / price + 1e-9) or 0
  if k > n then k = n end
end
local why = 'ok'
if k < n and reserved > 1e-9 then
  local dead = 0
  for _, i in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(0', now)) do
    dead = dead + tonumber(redis.call('HGET', ARGV[5] .. i, 'b_reserved') or '0')
  end
  if reserved - dead > 1e-9 then k, why = 0, 'wait' end
end
if k == 0 and n > 0 and why == 'ok' then why = 'none' end
if k > 0 and price > 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'b_reserved', tostring(k * price))
  redis.call('HINCRBYFLOAT', KEYS[2], 'b_reserved', tostring(k * price))
  reserved = reserved + k * price
end
return { tostring(k), why, tostring(charged), tostring(reserved) }
]=]

-- Settles a reservation to the real charge. The charge is counted once per
-- job (uid, '' for none); the reservation is given back only while this
-- worker still holds the chunk (the taker of a chunk gives back all of
-- the chunk's, see BUDGET_ADOPT). KEYS: run, chunk, settled. ARGV: fence,
-- reserved, charged, uid. -> { unused reservation, charged, reserved }
_M.BUDGET_SETTLE = [=[
local res, actual, unused = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
if ARGV[4] == '' or redis.call('SADD', KEYS[3], ARGV[4]) == 1 then
  if actual ~= 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'b_charged', tostring(actual)) end
end
if res > 0 and redis.call('HGET', KEYS[2], 'fence') == ARGV[1] then
  redis.call('HINCRBYFLOAT', KEYS[1], 'b_reserved', tostring(-res))
  redis.call('HINCRBYFLOAT', KEYS[2], 'b_reserved', tostring(-res))
  unused = res - actual
end
local r = redis.call('HMGET', KEYS[1], 'b_charged', 'b_reserved')
return { tostring(unused), r[1] or '0', r[2] or '0' }
]=]

-- A chunk taken over: the jobs its dead holder sent (brought back and
-- ended) are charged, each once, and whatever the chunk still had reserved
-- is given back. KEYS: run, chunk, settled. ARGV: fence, then uid, charge
-- pairs. -> { released, charged, reserved }
_M.BUDGET_ADOPT = [=[
if redis.call('HGET', KEYS[2], 'fence') ~= ARGV[1] then
  return redis.error_reply('LEASE the chunk is held by another worker')
end
for i = 2, #ARGV, 2 do
  if redis.call('SADD', KEYS[3], ARGV[i]) == 1 and tonumber(ARGV[i + 1]) ~= 0 then
    redis.call('HINCRBYFLOAT', KEYS[1], 'b_charged', ARGV[i + 1])
  end
end
local left = redis.call('HGET', KEYS[2], 'b_reserved') or '0'
if tonumber(left) ~= 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'b_reserved', tostring(-tonumber(left)))
  redis.call('HSET', KEYS[2], 'b_reserved', '0')
end
local r = redis.call('HMGET', KEYS[1], 'b_charged', 'b_reserved')
return { left, r[1] or '0', r[2] or '0' }
]=]

local run_mt = {}
run_mt.__index = run_mt
run_mt.__tostring = function(r) return "enrich.scaleout(" .. r.name .. ")" end

local function err_of(e, what)
  if type(e) == "table" and e.code == "store" then return e end
  local msg = type(e) == "table" and tostring(e.message) or tostring(e)
  if msg:find("LEASE", 1, true) then
    return estore.error("lease lost: " .. msg:gsub("^redis: ", ""):gsub("LEASE ", ""), { reason = "lease_lost" })
  end
  if msg:find("CHANGED", 1, true) then
    return estore.error("run: " .. msg:gsub("^redis: ", ""):gsub("CHANGED ", ""), { reason = "changed" })
  end
  return estore.error(what .. ": " .. msg, { reason = type(e) == "table" and e.code or nil })
end

--- open(url, name [, opts]) -> run | nil, err. opts: lease (seconds,
--- default 30), worker (this process's name), sched, timeout, retry_for;
--- the store the run's jobs go to is run.store (give it to every client:
--- enrich.client(name, { store = run.store, … })).
function _M.open(url, name, opts)
  opts = opts or {}
  if type(name) ~= "string" or name == "" or name:find("[{}%s]") then
    return nil, estore.error("a run name is required (no spaces or braces)", { reason = "invalid" })
  end
  local ns = "enrich:run:" .. name
  local s, err = redis_store.open(url, { ns = ns, lease = opts.lease, worker = opts.worker, sched = opts.sched,
                                         timeout = opts.timeout, retry_for = opts.retry_for })
  if not s then return nil, err end
  local P = s.P
  local self = setmetatable({
    name = name, store = s, r = s.r, sched = s.sched, P = P, worker = s.worker,
    lease = s.lease, lease_ms = s.lease_ms,
    held = {},                   -- chunk index -> fence
    queue = {},                  -- chunks taken and not yet handed out
    lost = {},                   -- chunk index -> true
    done_here = 0,               -- chunks this worker completed
    taken_over = 0,              -- chunks this worker took from another
    resumed_jobs = 0,            -- jobs of another worker this one resumed
    k = { run = P .. ":run", chunks = P .. ":chunks", rows = P .. ":rows", fence = P .. ":fence",
          settled = P .. ":settled",
          chunk = P .. ":chunk:", owned = P .. ":owned_chunks:" .. s.worker, oprefix = P .. ":owned_chunks:" },
  }, run_mt)
  self.load_script = s.r:script(_M.LOAD)
  self.take_script = s.r:script(redis_store.TAKE)
  self.complete_script = s.r:script(_M.COMPLETE)
  self.take_job_script = s.r:script(_M.TAKE_JOB)
  self.reserve_script = s.r:script(_M.BUDGET_RESERVE)
  self.settle_script = s.r:script(_M.BUDGET_SETTLE)
  self.adopt_script = s.r:script(_M.BUDGET_ADOPT)
  self.renew_timer = { on_timer = function(_, sched) self:_renew(sched) end }
  return self
end

--- Cuts the run into chunks (the first worker), or checks that the run
--- already there is of the same input (fingerprint: any string that
--- changes when the input does). -> { rows, chunk, chunks, done } | nil, err
--- (reason "changed": the run was started with other input).
function run_mt:load(rows, fingerprint, chunk)
  chunk = chunk or _M.DEFAULT_CHUNK
  local out, err = self.load_script({ self.k.run, self.k.chunks },
    { tostring(fingerprint), tostring(rows), tostring(chunk), self.k.chunk })
  if not out then return nil, err_of(err, "run load") end
  self.info = { rows = tonumber(out[1]), chunk = tonumber(out[2]), chunks = tonumber(out[3]),
                done = tonumber(out[4]) or 0 }
  return self.info
end

function run_mt:_arm()
  if self.armed or self.closed or next(self.held) == nil then return end
  self.armed = true
  self.sched:at(self.renew_timer, self.sched.now() + self.lease / 3)
end

-- Renews the leases of the chunks held (not waited for: a timer cannot).
function run_mt:_renew(sched)
  self.armed = nil
  if self.closed then return end
  local argv = { "EVAL", redis_store.RENEW, "1", self.k.chunks, tostring(self.lease_ms), self.k.chunk }
  for i, fence in pairs(self.held) do argv[#argv + 1] = tostring(i); argv[#argv + 1] = fence end
  if #argv > 6 then
    self.r:send(argv, function(lost)
      for _, i in ipairs(lost or {}) do
        i = tonumber(i)
        self.held[i] = nil
        self.lost[i] = true
      end
    end)
  end
  if next(self.held) ~= nil then
    self.armed = true
    sched:at(self.renew_timer, sched.now() + self.lease / 3)
  end
end

--- Takes a chunk: { index, first, last, fence, jobs = { step = uid },
--- taken_over } | nil, why ("none": every chunk is done or held by a
--- live worker; a worker's lease may still run out: see work()).
function run_mt:take()
  local info = self.info or error("enrich.scaleout: load() first", 2)
  -- A take can hand over more than one chunk (those this worker name held
  -- already, say after a reply lost to a reconnect): the extra ones wait
  -- here, held and renewed, for the next calls.
  local queue = self.queue
  for _ = 1, #queue do
    local c = table.remove(queue, 1)
    if self.held[c.index] == c.fence then return c end
  end
  -- Only what is due: a take running meanwhile in another task of this
  -- worker may have just taken a chunk that `held` does not show yet.
  local args = { self.worker, tostring(self.lease_ms), "1", self.k.chunk, self.k.oprefix, "due" }
  for i in pairs(self.held) do args[#args + 1] = tostring(i) end
  local out, err = self.take_script({ self.k.chunks, self.k.fence, self.k.owned }, args)
  if not out then return nil, err_of(err, "run take") end
  if #out == 0 then return nil, "none" end
  for t = 1, #out, 3 do
    local index, fence = tonumber(out[t]), out[t + 1]
    local jobs, before = {}, false
    for field, v in pairs(redis_store.hash_of(out[t + 2])) do
      local step = field:match("^job:(.+)$")
      if step then jobs[step] = v; before = true end
    end
    self.held[index] = fence
    self.lost[index] = nil
    if before then self.taken_over = self.taken_over + 1 end
    queue[#queue + 1] = { index = index, fence = fence, jobs = jobs, taken_over = before,
                          first = (index - 1) * info.chunk + 1, last = min(index * info.chunk, info.rows) }
  end
  self:_arm()
  return table.remove(queue, 1)
end

-- A job a chunk's step made before (by a worker that died, or by this
-- worker before a restart): taken over and brought back as a live job
-- (or a terminal one with its results).
function run_mt:_revive(client, uid)
  local s = self.store
  local clients = client.spec == nil and client or nil   -- a table of clients by provider
  for _ = 1, 100000 do
    local out, err = self.take_job_script({ s.P .. ":job:" .. uid, s.P .. ":due", s.P .. ":fence", s.owned_key },
                                          { self.worker, tostring(self.lease_ms), uid, s.P .. ":owned:" })
    if not out then return nil, err_of(err, "run take job") end
    if out[1] == "gone" then return nil end
    if out[1] == "wait" then
      self.sched:sleep(min(max(tonumber(out[2]) / 1000, 0.01), self.lease))
    else
      local taken = out[1] == "taken"
      local snap = redis_store.snapshot_from(redis_store.hash_of(taken and out[3] or out[2]))
      if not snap then return nil end
      if clients then
        client = clients[snap.provider]
        if not client then
          return nil, estore.error("no client for " .. tostring(snap.provider), { reason = "invalid" })
        end
      end
      local from_snapshot = require("enrich").job_from_snapshot
      self.resumed_jobs = self.resumed_jobs + 1
      if not taken then return from_snapshot(client, snap) end
      s.owned[uid] = out[2]
      s.lost[uid] = nil
      -- As enrich.resume does: a part perhaps sent is sent again only
      -- where that cannot pay twice; otherwise it ends `unknown`.
      return resume.revive(client, snap, false,
                           "the submit may have reached the provider before its worker died: not resent")
    end
  end
end

--- Submits a chunk's inputs for one step (a provider of a waterfall: any
--- name, the same on every worker), or, when this chunk's step was
--- submitted before by a worker that lost it, brings that job back
--- instead (polling it, or with its results): never sent twice. Call it
--- from a task (work() runs its handler in one). -> job | nil, err
function run_mt:submit(chunk, client, inputs, opts, step)
  step = tostring(step or client.spec.name)
  if client.store ~= self.store then
    error("enrich.scaleout: the client must be made with { store = run.store }", 2)
  end
  local uid = chunk.jobs[step]
  if uid then
    local job, err = self:_revive(client, uid)
    if job or err then return job, err end
  end
  local job, err = client:submit(inputs, opts)
  if not job then return nil, err end
  -- Before the loop runs its submit: the intent script links it to the chunk.
  self.store.links[job] = { key = self.k.chunk .. chunk.index, fence = chunk.fence, step = step }
  chunk.jobs[step] = job.uid
  return job
end

--- Links a job just submitted (not yet sent) to a chunk: its intent's
--- script records it in the chunk, so whoever takes the chunk over brings
--- it back (revive_all) instead of sending its people again. For callers
--- that submit themselves (the command's waterfall).
function run_mt:link(chunk, job)
  self.store.links[job] = { key = self.k.chunk .. chunk.index, fence = chunk.fence, step = job.uid }
  chunk.jobs[job.uid] = job.uid
end

--- Every job a chunk's earlier holder made, brought back (polling, or
--- terminal with its results); clients: { provider = client }. A caller
--- waits for them and keeps their answers before working on the chunk.
--- -> jobs | nil, err
function run_mt:revive_all(chunk, clients)
  local jobs = {}
  if not chunk.taken_over then return jobs end
  for _, uid in pairs(chunk.jobs) do
    local job, err = self:_revive(clients, uid)
    if err then return nil, err end
    if job then jobs[#jobs + 1] = job end
  end
  return jobs
end

--- The run's budget, for a chunk's holder: grants up to `items` at
--- `price` within `limit` (reserving them). -> granted, 'ok'|'wait'|'none',
--- charged, reserved | nil, err
function run_mt:budget_reserve(chunk, limit, price, items)
  local out, err = self.reserve_script({ self.k.run, self.k.chunk .. chunk.index, self.k.chunks },
    { tostring(limit), tostring(price), tostring(items), chunk.fence, self.k.chunk })
  if not out then return nil, err_of(err, "run budget") end
  return tonumber(out[1]), out[2], tonumber(out[3]), tonumber(out[4])
end

--- Settles a reservation of a chunk to the real charge of job `uid` (nil:
--- no job). -> unused, charged, reserved | nil, err
function run_mt:budget_settle(chunk, reserved, charged, uid)
  local out, err = self.settle_script({ self.k.run, self.k.chunk .. chunk.index, self.k.settled },
    { chunk.fence, tostring(reserved), tostring(charged), uid or "" })
  if not out then return nil, err_of(err, "run budget") end
  return tonumber(out[1]), tonumber(out[2]), tonumber(out[3])
end

--- A chunk taken over: charges { [uid] = credits } (jobs of its earlier
--- holder, each counted once) and gives back the chunk's reservation.
--- -> released, charged, reserved | nil, err
function run_mt:budget_adopt(chunk, charges)
  local args = { chunk.fence }
  for uid, c in pairs(charges) do args[#args + 1] = uid; args[#args + 1] = tostring(c) end
  local out, err = self.adopt_script({ self.k.run, self.k.chunk .. chunk.index, self.k.settled }, args)
  if not out then return nil, err_of(err, "run budget") end
  return tonumber(out[1]), tonumber(out[2]), tonumber(out[3])
end

--- -> charged, reserved (the run's budget so far)
function run_mt:budget_state()
  local out = self.r:call { "HMGET", self.k.run, "b_charged", "b_reserved" }
  if not out then return nil end
  return tonumber(out[1]) or 0, tonumber(out[2]) or 0
end

--- Writes a chunk's answers ({ [row] = any JSON-able value }, rows of the
--- chunk) with its fencing token. true | nil, err (reason "lease_lost":
--- another worker holds the chunk now; its answers will be written by it).
function run_mt:complete(chunk, answers)
  local args = { chunk.fence, tostring(chunk.index) }
  for row = chunk.first, chunk.last do
    local json, e = encode(answers[row] == nil and cjson.null or answers[row])
    if not json then
      return nil, estore.error("cannot encode row " .. row .. ": " .. tostring(e), { reason = "encode" })
    end
    args[#args + 1] = tostring(row)
    args[#args + 1] = json
  end
  local out, err = self.complete_script({ self.k.chunk .. chunk.index, self.k.chunks, self.k.rows, self.k.run,
                                          self.k.owned }, args)
  self.held[chunk.index] = nil
  if not out then return nil, err_of(err, "run complete") end
  if out == 1 then self.done_here = self.done_here + 1 end
  return true
end

--- Lets a chunk go at once (a handler that failed): another worker, or
--- this one, takes it again.
function run_mt:release(chunk)
  if not self.held[chunk.index] then return end
  self.held[chunk.index] = nil
  self.r:eval(_M.RELEASE, { self.k.chunks, self.k.owned, self.k.chunk .. chunk.index },
              { tostring(chunk.index), chunk.fence })
end

--- -> done, total (chunks)
function run_mt:progress()
  local out = self.r:call { "HMGET", self.k.run, "done", "chunks" }
  if not out then return nil end
  return tonumber(out[1]) or 0, tonumber(out[2]) or 0
end

function run_mt:finished()
  local done, total = self:progress()
  return done ~= nil and done >= total
end

--- Runs handler(chunk) -> answers on chunks until the whole run is done
--- (by any worker): `parallel` chunks at once, in tasks (run it inside
--- enrich.run, or outside a task: it then drives the loop itself).
--- A handler that raises or returns nil, err gives its chunk back.
--- Returns true once every chunk of the run is done, or nil, err.
function run_mt:work(handler, opts)
  opts = opts or {}
  local sched = self.sched
  if not sched:current() then
    local ok, err = nil, nil
    sched:run(function() ok, err = self:work(handler, opts) end)
    return ok, err
  end
  local parallel = opts.parallel or _M.DEFAULT_PARALLEL
  local idle_wait = opts.idle_wait or min(self.lease / 4, 1)
  local failure
  local function worker()
    for _ = 1, 1e9 do
      if failure then return end
      local chunk, why = self:take()
      if not chunk then
        if why ~= "none" then failure = why return end
        if self:finished() then return end
        sched:sleep(idle_wait)          -- chunks held by others: done soon, or their lease runs out
      else
        local ok, answers, herr = pcall(handler, chunk)
        if ok and answers then
          local cok, cerr = self:complete(chunk, answers)
          if not cok and cerr.reason ~= "lease_lost" then failure = cerr end
        else
          self:release(chunk)
          if opts.on_error then opts.on_error(chunk, ok and herr or answers) end
          if not ok then failure = answers end
        end
      end
    end
  end
  local live = parallel
  for _ = 1, parallel do
    sched:go(function()
      local ok, e = pcall(worker)
      live = live - 1
      if not ok then failure = failure or e end
    end)
  end
  -- Waits for the tasks: each ends when the run is done.
  for _ = 1, 1e9 do
    if live == 0 then break end
    sched:sleep(0.05)
  end
  if failure then
    if type(failure) == "table" then return nil, failure end
    error(failure, 0)
  end
  return true
end

--- Every row's answer: { [row] = value } (rows 1..n), for every live
--- worker to write the whole run's output. nil, err if the run is not done.
function run_mt:answers()
  if not self:finished() then return nil, estore.error("the run is not finished", { reason = "unfinished" }) end
  local out, cursor = {}, "0"
  for _ = 1, 1e6 do
    local page, err = self.r:call { "HSCAN", self.k.rows, cursor, "COUNT", "1000" }
    if not page then return nil, err_of(err, "run answers") end
    cursor = page[1]
    local flat = page[2]
    for i = 1, #flat, 2 do
      local v = decode(flat[i + 1])
      if v == cjson.null then v = nil end
      out[tonumber(flat[i])] = v
    end
    if cursor == "0" then break end
  end
  return out
end

function run_mt:close()
  if self.closed then return true end
  self.closed = true
  self.sched:cancel_timer(self.renew_timer)
  for i, fence in pairs(self.held) do self:release({ index = i, fence = fence }) end
  return self.store:close()
end

return _M
