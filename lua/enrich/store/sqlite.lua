-- The embedded store: one SQLite file (WAL, synchronous=FULL) through
-- enrich.core's binding. One process per file: an exclusive lock file
-- beside it (PATH.lock) refuses a second one with a clear error.
--
-- Writes never block the host's thread. The hooks queue their statements
-- into one open batch; once per loop turn (a timer due at once) the batch
-- is handed to the store's writer thread, which commits it in one
-- transaction (BEGIN; every statement; COMMIT, an fsync) while the loop
-- goes on. Only one batch is in flight: what the hooks queue meanwhile
-- waits and goes as the next one, so a busy loop makes few, large commits
-- (group commit). The hooks that must be durable before the engine goes on
-- (intent, accepted) park their task until their batch has committed; the
-- others (changed, finished, answer_put, meta_put) ride along. intents()
-- queues a coalesced batch's intents at once: they share one commit.
local core = require "enrich.core"
local cjson = require("cjson.safe").new()
local crash = require "enrich.crash"
local store = require "enrich.store"

local type, tostring, pairs, ipairs, next, select, setmetatable, os_time =
  type, tostring, pairs, ipairs, next, select, setmetatable, os.time
local encode, decode = cjson.encode, cjson.decode
cjson.encode_sparse_array(true)
cjson.encode_max_depth(64)
cjson.decode_max_depth(64)

local _M = { _VERSION = "0.1.0" }

_M.APPLICATION_ID = 0x456e5273    -- "EnRs": PRAGMA application_id of our files
_M.SCHEMA_VERSION = 1             -- PRAGMA user_version this code writes and reads
-- While a batch commits, the loop looks at the writer this often (seconds).
-- A commit costs an fsync (about 1-2 ms on a plain disk), so a durable hook
-- waits about that plus at most this.
_M.CHECK_INTERVAL = 0.001

local SCHEMA = {
  [[CREATE TABLE jobs (
      uid TEXT PRIMARY KEY,         -- the engine's job.uid (the submit id)
      provider TEXT NOT NULL,
      state TEXT NOT NULL,
      provider_id TEXT,             -- the first part's provider id
      terminal INTEGER NOT NULL DEFAULT 0,
      snapshot TEXT NOT NULL,       -- job:snapshot() as JSON (no key, ever)
      saved_at INTEGER NOT NULL,    -- os.time() of the snapshot: its deadline counts from here
      updated_at TEXT,
      finished_at TEXT)]],
  "CREATE INDEX jobs_open ON jobs(terminal) WHERE terminal = 0",
  [[CREATE TABLE parts (
      uid TEXT PRIMARY KEY,         -- part.uid = job uid .. "/" .. k
      job TEXT NOT NULL,
      k INTEGER NOT NULL,
      intent TEXT NOT NULL,         -- JSON: provider, prepared inputs, options, idempotency key
      intent_at INTEGER NOT NULL,
      provider_id TEXT,             -- committed before the first poll is scheduled
      state TEXT,                   -- JSON: the provider's fields on the part once accepted
      accepted_at INTEGER)]],
  "CREATE INDEX parts_job ON parts(job)",
  "CREATE TABLE answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, at INTEGER NOT NULL)",
  "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
}

-- The writer's statements, by number (w:add(k, ...)).
local S_JOB, S_PART, S_ACCEPTED, S_JOB_ID, S_STATE, S_FINISHED, S_ANSWER, S_META = 1, 2, 3, 4, 5, 6, 7, 8
-- ... by name, for specs that watch what a commit carries.
_M.STATEMENT = { job = S_JOB, part = S_PART, accepted = S_ACCEPTED, job_id = S_JOB_ID, state = S_STATE,
                 finished = S_FINISHED, answer = S_ANSWER, meta = S_META }
