-- Fails when the rockspec and the tree disagree: a Lua module under lua/
-- or a C source under csrc/ that build.modules does not list, or a listed
-- file that does not exist. Usage: lua5.4 scripts/check-rockspec.lua FILE
local path = assert(arg[1], "usage: check-rockspec.lua ROCKSPEC")
local spec = {}
assert(loadfile(path, "t", spec))()

local function lines(cmd)
  local out, p = {}, assert(io.popen(cmd))
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

local listed, problems = {}, {}
for name, m in pairs(spec.build.modules) do
  local files = type(m) == "string" and { m } or m.sources
  for _, f in ipairs(files) do
    listed[f] = name
    if not io.open(f) then problems[#problems + 1] = name .. ": no file " .. f end
  end
end
for _, f in ipairs(lines("find lua -name '*.lua' | sort")) do
  local want = f:gsub("^lua/", ""):gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", ".")
  if listed[f] ~= want then problems[#problems + 1] = "not in build.modules as " .. want .. ": " .. f end
end
for _, f in ipairs(lines("ls csrc/*.c")) do
  if listed[f] ~= "enrich.core" then problems[#problems + 1] = "C source not built: " .. f end
end
for _, p in ipairs(problems) do io.stderr:write(p, "\n") end
os.exit(#problems == 0 and 0 or 1)
