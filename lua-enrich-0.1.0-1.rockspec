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
-- Tested: Lua 5.4 and LuaJIT 2.1 (OpenResty), which LuaRocks calls 5.1;
-- PUC Lua 5.1 and 5.2 are refused by `require "enrich"` (they cannot yield
-- across pcall); 5.3 is allowed, untested.
dependencies = {
  "lua >= 5.1, < 5.5",
  "lua-cjson >= 2.1.0",
  "argparse",
}
test_dependencies = {
  "busted >= 2.0",
  "luasocket >= 3.0",
}
-- C libraries that enrich.core links, each declared by its library alone.
-- LuaRocks looks for a declared header only in <prefix>/include, and Debian
-- and Ubuntu keep curl/curl.h in /usr/include/<multiarch>/ (so `header =`
-- failed there with "Could not find header file for CURL"); the compiler
-- searches that directory by itself. LuaRocks does find the library: in
-- lib/<multiarch> on Debian, in /usr and /usr/local elsewhere, and since
-- LuaRocks 3.9 in the macOS SDK and Homebrew's kegs (/opt/homebrew/opt/curl,
-- /usr/local/opt/curl). Where it cannot: `luarocks make CURL_DIR=/prefix`.
-- To add a library (libsqlite3, libcsv, hiredis): an entry here
-- (SQLITE = { library = "sqlite3" }), its name in enrich.core's
-- `libraries`, "$(SQLITE_INCDIR)" in `incdirs`, "$(SQLITE_LIBDIR)" in
-- `libdirs`, and its sources in `sources`.
external_dependencies = {
  CURL = { library = "curl" },
  SQLITE = { library = "sqlite3" },
  CSV = { library = "csv" },                                  -- libcsv (Debian libcsv-dev)
  HIREDIS = { library = "hiredis" },                          -- hiredis (Debian libhiredis-dev)
}
build = {
  type = "builtin",
  modules = {
    ["enrich.core"] = {
      sources = { "csrc/buf.c", "csrc/cli.c", "csrc/core.c", "csrc/csv.c", "csrc/loop.c", "csrc/redis.c", "csrc/result.c", "csrc/sha256.c", "csrc/sqlite.c", "csrc/thread.c", "csrc/watch.c", "csrc/xfer.c" },
      defines = { "_POSIX_C_SOURCE=200809L" },
      libraries = { "curl", "sqlite3", "csv", "pthread", "hiredis" },
      incdirs = { "$(CURL_INCDIR)", "$(SQLITE_INCDIR)", "$(CSV_INCDIR)", "$(HIREDIS_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(SQLITE_LIBDIR)", "$(CSV_LIBDIR)", "$(HIREDIS_LIBDIR)" },
    },
    ["enrich.cli.answers"] = "lua/enrich/cli/answers.lua",
    ["enrich.cli.args"] = "lua/enrich/cli/args.lua",
    ["enrich.cli.budget"] = "lua/enrich/cli/budget.lua",
    ["enrich.cli.csvio"] = "lua/enrich/cli/csvio.lua",
    ["enrich.cli.dedupe"] = "lua/enrich/cli/dedupe.lua",
    ["enrich.cli.progress"] = "lua/enrich/cli/progress.lua",
    ["enrich.cli.records"] = "lua/enrich/cli/records.lua",
    ["enrich.cli.run"] = "lua/enrich/cli/run.lua",
    ["enrich.cli.scaleout"] = "lua/enrich/cli/scaleout.lua",
    ["enrich.cli.state"] = "lua/enrich/cli/state.lua",
    ["enrich.cli.waterfall"] = "lua/enrich/cli/waterfall.lua",
    ["enrich.client"] = "lua/enrich/client.lua",
    ["enrich.coalesce"] = "lua/enrich/coalesce.lua",
    ["enrich.crash"] = "lua/enrich/crash.lua",
    ["enrich.errors"] = "lua/enrich/errors.lua",
    ["enrich.heap"] = "lua/enrich/heap.lua",
    ["enrich"] = "lua/enrich/init.lua",
    ["enrich.hosts.openresty"] = "lua/enrich/hosts/openresty.lua",
    ["enrich.job"] = "lua/enrich/job.lua",
    ["enrich.normalize"] = "lua/enrich/normalize.lua",
    ["enrich.policy"] = "lua/enrich/policy.lua",
    ["enrich.providers"] = "lua/enrich/providers/init.lua",
    ["enrich.providers.instaview"] = "lua/enrich/providers/instaview.lua",
    ["enrich.providers.lance"] = "lua/enrich/providers/lance.lua",
    ["enrich.providers.parsetx"] = "lua/enrich/providers/parsetx.lua",
    ["enrich.providers.puffle"] = "lua/enrich/providers/puffle.lua",
    ["enrich.providers.tamtam"] = "lua/enrich/providers/tamtam.lua",
    ["enrich.ratelimit"] = "lua/enrich/ratelimit.lua",
    ["enrich.redis"] = "lua/enrich/redis.lua",
    ["enrich.ratelimit_redis"] = "lua/enrich/ratelimit_redis.lua",
    ["enrich.scaleout"] = "lua/enrich/scaleout.lua",
    ["enrich.store"] = "lua/enrich/store/init.lua",
    ["enrich.store.redis"] = "lua/enrich/store/redis.lua",
    ["enrich.store.sqlite"] = "lua/enrich/store/sqlite.lua",
    ["enrich.ratelimit_shared"] = "lua/enrich/ratelimit_shared.lua",
    ["enrich.request"] = "lua/enrich/request.lua",
    ["enrich.resume"] = "lua/enrich/resume.lua",
    ["enrich.scheduler"] = "lua/enrich/scheduler.lua",
    ["enrich.snapshot"] = "lua/enrich/snapshot.lua",
    ["enrich.sim.control"] = "lua/enrich/sim/control.lua",
    ["enrich.sim.httpd"] = "lua/enrich/sim/httpd.lua",
    ["enrich.sim"] = "lua/enrich/sim/init.lua",
    ["enrich.sim.instaview"] = "lua/enrich/sim/instaview.lua",
    ["enrich.sim.lance"] = "lua/enrich/sim/lance.lua",
    ["enrich.sim.ngx"] = "lua/enrich/sim/ngx.lua",
    ["enrich.sim.parsetx"] = "lua/enrich/sim/parsetx.lua",
    ["enrich.sim.puffle"] = "lua/enrich/sim/puffle.lua",
    ["enrich.sim.tamtam"] = "lua/enrich/sim/tamtam.lua",
    ["enrich.sim.util"] = "lua/enrich/sim/util.lua",
    ["enrich.testing"] = "lua/enrich/testing.lua",
  },
  install = {
    bin = { ["enrich"] = "bin/enrich", ["enrich-sim"] = "bin/enrich-sim" },
  },
}
test = { type = "busted" }
