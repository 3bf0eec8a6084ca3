-- `enrich run` end to end against the simulator, through its counters:
-- waterfall, dedupe, budget, dry run, changed input, exit codes, formats.
local support = require "cli.support"
local cjson = require "cjson"
local helper_quote = require("helper").shell_quote

local function csv_file(name, header, rows)
  local lines = { header }
  for _, r in ipairs(rows) do lines[#lines + 1] = r end
  return support.write(name, table.concat(lines, "\n") .. "\n")
end

local count = support.count

describe("enrich run", function()
  local sim
  setup(function() sim = support.start() end)
  teardown(function() if sim then sim:stop() end support.cleanup() end)
  before_each(function()
    support.reset(sim)
    os.execute("rm -f " .. support.path("out") .. "*")
  end)

  local function run(argv, env) return support.enrich_run(sim, argv, env) end

  it("asks provider 2 only about the rows provider 1 did not find", function()
    local input = csv_file("waterfall.csv", "first_name,last_name,domain,lance_id,note", {
      "Ada,Byron,example.com," .. support.uuid(1) .. ",found by tamtam",
      "Bob,Notfound,example.com," .. support.uuid(2) .. ",lance finds him",
      "Cy,Notfound,example.com,,no lance id: skips lance",
      "Di,Notfound,example.com," .. support.uuid(4, 404) .. ",nobody finds her",
    })
    local out = support.path("out.csv")
    local code, _, err = run { "--provider", "tamtam,lance", "--in", input, "--out", out }
    assert.equal(0, code, err)
    local rows = support.csv(out)
    assert.same({ "found", "found", "not_found", "not_found" },
                { rows[1].enrich_status, rows[2].enrich_status, rows[3].enrich_status, rows[4].enrich_status })
    assert.same({ "tamtam", "lance", "", "" },
                { rows[1].enrich_provider, rows[2].enrich_provider, rows[3].enrich_provider, rows[4].enrich_provider })
    assert.equal("found by tamtam", rows[1].note)
    local lance = support.stats(sim, "lance")
    local asked = {}
    for k in pairs(lance.inputs) do asked[#asked + 1] = k:match("^[^|]+") end
    table.sort(asked)
    assert.same({ support.uuid(2), support.uuid(4, 404) }, asked)
    assert.equal(4, count(support.stats(sim, "tamtam").inputs))
  end)

  it("sends each person once: same provider id, same LinkedIn profile, same names and domain", function()
    local input = csv_file("dupes.csv", "first_name,last_name,domain,linkedin_url,row", {
      "Ada,Byron,example.com,,1",
      "  ada , BYRON ,www.example.com,,2",                        -- names + domain
      "Grace,Hopper,navy.mil,https://www.linkedin.com/in/ghopper/,3",
      "G.,Hopper,other.org,http://linkedin.com/in/GHopper?trk=x,4", -- LinkedIn
      "Alan,Turing,example.org,,5",
      "Alan,Turing,example.net,,6",                                -- another domain: another person
    })
    local out = support.path("out.csv")
    local code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out }
    assert.equal(0, code, err)
    local tamtam = support.stats(sim, "tamtam")
    assert.equal(4, count(tamtam.inputs))
    assert.same({}, tamtam.duplicates)
    local rows = support.csv(out)
    assert.equal(6, #rows)
    assert.equal(rows[1].enrich_email, rows[2].enrich_email)
    assert.equal(rows[3].enrich_email, rows[4].enrich_email)
    assert.equal("1", rows[1].enrich_credits)
    assert.equal("0", rows[2].enrich_credits)           -- the duplicate cost nothing more
    assert.equal("  ada ", rows[2].first_name)            -- columns untouched
  end)

  it("never charges more than --budget; rows left are skipped (budget), exit 2", function()
    local lines = {}
    for i = 1, 30 do lines[i] = ("P%d,Person%d,example.com,%s"):format(i, i, support.uuid(i)) end
    for i = 31, 40 do lines[i] = ("P%d,Notfound%d,example.com,%s"):format(i, i, support.uuid(i)) end
    local input = csv_file("budget.csv", "first_name,last_name,domain,lance_id", lines)
    local out = support.path("out.csv")
    local code, _, err = run { "--provider", "tamtam,lance", "--in", input, "--out", out, "--budget", "25" }
    assert.equal(2, code, err)
    local s = support.stats(sim)
    local charged = s.providers.tamtam.credits.charged + s.providers.lance.credits.charged
    assert.is_true(charged <= 25, "charged " .. charged)
    local rows = support.csv(out)
    local skipped, spent = 0, 0
    for _, r in ipairs(rows) do
      if r.enrich_status == "skipped" then
        skipped = skipped + 1
        assert.equal("budget", r.enrich_error)
      end
      spent = spent + tonumber(r.enrich_credits)
    end
    assert.is_true(skipped >= 15)
    assert.is_true(spent <= 25)
    assert.matches("credits %d+ of 25", err)
  end)

  it("--dry-run sends nothing, writes nothing, and prints one line", function()
    local input = csv_file("dry.csv", "first_name,last_name,domain,lance_id", {
      "Ada,Byron,example.com," .. support.uuid(1),
      "ada,byron,example.com,",
      "Bob,Smith,example.com,",
    })
    local out = support.path("out.csv")
    local code, stdout, err = run({ "--provider", "tamtam,lance", "--in", input, "--out", out, "--dry-run" },
                                  { ENRICH_TAMTAM_API_KEY = false, ENRICH_LANCE_API_KEY = false })
    assert.equal(0, code, err)
    assert.equal("dry run: 3 rows, 1 duplicates, 0 cache hits, worst case 3 credits\n", stdout)
    assert.is_false(support.exists(out))
    assert.is_false(support.exists(out .. ".state.db"))
    assert.equal(0, support.stats(sim).providers.tamtam.submissions)
    -- After a real run, the same dry run finds everything in the store.
    assert.equal(0, (run { "--provider", "tamtam,lance", "--in", input, "--out", out }))
    local before = support.stats(sim).providers.tamtam.submissions
    code, stdout = run { "--provider", "tamtam,lance", "--in", input, "--out", out, "--dry-run" }
    assert.equal(0, code)
    assert.equal("dry run: 3 rows, 1 duplicates, 2 cache hits, worst case 0 credits\n", stdout)
    assert.equal(before, support.stats(sim).providers.tamtam.submissions)
  end)

  it("refuses a changed input without --force; with it sends only what is new", function()
    local input = csv_file("change.csv", "first_name,last_name,domain", { "Ada,Byron,example.com" })
    local out = support.path("out.csv")
    assert.equal(0, (run { "--provider", "tamtam", "--in", input, "--out", out }))
    csv_file("change.csv", "first_name,last_name,domain", { "Ada,Byron,example.com", "Bob,Smith,example.com" })
    local code, stdout, err = run { "--provider", "tamtam", "--in", input, "--out", out }
    assert.equal(2, code)
    assert.matches("changed since the run", err)
    local _
    assert.equal("", stdout)
    code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out, "--force" }
    assert.equal(0, code, err)
    local inputs = support.stats(sim, "tamtam").inputs
    assert.equal(2, count(inputs))
    for _, n in pairs(inputs) do assert.equal(1, n) end
    assert.equal(2, #support.csv(out))
  end)

  it("a rerun of a finished run sends nothing and writes the same output", function()
    local input = csv_file("again.csv", "first_name,last_name,domain",
                           { "Ada,Byron,example.com", "Eve,Notfound,example.com" })
    local out = support.path("out.csv")
    assert.equal(0, (run { "--provider", "tamtam", "--in", input, "--out", out }))
    local first = support.read(out)
    local submits = support.stats(sim, "tamtam").submissions
    assert.equal(0, (run { "--provider", "tamtam", "--in", input, "--out", out }))
    assert.equal(first, support.read(out))
    assert.equal(submits, support.stats(sim, "tamtam").submissions)
    -- The budget is the run's: what the first invocation paid is shown as such.
    local code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out, "--budget", "0" }
    assert.equal(0, code, err)
    assert.matches("credits 2 of 0 %(tamtam 2%); 2 paid before this invocation %(the same run%), 0 now\n", err)
    assert.equal(submits, support.stats(sim, "tamtam").submissions)
  end)

  it("exits 1 when a row failed, 0 when every row is found or not found", function()
    local input = csv_file("fail.csv", "first_name,last_name,domain",
                           { "Ada,Byron,example.com", "Ivy,Itemfail,example.com" })
    local out = support.path("out.csv")
    local code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out }
    assert.equal(1, code, err)
    local rows = support.csv(out)
    assert.equal("failed", rows[2].enrich_status)
    assert.not_equal("", rows[2].enrich_error)
    assert.matches("failed 1", err)
  end)

  it("reads and writes JSON lines, the input line untouched", function()
    local input = support.write("people.jsonl",
      '{"first_name":"Ada","last_name":"Byron","domain":"example.com","score":1.50,"tags":["a"]}\n'
      .. '\n{"full_name":"Bob Notfound","domain":"example.com"}\n')
    local out = support.path("out.jsonl")
    local code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out }
    assert.equal(0, code, err)
    local lines = {}
    for l in support.read(out):gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(2, #lines)
    assert.matches('^{"first_name":"Ada","last_name":"Byron","domain":"example.com","score":1.50,'
                   .. '"tags":%["a"%],"enrich":{', lines[1])
    local a, b = cjson.decode(lines[1]), cjson.decode(lines[2])
    assert.equal("found", a.enrich.status)
    assert.equal("ada.byron@example.com", a.enrich.email)
    assert.equal("not_found", b.enrich.status)
    -- CSV in, JSON lines out (--format), and the other way round.
    local csv = csv_file("fmt.csv", "first_name,last_name,domain,x", { 'Ada,Byron,example.com,"a,b"' })
    code = run { "--provider", "tamtam", "--in", csv, "--out", support.path("out2.jsonl"), "--format", "jsonl" }
    assert.equal(0, code)
    local obj = cjson.decode(support.read(support.path("out2.jsonl")))
    assert.equal("a,b", obj.x)
    assert.equal("found", obj.enrich.status)
    code = run { "--provider", "tamtam", "--in", input, "--out", support.path("out3.csv"), "--format", "csv" }
    assert.equal(0, code)
    local rows, header = support.csv(support.path("out3.csv"))
    assert.same({ "domain", "first_name", "full_name", "last_name", "score", "tags" },
                { (table.unpack or unpack)(header, 1, 6) })
    assert.equal('["a"]', rows[1].tags)
  end)

  it("skips a row tamtam cannot take (a first name alone) without sinking the rest of its batch", function()
    local input = csv_file("half.csv", "first_name,last_name,domain",
                           { "Ada,Byron,example.com", "Grace,,navy.mil", "Alan,Turing,example.org" })
    local out = support.path("out-half.csv")
    local code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out }
    assert.equal(2, code, err)                 -- a row skipped
    local rows = support.csv(out)
    assert.same({ "found", "skipped", "found" },
                { rows[1].enrich_status, rows[2].enrich_status, rows[3].enrich_status })
    assert.equal("invalid", rows[2].enrich_error)
    assert.same({}, support.stats(sim, "tamtam").responses["422"] and { "422" } or {})
  end)

  it("runs the providers that take no kind option (parsetx, instaview)", function()
    local input = csv_file("nokind.csv", "text,instaview_id,row", {
      "NETFLIX.COM 866-579-7172 CA,prof-1,1",
      "STARBUCKS STORE 123,prof-2,2",
    })
    for _, p in ipairs { "parsetx", "instaview" } do
      local out = support.path("out-" .. p .. ".csv")
      local code, _, err = run { "--provider", p, "--in", input, "--out", out }
      assert.equal(0, code, p .. ": " .. err)
      local rows = support.csv(out)
      assert.same({ "found", "found" }, { rows[1].enrich_status, rows[2].enrich_status }, p)
      assert.same({ p, p }, { rows[1].enrich_provider, rows[2].enrich_provider })
      assert.equal(1, support.stats(sim, p).submissions)
    end
  end)

  it("writes JSON lines from a CSV with the columns in the header's order, then enrich in DESIGN's", function()
    local input = csv_file("order.csv", "zeta,first_name,last_name,domain,alpha,mid",
                           { "z,Ada,Byron,example.com,a,m" })
    local out = support.path("out-order.jsonl")
    local code, _, err = run { "--provider", "tamtam", "--in", input, "--out", out, "--format", "jsonl" }
    assert.equal(0, code, err)
    local line = support.read(out)
    local keys = {}
    for k in line:gmatch('"([%w_]+)":') do keys[#keys + 1] = k end
    assert.same({ "zeta", "first_name", "last_name", "domain", "alpha", "mid", "enrich",
                  "status", "provider", "email", "email_status", "phone", "credits", "error" }, keys)
    local obj = cjson.decode(line)
    assert.equal("found", obj.enrich.status)
    assert.equal(1, obj.enrich.credits)
  end)

  it("keeps the key out of the output, the store and every message", function()
    local input = csv_file("key.csv", "first_name,last_name,domain", { "Ada,Byron,example.com" })
    local out = support.path("out.csv")
    local code, stdout, err = run { "--provider", "tamtam", "--in", input, "--out", out }
    assert.equal(0, code, err)
    for _, text in ipairs { stdout, err, support.read(out), support.read(out .. ".state.db") or "",
                            support.read(out .. ".state.db-wal") or "" } do
      assert.is_nil(text:find(support.KEY, 1, true))
    end
    -- A revoked key: the failure message does not carry it either.
    support.control(sim, "POST", "/_sim/config", { revoked_keys = { support.KEY } })
    code, stdout, err = run { "--provider", "tamtam", "--in", input, "--out", support.path("out-rev.csv") }
    assert.equal(1, code)
    assert.is_nil((stdout .. err .. support.read(support.path("out-rev.csv"))):find(support.KEY, 1, true))
  end)
end)

