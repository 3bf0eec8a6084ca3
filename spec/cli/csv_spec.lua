-- enrich.core's CSV parser (libcsv), formatter, UTF-8 check and digest.
require "helper"
local core = require "enrich.core"

-- Feeds `data` in pieces of `step` bytes; returns rows with their lines.
local function parse(data, step, opts)
  local p = core.csv_parser(opts)
  local rows, lines = {}, {}
  local function take(r, l)
    for k, row in ipairs(r) do rows[#rows + 1] = row; lines[#lines + 1] = l[k] end
  end
  step = step or #data
  for i = 1, math.max(#data, 1), step do
    local r, l, line = p:feed(data:sub(i, i + step - 1))
    if not r then p:close(); return nil, l, line end
    take(r, l)
  end
  local r, l, line = p:finish()
  p:close()
  if not r then return nil, l, line end
  take(r, l)
  return rows, lines
end

describe("core.csv_parser", function()
  local TRICKY = '\239\187\191first_name,note,city\r\n'
              .. 'Ada,"says ""hi"", then\r\nleaves",  London \r\n'
              .. '\r\n'
              .. '"Grace",,"New\nYork"\r\n'
              .. 'Zoë,"",last'                     -- no line break at the end

  it("reads RFC 4180: quotes, embedded commas, quotes and newlines, CRLF, a BOM", function()
    for _, step in ipairs { #TRICKY, 1, 2, 3, 7 } do
      local rows, lines = assert(parse(TRICKY, step))
      assert.same({
        { "first_name", "note", "city" },
        { "Ada", 'says "hi", then\r\nleaves', "  London " },
        { "Grace", "", "New\nYork" },
        { "Zoë", "", "last" },
      }, rows)
      assert.same({ 1, 2, 5, 7 }, lines)
    end
  end)

  it("keeps a BOM-less first field whole, even when it starts like a BOM", function()
    local rows = assert(parse("\239x,y\n1,2\n", 1, { utf8 = false }))
    assert.same({ "\239x", "y" }, rows[1])
  end)

  it("refuses a quote inside an unquoted field, naming the line", function()
    local rows, msg, line = parse('a,b\n1,2\n3,x"y"\n')
    assert.is_nil(rows)
    assert.matches("malformed CSV", msg)
    assert.equal(3, line)
  end)

  it("refuses a quoted field that is never closed, naming the line it opens on", function()
    local rows, msg, line = parse('a,b\n1,2\n\n3,"open\nstill\n')
    assert.is_nil(rows)
    assert.matches("never closed", msg)
    assert.equal(4, line)
  end)

  it("refuses invalid UTF-8 and NUL bytes, naming the line", function()
    for _, bad in ipairs { "\255", "\192\175", "\237\160\128", "a\0b", "\244\144\128\128", "\226\130" } do
      local rows, msg, line = parse("a,b\n1,2\n3," .. bad .. "\n")
      assert.is_nil(rows)
      assert.matches("UTF%-8", msg)
      assert.equal(3, line)
    end
  end)

  it("accepts every valid UTF-8 length", function()
    local rows = assert(parse("a\n\195\169\226\130\172\240\159\152\128\n"))
    assert.equal("é€😀", rows[2][1])
  end)

  it("raises on use after close and is closed once by close, __gc and __close alike", function()
    local p = core.csv_parser()
    p:close(); p:close()
    assert.has_error(function() p:feed("a") end)
    assert.has_error(function() core.csv_parser { nope = 1 } end)
    local weak = setmetatable({}, { __mode = "v" })
    weak[1] = core.csv_parser()
    weak[1]:feed('a,"b\n')                   -- an open record holds buffers
    collectgarbage(); collectgarbage()
    assert.is_nil(weak[1])
  end)

  it("parses a large file fed in chunks", function()
    local parts = { "id,name\n" }
    for i = 1, 20000 do parts[#parts + 1] = i .. ',"person, ' .. i .. '"\n' end
    local rows, lines = assert(parse(table.concat(parts), 4096))
    assert.equal(20001, #rows)
    assert.same({ "20000", "person, 20000" }, rows[20001])
    assert.equal(20001, lines[20001])
  end)
end)

describe("core.csv_format", function()
  it("quotes only what needs it, as csv_write does", function()
    assert.equal('a,"b,c","q""",\" s\",,12\r\n', core.csv_format { "a", "b,c", 'q"', " s", "", 12 })
    assert.equal('"x\ny",z\n', core.csv_format({ "x\ny", "z" }, "\n"))
    assert.has_error(function() core.csv_format { {} } end)
  end)

  it("round-trips through the parser", function()
    local row = { 'a "b"', "c,d", "e\r\nf", " g ", "", "h" }
    local rows = assert(parse("x,x,x,x,x,x\n" .. core.csv_format(row)))
    assert.same(row, rows[2])
  end)
end)

describe("core.utf8_check and core.digest", function()
  it("reports the first bad byte", function()
    assert.is_true(core.utf8_check("plain é"))
    assert.same({ nil, 3 }, { core.utf8_check("ab\255") })
  end)

  it("chains a digest over chunks", function()
    assert.equal(core.digest("hello world"), core.digest(" world", core.digest("hello")))
    assert.not_equal(core.digest("a"), core.digest("b"))
    assert.equal(16, #core.digest(""))
  end)
end)
