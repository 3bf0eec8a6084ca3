-- Pure parts of the engine: the timer heap, the two policies, errors.
local heap = require "enrich.heap"
local policy = require "enrich.policy"
local errors = require "enrich.errors"

describe("enrich.heap", function()
  it("pops timers in time order, ties in insertion order", function()
    local h = heap.new()
    local items = {}
    for i, at in ipairs { 5, 1, 3, 1, 9, 2, 7, 3 } do
      items[i] = { name = i }
      h:push(items[i], at)
    end
    local order = {}
    while h:peek() do order[#order + 1] = h:pop().name end
    assert.same({ 2, 4, 6, 3, 8, 1, 7, 5 }, order)
  end)

  it("removes and moves entries in place", function()
    local h = heap.new()
    local a, b, c = {}, {}, {}
    h:push(a, 1); h:push(b, 2); h:push(c, 3)
    assert.is_true(h:remove(b))
    assert.is_false(h:remove(b))
    h:push(c, 0)                         -- moved ahead of a
    assert.equal(c, h:pop())
    assert.equal(a, h:pop())
    assert.is_nil(h:pop())
    assert.is_nil(a.hi)
  end)

  it("stays a heap through many random pushes and removals", function()
    local h, live = heap.new(), {}
    for i = 1, 2000 do
      local x = {}
      h:push(x, math.random())
      live[#live + 1] = x
      if i % 3 == 0 then h:remove(table.remove(live, math.random(#live))) end
    end
    local last = -1
    local n = 0
    while h:peek() do
      local x = h:pop()
      assert.is_true(x.at >= last)
      last, n = x.at, n + 1
    end
    assert.equal(#live, n)
  end)
end)

describe("poll cadence", function()
  local p = policy.merge(policy.DEFAULT_POLL, { interval = 2, factor = 2, max_interval = 10, jitter = 0 }, "poll")

  it("starts at the interval, grows by the factor and stops at the cap", function()
    local got = {}
    for n = 0, 4 do got[#got + 1] = policy.poll_delay(p, n) end
    assert.same({ 2, 4, 8, 10, 10 }, got)
  end)

  it("jitters within the fraction asked for", function()
    local j = policy.merge(p, { jitter = 0.2 }, "poll")
    for _ = 1, 200 do
      local d = policy.poll_delay(j, 0)
      assert.is_true(d >= 1.6 and d <= 2.4)
    end
  end)

  it("honours a provider's Retry-After over the cadence, clamped", function()
    assert.equal(7, policy.poll_delay(p, 3, 7))
    assert.equal(p.max_retry_after, policy.poll_delay(p, 0, 10 ^ 6))
    -- A zero, negative or past hint never polls sooner than the cadence's first interval.
    assert.equal(p.interval, policy.poll_delay(p, 0, -5))
    assert.equal(p.interval, policy.poll_delay(p, 3, 0))
  end)
end)

describe("request retry", function()
  local r = policy.merge(policy.DEFAULT_RETRY, { attempts = 4, base = 1, cap = 3 }, "retry")

  it("backs off with full jitter below min(cap, base * 2^n)", function()
    for _ = 1, 200 do
      local d1, d2, d3 = policy.retry_delay(r, 1), policy.retry_delay(r, 2), policy.retry_delay(r, 3)
      assert.is_true(d1 >= 0 and d1 <= 1)
      assert.is_true(d2 >= 0 and d2 <= 2)
      assert.is_true(d3 >= 0 and d3 <= 3)
    end
  end)

  it("stops after the attempts, and on a Retry-After too long to wait", function()
    assert.is_nil(policy.retry_delay(r, 4))
    assert.equal(5, policy.retry_delay(r, 1, 5))
    assert.is_nil(policy.retry_delay(r, 1, r.max_retry_after + 1))
  end)

  it("refuses unknown or wrongly typed policy fields", function()
    assert.has_error(function() policy.merge(policy.DEFAULT_RETRY, { tries = 3 }, "retry") end)
    assert.has_error(function() policy.merge(policy.DEFAULT_RETRY, { attempts = "3" }, "retry") end)
  end)
end)

describe("Retry-After", function()
  local now = os.time()
  local cases = {
    { "120", 120 }, { "0", 0 }, { 3, 3 },
    { os.date("!%a, %d %b %Y %H:%M:%S GMT", now + 90), 90 },
    { os.date("!%a, %d %b %Y %H:%M:%S GMT", now - 90), 0 },
    { os.date("!%A, %d-%b-%y %H:%M:%S GMT", now + 30), 30 },
    { os.date("!%a %b %d %H:%M:%S %Y", now + 60):gsub(" 0(%d) ", "  %1 "), 60 },
    { "soon", nil }, { "-4", nil }, { "", nil }, { { "15", "30" }, 15 },
  }
  for _, case in ipairs(cases) do
    it("reads " .. tostring(type(case[1]) == "table" and "a repeated header" or case[1]), function()
      local got = policy.parse_retry_after(case[1], now)
      if case[2] == nil then assert.is_nil(got) else assert.near(case[2], got, 1) end
    end)
  end
end)

describe("enrich.errors", function()
  it("gives every code a retryable default and raises on unknown codes", function()
    assert.is_true(errors.new("rate_limited").retryable)
    assert.is_true(errors.new("server").retryable)
    assert.is_false(errors.new("auth").retryable)
    assert.is_false(errors.new("invalid", "x", { retryable = false }).retryable)
    assert.has_error(function() errors.new("oops") end)
  end)

  it("maps HTTP statuses to codes", function()
    local cases = { [400] = "invalid", [401] = "auth", [402] = "credits", [403] = "auth",
                    [404] = "not_found", [422] = "invalid", [429] = "rate_limited",
                    [500] = "server", [503] = "server", [418] = "invalid", [302] = "protocol" }
    for status, code in pairs(cases) do assert.equal(code, errors.code_for_status(status)) end
  end)

  it("prints one line with provider, status and provider code", function()
    local e = errors.new("credits", "balance too low\nsecond line", { provider = "lance", status = 402,
                                                                     provider_code = "INSUFFICIENT_CREDITS" })
    assert.equal("credits: balance too low second line (lance, HTTP 402, INSUFFICIENT_CREDITS)", tostring(e))
  end)
end)

describe("enrich.client policy options", function()
  local enrich = require "enrich"
  it("refuses a misspelt or wrong poll/retry/rate/coalesce option as its own, pointing at the caller", function()
    local cases = {
      { { pol = {} }, "unknown option 'pol'" },
      { { poll = { intervall = 1 } }, "unknown poll option 'intervall'" },
      { { poll = { interval = -1 } }, "poll%.interval must be a number >= 0" },
      { { retry = { attempt = 1 } }, "unknown retry option 'attempt'" },
      { { rate = { per_sec = 1 } }, "unknown rate option 'per_sec'" },
      { { coalesce = { windw = 1 } }, "unknown coalesce option 'windw'" },
      { { timeout = -1 } , "'timeout' must be a positive number" },
    }
    for _, case in ipairs(cases) do
      case[1].api_key = "k"
      local ok, err = pcall(function() local c = enrich.client("tamtam", case[1]) return c end)
      assert.is_false(ok)
      assert.matches("^[^:]*policy_spec%.lua:%d+: enrich%.client: " .. case[2] .. "$", err)
    end
  end)
end)
