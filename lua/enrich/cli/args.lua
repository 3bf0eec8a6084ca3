-- The `enrich` command line (lua-argparse): `enrich run` and its options,
-- as DESIGN.md "Workflows: the `enrich` command" lists them. parse() never
-- exits: a usage error comes back as nil, one line (exit 2 is the caller's).
local argparse = require "argparse"
local providers = require "enrich.providers"

local tonumber, ipairs, concat = tonumber, ipairs, table.concat

local _M = { _VERSION = "0.1.0" }

local RUN_HELP = [[
Options of `enrich run`:
  --provider P[,P2...]  provider, or a waterfall tried in order
  --kind email|phone    what to look for (default email)
  --in FILE             input: .csv (header row) or .jsonl/.ndjson
  --out FILE            output: every input row plus the enrich_* columns
  --budget N            spend at most N credits (rows left: skipped, budget)
  --store URL           run state and answers (default sqlite:<out>.state.db)
  --format csv|jsonl    output format (default: the input's)
  --dry-run             send nothing, write nothing; print what it would cost
  --poll-interval S     first poll after S seconds (default: the provider's)
  --force               accept a changed input file; keep answers paid for
  --run NAME            with --store redis://…: share this run with every
                        process started with the same NAME (scale-out;
                        --budget is then the run's, shared by them all)
  --lease S             seconds a worker holds rows it took (default 30)
  --chunk N             people (dedupe groups) a worker takes at a time
                        (default 100)
Keys: ENRICH_<PROVIDER>_API_KEY; base URLs: ENRICH_<PROVIDER>_BASE_URL.]]

local function build()
  local p = argparse("enrich", "Run a file of people through enrichment providers.")
    :epilog(RUN_HELP .. "\nExit codes: 0 done, 1 some rows failed, 2 usage error or rows skipped/unknown,"
            .. " 130 interrupted.")
  p:command_target("command")
  p:require_command(true)
  local run = p:command("run", "Enrich a file through one provider or a waterfall.")
    :epilog("Keys come from ENRICH_<PROVIDER>_API_KEY, base URLs from ENRICH_<PROVIDER>_BASE_URL.")
  run:option("--provider", "Provider, or a waterfall tried in order (tamtam,lance).")
    :args(1):count(1):argname("P[,P2]")
  run:option("--kind", "What to look for: email or phone.")
    :choices { "email", "phone" }:default("email")
  run:option("--in", "Input file: .csv with a header row, or .jsonl/.ndjson.")
    :args(1):count(1):target("input"):argname("FILE")
  run:option("--out", "Output file: every input row plus enrich_* columns.")
    :args(1):count(1):target("output"):argname("FILE")
  run:option("--budget", "Spend at most N credits; rows left are skipped (budget).")
    :argname("N")
  run:option("--store", "Run state and answers (default sqlite:<out>.state.db).")
    :argname("URL")
  run:option("--format", "Output format (default: the input's).")
    :choices { "csv", "jsonl" }
  run:flag("--dry-run", "Send nothing, write nothing; print rows, duplicates, cache hits, worst case.")
  run:option("--poll-interval", "First poll after S seconds (default: the provider's advice).")
    :argname("S")
  run:flag("--force", "Accept a changed input file; answers already paid for are kept.")
  run:option("--run", "With --store redis://: share this run with every worker of the same NAME.")
    :argname("NAME")
  run:option("--lease", "Seconds a worker holds rows it took before another may take them (default 30).")
    :argname("S")
  run:option("--chunk", "With --run: people (dedupe groups) a worker takes at a time (default 100).")
    :argname("N")
  return p
end

_M.build = build

--- The input's format from its name: "csv", "jsonl", or nil.
function _M.format_of(path)
  local lower = path:lower()
  if lower:match("%.csv$") then return "csv" end
  if lower:match("%.jsonl$") or lower:match("%.ndjson$") then return "jsonl" end
  return nil
end

--- argv -> options | nil, one-line message.
function _M.parse(argv)
  local ok, o = build():pparse(argv)
  if not ok then return nil, o end
  local names = {}
  for name in (o.provider .. ","):gmatch("([^,]*),") do
    name = name:match("^%s*(.-)%s*$")
    if name == "" then return nil, "--provider: an empty provider name" end
    local spec, err = providers.get(name)
    if not spec then return nil, "--provider: " .. err .. " (known: tamtam, instaview, lance, puffle, parsetx)" end
    for _, seen in ipairs(names) do
      if seen == name then return nil, "--provider: " .. name .. " is named twice" end
    end
    if spec.kinds and not spec.kinds[o.kind] then
      return nil, "--provider: " .. name .. " does not look for " .. o.kind
    end
    names[#names + 1] = name
  end
  local budget
  if o.budget then
    budget = tonumber(o.budget)
    if not budget or budget < 0 or budget ~= budget or budget == math.huge then
      return nil, "--budget: expected a number of credits >= 0, got '" .. o.budget .. "'"
    end
  end
  local poll
  if o.poll_interval then
    poll = tonumber(o.poll_interval)
    if not poll or poll <= 0 or poll > 3600 then
      return nil, "--poll-interval: expected seconds > 0, got '" .. o.poll_interval .. "'"
    end
  end
  local in_format = _M.format_of(o.input)
  if not in_format then
    return nil, o.input .. ": cannot tell the format from the name (use .csv, .jsonl or .ndjson)"
  end
  if o.store and not (o.store:match("^sqlite:.") or o.store:match("^redis://")) then
    return nil, "--store: expected sqlite:PATH or redis://HOST:PORT/DB"
  end
  local lease
  if o.run then
    if not (o.store and o.store:match("^redis://")) then return nil, "--run: needs --store redis://HOST:PORT/DB" end
    if not o.run:match("^[%w%._%-]+$") then return nil, "--run: letters, digits, '.', '_' and '-' only" end
  end
  if o.lease then
    lease = tonumber(o.lease)
    if not o.run then return nil, "--lease: only with --run" end
    if not lease or lease <= 0 or lease > 86400 then
      return nil, "--lease: expected seconds > 0, got '" .. o.lease .. "'"
    end
  end
  local chunk
  if o.chunk then
    chunk = tonumber(o.chunk)
    if not o.run then return nil, "--chunk: only with --run" end
    if not chunk or chunk < 1 or chunk ~= math.floor(chunk) then
      return nil, "--chunk: expected a whole number of people >= 1, got '" .. o.chunk .. "'"
    end
  end
  if o.store and o.store:match("^redis://") and not o.run then
    return nil, "--store redis://: give the run a name with --run NAME"
  end
  return {
    run = o.run, lease = lease, chunk = chunk,
    command = "run", providers = names, kind = o.kind, input = o.input, output = o.output,
    budget = budget, store = o.store or ("sqlite:" .. o.output .. ".state.db"),
    in_format = in_format, out_format = o.format or in_format,
    dry_run = o.dry_run or false, poll_interval = poll, force = o.force or false,
    provider_list = concat(names, ","),
  }
end

return _M
