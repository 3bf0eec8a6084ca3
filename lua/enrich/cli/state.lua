-- Everything the command keeps in the durable store (enrich.store), in one
-- place: the run's fingerprint (meta), the answer cache, the journal that
-- clients write every job to, and resuming the jobs a crash left open.
--
-- The clients get a thin proxy of the store whose `finished` hook first
-- queues the job's answers (answer_put) and then the job's terminal record:
-- both ride in the same group commit, so after kill -9 either the job is
-- still open (resume polls it again, free) or its answers are in the cache.
local answers = require "enrich.cli.answers"

local type, ipairs, pcall, require, setmetatable, tostring =
  type, ipairs, pcall, require, setmetatable, tostring

local _M = { _VERSION = "0.1.0" }

local S = {}
S.__index = S

-- A stand-in with nothing in it: a dry run against a store file that does
-- not exist yet (a dry run never creates one).
local function empty_store()
  local m = { answers = {}, meta = {} }
  function m.answer_get(_, k) return m.answers[k] end
  function m.answer_put(_, k, v) m.answers[k] = v; return true end
  function m.meta_get(_, k) return m.meta[k] end
  function m.meta_put(_, k, v) m.meta[k] = v; return true end
  function m.close() return true end
  return m
end

--- A store's error as one line with one prefix, the store's URL: the
--- error's own code ("store: ") and a URL the store already put at the
--- front of its message are not repeated.
function _M.message(url, err)
  local msg = type(err) == "table" and err.message ~= nil and tostring(err.message) or tostring(err)
  msg = msg:match("^[^\n]*")
  for _ = 1, 3 do                                 -- "store: ", then the URL, in any order, once each
    local before = msg
    if msg:sub(1, 7) == "store: " then msg = msg:sub(8) end
    if msg:sub(1, #url + 2) == url .. ": " then msg = msg:sub(#url + 3) end
    if msg == before then break end
  end
  return url .. ": " .. msg
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- Opens the store at `url`. opts.dry_run: read only what is there, and
--- create nothing. -> state | nil, message
function _M.open(url, opts)
  opts = opts or {}
  local path = url:match("^sqlite:(.+)$")
  local self = setmetatable({ url = url, recorded = setmetatable({}, { __mode = "k" }) }, S)
  if opts.dry_run and path and not exists(path) then
    self.store = empty_store()
    return self
  end
  local ok, mod = pcall(require, "enrich.store")
  if not ok then return nil, "the durable store is not available: " .. tostring(mod):match("^[^\n]*") end
  local s, err = mod.open(url)
  if not s then return nil, _M.message(url, err) end
  self.store, self.journal = s, true
  return self
end

--- A state over a store opened already (a scale-out run's, enrich.scaleout).
function _M.wrap(store, url)
  return setmetatable({ url = url, recorded = setmetatable({}, { __mode = "k" }), store = store, journal = true }, S)
end

function S:meta_get(k) return self.store:meta_get(k) end
function S:meta_put(k, v)
  local ok, err = self.store:meta_put(k, v)
  if not ok then return nil, tostring(err) end
  return true
end
function S:answer_get(k) return self.store:answer_get(k) end

--- Puts the answers of a finished job into the cache, once per job.
--- `run` marks answers this run paid for.
function S:record(job)
  if self.recorded[job] then return self.recorded[job] end
  local list = answers.of_job(job, self.run)
  self.recorded[job] = list
  for _, e in ipairs(list) do
    if e.key and answers.keep(e.answer) then self.store:answer_put(e.key, e.answer) end
  end
  return list
end

--- The store a client is made with: the real one behind a proxy whose
--- `finished` records the answers first (same commit).
function S:client_store()
  if not self.journal then return nil end
  if self.proxy then return self.proxy end
  local real, wrapped = self.store, {}
  local proxy = setmetatable({}, { __index = function(_, k)
    local v = real[k]
    if type(v) ~= "function" then return v end
    wrapped[k] = wrapped[k] or function(_, ...) return v(real, ...) end
    return wrapped[k]
  end })
  local state = self
  function proxy.finished(_, job)
    state:record(job)
    return real:finished(job)
  end
  self.proxy = proxy
  return proxy
end

--- The jobs a crash or Ctrl-C left open, as live jobs of `clients`
--- (name -> client). -> jobs (possibly empty) | nil, message
function S:resume(clients)
  local journal = self:client_store()
  if not journal then return {} end
  local jobs, err = require("enrich.resume").resume(journal, clients)
  if not jobs then return nil, "cannot resume the jobs of " .. _M.message(self.url, err) end
  return jobs
end

--- Waits until everything queued is durable (before exiting on Ctrl-C).
function S:flush()
  if self.store.flush then return self.store:flush() end
  return true
end

function S:close()
  if self.store then
    local ok, err = self.store:close()
    self.store = nil
    if not ok and err then return nil, tostring(err) end
  end
  return true
end

return _M
