-- enrich.configure: options for the loop, taken before its first use.
local enrich = require "enrich"

describe("enrich.configure", function()
  it("raises on anything but a table of known, well-typed options", function()
    assert.has_error(function() enrich.configure() end, "enrich.configure: an options table is required")
    assert.has_error(function() enrich.configure { threads = 2 } end, "enrich.configure: unknown option 'threads'")
    assert.has_error(function() enrich.configure { io_thread = "yes" } end,
      "enrich.configure: 'io_thread' must be a boolean")
    local whole = "enrich.configure: 'per_host' must be a whole number from 1 to 10000"
    assert.has_error(function() enrich.configure { per_host = 0 } end, whole)
    assert.has_error(function() enrich.configure { per_host = 2.5 } end, whole)
    assert.has_error(function() enrich.configure { per_host = 10001 } end, whole)
  end)

  it("sets up the loop once, from every call before its first use, and says so once it runs", function()
    assert.is_true(enrich.configure { io_thread = true })
    assert.is_true(enrich.configure { per_host = 8 })
    local loop = enrich.scheduler()
    assert.is_true(loop.threaded)
    assert.equal(8, loop.per_host)
    -- After the first use, configure raises like every other misuse.
    assert.has_error(function() enrich.configure { io_thread = false } end,
      "enrich.configure: the loop is already running; configure before the first use")
    assert.equal(loop, enrich.scheduler())
    assert.is_true(loop.threaded)
  end)
end)
