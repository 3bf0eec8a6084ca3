-- A Redis client on the engine's own loop: commands go out through
-- enrich.core's Redis connection (hiredis, async), replies come back from
-- the same engine:poll as HTTP answers. Nothing here blocks a host: inside
-- a task a call parks that task; outside one (a plain script) it drives the
-- loop until the reply is in, as job:wait() does.
--
--   local redis = require "enrich.redis"
--   local r = assert(redis.connect(sched, "redis://127.0.0.1:6379/0"))
--   r:call { "SET", "k", "v" }             -- reply | nil, err
--   r:send({ "INCR", "n" }, function(reply, err) ... end)   -- never yields
--   local f = r:script(src); f({ keys }, { args })   -- EVALSHA; EVAL on NOSCRIPT
--
-- A lost connection is made again at the next command. call() retries a
-- command that failed on the network (Redis down, restarted) with backoff
-- for `retry_for` seconds: the commands this library sends are written to
-- be safe to repeat (scripts check their own state first).
local core = require "enrich.core"
local errors = require "enrich.errors"

local co_running, co_yield = coroutine.running, coroutine.yield
local type, tostring, tonumber, setmetatable, rawget = type, tostring, tonumber, setmetatable, rawget
local min, random = math.min, math.random
local now = core.now

local _M = { _VERSION = "0.1.0" }

-- timeout: seconds a command may take (the connect included) before its
-- connection is dropped; retry_for: seconds call() keeps trying through
-- network failures (0: never retries).
_M.DEFAULT = { timeout = 5, retry_for = 30 }

local client_mt = {}
client_mt.__index = client_mt
client_mt.__tostring = function(c) return "enrich.redis(" .. c.host .. ":" .. c.port .. "/" .. c.db .. ")" end

--- "redis://HOST:PORT/DB?k=v&…" -> { host, port, db, params } | nil, err
function _M.parse_url(url)
  if type(url) ~= "string" then return nil, errors.new("invalid", "a redis:// URL is required") end
  local rest = url:match("^redis://(.*)$")
  if not rest then return nil, errors.new("invalid", "not a redis:// URL: " .. url) end
  local query
  rest, query = rest:match("^([^?]*)%??(.*)$")
  local hostport, path = rest:match("^([^/]*)(.*)$")
  if hostport:find("@", 1, true) then return nil, errors.new("invalid", "redis URL: passwords are not supported") end
  local host, port = hostport:match("^%[(.+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]*):?(%d*)$") end
  if not host then return nil, errors.new("invalid", "redis URL: bad host in " .. url) end
  if host == "" then host = "127.0.0.1" end
  port = port ~= "" and tonumber(port) or 6379
  if port < 1 or port > 65535 then return nil, errors.new("invalid", "redis URL: bad port in " .. url) end
  local db = 0
  if path ~= "" and path ~= "/" then
    db = tonumber(path:match("^/(%d+)/?$"))
    if not db then return nil, errors.new("invalid", "redis URL: the path must be a database number: " .. url) end
  end
  local params = {}
  for k, v in (query or ""):gmatch("([^&=]+)=([^&]*)") do params[k] = v end
  return { host = host, port = port, db = db, params = params }
end

-- A timer that gives up on one reply: the connection goes (its other
-- commands fail with it), the next command makes a new one.
local giveup_mt = { __index = { on_timer = function(t, sched)
  if sched.waiting[t.id] == t.waiter then
    sched.waiting[t.id] = nil
    local conn = t.client.conn
    if conn == t.conn then t.client.conn = nil; conn:close() end
    t.waiter({ id = t.id, redis = true, error = { code = "timeout", message = "no reply from Redis in time" } })
  end
end } }

-- Error replies that say "not now" (a Redis loading its data after a
-- restart, a busy script, a failover): waiting and trying again helps.
local PASSING = { LOADING = true, BUSY = true, TRYAGAIN = true, MASTERDOWN = true, READONLY = true,
                  CLUSTERDOWN = true }

local function to_error(c, what)
  local e = c.error
  if e.code == "redis" then
    local word = tostring(e.message):match("^(%u+)")
    return errors.new("server", "redis: " .. tostring(e.message), { retryable = PASSING[word] == true, redis = true })
  end
  return errors.new(e.code == "timeout" and "timeout" or "network",
                    "redis " .. what .. ": " .. tostring(e.message), { retryable = true })
end

-- The loop's side, for both shapes of enrich.scheduler: its engine, and
-- a way to park the running task until a callback wakes it.
local function engine_of(sched)
  if sched.core then return sched:core() end
  return sched.engine
end

local function parker(sched)
  if sched.waker then                                  -- tasks with wake tokens
    local task, token = sched:waker()
    return function(v) sched:wake(task, token, v) end, function() return sched:park() end
  end
  local co = co_running()
  return function(v) sched:wake(co, v) end, co_yield
end
_M.parker = parker

-- The connection, made (again) when missing or closed. Its first command
-- selects the database; a reply to it is not waited for (order holds).
local function connection(self)
  local conn = self.conn
  if conn and conn:status() ~= "closed" then return conn end
  local err
  conn, err = engine_of(self.sched):redis { host = self.host, port = self.port }
  if not conn then return nil, err end
  self.conn = conn
  self.connects = self.connects + 1
  if self.db ~= 0 then conn:command { "SELECT", tostring(self.db) } end
  return conn
end

