-- The Redis store: the same store as SQLite (the four journal hooks,
-- jobs_unfinished, answers, meta), shared by many processes and machines.
--
--   local store = assert(enrich.store.open("redis://127.0.0.1:6379/0?ns=myrun&lease=30"))
--
-- Keys, all under one hash tag "{ns}" (one Redis Cluster slot):
--   {ns}:job:UID       a hash per job: provider, state, id, snap (the JSON
--                      snapshot), intent:K / pid:K per part, owner, fence,
--                      terminal, saved_at
--   {ns}:due           a sorted set of the jobs not terminal, by the time a
--                      worker must next act on them: the end of their lease
--                      (the owner renews it; once it passes, any worker takes
--                      the job over)
--   {ns}:owned:WORKER  the jobs a worker holds
--   {ns}:fence         the counter fencing tokens come from
--   {ns}:answers, {ns}:meta   hashes of JSON values
--
-- Leases and fencing: a worker that records a job's intent, or takes a job
-- over, gets a fencing token (a number no take ever gives twice) and a
-- lease of `lease` seconds, renewed every lease/3 while the job runs. Every
-- write carries the token; a script refuses it if the job has a newer one
-- since (its lease ran out and another worker took it): a worker that
-- lost a job can no longer write to it. Each step is one Redis script
-- (atomic), and the time is Redis's own (TIME), the same for every machine.
--
-- Durability: intent and accepted wait for Redis's reply (with appendfsync
-- always, Redis answers once its log is on disk); changed and finished go
-- out at once and are not waited for (the hooks must not yield), in order
-- on the one connection.
local crash = require "enrich.crash"
local redis = require "enrich.redis"
local store = require "enrich.store"
local cjson = require("cjson.safe").new()

local type, tostring, tonumber, pairs, ipairs, setmetatable, os_time, format =
  type, tostring, tonumber, pairs, ipairs, setmetatable, os.time, string.format
local encode, decode = cjson.encode, cjson.decode
cjson.encode_sparse_array(true)
cjson.encode_max_depth(64)
cjson.decode_max_depth(64)

local _M = { _VERSION = "0.1.0" }

_M.DEFAULT_LEASE = 30             -- seconds
_M.TAKE_MAX = 10000               -- jobs one jobs_unfinished() takes at most

-- ---- the scripts ----------------------------------------------------------

-- Redis's own clock in ms (the same for every machine), as the first lines
-- of a script: here and in enrich.scaleout.
local NOW = [=[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
]=]