local STATEMENTS = {
  [S_JOB] = [[INSERT INTO jobs (uid, provider, state, provider_id, snapshot, saved_at, updated_at)
              VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
              ON CONFLICT (uid) DO UPDATE SET state = ?3, provider_id = ?4, snapshot = ?5,
                                              saved_at = ?6, updated_at = ?7]],
  [S_PART] = [[INSERT INTO parts (uid, job, k, intent, intent_at) VALUES (?1, ?2, ?3, ?4, ?5)
               ON CONFLICT (uid) DO UPDATE SET intent = ?4, intent_at = ?5]],
  [S_ACCEPTED] = "UPDATE parts SET provider_id = ?2, state = ?3, accepted_at = ?4 WHERE uid = ?1",
  [S_JOB_ID] = [[UPDATE jobs SET state = ?2, provider_id = coalesce(provider_id, ?3), updated_at = ?4
                 WHERE uid = ?1 AND terminal = 0]],
  [S_STATE] = "UPDATE jobs SET state = ?2, updated_at = ?3 WHERE uid = ?1 AND terminal = 0",
  [S_FINISHED] = [[UPDATE jobs SET state = ?2, provider_id = ?3, snapshot = ?4, saved_at = ?5,
                   updated_at = ?6, finished_at = ?6, terminal = 1 WHERE uid = ?1]],
  [S_ANSWER] = [[INSERT INTO answers (key, value, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = ?2, at = ?3]],
  [S_META] = "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
}

local store_mt = {}
store_mt.__index = store_mt
store_mt.__tostring = function(s) return "enrich.store(sqlite:" .. s.path .. (s.closed and ", closed)" or ")") end

local function fail(path, message, reason)
  return nil, store.error("sqlite:" .. path .. ": " .. message, { reason = reason })
end

-- One value from a query on the reading connection.
local function scalar(db, sql)
  local st, msg, code = db:prepare(sql)
  if not st then return nil, msg, code end
  local ok
  ok, msg, code = st:step()
  local v = ok and st:row()[1]
  st:finalize()
  if ok == nil then return nil, msg, code end
  return v
end

-- Checks that the file is ours and not newer, or makes it ours if empty.
local function check_schema(db, path)
  local app, msg, code = scalar(db, "PRAGMA application_id")
  if app == nil then
    if code == "notadb" then
      return fail(path, "not a lua-enrich store (the file is not an SQLite database)", "not_ours")
    end
    return fail(path, "cannot read: " .. tostring(msg), code)
  end
  local version = scalar(db, "PRAGMA user_version")
  local tables = scalar(db, "SELECT count(*) FROM sqlite_master")
  if app == 0 and version == 0 and tables == 0 then      -- new (or empty): ours now
    local ok
    ok, msg, code = db:exec("BEGIN IMMEDIATE")
    if not ok then return fail(path, "cannot write: " .. tostring(msg), code) end
    for _, sql in ipairs(SCHEMA) do
      ok, msg, code = db:exec(sql)
      if not ok then db:exec("ROLLBACK"); return fail(path, "cannot write: " .. tostring(msg), code) end
    end
    db:exec("PRAGMA application_id = " .. _M.APPLICATION_ID)
    db:exec("PRAGMA user_version = " .. _M.SCHEMA_VERSION)
    ok, msg, code = db:exec("COMMIT")
    if not ok then db:exec("ROLLBACK"); return fail(path, "cannot write: " .. tostring(msg), code) end
    return true
  end
  if app ~= _M.APPLICATION_ID then
    return fail(path, ("not a lua-enrich store (an SQLite database of another application: application_id %d)")
                :format(app), "not_ours")
  end
  if version > _M.SCHEMA_VERSION then
    return fail(path, ("written by a newer lua-enrich (store schema %d; this one reads up to %d): "
                .. "upgrade lua-enrich or use another file"):format(version, _M.SCHEMA_VERSION), "newer")
  end
  return true
end

--- open("sqlite:PATH" [, { thread = true }]) -> store | nil, err
--- thread = false commits on the calling thread (each commit then costs the
--- caller its fsync); the default hands commits to the writer thread.
function _M.open(url, opts)
  opts = opts or {}
  for k, v in pairs(opts) do
    if k ~= "thread" then error("enrich.store.open: unknown option '" .. tostring(k) .. "' for sqlite", 3) end
    if type(v) ~= "boolean" then error("enrich.store.open: 'thread' must be a boolean", 3) end
  end
  local path = url:match("^[sS][qQ][lL][iI][tT][eE]:(.+)$")
  if not path then
    return nil, store.error("expected sqlite:PATH, got '" .. tostring(url) .. "'", { reason = "invalid" })
  end
  path = path:gsub("^//", "")
  local db, msg, code = core.sqlite.open(path, { lock = path .. ".lock" })
  if not db then
    if code == "busy" then return fail(path, msg, "locked") end
    return fail(path, "cannot open: " .. tostring(msg), code)
  end
  local ok
  ok, msg, code = check_schema(db, path)
  if not ok then db:close(); return nil, msg, code end
  -- WAL is a property of the file (kept); FULL syncs the WAL at each commit.
  local mode = scalar(db, "PRAGMA journal_mode = WAL")
  if mode ~= "wal" then
    db:close()
    return fail(path, "cannot switch to WAL journaling (got " .. tostring(mode) .. ")", "ioerr")
  end
  db:exec("PRAGMA synchronous = FULL")
  local w
  w, msg, code = core.sqlite.writer(path, {
    statements = STATEMENTS, thread = opts.thread ~= false,
    setup = { "PRAGMA synchronous = FULL" },
  })
  if not w then db:close(); return fail(path, "cannot open for writing: " .. tostring(msg), code) end
  local s = setmetatable({
    path = path, db = db, w = w, threaded = opts.thread ~= false,
    handed = 0,         -- sequence number of the last batch handed to the writer
    done = 0,           -- ... and of the last one finished
    queued = 0,         -- statements in the open batch
    waiters = {}, waiter_tokens = {}, waiter_seqs = {},  -- tasks parked until their batch is durable
    waiter_head = 1, waiter_tail = 0,
    overlay = {},       -- answers/meta put and not yet committed: key -> { value, seq }
    failures = 0, error = nil,
    recorded = setmetatable({}, { __mode = "k" }),  -- jobs whose snapshot is committed
    live = setmetatable({}, { __mode = "v" }),      -- uid -> live job of this process (see resume)
  }, store_mt)
  s.commit_timer = { on_timer = function(_, sched) s:_commit(sched) end }
  s.check_timer = { on_timer = function(_, sched) s:_check(sched) end }
  return s
end

-- ---- group commit -----------------------------------------------------------

local function check_open(self)
  if self.closed then error("enrich.store: the store is closed", 3) end
end

-- Sets one of the store's two timers ("commit", "check") on `sched`'s
-- heap. A timer is in one heap at a time: one left on another loop (closed
-- since, say) is taken off it first, or it would never fire.
local function arm(self, which, sched, when)
  local field, timer = which .. "_armed", self[which .. "_timer"]
  local on = self[field]
  if on == sched then return end
  if on then on:cancel_timer(timer) end
  self[field] = sched
  sched:at(timer, when)
end

-- Hands the open batch over (if none is in flight), from the commit timer.
function store_mt:_commit(sched)
  self.commit_armed = nil
  if self.handed > self.done then                -- one in flight: _check sends this one after it
    return arm(self, "check", sched, sched.now() + _M.CHECK_INTERVAL)
  end
  if self.queued == 0 and self.waiter_head > self.waiter_tail then return end
  self.queued = 0
  self.handed = self.w:commit(crash.due("in_commit"))
  if self.threaded then
    arm(self, "check", sched, sched.now() + _M.CHECK_INTERVAL)
  else
    self:_check(sched)
  end
end

-- Wakes the tasks whose batch has finished: true, or nil and the error.
function store_mt:_check(sched)
  self.check_armed = nil
  local done, failures = self.w:done()
  self:_finished(done, failures, sched)
  if self.handed > self.done then                 -- still committing: look again soon
    arm(self, "check", sched, sched.now() + _M.CHECK_INTERVAL)
  elseif self.queued > 0 or self.waiter_head <= self.waiter_tail then  -- queued meanwhile: the next batch
    self:_commit(sched)
  end
end

function store_mt:_finished(done, failures, sched)
  if done == self.done and not failures then return end   -- nothing new
  self.done = done
  local failed
  if failures then
    failed = {}
    for _, f in ipairs(failures) do
      failed[f.seq] = store.error("commit failed: " .. tostring(f.message), { reason = f.code })
      self.failures = self.failures + 1
      self.error = failed[f.seq]
      -- Not ours to print the engine's way; a host sees store.error.
      io.stderr:write("enrich.store: sqlite:", self.path, ": commit failed (", tostring(f.code), "): ",
                      tostring(f.message), "\n")
    end
  end
  if next(self.overlay) then
    for key, e in pairs(self.overlay) do
      if e[2] <= done then self.overlay[key] = nil end
    end
  end
  -- Waiters queue in the order of their batches: wake from the front.
  local w, tokens, seqs, head = self.waiters, self.waiter_tokens, self.waiter_seqs, self.waiter_head
  while head <= self.waiter_tail and seqs[head] <= done do
    local task, token, seq = w[head], tokens[head], seqs[head]
    w[head], tokens[head], seqs[head] = nil, nil, nil
    head = head + 1
    if sched then sched:wake(task, token, failed and failed[seq] or true) end
  end
  if head > self.waiter_tail then head, self.waiter_tail = 1, 0 end
  self.waiter_head = head
end

-- Queues statement k; the batch goes at this turn's commit.
function store_mt:_add(sched, k, ...)
  self.w:add(k, ...)
  self.queued = self.queued + 1
  if sched then arm(self, "commit", sched, sched.now()) end
end

-- Waits until everything queued so far is durable: parks the running task
-- of `sched`, or commits and waits on this thread outside a task.
-- Returns true, or nil and the error.
function store_mt:_durable(sched)
  local seq = self.handed + 1                      -- the open batch's number to be
  if sched and sched:current() then
    local task, token = sched:waker()
    local t = self.waiter_tail + 1
    self.waiter_tail = t
    self.waiters[t], self.waiter_tokens[t], self.waiter_seqs[t] = task, token, seq
    arm(self, "commit", sched, sched.now())
    local ok = sched:park()
    if ok == true then return true end
    return nil, ok
  end
  return self:flush()
end

--- Commits everything queued and waits for it (blocks this thread). For the
--- end of a run, and for callers outside the loop. Returns true or nil, err.
function store_mt:flush()
  check_open(self)
  local failed
  if self.handed > self.done then
    local done, failures = self.w:wait(self.handed)
    failed = failures
    self:_finished(done, failures, self.sched)
  end
  local seq = self.w:commit(crash.due("in_commit"))
  self.handed, self.queued = seq, 0
  local done, failures = self.w:wait(seq)
  self:_finished(done, failures, self.sched)
  if failures or failed then return nil, self.error end
  return true
end

-- ---- the journal hooks (the engine calls them; see PLAN/README) ---------------

local function now() return os_time() end

local function snapshot_json(job)
  local snap = job:snapshot()
  return encode(snap)
end

local part_index = store.part_index

--- The intents of several parts (a coalesced batch's members, each job
--- its own), queued together and committed in ONE transaction: the task
--- parks once, for one fsync, however many. list = { { job = j, part = p },
--- ... }. true when every one is durable, or nil and err (then none is
--- written: the caller must not send). Optional for a store (the engine
--- falls back to intent() per member); the Redis store's would pipeline
--- its intent scripts and wait for the last reply.
function store_mt:intents(list)
  check_open(self)
  local n = #list
  if n == 0 then return true end
  local sched = list[1].job.client and list[1].job.client.sched
  self.sched = sched or self.sched
  -- Everything encoded first: a member that cannot be recorded refuses the
  -- whole send before a row is queued.
  local rows, seen = {}, {}
  for i = 1, n do
    local job, part = list[i].job, list[i].part
    -- The job's snapshot goes with its first intent: every part still
    -- holds its inputs then. Later parts add their intents only.
    local first = not (self.recorded[job] or seen[job])
    seen[job] = true
    local snap = first and job:snapshot() or nil
    local sjson, err1 = false, nil
    if first then sjson, err1 = encode(snap) end
    local ijson, err2 = encode(store.intent_record(job, part, snap))
    if (first and not sjson) or not ijson then
      return nil, store.error("cannot record the job: " .. tostring(err1 or err2), { reason = "encode" })
    end
    rows[i] = { sjson, ijson }
  end
  local t = now()
  for i = 1, n do
    local job, part, r = list[i].job, list[i].part, rows[i]
    if r[1] then self:_add(sched, S_JOB, job.uid, job.provider, job.state, job.id, r[1], t, job.updated_at) end
    self:_add(sched, S_PART, part.uid, job.uid, part_index(part), r[2], t)
  end
  local ok, err = self:_durable(sched)
  if not ok then return nil, err end
  for i = 1, n do
    local job = list[i].job
    self.recorded[job] = true
    self.live[job.uid] = job
  end
  for _ = 1, n do crash.point("intent_committed") end   -- one pass per intent, as intent() counts them
  return true
end

--- The intent: committed before the first byte of the part's submit is
--- sent. Parks the task until durable. true, or nil and err (not sent).
function store_mt:intent(job, part)
  check_open(self)
  return self:intents({ { job = job, part = part } })
end

local function part_state_json(part)
  return encode(store.part_state(part))
end

--- The provider id: committed before the first poll is scheduled. Only the
--- part's id and state and the job's state are written: the snapshot taken
--- with the intent holds the rest.
function store_mt:accepted(job, part)
  check_open(self)
  local sched = job.client and job.client.sched
  self.sched = sched or self.sched
  local state, err = part_state_json(part)
  if not state then
    return nil, store.error("cannot record the provider id: " .. tostring(err), { reason = "encode" })
  end
  local t = now()
  self:_add(sched, S_ACCEPTED, part.uid, tostring(part.id), state, t)
  self:_add(sched, S_JOB_ID, job.uid, job.state, job.id and tostring(job.id), job.updated_at)
  local ok
  ok, err = self:_durable(sched)
  if not ok then return nil, err end
  crash.point("id_committed")
  return true
end

--- A state change: rides along with the turn's commit. Never yields.
function store_mt:changed(job)
  if self.closed then return end
  local sched = job.client and job.client.sched
  self.sched = sched or self.sched
  self:_add(sched, S_STATE, job.uid, job.state, job.updated_at)
end

--- The terminal results, in one statement of the turn's commit. Never yields.
function store_mt:finished(job)
  if self.closed then return end
  local sched = job.client and job.client.sched
  self.sched = sched or self.sched
  local sjson, err = snapshot_json(job)
  if not sjson then
    self.error = store.error("cannot record the results of " .. tostring(job.uid) .. ": " .. tostring(err),
                             { reason = "encode" })
    -- The state at least: a terminal job must not come back as live.
    sjson = encode({ v = 2, provider = job.provider, uid = job.uid, id = job.id, state = job.state })
  end
  self:_add(sched, S_FINISHED, job.uid, job.state, job.id and tostring(job.id), sjson, now(),
            job.finished_at or job.updated_at)
end

-- ---- reading ------------------------------------------------------------------

local function rows(db, sql, ...)
  local st = assert(db:prepare(sql))
  for i = 1, select("#", ...) do st:bind(i, (select(i, ...))) end
  local out = {}
  while true do
    local ok, msg, code = st:step()
    if ok == nil then st:finalize(); return nil, msg, code end
    if not ok then break end
    out[#out + 1] = st:row()
  end
  st:finalize()
  return out
end

-- A stored job as one snapshot: the one saved with its first intent, with
-- what was committed since (state, provider ids, the parts' own state);
-- `deadline` (seconds left) less the time since it was saved. A terminal
-- job's snapshot was saved whole when it ended.
local JOB_COLUMNS = "uid, snapshot, saved_at, state, provider_id, terminal"

local function assemble(db, r)
  local snap = decode(r[2])
  if type(snap) ~= "table" or r[6] == 1 then return snap end
  snap.parts = snap.parts or {}
  snap.state = r[4] or snap.state
  if snap.id == nil then snap.id = r[5] end
  for _, p in ipairs(rows(db, "SELECT k, intent, provider_id, state FROM parts WHERE job = ?1", r[1]) or {}) do
    local k, intent = p[1], decode(p[2])
    local sp = snap.parts[k] or {}
    snap.parts[k] = sp
    local state = p[4] and decode(p[4])
    if type(state) == "table" then
      for key, v in pairs(state) do sp[key] = v end
    end
    if p[3] and sp.id == nil then sp.id = p[3] end
    -- (a provider that reads its inputs in check has them in the snapshot)
    store.intent_onto(sp, intent, sp.id)
  end
  store.age_deadline(snap, r[3])
  return snap
end

--- Every job not terminal, as snapshots ready for enrich.job_from_snapshot:
--- parts carry their committed provider id and state, `intent = true`
--- where an intent was committed, and the prepared inputs the intent kept.
function store_mt:jobs_unfinished()
  check_open(self)
  local ok, err = self:flush()
  if not ok then return nil, err end
  local jobs, msg = rows(self.db, "SELECT " .. JOB_COLUMNS .. " FROM jobs WHERE terminal = 0 ORDER BY rowid")
  if not jobs then return nil, store.error("cannot read: " .. tostring(msg)) end
  local out = {}
  for _, r in ipairs(jobs) do
    local snap = assemble(self.db, r)
    if type(snap) == "table" then out[#out + 1] = snap end
  end
  return out
end

-- Before a read of the jobs table: outside a task (a plain script after
-- its run, where blocking is allowed) commit what the loop's last turns
-- queued, so the read is not stale; inside a task, never block the loop.
local function settle_for_read(self)
  local co, main = coroutine.running()
  if (co == nil or main) and (self.queued > 0 or self.handed > self.done) then self:flush() end
end

--- One job's snapshot by uid (terminal or not, as jobs_unfinished), or nil.
function store_mt:job(uid)
  check_open(self)
  settle_for_read(self)
  local r = rows(self.db, "SELECT " .. JOB_COLUMNS .. " FROM jobs WHERE uid = ?1", uid)
  return r and r[1] and assemble(self.db, r[1]) or nil
end

--- Counts of jobs by state (for tests and progress): { state = n }.
function store_mt:counts()
  check_open(self)
  settle_for_read(self)
  local out = {}
  for _, r in ipairs(rows(self.db, "SELECT state, count(*) FROM jobs GROUP BY state") or {}) do
    out[r[1]] = r[2]
  end
  return out
end

local function get(self, tag, table_name, key)
  check_open(self)
  local e = self.overlay[tag .. key]
  if e then return decode(e[1]) end
  local r, msg = rows(self.db, "SELECT value FROM " .. table_name .. " WHERE key = ?1", key)
  if not r then return nil, store.error("cannot read: " .. tostring(msg)) end
  if not r[1] then return nil end
  return decode(r[1][1])
end

-- The loop of the running task, if enrich runs it (a put from a task
-- rides along with that loop's commits, even before any job hook ran).
local function current_loop(self)
  local enrich = package.loaded.enrich
  local _, main = coroutine.running()
  if enrich and coroutine.running() and not main then
    local sched = enrich.scheduler()
    if sched:current() then return sched end
  end
  return self.sched
end

local function put(self, tag, k, key, value, ...)
  check_open(self)
  if type(key) ~= "string" then error("enrich.store: the key must be a string", 3) end
  local json, err = encode(value)
  if not json then return nil, store.error("cannot encode: " .. tostring(err), { reason = "encode" }) end
  local sched = current_loop(self)
  self.sched = sched or self.sched
  self:_add(sched, k, key, json, ...)
  self.overlay[tag .. key] = { json, self.handed + 1 }
  if not sched then return self:flush() end       -- no loop to commit at its turn
  return true
end

--- The CLI's answer cache: any JSON-able value under a string key.
--- A put rides along with the loop's next commit (or commits now when the
--- store has not met a loop yet); a get sees it at once.
function store_mt:answer_get(key) return get(self, "a", "answers", key) end
function store_mt:answer_put(key, value) return put(self, "a", S_ANSWER, key, value, now()) end
function store_mt:meta_get(key) return get(self, "m", "meta", key) end
function store_mt:meta_put(key, value) return put(self, "m", S_META, key, value) end

--- Commits what is queued, stops the writer, closes the file and lets the
--- lock go. Idempotent. Returns true, or nil and the last commit's error.
function store_mt:close()
  if self.closed then return true end
  local ok, err = true, nil
  if self.queued > 0 or self.handed > self.done then ok, err = self:flush() end
  self.closed = true
  if self.commit_armed then self.commit_armed:cancel_timer(self.commit_timer) end
  if self.check_armed then self.check_armed:cancel_timer(self.check_timer) end
  self.w:close()
  self.db:close()
  return ok, err
end
store_mt.__close = function(s) s:close() end
store_mt.__gc = nil          -- the C handles close themselves when collected

return _M
