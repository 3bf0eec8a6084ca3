-- LuaRocks package of lua-enrich. Every Lua module under lua/ is listed in
-- build.modules; `make lint` checks that none is missing.
rockspec_format = "3.0"
package = "lua-enrich"
version = "0.1.0-1"
source = {
  url = "git+https://github.com/lua-enrich/lua-enrich.git",
  tag = "v0.1.0",
}
description = {
  summary = "Asynchronous data-enrichment jobs from Lua, on libcurl's multi interface",
  detailed = [[
    Submit people or transaction strings to enrichment APIs (tamtam, instaview,
    lance, puffle, parsetx, or your own), poll until done, and get one
    normalized result per input. A thin C core (enrich.core) drives libcurl
    without blocking; the engine, policies and provider mappings are plain Lua.
    Runs in plain Lua scripts, host programs that tick a loop, and OpenResty.
  ]],
  license = "MIT",
  labels = { "http", "curl", "async", "enrichment" },
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson >= 2.1.0",
}
test_dependencies = {
  "busted >= 2.0",
  "luasocket >= 3.0",
}
external_dependencies = {
  CURL = { header = "curl/curl.h", library = "curl" },
}
build = {
  type = "builtin",
  modules = {
    ["enrich.core"] = {
      sources = { "csrc/buf.c", "csrc/core.c", "csrc/loop.c", "csrc/result.c", "csrc/xfer.c" },
      defines = { "_POSIX_C_SOURCE=200809L" },
      libraries = { "curl" },
      incdirs = { "$(CURL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)" },
    },
    ["enrich.sim.httpd"] = "lua/enrich/sim/httpd.lua",
  },
  install = {
    bin = { ["enrich-sim"] = "bin/enrich-sim" },
  },
}
test = { type = "busted" }