-- A hook's write. KEYS: job, due, fence counter, owned set, all-jobs set
-- [, the scale-out chunk the job belongs to]. ARGV: mode (intent|accepted|
-- changed|finished), worker, fence ("" for a job not yet recorded), lease
-- ms, uid, provider, state, id, snapshot, k, intent JSON or the part's
-- provider id, saved_at, updated_at [, the chunk's fence, the step name].
-- Returns the fence, 0 when there is nothing to write (a job never
-- recorded, or terminal already), or an error "LEASE ..." (fenced out).
_M.NOW = NOW

_M.WRITE = NOW .. [=[
local mode, worker, fence, lease, uid = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if KEYS[6] and mode == 'intent' then     -- a scale-out run's chunk: linked in the same step
  if redis.call('HGET', KEYS[6], 'fence') ~= ARGV[14] then
    return redis.error_reply('LEASE the chunk of job ' .. uid .. ' is held by another worker')
  end
  redis.call('HSET', KEYS[6], 'job:' .. ARGV[15], uid)
end
local cur = redis.call('HMGET', KEYS[1], 'fence', 'terminal', 'owner')
if cur[1] and fence == '' and mode == 'intent' and cur[3] == worker then
  fence = cur[1]                         -- our own intent again (a retry after a lost reply)
end
if cur[1] then
  if cur[1] ~= fence then
    return redis.error_reply('LEASE job ' .. uid .. ' is held by another worker (' .. tostring(cur[3]) .. ')')
  end
  if cur[2] == '1' then return 0 end
elseif mode ~= 'intent' then
  return 0
elseif fence ~= '' then
  return redis.error_reply('LEASE job ' .. uid .. ' is gone')
else
  fence = tostring(redis.call('INCR', KEYS[3]))
  redis.call('HSET', KEYS[1], 'owner', worker, 'fence', fence, 'provider', ARGV[6], 'terminal', '0')
  redis.call('SADD', KEYS[4], uid)
  redis.call('SADD', KEYS[5], uid)
end
if mode == 'changed' then
  redis.call('HSET', KEYS[1], 'state', ARGV[7], 'updated_at', ARGV[13])
else
  redis.call('HSET', KEYS[1], 'state', ARGV[7], 'id', ARGV[8], 'snap', ARGV[9], 'saved_at', ARGV[12],
             'updated_at', ARGV[13])
end
if mode == 'intent' then redis.call('HSET', KEYS[1], 'intent:' .. ARGV[10], ARGV[11]) end
if mode == 'accepted' then redis.call('HSET', KEYS[1], 'pid:' .. ARGV[10], ARGV[11]) end
if mode == 'finished' then
  redis.call('HSET', KEYS[1], 'terminal', '1')
  redis.call('ZREM', KEYS[2], uid)
  redis.call('SREM', KEYS[4], uid)
else
  redis.call('ZADD', KEYS[2], now + lease, uid)
end
return fence
]=]

-- Takes over every job whose lease has run out, and the jobs this worker
-- name held before (a restart under the same name), except those listed.
-- KEYS: due, fence counter, owned set of this worker. ARGV: worker, lease
-- ms, max, job key prefix, owned key prefix, 'mine' (also take what this
-- worker name holds) or 'due' (only what is due), then uids to leave alone.
-- Returns { uid, fence, { the job's hash as field, value, ... }, ... }.
_M.TAKE = NOW .. [=[
local worker, lease, prefix, oprefix = ARGV[1], tonumber(ARGV[2]), ARGV[4], ARGV[5]
local skip = {}
for i = 7, #ARGV do skip[ARGV[i]] = true end
local out = {}
local function take(uid)
  if skip[uid] then return end
  skip[uid] = true
  local key = prefix .. uid
  local h = redis.call('HMGET', key, 'terminal', 'owner')
  if h[1] ~= '0' then
    redis.call('ZREM', KEYS[1], uid)
    redis.call('SREM', KEYS[3], uid)
    return
  end
  if h[2] and h[2] ~= worker then redis.call('SREM', oprefix .. h[2], uid) end
  local fence = redis.call('INCR', KEYS[2])
  redis.call('HSET', key, 'owner', worker, 'fence', fence)
  redis.call('ZADD', KEYS[1], now + lease, uid)
  redis.call('SADD', KEYS[3], uid)
  out[#out + 1] = uid
  out[#out + 1] = tostring(fence)
  out[#out + 1] = redis.call('HGETALL', key)
end
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do take(uid) end
if ARGV[6] == 'mine' then
  for _, uid in ipairs(redis.call('SMEMBERS', KEYS[3])) do take(uid) end
end
return out
]=]

-- Renews leases. KEYS: due. ARGV: lease ms, job key prefix, then uid,
-- fence pairs. Returns the uids whose fence is not ours any more (lost).
_M.RENEW = NOW .. [=[
local lease, prefix = tonumber(ARGV[1]), ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local uid, fence = ARGV[i], ARGV[i + 1]
  local h = redis.call('HMGET', prefix .. uid, 'fence', 'terminal')
  if h[1] ~= fence then lost[#lost + 1] = uid
  elseif h[2] == '0' then redis.call('ZADD', KEYS[1], now + lease, uid) end
end
return lost
]=]

-- Lets jobs go at once (a worker that stops while they run): their lease
-- ends now, so the next take finds them. Same arguments as RENEW.
_M.RELEASE = NOW .. [=[
local prefix = ARGV[2]
for i = 3, #ARGV, 2 do
  local uid, fence = ARGV[i], ARGV[i + 1]
  local h = redis.call('HMGET', prefix .. uid, 'fence', 'terminal')
  if h[1] == fence and h[2] == '0' then redis.call('ZADD', KEYS[1], now - 1, uid) end
end
return 1
]=]

-- ---- the store --------------------------------------------------------------

local store_mt = {}
store_mt.__index = store_mt
store_mt.__tostring = function(s) return "enrich.store(" .. s.url_shown .. (s.closed and ", closed)" or ")") end

local function random_hex(n)
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(n)
  if f then f:close() end
  if not bytes or #bytes ~= n then bytes = tostring({}) .. os_time() .. tostring(os.clock()) end
  return (bytes:gsub(".", function(c) return format("%02x", c:byte()) end)):sub(1, 2 * n)
end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname", "r")
  local h = f and f:read("*l")
  if f then f:close() end
  return (h or "host"):gsub("[^%w%.%-]", "")
end

local function pid()
  local f = io.open("/proc/self/stat", "r")
  local line = f and f:read("*l")
  if f then f:close() end
  return line and line:match("^(%d+)") or "0"
end

local function check_open(self)
  if self.closed then error("enrich.store: the store is closed", 3) end
end

local function lease_error(self, uid, err)
  self.owned[uid] = nil
  self.lost[uid] = true
  if self.on_lost then self.on_lost(uid) end
  return store.error("lease lost: " .. tostring(err and err.message or uid):gsub("^redis: ", ""),
                     { reason = "lease_lost", uid = uid })
end

local function is_lease(err) return err and err.redis and tostring(err.message):find("LEASE", 1, true) end

local part_index = store.part_index

local function snapshot_of(job)
  if job.snapshot then return job:snapshot() end
  return { v = 2, provider = job.provider, uid = job.uid, id = job.id, state = job.state }
end

local function arm_renew(self)
  if self.renew_armed or self.closed or next(self.owned) == nil then return end
  self.renew_armed = true
  self.sched:at(self.renew_timer, self.sched.now() + self.lease / 3)
end

-- Sends the write script; `wait`: parks (or drives the loop) for the
-- reply; otherwise returns at once and on_reply(reply, err) runs later.
local function write(self, wait, mode, job, k, extra, snap_json, on_reply)
  local uid = job.uid
  local keys = { self.P .. ":job:" .. uid, self.P .. ":due", self.P .. ":fence", self.owned_key, self.P .. ":jobs" }
  local args = { mode, self.worker, self.owned[uid] or "", tostring(self.lease_ms), uid, tostring(job.provider),
                 tostring(job.state), job.id ~= nil and tostring(job.id) or "", snap_json or "", tostring(k or ""),
                 extra or "", tostring(os_time()), tostring(job.updated_at or "") }
  local link = mode == "intent" and self.links[job]
  if link then
    keys[6] = link.key
    args[14], args[15] = link.fence, link.step
  end
  if wait then return self.write_script(keys, args) end
  local argv = { "EVALSHA", self.write_sha, tostring(#keys) }
  for i = 1, #keys do argv[#argv + 1] = keys[i] end
  for i = 1, #args do argv[#argv + 1] = args[i] end
  self.r:send_retry(argv, function(reply, e)
    if e and e.redis and tostring(e.message):find("NOSCRIPT", 1, true) then
      argv[1], argv[2] = "EVAL", _M.WRITE              -- Redis restarted and lost its cache
      self.r:send_retry(argv, on_reply)
      return
    end
    on_reply(reply, e)
  end)
end

-- A write that nobody waits for went wrong: kept for the host to see.
local function note(self, uid, err)
  if not err then return end
  if is_lease(err) then self.error = lease_error(self, uid, err) return end
  self.failures = self.failures + 1
  self.error = store.error("redis write failed: " .. tostring(err.message), { reason = err.code })
  io.stderr:write("enrich.store: ", self.url_shown, ": a write of job ", tostring(uid), " failed: ",
                  tostring(err.message), "\n")
end

--- The intent: recorded (and on disk, with appendfsync always) before the
--- part's first byte is sent. Parks the task until Redis answers.
function store_mt:intent(job, part)
  check_open(self)
  if self.lost[job.uid] then return nil, lease_error(self, job.uid) end
  local snap = snapshot_of(job)
  local sjson, e1 = encode(snap)
  local ijson, e2 = encode(store.intent_record(job, part, snap))
  if not (sjson and ijson) then
    return nil, store.error("cannot record the job: " .. tostring(e1 or e2), { reason = "encode" })
  end
  local fence, err = write(self, true, "intent", job, part_index(part), ijson, sjson)
  if not fence then
    if is_lease(err) then return nil, lease_error(self, job.uid, err) end
    return nil, store.error("cannot record the intent: " .. tostring(err.message), { reason = err.code })
  end
  self.owned[job.uid] = tostring(fence)
  arm_renew(self)
  crash.point("intent_committed")
  return true
end

--- The provider id: recorded before the first poll is scheduled.
function store_mt:accepted(job, part)
  check_open(self)
  if not self.owned[job.uid] then return nil, lease_error(self, job.uid) end
  local sjson, err = encode(snapshot_of(job))
  if not sjson then return nil, store.error("cannot record the job: " .. tostring(err), { reason = "encode" }) end
  local ok
  ok, err = write(self, true, "accepted", job, part_index(part), tostring(part.id), sjson)
  if not ok then
    if is_lease(err) then return nil, lease_error(self, job.uid, err) end
    return nil, store.error("cannot record the provider id: " .. tostring(err.message), { reason = err.code })
  end
  crash.point("id_committed")
  return true
end

--- A state change: sent at once, not waited for. Never yields.
function store_mt:changed(job)
  if self.closed or not self.owned[job.uid] then return end
  local uid = job.uid
  self.pending_writes = self.pending_writes + 1
  write(self, false, "changed", job, nil, nil, nil, function(_, err)
    self.pending_writes = self.pending_writes - 1
    note(self, uid, err)
  end)
end

--- The terminal results: sent at once, not waited for. Never yields.
function store_mt:finished(job)
  if self.closed or not self.owned[job.uid] then return end
  local uid = job.uid
  local sjson, err = encode(snapshot_of(job))
  if not sjson then
    self.error = store.error("cannot record the results of " .. tostring(uid) .. ": " .. tostring(err),
                             { reason = "encode" })
    sjson = encode({ v = 2, provider = job.provider, uid = uid, id = job.id, state = job.state })
  end
  self.pending_writes = self.pending_writes + 1
  write(self, false, "finished", job, nil, nil, sjson, function(_, e)
    self.pending_writes = self.pending_writes - 1
    note(self, uid, e)
  end)
  self.owned[uid] = nil
end

-- ---- reading ----------------------------------------------------------------

local function hash_of(flat)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

-- A snapshot for enrich.job_from_snapshot from a job's hash, as SQLite's
-- jobs_unfinished makes it: parts with their recorded provider id,
-- intent = true where an intent was recorded, the prepared inputs kept.
local function snapshot_from(h)
  local snap = decode(h.snap or "")
  if type(snap) ~= "table" then return nil end
  snap.parts = snap.parts or {}
  for field, value in pairs(h) do
    local kind, k = field:match("^(%a+):(%d+)$")
    k = tonumber(k)
    if k then
      local sp = snap.parts[k] or {}
      snap.parts[k] = sp
      if kind == "intent" then
        store.intent_onto(sp, decode(value), sp.id or h["pid:" .. k])
      elseif kind == "pid" and sp.id == nil then
        sp.id = value
      end
    end
  end
  store.age_deadline(snap, tonumber(h.saved_at))
  return snap
end

--- The jobs not terminal that are this worker's to run now: every job whose
--- lease has run out (its worker died or stopped) and those this worker
--- name held before, each now taken under a fresh lease. (SQLite's store
--- returns every job not terminal: there, one process owns the file.)
function store_mt:jobs_unfinished()
  check_open(self)
  local skip = {}
  for uid in pairs(self.owned) do skip[#skip + 1] = uid end
  local args = { self.worker, tostring(self.lease_ms), tostring(_M.TAKE_MAX), self.P .. ":job:", self.P .. ":owned:",
                 "mine" }
  for _, uid in ipairs(skip) do args[#args + 1] = uid end
  local out, err = self.take_script({ self.P .. ":due", self.P .. ":fence", self.owned_key }, args)
  if not out then return nil, store.error("cannot read the jobs: " .. tostring(err.message), { reason = err.code }) end
  local snaps = {}
  for i = 1, #out, 3 do
    local uid, fence = out[i], out[i + 1]
    local snap = snapshot_from(hash_of(out[i + 2]))
    if snap then
      self.owned[uid] = fence
      self.lost[uid] = nil
      snaps[#snaps + 1] = snap
    end
  end
  arm_renew(self)
  return snaps
end

_M.snapshot_from = snapshot_from
_M.hash_of = hash_of

--- One job's stored snapshot by uid (terminal or not), or nil.
function store_mt:job(uid)
  check_open(self)
  local flat = self.r:call { "HGETALL", self.P .. ":job:" .. uid }
  if not flat or #flat == 0 then return nil end
  return snapshot_from(hash_of(flat))
end

--- Counts of jobs by state (for tests and progress): { state = n }.
function store_mt:counts()
  check_open(self)
  local out = self.r:eval([[
    local c = {}
    for _, uid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
      local s = redis.call('HGET', ARGV[1] .. uid, 'state') or '?'
      c[s] = (c[s] or 0) + 1
    end
    local flat = {}
    for s, n in pairs(c) do flat[#flat + 1] = s; flat[#flat + 1] = n end
    return flat]], { self.P .. ":jobs" }, { self.P .. ":job:" })
  local counts = {}
  for i = 1, #(out or {}), 2 do counts[out[i]] = out[i + 1] end
  return counts
end

-- Answers and meta: a put goes out at once (not waited for; a get of this
-- store sees it at once); a get asks Redis.
local function get(self, tag, hash, key)
  check_open(self)
  local pending = self.overlay[tag .. key]
  if pending then return decode(pending) end
  local v, err = self.r:call { "HGET", self.P .. ":" .. hash, key }
  if err then return nil, store.error("cannot read: " .. tostring(err.message), { reason = err.code }) end
  if not v then return nil end
  return decode(v)
end

local function put(self, tag, hash, key, value)
  check_open(self)
  if type(key) ~= "string" then error("enrich.store: the key must be a string", 3) end
  local json, err = encode(value)
  if not json then return nil, store.error("cannot encode: " .. tostring(err), { reason = "encode" }) end
  self.overlay[tag .. key] = json
  self.pending_writes = self.pending_writes + 1
  self.r:send_retry({ "HSET", self.P .. ":" .. hash, key, json }, function(_, e)
    self.pending_writes = self.pending_writes - 1
    if self.overlay[tag .. key] == json then self.overlay[tag .. key] = nil end
    if e then note(self, key, e) end
  end)
  return true
end

function store_mt:answer_get(key) return get(self, "a", "answers", key) end
function store_mt:answer_put(key, value) return put(self, "a", "answers", key, value) end
function store_mt:meta_get(key) return get(self, "m", "meta", key) end
function store_mt:meta_put(key, value) return put(self, "m", "meta", key, value) end

--- Waits until every write sent so far has its reply. true, or nil, err.
function store_mt:flush()
  check_open(self)
  local _, err = self.r:call { "PING" }          -- replies come in order: the writes before it are in
  -- ... unless some wait to be sent again (Redis was away): they are bounded by retry_for.
  for _ = 1, 1e6 do
    if self.pending_writes <= 0 then break end
    if self.sched:current() then self.sched:sleep(0.01) else self.sched:step(0.01) end
  end
  if err then return nil, store.error("redis: " .. tostring(err.message), { reason = err.code }) end
  if self.error then return nil, self.error end
  return true
end

--- Waits for what was sent, lets this worker's running jobs go (their
--- lease ends now: another worker takes them at once), closes the
--- connection. Idempotent.
function store_mt:close()
  if self.closed then return true end
  local ok, err = true, nil
  if self.r.conn then
    local args = { tostring(self.lease_ms), self.P .. ":job:" }
    for uid, fence in pairs(self.owned) do args[#args + 1] = uid; args[#args + 1] = fence end
    if #args > 2 and self.release_on_close then self.r:eval(_M.RELEASE, { self.P .. ":due" }, args) end
    ok, err = self:flush()
  end
  self.closed = true
  self.sched:cancel_timer(self.renew_timer)
  self.r:close()
  return ok, err
end
store_mt.__close = function(s) s:close() end

--- open("redis://HOST:PORT/DB?ns=NAME&lease=S&worker=ID" [, opts]) -> store | nil, err
--- opts: ns, lease (seconds), worker (this process's name: a restart
--- under the same name takes its jobs back at once; default host-pid-
--- random), sched (the loop; default enrich's), timeout, retry_for (see
--- enrich.redis), release_on_close (default true).
function _M.open(url, opts)
  opts = opts or {}
  local u, err = redis.parse_url(url)
  if not u then return nil, store.error(tostring(err.message), { reason = "invalid" }) end
  local sched = opts.sched or require("enrich").scheduler()
  local r
  r, err = redis.connect(sched, url, { timeout = opts.timeout, retry_for = opts.retry_for })
  if not r then return nil, store.error(tostring(err.message), { reason = err.code }) end
  local ns = opts.ns or u.params.ns or "enrich"
  local lease = tonumber(opts.lease or u.params.lease) or _M.DEFAULT_LEASE
  if lease <= 0 then
    return nil, store.error("the lease must be a positive number of seconds", { reason = "invalid" })
  end
  local worker = opts.worker or u.params.worker or format("%s-%s-%s", hostname(), pid(), random_hex(4))
  local P = "{" .. ns .. "}"
  local s = setmetatable({
    r = r, sched = sched, P = P, ns = ns, worker = worker, lease = lease, lease_ms = math.floor(lease * 1000),
    owned_key = P .. ":owned:" .. worker,
    owned = {},        -- uid -> fence, the jobs this worker holds
    lost = {},         -- uid -> true, the jobs it lost
    overlay = {},      -- answers/meta put and not yet acknowledged
    links = setmetatable({}, { __mode = "k" }),  -- job -> its scale-out chunk (enrich.scaleout)
    pending_writes = 0, failures = 0, error = nil,
    release_on_close = opts.release_on_close ~= false,
    url_shown = format("redis://%s:%d/%d?ns=%s", u.host, u.port, u.db, ns),
  }, store_mt)
  s.write_script = r:script(_M.WRITE)
  s.take_script = r:script(_M.TAKE)
  -- The write script's SHA1, known to Redis once loaded (fire-and-forget
  -- writes use EVALSHA directly).
  local sha
  sha, err = r:call { "SCRIPT", "LOAD", _M.WRITE }
  if not sha then r:close(); return nil, store.error("redis: " .. tostring(err.message), { reason = err.code }) end
  s.write_sha = sha
  s.renew_timer = { on_timer = function(_, sch)
    s.renew_armed = nil
    if s.closed then return end
    local args = { tostring(s.lease_ms), P .. ":job:" }
    for uid, fence in pairs(s.owned) do args[#args + 1] = uid; args[#args + 1] = fence end
    if #args > 2 then
      s.renewals = (s.renewals or 0) + 1
      local argv = { "EVAL", _M.RENEW, "1", P .. ":due" }
      for i = 1, #args do argv[#argv + 1] = args[i] end
      s.r:send(argv, function(lost, e)
          if e then note(s, "(renew)", e) return end
          for _, uid in ipairs(lost or {}) do lease_error(s, uid) end
        end)
    end
    if next(s.owned) ~= nil then
      s.renew_armed = true
      sch:at(s.renew_timer, sch.now() + s.lease / 3)
    end
  end }
  return s
end

return _M
