-- The same Lua runs on 5.1 (LuaJIT/OpenResty) through 5.4: check against all.
std = "max"
max_line_length = 120
exclude_files = { "build/**" }
files["spec/**"] = { std = "+busted" }
files["**/ngx.lua"] = { read_globals = { "ngx" } }
files["examples/openresty/**"] = { read_globals = { "ngx" } }
files["lua/enrich/hosts/openresty.lua"] = { read_globals = { "ngx" } }
