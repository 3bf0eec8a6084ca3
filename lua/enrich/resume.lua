-- enrich.resume(store, clients [, opts]) -> jobs, skipped
--
-- After a restart, brings back every job the store holds that is not
-- terminal, as a live job of the client for its provider
-- (clients = { tamtam = client, ... }; give each client the same store):
--
--   * a part with a committed provider id resumes polling;
--   * a part with no intent was never sent: it is sent now;
--   * a part with an intent and no id may have reached the provider. It is
--     sent again only where that cannot pay twice: the provider's submit is
--     idempotent (spec.idempotent_submit, as lance's) or the intent kept an
--     idempotency key that goes again (puffle's). Otherwise it ends
--     `unknown` (error code "unknown", the intent kept in the store), unless
--     opts.resubmit_unknown = true: the caller accepts paying twice.
--
-- `skipped` lists the snapshots of jobs whose provider has no client in
-- `clients`: they stay in the store as they were. A job already live in
-- this process (submitted here, or resumed before) comes back as that very
-- job, never as a second one polling or sending the same work.
local type, ipairs, pairs, error, require, tostring, getmetatable =
  type, ipairs, pairs, error, require, tostring, getmetatable

local _M = { _VERSION = "0.1.0" }

--- May a part that was perhaps sent be sent again without paying twice?
function _M.safe_to_resend(spec, part)
  return spec.idempotent_submit == true or part.idempotency_key ~= nil
end

local UNKNOWN_MESSAGE = "the submit may have reached the provider before a restart, "
  .. "and its answer was never recorded: not resent (resubmit_unknown = true to pay again)"

--- A live job of client from a stored snapshot: a part never sent is sent
--- now; a part perhaps sent (an intent, no provider id) is sent again only
--- where that cannot pay twice, or with resubmit; otherwise it ends
--- `unknown` (error code "unknown", `message`). enrich.scaleout revives a
--- dead worker's jobs with it too.
function _M.revive(client, snap, resubmit, message)
  local to_send = false
  for _, part in ipairs(snap.parts or {}) do
    if part.id == nil and not part.done then
      if part.intent and not resubmit and not _M.safe_to_resend(client.spec, part) then
        part.done = true
        part.error = { code = "unknown", message = message, retryable = false }
      else
        to_send = true
      end
    end
    part.intent = nil                    -- the store's mark, not a part field
  end
  local job = require("enrich").job_from_snapshot(client, snap)
  if to_send then job:start() end
  return job
end

function _M.resume(store, clients, opts)
  if type(store) ~= "table" or type(store.jobs_unfinished) ~= "function" then
    error("enrich.resume: a store is required", 2)
  end
  if type(clients) ~= "table" then error("enrich.resume: a table of clients by provider is required", 2) end
  local client_mt = require("enrich.client").client_mt
  for k, c in pairs(clients) do            -- { c } would leave every job "skipped", silently
    if type(k) ~= "string" then
      error("enrich.resume: clients must be a table of clients by provider name (found key '"
            .. tostring(k) .. "')", 2)
    end
    if getmetatable(c) ~= client_mt then error("enrich.resume: clients." .. k .. " is not a client", 2) end
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("enrich.resume: options must be a table", 2) end
  for k in pairs(opts) do
    if k ~= "resubmit_unknown" then error("enrich.resume: unknown option '" .. tostring(k) .. "'", 2) end
  end
  local snaps, err = store:jobs_unfinished()
  if not snaps then return nil, err end
  local jobs, skipped = {}, {}
  local live = store.live or {}
  for _, snap in ipairs(snaps) do
    local client = clients[snap.provider]
    if live[snap.uid] then
      jobs[#jobs + 1] = live[snap.uid]
    elseif not client then
      skipped[#skipped + 1] = snap
    else
      local job = _M.revive(client, snap, opts.resubmit_unknown, UNKNOWN_MESSAGE)
      live[snap.uid] = job
      jobs[#jobs + 1] = job
    end
  end
  return jobs, skipped
end

return _M
