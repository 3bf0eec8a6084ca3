/* Shims for Lua 5.1 / LuaJIT, privately named (ec_*): never define lua_* or
 * luaL_* symbols ourselves, so we cannot clash with a host that has them. */
#ifndef ENRICH_COMPAT_H
#define ENRICH_COMPAT_H

#include "lua.h"
#include "lauxlib.h"

#if LUA_VERSION_NUM == 501
#define ec_rawlen(L, i)       lua_objlen((L), (i))
#define ec_setfuncs(L, l)     luaL_register((L), NULL, (l))
#else
#define ec_rawlen(L, i)       lua_rawlen((L), (i))
#define ec_setfuncs(L, l)     luaL_setfuncs((L), (l), 0)
#endif

#endif
