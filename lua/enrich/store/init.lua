-- Durable jobs: a store records every job of a client made with
-- { store = s } (see README, "Durable jobs"), so that enrich.resume can
-- bring them back after a crash without losing a provider id or paying
-- twice.
--
--   local store = assert(enrich.store.open("sqlite:jobs.db"))
--
-- URLs: "sqlite:PATH" (the embedded default, enrich.store.sqlite);
-- "redis://HOST:PORT/DB" (enrich.store.redis, where installed).
local errors = require "enrich.errors"

local type, pcall, require, pairs, tonumber, tostring = type, pcall, require, pairs, tonumber, tostring
local max = math.max

local _M = { _VERSION = "0.1.0" }

-- Store failures carry their own stable code, "store" (enrich.errors);
-- err.reason says more: "full", "locked", "not_ours", "newer", ...

--- An error in the one shape, code "store".
function _M.error(message, fields)
  return errors.new("store", message, fields)
end

-- ---- what both stores record of a part, and read back -------------------

--- A part's index in its job (part.uid = job.uid .. "/" .. k); 0 if none.
function _M.part_index(part)
  return tonumber(tostring(part.uid):match("/(%d+)$")) or 0
end

--- A part's own fields as the engine's snapshot keeps them (not its
--- inputs, items, body or errors: enrich.snapshot's ENGINE_PART_FIELDS),
--- as a new table: the provider's state after its submit (puffle's run,
--- lance's records), small next to the whole job.
function _M.part_state(part)
  local PART_SKIP = require("enrich.snapshot").ENGINE_PART_FIELDS
  local s = {}
  for k, v in pairs(part) do
    local t = type(v)
    if not PART_SKIP[k] and (t == "string" or t == "number" or t == "boolean" or t == "table") then s[k] = v end
  end
  return s
end

--- What resending a part needs, and no more (never the client: its key):
--- the part as snap (the job's snapshot, when taken with this intent) has
--- it, else its own fields; its job; the prepared inputs, as sent.
function _M.intent_record(job, part, snap)
  local k = _M.part_index(part)
  local p = snap and snap.parts and snap.parts[k]
  local intent
  if p then
    intent = {}
    for key, v in pairs(p) do intent[key] = v end
  else
    intent = _M.part_state(part)
  end
  intent.provider, intent.job, intent.uid, intent.k = job.provider, job.uid, part.uid, k
  intent.inputs = intent.inputs or part.inputs
  intent.count = intent.count or part.count
  intent.opts = snap and snap.opts or nil          -- the job's snapshot has them
  intent.idempotency_key = part.idempotency_key
  return intent
end

--- Puts what a recorded intent kept onto the snapshot's part sp, for
--- enrich.job_from_snapshot: intent = true, and the inputs only where a
--- resend may need them (id: the part's provider id, if one was recorded).
--- A part with an id is polled by it, and a coalesced member that has
--- inputs is read by content, not by its offset in the shared request.
function _M.intent_onto(sp, intent, id)
  sp.intent = true
  if type(intent) ~= "table" then return end
  if sp.inputs == nil and id == nil then sp.inputs = intent.inputs end
  if sp.idempotency_key == nil then sp.idempotency_key = intent.idempotency_key end
  if sp.count == nil then sp.count = intent.count end
  if sp.uid == nil then sp.uid = intent.uid end
end

--- A stored snapshot's deadline (seconds left when it was saved, at
--- os.time() saved_at) as seconds left now; saved_at nil: as saved.
function _M.age_deadline(snap, saved_at)
  if type(snap.deadline) == "number" then
    local now = os.time()
    snap.deadline = max(snap.deadline - max(now - (saved_at or now), 0), 0)
  end
end

local BACKENDS = { sqlite = "enrich.store.sqlite", redis = "enrich.store.redis" }

--- enrich.store.open(url [, opts]) -> store | nil, err
function _M.open(url, opts)
  if type(url) ~= "string" then error("enrich.store.open: a URL string is required", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("enrich.store.open: options must be a table", 2) end
  local scheme = url:match("^(%a+):")
  local mod = scheme and BACKENDS[scheme:lower()]
  if not mod then
    return nil, _M.error("unknown store URL '" .. url .. "' (expected sqlite:PATH or redis://HOST:PORT/DB)",
                         { reason = "invalid" })
  end
  local ok, backend = pcall(require, mod)
  if not ok then
    return nil, _M.error("the " .. scheme .. " store is not available: " .. tostring(backend):match("^[^\n]*"),
                         { reason = "unsupported" })
  end
  local s, err = backend.open(url, opts)   -- not a tail call: the backend raises at level 3
  return s, err
end

return _M
