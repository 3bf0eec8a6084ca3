-- enrich.normalize: the typed readers every mapping reads bodies through,
-- and the UTF-8 check of inputs (one validator for Lua 5.1-5.4 and LuaJIT).
local cjson = require "cjson"
local N = require "enrich.normalize"

local null = cjson.null

describe("normalize", function()
  describe("typed readers", function()
    local obj, arr = { a = 1 }, { 1, null, 3 }
    -- value, object, array, str, num, count, bool
    local cases = {
      { null,      nil, nil, nil, nil, nil, nil },
      { obj,       obj, nil, nil, nil, nil, nil },
      { arr,       nil, arr, nil, nil, nil, nil },
      { "x",       nil, nil, "x", nil, nil, nil },
      { "",        nil, nil, nil, nil, nil, nil },
      { 3,         nil, nil, nil, 3, 3, nil },
      { -2,        nil, nil, nil, -2, nil, nil },
      { math.huge, nil, nil, nil, nil, nil, nil },
      { 0 / 0,     nil, nil, nil, nil, nil, nil },
      { false,     nil, nil, nil, nil, nil, false },
      { true,      nil, nil, nil, nil, nil, true },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. " (" .. N.show(c[1]) .. ") reads as its type only", function()
        assert.equal(c[2], N.object(c[1]))
        assert.equal(c[3], N.array(c[1]))
        assert.equal(c[4], N.str(c[1]))
        assert.equal(c[5], N.num(c[1]))
        assert.equal(c[6], N.count(c[1]))
        assert.equal(c[7], N.bool(c[1]))
      end)
    end

    it("reads an empty table as both an object and an array (cjson decodes {} and [] alike)", function()
      local t = {}
      assert.equal(t, N.object(t))
      assert.equal(t, N.array(t))
    end)

    it("list: the array, or an empty one for null, absent or another type", function()
      assert.equal(arr, N.list(arr))
      for _, v in ipairs({ null, "x", 5, obj }) do assert.same({}, N.list(v)) end
      assert.same({}, N.list(nil))
      assert.has_error(function() N.list(nil)[1] = 1 end)
    end)

    it("show: one short line for any value", function()
      assert.equal("null", N.show(null))
      assert.equal("a b", N.show("a\nb"))
      assert.equal(60, #N.show(("x"):rep(1000)))
    end)
  end)

  describe("utf8_valid", function()
    local valid = {
      "", "plain ascii", "Zo\195\171 M\195\188ller",                 -- Zoë Müller
      "\230\157\142\229\176\143\233\190\141",                         -- CJK
      "\240\159\152\128",                                             -- U+1F600
      "\244\143\191\191",                                             -- U+10FFFF
      "\239\187\191bom",                                              -- U+FEFF
      "\237\159\191",                                                 -- U+D7FF
      "\238\128\128",                                                 -- U+E000
      "\0 nul is valid",
    }
    local invalid = {
      { "M\252ller", 2 },                       -- Latin-1
      { "\192\175", 1 },                        -- overlong '/'
      { "\193\191", 1 },                        -- overlong
      { "\224\159\191", 1 },                    -- overlong 3-byte (U+07FF)
      { "\240\143\191\191", 1 },                -- overlong 4-byte (U+FFFF)
      { "\237\160\128", 1 },                    -- surrogate U+D800
      { "\237\191\191", 1 },                    -- surrogate U+DFFF
      { "\244\144\128\128", 1 },                -- U+110000
      { "\245\128\128\128", 1 },                -- F5
      { "\255", 1 },
      { "ok\128", 3 },                          -- stray continuation
      { "\195", 1 },                            -- cut short
      { "ab\226\130", 3 },                      -- cut short (euro sign)
      { "\226\40\161", 1 },                     -- bad continuation
    }
    for i, s in ipairs(valid) do
      it("accepts valid case " .. i, function() assert.is_true(N.utf8_valid(s)) end)
    end
    for i, c in ipairs(invalid) do
      it("refuses invalid case " .. i .. " at byte " .. c[2], function()
        local ok, at = N.utf8_valid(c[1])
        assert.is_false(ok)
        assert.equal(c[2], at)
      end)
    end

    it("agrees with Lua 5.4's utf8.len (strict) on every 1-3 byte string from a sample", function()
      if not (utf8 and utf8.len) or _VERSION ~= "Lua 5.4" then return end
      local bytes = { 0, 65, 127, 128, 191, 192, 193, 194, 223, 224, 225, 237, 238, 239, 240, 244, 245, 255,
                      0x80, 0x90, 0x9F, 0xA0, 0xBF }
      for _, a in ipairs(bytes) do
        for _, b in ipairs(bytes) do
          for _, c in ipairs(bytes) do
            local s = string.char(a, b, c)
            assert.equal(utf8.len(s) ~= nil, N.utf8_valid(s), ("%02X %02X %02X"):format(a, b, c))
          end
        end
      end
    end)

    it("check_utf8 names the first bad field, and skips what is not a string", function()
      assert.is_nil(N.check_utf8({ a = "ok", b = 5 }, { "a", "b", "c" }))
      assert.matches("^b is not valid UTF%-8", N.check_utf8({ a = "ok", b = "\255" }, { "a", "b" }))
    end)
  end)

  describe("settle", function()
    it("fails what a final answer left unset or pending, with 'protocol'", function()
      local found = { status = "found" }
      local part = { count = 3, items = { found, { status = "pending", raw = { x = 1 } } } }
      assert.equal(2, N.settle(part, "p"))
      assert.equal(found, part.items[1])
      for k = 2, 3 do
        assert.equal("failed", part.items[k].status)
        assert.equal("protocol", part.items[k].error.code)
        assert.equal("p", part.items[k].error.provider)
      end
      assert.same({ x = 1 }, part.items[2].raw)
    end)
  end)
end)
