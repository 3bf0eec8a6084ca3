-- The mapping fuzzer end to end: a few mutated answers per provider, served
-- by the simulator in place of one endpoint's answer (submit, status, items,
-- person reads), through the whole engine. Every job ends in a documented
-- state with documented codes, one result per input, and never because a
-- mapping raised ("provider mapping failed"). FUZZ_SEED changes the seed,
-- FUZZ_E2E_CASES the cases per provider.
local support = require "engine.support"
local fuzz = require "fuzz.fuzz"
local testing = require "enrich.testing"
local errors = require "enrich.errors"

local SEED = tonumber(os.getenv("FUZZ_SEED")) or 20261201
local CASES = tonumber(os.getenv("FUZZ_E2E_CASES")) or 12
-- The documented terminal states (DESIGN.md); `unknown`: a submit that
-- may have reached the provider and whose answer could not be read (a 2xx
-- whose body is not JSON, say), never resent.
local STATES = { succeeded = true, partial = true, failed = true, cancelled = true, timed_out = true,
                 unknown = true }

describe("mapping fuzz end to end (seed " .. SEED .. ")", function()
  local sim

  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)

  for _, name in ipairs(fuzz.NAMES) do
    it(name .. ": " .. CASES .. " jobs, each with one mutated answer, end documented", function()
      local client = support.fast_rate_client(sim, name, {
        -- Hints (Retry-After, a body's retryAfter) clamped short: a request's
        -- retry sleeps them out even past the job's deadline.
        poll = { interval = 0.01, factor = 1, max_interval = 0.02, jitter = 0, deadline = 2, max_retry_after = 0.05 },
        retry = { attempts = 2, base = 0.01, cap = 0.02, max_retry_after = 0.05 },
      })
      for n = 1, CASES do
        support.reset(sim)
        local inputs, opts, fault = fuzz.sim_case(name, SEED, n)
        support.fault(sim, fault)
        local where = ("%s case %d (%s %s %s %s)"):format(name, n, fault.type, tostring(fault.status),
                                                        fault.method, fault.path)
        local job, err = client:submit(inputs, opts)
        if not job then
          assert(errors.is(err) and errors.CODES[err.code] ~= nil, where .. ": submit refused oddly")
        else
          assert(job:wait(20), where .. ": the job did not end")
          assert(STATES[job.state], where .. ": state " .. tostring(job.state))
          if job.state == "unknown" then
            assert(job.error and job.error.code == "unknown" and not job.error.retryable,
                   where .. ": state unknown without a non-retryable error 'unknown'")
          end
          assert.equal(#inputs, #job.results, where)
          if job.error then
            assert.is_nil(testing.check_error(job.error), where)
            assert.is_nil(job.error.message:find("provider mapping failed", 1, true),
                          where .. ": " .. job.error.message)
          end
          for i, item in ipairs(job.results) do
            assert.equal(i, item.index, where)
            local why = testing.check_item(item)
            assert(why == nil, where .. ": item " .. i .. ": " .. tostring(why))
          end
        end
      end
    end)
  end
end)