--- Sends argv; on_reply(reply, err) runs once with the answer (from the
--- loop; it must not yield). Never yields, never waits. Returns true, or
--- nil and err if the command could not even be queued.
function client_mt:send(argv, on_reply)
  local conn, err = connection(self)
  if not conn then return nil, to_error({ error = err }, "connect") end
  local id
  id, err = conn:command(argv)
  if not id then return nil, to_error({ error = err }, "send") end
  self.round_trips = self.round_trips + 1
  local sched = self.sched
  local t = setmetatable({ id = id, client = self, conn = conn }, giveup_mt)
  t.waiter = function(c)
    sched:cancel_timer(t)
    if not on_reply then return end
    if c.error then on_reply(nil, to_error(c, argv[1])) else on_reply(c.reply) end
  end
  sched.waiting[id] = t.waiter
  sched:at(t, now() + self.timeout)
  return true
end

--- send(), and again after a network failure (Redis down, restarted),
--- with backoff, for retry_for seconds; on_reply gets the last answer.
--- Never yields. For writes nobody waits for that must still land.
function client_mt:send_retry(argv, on_reply)
  local deadline, delay = now() + self.retry_for, 0.05
  local sched = self.sched
  local function try()
    local ok, err = self:send(argv, function(reply, e)
      if e and e.retryable and now() + delay <= deadline then
        self.retries = self.retries + 1
        sched:at({ on_timer = function() try() end }, now() + delay)
        delay = min(delay * 2, 1)
        return
      end
      if on_reply then on_reply(reply, e) end
    end)
    if not ok and on_reply then on_reply(nil, err) end
  end
  try()
  return true
end

-- One try: parks the task (or drives the loop) until the reply.
local function call_once(self, argv)
  local sched = self.sched
  local in_task = sched:current() ~= nil
  local done, reply, err = false, nil, nil
  local wake, park
  if in_task then wake, park = parker(sched) end
  local ok, serr = self:send(argv, function(r, e)
    done, reply, err = true, r, e
    if wake then wake(true) end
  end)
  if not ok then return nil, serr end
  if in_task then
    for _ = 1, 1e6 do                    -- woken once, by the reply (or its timeout)
      if done then break end
      park()
    end
  else
    local ngx = rawget(_G, "ngx")
    if ngx and ngx.get_phase and ngx.get_phase() ~= "init" then
      error("enrich.redis: call() outside an enrich task would block this nginx worker; "
            .. "call it from enrich.spawn/enrich.run", 3)
    end
    for _ = 1, 1e7 do
      if done then break end
      sched:step(0.05)
    end
  end
  return reply, err
end

--- Sends argv and returns its reply, or nil and err (code "network" or
--- "timeout" once retry_for has passed; "server" for a Redis error reply,
--- never retried). opts.retry = false: one try only.
function client_mt:call(argv, opts)
  local retry = not (opts and opts.retry == false)
  local deadline = now() + self.retry_for
  local delay = 0.05
  for _ = 1, 100000 do
    local reply, err = call_once(self, argv)
    if not err or not err.retryable or not retry or now() + delay > deadline then return reply, err end
    self.retries = self.retries + 1
    if self.on_retry then self.on_retry(err) end
    if self.sched:current() then self.sched:sleep(delay)
    else
      local until_t = now() + delay
      while now() < until_t do self.sched:step(until_t - now()) end
    end
    delay = min(delay * 2, 1) * (0.5 + random() / 2)
  end
end

--- EVAL of a script in full each time (see script() for EVALSHA).
function client_mt:eval(src, keys, args, opts)
  local argv = { "EVAL", src, tostring(#keys) }
  for i = 1, #keys do argv[#argv + 1] = keys[i] end
  for i = 1, #args do argv[#argv + 1] = args[i] end
  return self:call(argv, opts)
end

--- Loads a script once and returns a function(keys, args) -> reply | nil, err.
function client_mt:script(src)
  local sha
  return function(keys, args, opts)
    if not sha then
      local reply, err = self:call({ "SCRIPT", "LOAD", src }, opts)
      if not reply then return nil, err end
      sha = reply
    end
    local argv = { "EVALSHA", sha, tostring(#keys) }
    for i = 1, #keys do argv[#argv + 1] = keys[i] end
    for i = 1, #args do argv[#argv + 1] = args[i] end
    local reply, err = self:call(argv, opts)
    if err and err.redis and tostring(err.message):find("NOSCRIPT", 1, true) then
      argv[1], argv[2] = "EVAL", src          -- Redis lost its cache (restarted): once more in full
      reply, err = self:call(argv, opts)
    end
    return reply, err
  end
end

function client_mt:close()
  if self.conn then self.conn:close(); self.conn = nil end
end

--- connect(sched, url, opts) -> client | nil, err. Checks the server
--- answers (PING) within opts.retry_for (default 30 s; the wait retries a
--- refused connection). opts: timeout, retry_for, check = false (no PING).
function _M.connect(sched, url, opts)
  opts = opts or {}
  local u, err = _M.parse_url(url)
  if not u then return nil, err end
  local self = setmetatable({
    sched = sched, host = u.host, port = u.port, db = u.db, params = u.params, url = url,
    timeout = opts.timeout or tonumber(u.params.timeout) or _M.DEFAULT.timeout,
    retry_for = opts.retry_for or tonumber(u.params.retry_for) or _M.DEFAULT.retry_for,
    connects = 0, round_trips = 0, retries = 0, conn = nil,
  }, client_mt)
  if opts.check ~= false then
    local reply
    reply, err = self:call { "PING" }
    if not reply then
      self:close()
      err.message = "cannot reach Redis at " .. u.host .. ":" .. u.port .. " (" .. tostring(err.message) .. ")"
      return nil, err
    end
  end
  return self
end

return _M
