-- enrich.core.sqlite, the thin binding under the store (also run under
-- valgrind by scripts/run-tests: no servers here).
local core = require "enrich.core"
local sqlite = core.sqlite
local store_support = require "store.support"

local tmpdb, cleanup = store_support.tmpdb, store_support.cleanup

describe("enrich.core.sqlite", function()
  local path
  before_each(function() path = tmpdb() end)
  after_each(function() cleanup(path) end)

  it("binds and reads 64-bit integers, floats, text with zeros, blobs and NULL", function()
    local db = assert(sqlite.open(path))
    assert(db:exec("CREATE TABLE t (a, b, c, d, e)"))
    local ins = assert(db:prepare("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)"))
    local big = math.tointeger and math.tointeger(2 ^ 53) + 1 or 2 ^ 53
    assert(ins:bind(1, big))
    assert(ins:bind(2, 0.5))
    assert(ins:bind(3, "a\0b"))
    assert(ins:bind_blob(4, "\255\0\1"))
    assert(ins:bind(5, nil))
    assert.is_false(ins:step())
    ins:reset()
    assert.equal(1, db:changes())
    assert.equal(1, db:last_insert_rowid())
    local q = assert(db:prepare("SELECT a, b, c, d, e, typeof(c), typeof(d) FROM t"))
    assert.is_true(q:step())
    local r = q:row()
    assert.equal(big, r[1])
    if math.type then assert.equal("integer", math.type(r[1])) end
    assert.equal(0.5, r[2])
    assert.equal("a\0b", r[3])
    assert.equal("\255\0\1", r[4])
    assert.is_nil(r[5])
    assert.equal("text", r[6])
    assert.equal("blob", r[7])
    assert.is_false(q:step())
    q:finalize()
    ins:finalize()
    db:close()
  end)

  if math.type then
    it("keeps the largest and smallest 64-bit integers exact", function()
      local db = assert(sqlite.open(path))
      local q = assert(db:prepare("SELECT ?1, ?2"))
      q:bind(1, math.maxinteger)
      q:bind(2, math.mininteger)
      assert.is_true(q:step())
      local r = q:row()
      assert.equal(math.maxinteger, r[1])
      assert.equal(math.mininteger, r[2])
      db:close()
    end)
  end

  it("returns nil, message, code for runtime failures and raises on misuse", function()
    local db = assert(sqlite.open(path))
    local ok, msg, code = db:exec("CREATE TABLE")
    assert.is_nil(ok)
    assert.is_string(msg)
    assert.equal("error", code)
    assert(db:exec("CREATE TABLE u (k PRIMARY KEY)"))
    local ins = assert(db:prepare("INSERT INTO u VALUES (?1)"))
    ins:bind(1, 1); assert.is_false(ins:step()); ins:reset()
    ins:bind(1, 1)
    ok, msg, code = ins:step()
    assert.is_nil(ok)
    assert.matches("UNIQUE", msg)
    assert.equal("constraint", code)
    assert.has_error(function() ins:bind(9, 1) end)
    assert.has_error(function() ins:bind(1, {}) end)
    assert.has_error(function() sqlite.open(path, { nope = true }) end)
    db:close()
  end)

  it("says a file that is not a database is not one", function()
    local f = assert(io.open(path, "wb"))
    f:write(("not a database at all\n"):rep(200))
    f:close()
    local db = assert(sqlite.open(path))
    local ok, _, code = db:exec("SELECT * FROM sqlite_master")
    assert.is_nil(ok)
    assert.equal("notadb", code)
    db:close()
  end)

  it("fails to open an unwritable path with a message", function()
    local db, msg, code = sqlite.open("/nonexistent-dir/x.db")
    assert.is_nil(db)
    assert.is_string(msg)
    assert.equal("cantopen", code)
  end)

  it("close, __gc and __close are one idempotent function; closed handles refuse use", function()
    local db = assert(sqlite.open(path))
    local st = assert(db:prepare("SELECT 1"))
    db:close()
    db:close()
    assert.has_error(function() db:exec("SELECT 1") end, "enrich.core.sqlite: the database is closed")
    assert.has_error(function() st:step() end)
    st:finalize()
    st:finalize()
    local weak = setmetatable({}, { __mode = "v" })
    do
      local d2 = assert(sqlite.open(path))
      weak[1] = d2
      weak[2] = assert(d2:prepare("SELECT 1"))
    end
    collectgarbage(); collectgarbage()
    assert.is_nil(weak[1])
    assert.is_nil(weak[2])
  end)

  it("holds an exclusive lock file: a second open with it gets 'busy' and the holder's pid", function()
    local a = assert(sqlite.open(path, { lock = path .. ".lock" }))
    local b, msg, code = sqlite.open(path, { lock = path .. ".lock" })
    assert.is_nil(b)
    assert.equal("busy", code)
    assert.matches("in use by another process %(pid %d+", msg)
    a:close()
    b = assert(sqlite.open(path, { lock = path .. ".lock" }))
    b:close()
  end)

  for _, threaded in ipairs { true, false } do
    describe("writer" .. (threaded and " (thread)" or " (inline)"), function()
      local function setup()
        local db = assert(sqlite.open(path))
        assert(db:exec("PRAGMA journal_mode = WAL"))
        assert(db:exec("CREATE TABLE kv (k TEXT PRIMARY KEY, v)"))
        local w = assert(sqlite.writer(path, {
          statements = { "INSERT INTO kv VALUES (?1, ?2)", "DELETE FROM kv" },
          setup = { "PRAGMA synchronous = FULL" }, thread = threaded,
        }))
        return db, w
      end
      local function count(db)
        local q = assert(db:prepare("SELECT count(*) FROM kv"))
        q:step()
        local n = q:row()[1]
        q:finalize()
        return n
      end

      it("commits a batch in one transaction and reports its sequence number", function()
        local db, w = setup()
        for i = 1, 100 do w:add(1, "k" .. i, i) end
        local seq = w:commit()
        assert.equal(1, seq)
        local done, failures = w:wait(seq)
        assert.equal(1, done)
        assert.is_nil(failures)
        assert.equal(100, count(db))
        w:close(); w:close()
        db:close()
      end)

      it("rolls a failing batch back whole and reports it once", function()
        local db, w = setup()
        w:add(1, "a", 1)
        w:add(1, "a", 2)               -- unique violation: the whole batch goes
        local seq = w:commit()
        local done, failures = w:wait(seq)
        assert.equal(seq, done)
        assert.equal(1, #failures)
        assert.equal(seq, failures[1].seq)
        assert.equal("constraint", failures[1].code)
        assert.equal(0, count(db))
        w:add(1, "b", 1)
        done, failures = w:wait(w:commit())
        assert.equal(2, done)
        assert.is_nil(failures)
        assert.equal(1, count(db))
        w:close()
        db:close()
      end)

      it("copies values, refuses misuse, and is readable on fd() after a commit", function()
        local db, w = setup()
        assert.has_error(function() w:add(3, "x") end)
        assert.has_error(function() w:add(1, "x") end)
        assert.has_error(function() w:add(1, "x", {}) end)
        local s = "v" .. ("x"):rep(100)
        w:add(1, "k", s)
        s = nil -- luacheck: ignore
        collectgarbage()
        assert.is_number(w:fd())
        local seq = w:commit()
        w:wait(seq)
        local q = assert(db:prepare("SELECT v FROM kv WHERE k = 'k'"))
        assert.is_true(q:step())
        assert.equal("v" .. ("x"):rep(100), q:row()[1])
        q:finalize()
        w:close()
        assert.has_error(function() w:commit() end, "enrich.core.sqlite: the writer is closed")
        db:close()
      end)

      it("commits what was handed over before close, and frees an open batch", function()
        local db, w = setup()
        w:add(1, "a", 1)
        w:commit()
        w:add(1, "b", 2)                -- never committed
        w:close()
        assert.equal(1, count(db))
        db:close()
        cleanup(path)
        local weak = setmetatable({}, { __mode = "v" })
        do
          local db2, w2 = setup()
          w2:add(2)
          weak[1] = w2
          db2:close()
        end
        collectgarbage(); collectgarbage()
        assert.is_nil(weak[1])
      end)
    end)
  end
end)
