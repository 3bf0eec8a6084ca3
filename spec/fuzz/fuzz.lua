-- The mapping fuzzer (issue 11.5): feeds every provider mapping answers
-- built from its fixtures (spec/fixtures/<provider>/*.json) and mutated —
-- fields removed, set to null, retyped, arrays emptied or nulled, strings
-- huge or not UTF-8, numbers huge, negative or not finite, bodies empty,
-- cut short or of another JSON type, error statuses with mutated error
-- bodies and Retry-After headers — for prepare, submit, check, cancel and
-- error, through enrich.testing's fake ctx. A case fails when the mapping
-- raises, runs away (too many calls or instructions), or returns something
-- enrich.testing.verify does not accept.
--
-- Deterministic: one seed gives the same cases on every interpreter (own
-- PRNG, keys walked in sorted order). Case i of seed s is rebuilt alone
-- from (s, i): fuzz.case(provider, s, i).
local cjson = require "cjson"
local testing = require "enrich.testing"

local type, pairs, ipairs, tostring, pcall, floor, concat, sort, char =
  type, pairs, ipairs, tostring, pcall, math.floor, table.concat, table.sort, string.char
local null = cjson.null

local _M = {}

---------------------------------------------------------------------------
-- A small PRNG (Park-Miller, 31 bits): exact in doubles, so Lua 5.1-5.4 and
-- LuaJIT agree.

local M31, A = 2147483647, 48271

local function rng_new(seed, n)
  local s = (floor(seed) * 7919 + floor(n) * 104729 + 1) % M31
  if s <= 0 then s = s + M31 - 1 end
  local r = {}
  local function step() s = (s * A) % M31 end
  step(); step(); step()
  function r.next()
    s = (s * A) % M31
    return s
  end
  --- an integer in [lo, hi]
  function r.int(lo, hi) return lo + r.next() % (hi - lo + 1) end
  function r.chance(p) return r.next() / M31 < p end
  function r.pick(list) return list[r.int(1, #list)] end
  return r
end
_M.rng = rng_new

---------------------------------------------------------------------------
-- Fixtures and values

local fixtures = {}
local function fixture(provider, name)
  local key = provider .. "/" .. name
  if not fixtures[key] then
    local f = assert(io.open("spec/fixtures/" .. key .. ".json", "rb"))
    fixtures[key] = cjson.decode(f:read("*a"))
    f:close()
  end
  return fixtures[key]
end

local function copy(v, depth)
  if type(v) ~= "table" then return v end
  depth = depth or 0
  if depth > 30 then return {} end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x, depth + 1) end
  return out
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  sort(ks, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    return a < b
  end)
  return ks
end

local WORDS = {
  "COMPLETED", "FAILED", "PROCESSING", "complete", "completed", "failed", "processing", "queued",
  "finished", "pending", "running", "skipped", "cancelled", "timeout", "rejected", "retry",
  "run_cancelled", "run_not_cancellable", "run_status_changed", "llm", "cache", "emails", "phones",
  "DELIVERABLE", "", " ", "null", "true", "0", "-1", "1e999", "\255\254", "a\0b",
}
local NUMBERS = { 0, -1, 1, 2, 3, 4, -1e308, 1e308, 2 ^ 53 + 2, 1 / 0, -1 / 0, 0 / 0, 0.5, -0.5, 4294967296, 1e15 }

local function bad_utf8(r)
  local parts = { "x" }
  for i = 1, r.int(1, 6) do parts[i + 1] = char(r.int(128, 255)) end
  return concat(parts)
end

local function random_value(r, depth)
  local k = r.int(1, 10)
  if k == 1 then return null
  elseif k == 2 then return r.pick(WORDS)
  elseif k == 3 then return r.pick(NUMBERS)
  elseif k == 4 then return r.chance(0.5)
  elseif k == 5 then return {}
  elseif k == 6 then return { 1, "a", null }
  elseif k == 7 then return { x = 1, status = r.pick(WORDS) }
  elseif k == 8 then return bad_utf8(r)
  elseif k == 9 and (depth or 0) < 2 then
    return { random_value(r, (depth or 0) + 1), random_value(r, (depth or 0) + 1) }
  end
  return ("s"):rep(r.int(0, 40))
end

-- Every table in v (v included), in a stable order.
local function containers(v, out, depth)
  out[#out + 1] = v
  if depth > 8 then return out end
  for _, k in ipairs(sorted_keys(v)) do
    if type(v[k]) == "table" then containers(v[k], out, depth + 1) end
  end
  return out
end

-- One mutation somewhere in `body` (a table); returns the (maybe new) body.
local function mutate_once(r, body, donors)
  local list = containers(body, {}, 0)
  local c = r.pick(list)
  local keys = sorted_keys(c)
  local n = #c
  if #keys == 0 then
    if r.chance(0.5) then c[1] = random_value(r) else c.x = random_value(r) end
    return body
  end
  local k = r.pick(keys)
  local op = r.int(1, 13)
  if op == 1 then                                  -- remove
    if type(k) == "number" and k <= n then table.remove(c, k) else c[k] = nil end
  elseif op == 2 then c[k] = null                  -- null
  elseif op == 3 then c[k] = random_value(r)       -- retype
  elseif op == 4 then c[k] = {}                    -- emptied
  elseif op == 5 then c[k] = ("A"):rep(r.int(1000, r.chance(0.1) and 300000 or 20000))   -- huge string
  elseif op == 6 then c[k] = bad_utf8(r)           -- not UTF-8
  elseif op == 7 then c[k] = r.pick(NUMBERS)       -- odd numbers
  elseif op == 8 then c[k] = r.pick(WORDS)         -- another vocabulary word
  elseif op == 9 then                              -- duplicate or null an array element
    if n > 0 then table.insert(c, r.int(1, n + 1), r.chance(0.5) and copy(c[r.int(1, n)]) or null)
    else c[k] = null end
  elseif op == 10 then                             -- a fragment of another fixture
    local donor = r.pick(donors)
    local dl = containers(donor, {}, 0)
    c[k] = copy(r.pick(dl))
  elseif op == 11 then                             -- many elements
    if n > 0 then for _ = 1, r.int(1, 300) do c[#c + 1] = copy(c[r.int(1, n)]) end else c[k] = true end
  elseif op == 12 then c[k] = type(c[k]) == "boolean" and not c[k] or r.chance(0.5)
  else                                             -- the whole body another type
    local roll = r.int(1, 4)
    if roll == 1 then return { body } elseif roll == 2 then return {} elseif roll == 3 then
      return { [1] = null } end
    c[k] = copy(body)
  end
  return body
end

local function mutated(r, base, donors)
  local body = copy(base)
  for _ = 1, r.int(0, 4) do body = mutate_once(r, body, donors) end
  return body
end

-- A raw body that is not a JSON table: empty, cut short, a scalar, junk.
local function raw_body(r, base)
  local roll = r.int(1, 7)
  if roll == 1 then return "" end
  if roll == 2 then
    local s = cjson.encode(base)
    return s:sub(1, r.int(0, #s - 1))
  end
  if roll == 3 then return "null" end
  if roll == 4 then return "42" end
  if roll == 5 then return '"text"' end
  if roll == 6 then return "<html>502 Bad Gateway</html>" end
  return "\239\187\191" .. cjson.encode(base)      -- a BOM ahead of the JSON
end

local ERROR_STATUSES = { 400, 401, 402, 403, 404, 409, 410, 413, 422, 429, 500, 502, 503, 504 }
local RETRY_AFTER = { "7", "0", "-1", "abc", "1e999", "Wed, 21 Oct 2015 07:28:00 GMT", "", "99999999999" }

-- An answer for an endpoint: e = { ok = { fixture names }, statuses = {…}, errors = { fixture names } }.
local function answer_for(r, provider, e, donors)
  local roll = r.next() % 100
  if roll < 72 then
    local base = fixture(provider, r.pick(e.ok))
    local status = r.pick(e.statuses or { 200 })
    if r.chance(0.03) then status = r.pick({ 200, 201, 202, 204 }) end
    return testing.answer(status, mutated(r, base, donors))
  elseif roll < 84 then
    local base = fixture(provider, r.pick(e.ok))
    return testing.answer(r.pick(e.statuses or { 200 }), raw_body(r, base))
  elseif roll < 97 then
    local status = r.pick(ERROR_STATUSES)
    local body
    if e.errors and #e.errors > 0 and r.chance(0.8) then
      body = mutated(r, fixture(provider, r.pick(e.errors)), donors)
    else
      body = raw_body(r, { error = "x" })
    end
    local headers = r.chance(0.3) and { ["Retry-After"] = r.pick(RETRY_AFTER) } or nil
    return testing.answer(status, body, headers)
  end
  return testing.transport(r.pick({ "timeout", "connect", "network", "too_large" }))
end

---------------------------------------------------------------------------
-- Providers: inputs, endpoints, and which fixtures answer each.

local TAMTAM_ID = "0f3e7a10-5c1d-4e2b-9a44-111122223333"
local LANCE = {}
for i = 1, 6 do LANCE[i] = "1b0c6c0e-7e55-4a51-9c53-0a0a0a0a0a0" .. i end
local RUN = "run_9f2e0000example"
local TX = { "EXMPL COFFEE #0042 SPRINGFIELD", "STREAMFLIX.EXAMPLE MONTHLY", "00012345678 9988" }

local PROVIDERS = {}

PROVIDERS.tamtam = {
  sim = {
    { method = "POST", path = "^/v2/people/enrich$", ok = { "submit_accepted" }, statuses = { 202 },
      errors = { "error_422", "error_429" } },
    { method = "GET", path = "^/v2/people/enrich/", ok = { "completed", "partial", "failed", "processing" },
      errors = { "error_422", "error_429" } },
  },

  inputs = function(r)
    local people = {
      { first_name = "Mara", last_name = "Quill", domain = "example.com" },
      { linkedin_url = "https://www.linkedin.com/in/oskar-fenn-example" },
      { full_name = "Ada Lovelace Byron", company = "Analytical" },
    }
    local list = {}
    for i = 1, r.int(1, 4) do list[i] = people[r.int(1, #people)] end
    return list
  end,
  opts = function(r) return { kind = r.pick({ "email", "phone" }) } end,
  id = TAMTAM_ID,
  submit = { ["POST /v2/people/enrich"] = { ok = { "submit_accepted" }, statuses = { 202, 200 },
                                             errors = { "error_422", "error_429" } } },
  check = { ["GET /v2/people/enrich/" .. TAMTAM_ID] = {
    ok = { "processing", "completed", "partial", "failed", "completed", "partial" },
    errors = { "error_422", "error_429" } } },
  errors = { "error_422", "error_429" },
  donors = { "completed", "partial", "error_422" },
  drop_inputs = true,                                 -- keep_inputs = false: check sees only count
}

PROVIDERS.instaview = {
  sim = {
    { method = "POST", path = "^/sourcing/enrich$", ok = { "submit_accepted" }, statuses = { 202 },
      errors = { "error_400", "error_402", "error_429" } },
    { method = "GET", path = "/results$", ok = { "completed", "partial", "failed", "processing" },
      statuses = { 200, 202 }, errors = { "error_404", "error_429" } },
  },

  inputs = function(r)
    local ids = { "p_7f31aa", "p_82c0de", "p_93bb11", "p_unknown" }
    local list = {}
    for i = 1, r.int(1, 5) do list[i] = { id = ids[r.int(1, #ids)] } end
    return list
  end,
  id = "enr_0b5e2f4c-1a2b-4c3d-8e9f-aaaabbbbcccc",
  submit = { ["POST /sourcing/enrich"] = { ok = { "submit_accepted" }, statuses = { 202, 200 },
                                           errors = { "error_400", "error_401", "error_402", "error_429" } } },
  check = { ["GET /sourcing/enrich/enr_0b5e2f4c-1a2b-4c3d-8e9f-aaaabbbbcccc/results"] = {
    ok = { "processing", "completed", "partial", "failed", "completed", "partial" }, statuses = { 200, 200, 202 },
    errors = { "error_404", "error_429", "error_401" } } },
  errors = { "error_400", "error_401", "error_402", "error_404", "error_429" },
  donors = { "completed", "partial", "failed", "error_429" },
}

local LANCE_ERRORS = { "error_insufficient_credits", "error_internal", "error_not_found", "error_org_missing",
                       "error_unauthorized", "error_validation" }
PROVIDERS.lance = {
  sim = {
    { method = "POST", path = "/enrichment/batch$", ok = { "batch_submit" }, errors = LANCE_ERRORS },
    { method = "POST", path = "/batch/query$", ok = { "batch_query_partial", "batch_submit" }, errors = LANCE_ERRORS },
    { method = "GET", path = "/prospects/person/", ok = { "person_found", "person_phones" }, errors = LANCE_ERRORS },
  },

  inputs = function(r)
    local list = {}
    for i = 1, r.int(1, 5) do list[i] = { id = LANCE[r.int(1, 4)] } end
    return list
  end,
  opts = function(r) return { kind = r.pick({ "email", "phone" }) } end,
  id = "e0000000-0000-4000-8000-000000000001",
  submit = { ["POST /api/v1/operations/enrichment/batch"] = { ok = { "batch_submit" }, errors = LANCE_ERRORS } },
  check = function(_, add)
    add("POST /api/v1/operations/enrichment/batch/query",
        { ok = { "batch_query_partial", "batch_submit", "batch_query_partial" }, errors = LANCE_ERRORS })
    for i = 1, 4 do
      add("GET /api/v1/entities/prospects/person/" .. LANCE[i],
          { ok = { "person_found", "person_phones" }, errors = LANCE_ERRORS })
    end
  end,
  errors = LANCE_ERRORS,
  donors = { "batch_query_partial", "record_timeout", "record_cancelled", "person_found", "record_pending" },
}

local PUFFLE_ERRORS = { "error_generic", "error_insufficient_credits", "error_message", "error_not_cancellable",
                        "error_status_changed" }
local function puffle_reads(add)
  add("GET /api/enrichment/" .. RUN, { ok = { "run_running", "run_completed", "run_partial", "run_failed",
                                              "run_cancelled", "run_completed" }, errors = PUFFLE_ERRORS })
  add("GET /api/enrichment/" .. RUN .. "/items", { ok = { "items_completed", "items_failed", "items_cancelled",
                                                        "items_page1", "items_page2" }, errors = PUFFLE_ERRORS },
      true)                                           -- a fresh answer for every page
end
PROVIDERS.puffle = {
  sim = {
    { method = "POST", path = "^/api/enrichment$", ok = { "start" }, errors = PUFFLE_ERRORS },
    { method = "GET", path = "^/api/enrichment/[^/]+$", ok = { "run_completed", "run_partial", "run_failed",
      "run_cancelled", "run_running" }, errors = PUFFLE_ERRORS },
    { method = "GET", path = "/items$", ok = { "items_completed", "items_failed", "items_page1" },
      errors = PUFFLE_ERRORS },
  },

  inputs = function(r)
    local ids = { "ld_01example", "ld_02example", "ld_03example", "ld_04example" }
    local list = {}
    for i = 1, r.int(1, 5) do list[i] = { id = ids[r.int(1, #ids)] } end
    return list
  end,
  opts = function(r)
    local roll = r.int(1, 3)
    if roll == 1 then return { kind = "email" } elseif roll == 2 then return { kind = "phone" } end
    return { enrichment = "website_overview" }
  end,
  id = RUN,
  submit = { ["POST /api/enrichment"] = { ok = { "start" }, errors = PUFFLE_ERRORS } },
  check = function(_, add) puffle_reads(add) end,
  cancel = function(_, add)
    add("POST /api/enrichment/" .. RUN .. "/cancel",
        { ok = { "cancel", "run_cancelled" }, statuses = { 200, 204, 202 }, errors = PUFFLE_ERRORS })
    puffle_reads(add)
  end,
  errors = PUFFLE_ERRORS,
  donors = { "items_completed", "run_partial", "items_cancelled", "error_insufficient_credits" },
}

local PARSETX_ERRORS = { "error_401_missing", "error_401_revoked", "error_404", "error_429_daily",
                         "error_429_monthly", "error_500" }
PROVIDERS.parsetx = {
  sim = {
    { method = "POST", path = "^/v1/enrich/async$", ok = { "submit_accepted" }, statuses = { 202 },
      errors = PARSETX_ERRORS },
    { method = "GET", path = "^/v1/enrich/jobs/", ok = { "completed", "partial", "failed", "processing" },
      errors = PARSETX_ERRORS },
  },

  inputs = function(r)
    local list = {}
    for i = 1, r.int(1, 5) do
      local t = TX[r.int(1, #TX)]
      list[i] = r.chance(0.3) and { text = t, custom = { row = i } } or t
    end
    return list
  end,
  id = "6a1f3c2e-9b7d-4e10-8c55-0123456789ab",
  submit = { ["POST /v1/enrich/async"] = { ok = { "submit_accepted" }, statuses = { 202, 200 },
                                           errors = PARSETX_ERRORS } },
  check = { ["GET /v1/enrich/jobs/6a1f3c2e-9b7d-4e10-8c55-0123456789ab"] = {
    ok = { "queued", "processing", "completed", "partial", "failed", "completed", "partial" },
    errors = PARSETX_ERRORS } },
  errors = PARSETX_ERRORS,
  donors = { "completed", "partial", "error_429_daily" },
}

_M.PROVIDERS = PROVIDERS
_M.NAMES = { "tamtam", "instaview", "lance", "puffle", "parsetx" }

---------------------------------------------------------------------------
-- Inputs for prepare: a valid one, mutated.

local function fuzz_input(r, base)
  if r.chance(0.05) then return random_value(r) end
  local input = copy(base)
  if type(input) ~= "table" then
    if r.chance(0.5) then return input end
    return r.pick({ bad_utf8(r), ("B"):rep(r.int(0, 100000)), "", " ", 42, false })
  end
  for _ = 1, r.int(0, 3) do
    local keys = { "id", "first_name", "last_name", "full_name", "company", "domain", "linkedin_url",
                   "email", "text", "custom" }
    local k = r.pick(keys)
    local roll = r.int(1, 4)
    if roll == 1 then input[k] = bad_utf8(r)
    elseif roll == 2 then input[k] = random_value(r)
    elseif roll == 3 then input[k] = nil
    else input[k] = "\240\159\152\128 Zo\195\171 \230\157\142" end
  end
  return input
end

---------------------------------------------------------------------------
-- One case

local OPS = { "prepare", "submit", "check", "check", "check", "error" }

local function fail(why, info) return { ok = false, why = why, info = info, op = info.op } end

-- Runs fn(...) in pcall under a bound on instructions (a count hook; not
-- under LuaJIT, whose compiled code skips hooks: there the fake ctx's call
-- cap bounds the loops that call, and the rest are bounded by the inputs).
local MAX_INSTRUCTIONS = 50e6
-- pack without table.pack (5.1/LuaJIT)
local function pack(...) return { n = select("#", ...), ... } end
local function run_bounded(fn, ...)
  local hooked = debug and debug.sethook and not jit
  if hooked then
    local ticks = 0
    debug.sethook(function()
      ticks = ticks + 1
      if ticks * 1e5 > MAX_INSTRUCTIONS then error("runaway: more than " .. MAX_INSTRUCTIONS .. " instructions") end
    end, "", 1e5)
  end
  local res = pack(pcall(fn, ...))
  if hooked then debug.sethook() end
  return res
end

--- Builds and runs case `n` of `seed` for `name`. Returns { ok = true, op }
--- or { ok = false, why, info } (info: what to print to reproduce it).
function _M.case(name, seed, n)
  local P = require("enrich.providers." .. name)
  local pv = PROVIDERS[name]
  local r = rng_new(seed, n)
  local op = OPS[r.int(1, #OPS)]
  if op == "check" and pv.cancel and r.chance(0.3) then op = "cancel" end
  local opts = pv.opts and pv.opts(r) or {}
  local raw_inputs = pv.inputs(r)
  local info = { provider = name, seed = seed, case = n, op = op }

  if op == "prepare" then
    local input = fuzz_input(r, raw_inputs[1])
    local res = run_bounded(P.prepare, input, opts)
    if not res[1] then return fail("prepare raised: " .. tostring(res[2]), info) end
    if res[2] == nil and type(res[3]) ~= "string" then return fail("prepare refused without a reason", info) end
    return { ok = true, op = op }
  end

  if op == "error" then
    local status = r.pick(ERROR_STATUSES)
    local body = r.chance(0.85) and mutated(r, fixture(name, r.pick(pv.errors)), { fixture(name, r.pick(pv.donors)) })
      or nil
    local json = body
    if body == nil and r.chance(0.5) then json = r.pick({ "text", 42, true, null }) end
    local c = { status = status, json = json, body = "", headers = {} }
    local res = run_bounded(P.error, c)
    if not res[1] then return fail("error() raised: " .. tostring(res[2]), info) end
    local msg, code, fields = res[2], res[3], res[4]
    if msg ~= nil and type(msg) ~= "string" then return fail("error() message is not a string", info) end
    if code ~= nil and type(code) ~= "string" then return fail("error() provider_code is not a string", info) end
    if fields ~= nil then
      if type(fields) ~= "table" then return fail("error() fields is not a table", info) end
      if fields.code ~= nil and require("enrich.errors").CODES[fields.code] == nil then
        return fail("error() gives an undocumented code " .. tostring(fields.code), info)
      end
      local ra = fields.retry_after
      if ra ~= nil and not (type(ra) == "number" and ra == ra and ra >= 0 and ra < math.huge) then
        return fail("error() gives retry_after " .. tostring(ra), info)
      end
    end
    return { ok = true, op = op }
  end

  -- A part as the engine holds it: prepared inputs (valid ones: prepare is
  -- fuzzed on its own), count, the provider's id.
  local prepared = {}
  for i, input in ipairs(raw_inputs) do
    local p, why = P.prepare(input, opts)
    if p == nil then return fail("a valid base input was refused: " .. tostring(why), info) end
    prepared[i] = p
  end
  local part = { inputs = prepared, count = #prepared, items = {} }
  if op ~= "submit" then
    part.id = pv.id
    if pv.drop_inputs then part.inputs = nil end
  end

  local donors = {}
  for i, d in ipairs(pv.donors) do donors[i] = fixture(name, d) end
  local answers = {}
  local function add(key, e, fresh_each_call)
    if fresh_each_call then
      answers[key] = function() return answer_for(r, name, e, donors) end
    else
      answers[key] = answer_for(r, name, e, donors)
    end
  end
  local endpoints = pv[op]
  if type(endpoints) == "function" then
    endpoints(r, add)
  else
    for _, key in ipairs(sorted_keys(endpoints)) do add(key, endpoints[key]) end
  end
  local fn = op == "submit" and P.submit or op == "check" and P.check or P.cancel
  -- A check that is not terminal may be followed by more polls of the same
  -- part (lance keeps state across them), each with answers of its own.
  for poll = 1, 3 do
    local ctx = testing.ctx { provider = P, opts = opts, answers = answers, max_calls = 2000 }
    local res = run_bounded(fn, ctx, part)
    info.calls, info.poll = #ctx.calls, poll
    if not res[1] then return fail(op .. " raised: " .. tostring(res[2]), info) end
    local why = testing.verify(op, part, res[2], res[3])
    if why then return fail(why, info) end
    if not (op == "check" and res[2] == false and r.chance(0.5)) then break end
    answers = {}
    if type(endpoints) == "function" then
      endpoints(r, add)
    else
      for _, key in ipairs(sorted_keys(endpoints)) do add(key, endpoints[key]) end
    end
  end
  return { ok = true, op = op }
end

--- Runs `cases` cases of `name` from `seed`. Returns { cases, failures =
--- { result… }, seconds, ops = { op = count } }; stops collecting after
--- `max_failures` (10).
function _M.run(name, seed, cases, max_failures)
  max_failures = max_failures or 10
  local failures, ops, ran = {}, {}, 0
  local t0 = os.clock()
  for n = 1, cases do
    ran = n
    local res = _M.case(name, seed, n)
    ops[res.op or "?"] = (ops[res.op or "?"] or 0) + 1
    if not res.ok then
      failures[#failures + 1] = res
      if #failures >= max_failures then break end
    end
  end
  return { cases = ran, failures = failures, seconds = os.clock() - t0, ops = ops }
end

--- For end-to-end runs against the simulator: case n of seed as raw
--- inputs, submit options, and one simulator fault (POST /_sim/faults)
--- that answers one of the provider's endpoints with a mutated answer.
function _M.sim_case(name, seed, n)
  local pv = PROVIDERS[name]
  local r = rng_new(seed, n)
  local opts = pv.opts and pv.opts(r) or {}
  local inputs = pv.inputs(r)
  local e = r.pick(pv.sim)
  local donors = {}
  for i, d in ipairs(pv.donors) do donors[i] = fixture(name, d) end
  local a = answer_for(r, name, e, donors)
  local f = { provider = name, method = e.method, path = e.path, count = r.int(1, 2) }
  if a.status == nil then
    f.type = "reset"
  else
    local body = a.body
    if type(body) == "table" then body = require("cjson.safe").encode(body) or "{}" end
    f.type, f.status, f.body = "status", a.status, body
    if a.headers then f.retry_after = a.headers["Retry-After"] end
  end
  return inputs, opts, f
end

--- One line describing a failure, with what reproduces it.
function _M.describe(f)
  local i = f.info
  return ("%s %s (seed %s, case %d, poll %s, %s calls): %s"
          .. "  -- rerun: FUZZ_SEED=%s FUZZ_CASE=%d FUZZ_PROVIDER=%s make fuzz")
    :format(i.provider, i.op, tostring(i.seed), i.case, tostring(i.poll or 1), tostring(i.calls or 0), f.why,
            tostring(i.seed), i.case, i.provider)
end

return _M
