-- Shared by the command's specs: a simulator per spec file, running
-- bin/enrich as a child process (exit codes, environment, kill -9), files in
-- a temporary directory, and the simulator's counters.
local helper = require "helper"
local simulator = require "support.sim"

local support = {}
local q = helper.shell_quote

support.KEY = "sk_live_SECRET_cli_key_0123456789"

support.start, support.control = simulator.start, simulator.control
support.reset, support.stats = simulator.reset, simulator.stats

local dir
function support.dir()
  if not dir then
    local p = io.popen("mktemp -d " .. q((os.getenv("TMPDIR") or "/tmp") .. "/enrich-cli-spec.XXXXXX"))
    dir = p:read("*l"); p:close()
  end
  return dir
end

function support.cleanup()
  if dir then os.execute("rm -rf " .. q(dir)); dir = nil end
end

function support.path(name) return support.dir() .. "/" .. name end

function support.write(name, text)
  local f = assert(io.open(support.path(name), "wb")); f:write(text); f:close()
  return support.path(name)
end

function support.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a"); f:close()
  return s
end

function support.exists(path) return support.read(path) ~= nil end

--- The number of keys of a table.
function support.count(t) local n = 0 for _ in pairs(t) do n = n + 1 end return n end

--- Runs bin/enrich with argv and env (a table; keys for every provider and
--- the simulator's base URLs by default). -> code, stdout, stderr
function support.run(sim, argv, env)
  local e = {}
  for _, p in ipairs { "tamtam", "lance", "instaview", "puffle", "parsetx" } do
    local up = p:upper()
    e["ENRICH_" .. up .. "_API_KEY"] = support.KEY
    e["ENRICH_" .. up .. "_BASE_URL"] = sim and (sim.url .. "/" .. p) or nil
  end
  for k, v in pairs(env or {}) do e[k] = v ~= false and v or nil end
  local parts = { "env" }
  for k, v in pairs(e) do parts[#parts + 1] = q(k .. "=" .. v) end
  parts[#parts + 1] = os.getenv("ENRICH_CLI_LUA") or "lua5.4"
  parts[#parts + 1] = "bin/enrich"
  for _, a in ipairs(argv) do parts[#parts + 1] = q(a) end
  local out, err = support.path("stdout"), support.path("stderr")
  local cmd = table.concat(parts, " ") .. " >" .. q(out) .. " 2>" .. q(err) .. "; echo $?"
  local p = io.popen(cmd)
  local code = tonumber(p:read("*l"))
  p:close()
  return code, support.read(out) or "", support.read(err) or ""
end

--- `enrich run` with argv after it, polling the simulator 0.05 s apart.
--- -> code, stdout, stderr (as support.run)
function support.enrich_run(sim, argv, env)
  local a = { "run", "--poll-interval", "0.05" }
  for _, x in ipairs(argv) do a[#a + 1] = x end
  return support.run(sim, a, env)
end

--- Parses a CSV output (through the same core parser) into header + rows
--- as maps.
function support.csv(path)
  local core = require "enrich.core"
  local p = core.csv_parser()
  local text = assert(support.read(path), "no output at " .. path)
  local rows = assert(p:feed(text))
  local last = assert(p:finish())
  for _, r in ipairs(last) do rows[#rows + 1] = r end
  local header, out = rows[1], {}
  for i = 2, #rows do
    local m = {}
    for k, name in ipairs(header) do m[name] = rows[i][k] end
    out[#out + 1] = m
  end
  return out, header, rows
end

--- A lance person id (a UUID v4) from a number.
--- code: a simulator outcome code ("404" not found, "500" failed), else found.
function support.uuid(n, code)
  if code then return ("%08x-0000-4000-8000-00000000%04d"):format(n, tonumber(code)) end
  return ("%08x-0000-4000-8000-%012d"):format(n, 10000 + n)
end

return support
