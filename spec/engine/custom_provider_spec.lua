-- Providers written by users: registration, validation, and a full run.
local enrich = require "enrich"
local support = require "engine.support"

describe("custom providers", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end end)
  before_each(function() support.reset(sim) end)

  local acme = dofile("examples/providers/acme_phones.lua")

  it("refuses provider tables that cannot work, with a clear message", function()
    local cases = {
      { 42, "must be a table" },
      { {}, "'base_url' must be a string" },
      { { base_url = "http://x", prepare = print, submit = print }, "'check' must be a function" },
      { { base_url = "http://x", prepare = print, submit = print, check = print, batch_size = 0 }, "batch_size" },
      { { base_url = "http://x", prepare = print, submit = print, check = print, rate = 5 }, "'rate' must be a table" },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(enrich.providers.register, "broken", case[1])
      assert.is_false(ok)
      assert.matches(case[2], err)
    end
    assert.has_error(function() enrich.providers.register(nil, acme) end)
  end)

  it("answers an unknown provider name with 'unsupported'", function()
    local client, err = enrich.client("nosuch", { api_key = "k" })
    assert.is_nil(client)
    assert.equal("unsupported", err.code)
  end)

  it("runs a registered provider from a user's file end to end, in batches", function()
    enrich.providers.register("acme_phones", acme)
    local client = assert(enrich.client("acme_phones", {
      api_key = "k", base_url = sim.url .. "/tamtam", poll = support.FAST.poll,
      rate = { per_second = 1000, burst = 1000 },
    }))
    local inputs = {}
    for i = 1, 60 do
      inputs[i] = { linkedin_url = "https://www.linkedin.com/in/p" .. i .. (i % 10 == 0 and "-notfound" or ""),
                    custom = { row = i } }
    end
    local job = support.run_job(client, inputs)
    assert.equal("succeeded", job.state)
    assert.equal("acme_phones", job.provider)
    assert.equal(54, job.counts.found)
    assert.equal(6, job.counts.not_found)
    for i = 1, 60 do assert.equal(i, job.results[i].custom.row) end
    assert.equal(3, support.stats(sim, "tamtam").requests["POST /v2/people/enrich"])
  end)

  it("drops sent inputs of a provider with keep_inputs = false, and only of such a provider", function()
    local keeper = {}
    for k, v in pairs(acme) do keeper[k] = v end
    keeper.name, keeper.keep_inputs = "acme_keeper", nil
    local url = "https://www.linkedin.com/in/ada-byron"
    for _, spec in ipairs({ acme, keeper }) do
      local client = assert(enrich.client(spec, { api_key = "k", base_url = sim.url .. "/tamtam",
        poll = { interval = 0.01, factor = 1000, max_interval = 60, jitter = 0, deadline = 120 } }))
      local job = assert(client:submit({ { linkedin_url = url, custom = { row = 1 } } }))
      for _ = 1, 500 do
        if job.polls >= 1 then break end
        enrich.sleep(0.01)
      end
      assert.equal("running", job.state)
      local part = job.parts[1]
      assert.equal(1, part.count)
      if spec == acme then
        assert.is_nil(part.inputs)
      else
        assert.equal(url, part.inputs[1].linkedin_url)
      end
      job:refresh()
      assert.equal("succeeded", job.state)
      assert.equal("found", job.results[1].status)
      assert.equal(1, job.results[1].custom.row)
    end
  end)

  it("fails a job whose provider file raises with the message, never the file and line (kept in err.where)",
    function()
    for _, step in ipairs { "submit", "check" } do
      for _, co in ipairs { { window = 0.01 }, false } do
        local spec = {}
        for k, v in pairs(acme) do spec[k] = v end
        spec.name = "acme_raises"
        spec[step] = function() local t = nil; return t.field end      -- a bug in the mapping
        local client = assert(enrich.client(spec, {
          api_key = "k", base_url = sim.url .. "/tamtam", poll = support.FAST.poll, coalesce = co,
          rate = { per_second = 1000, burst = 1000 },
        }))
        local job = support.run_job(client, { { linkedin_url = "https://www.linkedin.com/in/ada" } })
        local e = job.error or job.results[1].error
        assert.equal("protocol", e.code, step)
        assert.matches("attempt to index", e.message, nil, true)
        assert.is_nil(tostring(e):find("%.lua:%d+"), step .. ": " .. tostring(e))
        assert.matches("custom_provider_spec%.lua:%d+$", e.where)
      end
    end
  end)

  it("refuses a keep_inputs that is not a boolean", function()
    local bad = {}
    for k, v in pairs(acme) do bad[k] = v end
    bad.keep_inputs = "no"
    assert.has_error(function() enrich.providers.register("bad_keep", bad) end,
                     "provider 'bad_keep': 'keep_inputs' must be a boolean")
  end)

  it("takes a provider table directly, without registering it", function()
    local client = assert(enrich.client(acme, { api_key = "k", base_url = sim.url .. "/tamtam",
                                                poll = support.FAST.poll }))
    local job = support.run_job(client, { { linkedin_url = "https://www.linkedin.com/in/ada" } })
    assert.equal("found", job.results[1].status)
    local _, err = client:submit({ { first_name = "no url" } })
    assert.equal("invalid", err.code)
    assert.matches("linkedin_url", err.message)
  end)
end)
