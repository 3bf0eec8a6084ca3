# lua-enrich: `make demo` and `make test` do all the set-up on Debian.
# Builds enrich.core once per interpreter into build/<lua>/enrich/core.so.

LUA_TARGETS ?= 5.4 luajit
CC          ?= cc
PKG_5.4     := lua5.4
PKG_luajit  := luajit
CURL_CFLAGS := $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS   := $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)
HIREDIS_LIBS := $(shell pkg-config --libs hiredis 2>/dev/null || echo -lhiredis)
CSV_LIBS    := -lcsv
SQLITE_CFLAGS := $(shell pkg-config --cflags sqlite3 2>/dev/null)
SQLITE_LIBS := $(shell pkg-config --libs sqlite3 2>/dev/null || echo -lsqlite3)
WARN        := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
CFLAGS      ?= -O2 -g
ALL_CFLAGS  := $(CFLAGS) -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC \
               -fvisibility=hidden -pthread $(WARN) $(CURL_CFLAGS) $(SQLITE_CFLAGS)
SOURCES     := $(wildcard csrc/*.c)
HEADERS     := $(wildcard csrc/*.h)
PREFIX      ?= /usr/local

ROCKSPEC    := $(wildcard lua-enrich-*.rockspec)

.PHONY: all build deps test demo bench lint install clean valgrind rock host fuzz

all: build

deps:
	@sh scripts/install-deps

build: $(foreach t,$(LUA_TARGETS),build/$(t)/enrich/core.so)

build/%/enrich/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(shell pkg-config --cflags $(PKG_$*)) -shared \
	  -o $@ $(SOURCES) $(CURL_LIBS) $(SQLITE_LIBS) $(CSV_LIBS) $(HIREDIS_LIBS)

# The portable (non-epoll) loop is compiled here so it keeps building.
build/noepoll/enrich/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DEC_NO_EPOLL $(shell pkg-config --cflags lua5.4) -shared \
	  -o $@ $(SOURCES) $(CURL_LIBS) $(SQLITE_LIBS) $(CSV_LIBS) $(HIREDIS_LIBS)

lint: build build/noepoll/enrich/core.so
	lua5.4 scripts/check-rockspec.lua $(ROCKSPEC)
	luacheck --quiet --no-color $(wildcard lua spec examples bin bench)

test: deps
	@$(MAKE) --no-print-directory build host
	@sh scripts/run-tests

# The mapping fuzzer, long (a short seeded run is part of the specs):
# FUZZ_CASES per provider (100000), FUZZ_SEED, FUZZ_PROVIDER, FUZZ_CASE;
# prints the seed and case of any failure. FUZZ_LUA=luajit for LuaJIT.
FUZZ_LUA ?= lua5.4
fuzz:
	$(FUZZ_LUA) spec/fuzz/run.lua

valgrind: build
	@sh scripts/run-tests valgrind

demo: deps
	@$(MAKE) --no-print-directory build
	@sh scripts/demo

bench: deps
	@$(MAKE) --no-print-directory build host
	@sh bench/run

# The example program that embeds Lua and ticks the loop (examples/host).
host: build/5.4/enrich/core.so
	@$(MAKE) --no-print-directory -C examples/host

# What a user runs, `luarocks make` (no variables, no rockspec named), for
# Lua 5.4, with two flags so the check runs offline and leaves the system
# alone: --tree=build/rocks (a private tree: no root, nothing left in
# /usr/local or ~/.luarocks) and --deps-mode=none (lua-cjson comes from
# Debian's package here, which LuaRocks does not see as a rock: it would
# try to download it). Then the installed modules must load.
ROCK_LUA := build/rocks/share/lua/5.4/?.lua;build/rocks/share/lua/5.4/?/init.lua;;
rock:
	rm -rf build/rocks
	luarocks --lua-version=5.4 make --tree=build/rocks --deps-mode=none
	rm -f csrc/*.o enrich/core.so; rmdir enrich 2>/dev/null || true   # left by the build
	LUA_PATH='$(ROCK_LUA)' LUA_CPATH='build/rocks/lib/lua/5.4/?.so;;' \
	  lua5.4 -e 'assert(package.searchpath("enrich.core", package.cpath):find("^build/rocks/")); require "enrich.core"; require "enrich"'

# Plain copy for users without LuaRocks (with it: `luarocks make`).
install: build/5.4/enrich/core.so
	install -d $(DESTDIR)$(PREFIX)/lib/lua/5.4/enrich $(DESTDIR)$(PREFIX)/share/lua/5.4/enrich
	install -m 0755 build/5.4/enrich/core.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/enrich/core.so
	cd lua && find enrich -name '*.lua' -exec install -D -m 0644 {} $(DESTDIR)$(PREFIX)/share/lua/5.4/{} \;

clean:
	rm -rf build
