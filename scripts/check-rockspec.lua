-- Fails when the rockspec and the tree disagree: a Lua module under lua/
-- or a C source under csrc/ that build.modules does not list, or a listed
-- file that does not exist; or when a C library is declared in a way that
-- breaks a plain `luarocks make`: a `header` (LuaRocks looks only in
-- <prefix>/include, not in Debian's /usr/include/<multiarch>), or a
-- library enrich.core does not link with its $(X_INCDIR) and $(X_LIBDIR).
-- Usage: lua5.4 scripts/check-rockspec.lua FILE
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
local core = spec.build.modules["enrich.core"]
local function has(list, v)
  for _, x in ipairs(list or {}) do if x == v then return true end end
  return false
end
for name, dep in pairs(spec.external_dependencies or {}) do
  if name ~= "platforms" then
    if dep.header then problems[#problems + 1] = name .. ": declare the library only, not a header" end
    if not has(core.libraries, dep.library) then
      problems[#problems + 1] = name .. ": '" .. tostring(dep.library) .. "' not in enrich.core's libraries"
    end
    if not has(core.incdirs, "$(" .. name .. "_INCDIR)") then
      problems[#problems + 1] = name .. ": $(" .. name .. "_INCDIR) not in enrich.core's incdirs"
    end
    if not has(core.libdirs, "$(" .. name .. "_LIBDIR)") then
      problems[#problems + 1] = name .. ": $(" .. name .. "_LIBDIR) not in enrich.core's libdirs"
    end
  end
end
for _, p in ipairs(problems) do io.stderr:write(p, "\n") end
os.exit(#problems == 0 and 0 or 1)