describe("enrich run refuses, exit 2 with one line and no traceback", function()
  teardown(support.cleanup)

  local function o_csv() return support.path("o.csv") end

  local function refuses(argv, env, pattern)
    local code, stdout, err = support.run(nil, argv, env)
    assert.equal(2, code, err)
    assert.equal("", stdout)
    assert.matches(pattern, err)
    local _, lines = err:gsub("\n", "")
    assert.equal(1, lines, err)
    assert.is_nil(err:find("traceback", 1, true))
    assert.is_nil(err:find(support.KEY, 1, true))
  end

  local ok_csv
  setup(function() ok_csv = support.write("ok.csv", "first_name,last_name\nAda,Byron\n") end)

  it("an unknown provider", function()
    refuses({ "run", "--provider", "nope", "--in", ok_csv, "--out", o_csv() }, {}, "unknown provider 'nope'")
  end)

  it("a missing key", function()
    refuses({ "run", "--provider", "tamtam", "--in", ok_csv, "--out", support.path("o.csv") },
            { ENRICH_TAMTAM_API_KEY = false }, "ENRICH_TAMTAM_API_KEY is not set")
  end)

  it("a key with a line break, recording nothing: a corrected run on an edited file is not refused", function()
    local input = support.write("nl.csv", "first_name,last_name\nAda,Byron\n")
    local argv = { "run", "--provider", "tamtam", "--in", input, "--out", support.path("nl-out.csv") }
    refuses(argv, { ENRICH_TAMTAM_API_KEY = support.KEY .. "\n" }, "contains a line break")
    assert.is_false(support.exists(support.path("nl-out.csv.state.db-wal")))   -- the store was closed
    -- No input fingerprint recorded: nothing ran, so an edited file is no "changed input".
    local st = assert(require("enrich.store").open("sqlite:" .. support.path("nl-out.csv.state.db")))
    assert.is_nil(st:meta_get("input"))
    st:close()
  end)

  it("a missing file", function()
    refuses({ "run", "--provider", "tamtam", "--in", support.path("none.csv"), "--out", o_csv() }, {},
            "No such file")
  end)

  it("columns no provider can use", function()
    local f = support.write("cols.csv", "a,b\n1,2\n")
    refuses({ "run", "--provider", "tamtam", "--in", f, "--out", o_csv() }, {}, "no column tamtam can use")
    refuses({ "run", "--provider", "tamtam,lance", "--in", ok_csv, "--out", o_csv() }, {},
            "no column lance can use")
  end)

  it("a file that is not CSV or JSON lines, naming the line", function()
    refuses({ "run", "--provider", "tamtam", "--in", support.write("x.txt", "hi"), "--out", support.path("o.csv") },
            {}, "cannot tell the format")
    local f = support.write("more.csv", "first_name,last_name\nAda,Byron\nA,B,C\n")
    refuses({ "run", "--provider", "tamtam", "--in", f, "--out", o_csv() }, {},
            "more%.csv:3: row has 3 fields, the header has 2")
    f = support.write("utf.csv", "first_name,last_name\nAda,Byron\nA,B\255\n")
    refuses({ "run", "--provider", "tamtam", "--in", f, "--out", o_csv() }, {}, "utf%.csv:3: invalid UTF%-8")
    f = support.write("quote.csv", 'first_name,last_name\nAda,B"yron"\n')
    refuses({ "run", "--provider", "tamtam", "--in", f, "--out", o_csv() }, {}, "quote%.csv:2: malformed CSV")
    f = support.write("bad.jsonl", '{"first_name":"Ada"}\n[1,2]\n')
    refuses({ "run", "--provider", "tamtam", "--in", f, "--out", o_csv() }, {}, "bad%.jsonl:2: not a JSON object")
    assert.is_false(support.exists(support.path("o.csv")))
  end)

  it("an --out that is the input file (by any spelling or a symlink) or the store file", function()
    local text = "first_name,last_name\nAda,Byron\n"
    local input = support.write("same.csv", text)
    local link = support.path("link.csv")
    os.execute("ln -s " .. helper_quote(input) .. " " .. helper_quote(link))
    for _, out in ipairs { input, support.dir() .. "/./same.csv", support.dir() .. "//same.csv", link } do
      refuses({ "run", "--provider", "tamtam", "--in", input, "--out", out }, {}, "is the input file")
      assert.equal(text, support.read(input))
    end
    refuses({ "run", "--provider", "tamtam", "--in", link, "--out", input }, {}, "is the input file")
    -- The store file, whether it exists yet or not.
    local db = support.path("same.db")
    for _ = 1, 2 do
      refuses({ "run", "--provider", "tamtam", "--in", input, "--out", db, "--store", "sqlite:" .. db }, {},
              "is the store file")
      support.write("same.db", "")
    end
    refuses({ "run", "--provider", "tamtam", "--in", input, "--out", o_csv(), "--store", "sqlite:" .. input }, {},
            "is the input file")
    assert.equal(text, support.read(input))
  end)

  it("an input column the output adds itself: enrich in JSON lines, enrich_* in CSV", function()
    local j = support.write("taken.jsonl", '{"first_name":"Ada","last_name":"Byron","enrich":"mine"}\n')
    refuses({ "run", "--provider", "tamtam", "--in", j, "--out", support.path("t.jsonl") }, {},
            "taken%.jsonl: the column 'enrich' is one the jsonl output adds itself")
    local c = support.write("taken.csv", "first_name,last_name,enrich\nAda,Byron,mine\n")
    refuses({ "run", "--provider", "tamtam", "--in", c, "--out", support.path("t.jsonl"), "--format", "jsonl" }, {},
            "the column 'enrich' is one the jsonl output adds itself")
    c = support.write("taken2.csv", "first_name,last_name,Enrich_Status\nAda,Byron,mine\n")
    refuses({ "run", "--provider", "tamtam", "--in", c, "--out", o_csv() }, {},
            "the column 'Enrich_Status' is one the csv output adds itself")
    j = support.write("taken2.jsonl", '{"first_name":"Ada","last_name":"Byron","enrich_error":"x"}\n')
    refuses({ "run", "--provider", "tamtam", "--in", j, "--out", o_csv(), "--format", "csv" }, {},
            "the column 'enrich_error' is one the csv output adds itself")
    assert.is_false(support.exists(support.path("t.jsonl")))
    assert.is_false(support.exists(o_csv()))
  end)

  it("a store it cannot open, naming the store once", function()
    local notdb = support.write("notdb.db", "hello")
    for _, case in ipairs {
      { "sqlite:" .. notdb, "not a lua%-enrich store" },
      { "sqlite:" .. support.path("no/such/dir.db"), "cannot open" },
    } do
      local url = case[1]
      refuses({ "run", "--provider", "tamtam", "--in", ok_csv, "--out", o_csv(), "--store", url }, {},
              "^enrich: " .. url:gsub("%p", "%%%0") .. ": " .. case[2])
      local code, _, err = support.run(nil, { "run", "--provider", "tamtam", "--in", ok_csv, "--out", o_csv(),
                                              "--store", url })
      assert.equal(2, code)
      local _, n = err:gsub(url:gsub("%p", "%%%0") .. ":", "")
      assert.equal(1, n, err)
      assert.is_nil(err:find("store: ", 1, true), err)
    end
  end)

  it("lists every option in --help, one line each", function()
    for _, argv in ipairs { { "--help" }, { "run", "--help" } } do
      local code, stdout = support.run(nil, argv)
      assert.equal(0, code)
      for _, opt in ipairs { "--provider", "--kind", "--in", "--out", "--budget", "--store", "--format",
                             "--dry-run", "--poll-interval", "--force" } do
        assert.matches("\n%s*" .. opt:gsub("%-", "%%-") .. "[^\n]*%S[^\n]*\n", stdout)
      end
    end
  end)
end)
