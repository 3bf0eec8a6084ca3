/* enrich.core: one libcurl multi handle per engine; submit returns at once,
 * poll drives transfers and hands back plain completion records. No Lua
 * runs inside libcurl callbacks; the only Lua called from here is the JSON
 * decoder, from poll, outside libcurl. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "enrich_core.h"

/* ---- the engine handle -------------------------------------------------- */

/* Every method but close goes through here. An engine is used only in the
 * process that made it: after fork() the child shares its connections,
 * its epoll set and (with an I/O thread) a thread that is not there, so
 * any libcurl call from the child would disturb the parent or hang. And
 * never from inside its own JSON decoder: poll is in the middle of
 * handing over a transfer that close, cancel or a nested poll would free. */
static ec_engine *check_engine(lua_State *L, int i) {
  ec_engine *e = luaL_checkudata(L, i, EC_ENGINE_MT);
  if (e->multi == NULL) luaL_error(L, "enrich.core: engine is closed");
  pid_t me = getpid();
  if (e->pid != me)
    luaL_error(L, "enrich.core: engine was made in process %d, used in %d; make a new one after fork",
               (int)e->pid, (int)me);
  if (e->busy) luaL_error(L, "enrich.core: engine used from inside its own poll (json_decode)");
  return e;
}

/* Pushes the engine's private table: { [id] = xfer, decode = fn }. */
static void push_engine_table(lua_State *L, ec_engine *e) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref);
}

static int eng_close(lua_State *L) {
  ec_engine *e = luaL_checkudata(L, 1, EC_ENGINE_MT);
  if (e->multi == NULL) return 0;          /* closed already: idempotent */
  if (e->busy) return luaL_error(L, "enrich.core: engine used from inside its own poll (json_decode)");
  if (e->pid != getpid()) {
    /* A fork's child: the multi handle, its connections and the epoll set
     * are the parent's too, and a libcurl call here would act on them (a
     * removed handle takes its socket out of the parent's epoll set, a
     * closed TLS connection sends close_notify on the parent's stream).
     * The child's copies of our own descriptors are closed; the rest of
     * the copied memory is forgotten, never freed through libcurl. */
    ec_io_forget(e);
    ec_loop_close(e);
    e->multi = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, e->ref);
    e->ref = LUA_NOREF;
    return 0;
  }
  ec_redis_detach(e);                      /* Redis connections close; their records go */
  ec_io_stop(e);                           /* first: the thread uses the multi handle */
  ec_list *lists[2] = { &e->active, &e->done };
  for (int i = 0; i < 2; i++)
    while (lists[i]->head) {
      ec_xfer *x = lists[i]->head;
      ec_list_remove(lists[i], x);
      ec_xfer_free(e, x);
    }
  while (e->pool_n > 0) curl_easy_cleanup(e->pool[--e->pool_n]);
  curl_multi_cleanup(e->multi);
  e->multi = NULL;
  ec_loop_close(e);
  luaL_unref(L, LUA_REGISTRYINDEX, e->ref);
  e->ref = LUA_NOREF;
  free(e->set.user_agent);
  free(e->set.ca_file);
  e->set.user_agent = e->set.ca_file = NULL;
  return 0;
}

static int eng_tostring(lua_State *L) {
  ec_engine *e = luaL_checkudata(L, 1, EC_ENGINE_MT);
  if (e->multi) lua_pushfstring(L, "enrich.core.engine (%p, %d pending)", (void *)e,
                                (int)e->live);
  else lua_pushfstring(L, "enrich.core.engine (%p, closed)", (void *)e);
  return 1;
}

/* ---- submit / cancel ---------------------------------------------------- */

static int eng_submit(lua_State *L) {
  ec_engine *e = check_engine(L, 1);
  ec_xfer *x = ec_xfer_new(L, e, 2);
  if (x && e->io) {
    ec_io_submit(e, x);
  } else if (x && curl_multi_add_handle(e->multi, x->easy) == CURLM_OK) {
    x->in_multi = 1;
    ec_list_push(&e->active, x);
  } else {
    if (x) ec_xfer_free(e, x);
    lua_pushnil(L);
    lua_pushliteral(L, "enrich.core: could not start the transfer (out of memory)");
    return 2;
  }
  e->live++;
  push_engine_table(L, e);
  lua_pushinteger(L, x->id);
  lua_pushlightuserdata(L, x);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_pushinteger(L, x->id);
  return 1;
}

static ec_xfer *lookup(lua_State *L, ec_engine *e, lua_Integer id) {
  push_engine_table(L, e);
  lua_pushinteger(L, id);
  lua_rawget(L, -2);
  ec_xfer *x = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return x;
}

/* Cancels a transfer still in flight: it is delivered by the next poll with
 * error code "cancelled" (with an I/O thread, by a later one, once that
 * thread has let go of it), so every submitted id completes exactly once.
 * Returns false for an unknown id or one that has already finished. */
static int eng_cancel(lua_State *L) {
  ec_engine *e = check_engine(L, 1);
  lua_Integer id = luaL_checkinteger(L, 2);
  ec_xfer *x = lookup(L, e, id);
  if (x != NULL && e->io) {
    lua_pushboolean(L, ec_io_cancel(e, x));
    return 1;
  }
  int found = x != NULL && !x->finished;
  if (found) {
    ec_xfer_unplug(e, x);
    x->cancelled = x->finished = 1;
    ec_list_remove(&e->active, x);
    ec_list_push(&e->done, x);
  }
  lua_pushboolean(L, found);
  return 1;
}

/* ---- poll --------------------------------------------------------------- */

/* poll(timeout [, max [, work]]): at most `max` completions are handed
 * over (the rest stay here for the next poll), and at most `max` ready
 * sockets are serviced per wait; with `work` (seconds), servicing stops
 * once that much time has gone after the wait (one socket is serviced at
 * least): a host bounds the work of one frame. */
static int eng_poll(lua_State *L) {
  ec_engine *e = check_engine(L, 1);
  lua_Number timeout = luaL_optnumber(L, 2, 0);
  luaL_argcheck(L, timeout >= 0, 2, "timeout must be >= 0 seconds");
  lua_Integer max = luaL_optinteger(L, 3, 0);
  luaL_argcheck(L, max >= 0, 3, "max must be >= 0 (0: no limit)");
  lua_Number work = luaL_optnumber(L, 4, -1);
  luaL_argcheck(L, lua_isnoneornil(L, 4) || work >= 0, 4, "work must be >= 0 seconds");
  if (e->wdone > 0) timeout = 0;           /* Redis replies wait already */
  if (e->io) ec_io_collect(e, timeout);
  else ec_loop_run(e, ec_now() + timeout, max > 64 ? 64 : (int)max, work >= 0 ? work : -1);

  push_engine_table(L, e);
  int tidx = lua_gettop(L);
  lua_getfield(L, tidx, "decode");
  int didx = lua_gettop(L);
  lua_createtable(L, (int)(max > 0 && (size_t)max < e->done.n ? (size_t)max : e->done.n), 0);
  int n = 0;
  while (e->done.head && (max == 0 || n < max)) {
    ec_xfer *x = e->done.head;
    ec_push_completion(L, e, x, didx);
    lua_rawseti(L, -2, ++n);
    lua_pushinteger(L, x->id);
    lua_pushnil(L);
    lua_rawset(L, tidx);
    ec_list_remove(&e->done, x);
    ec_xfer_free(e, x);
    e->live--;
  }
  if (e->wdone > 0) ec_redis_deliver(L, e, tidx + 2, n, max);
  return 1;
}

/* With an I/O thread: hands the transfers submitted (and cancels asked)
 * since the last poll or flush to that thread now. poll does it too; a host
 * that ticks calls flush at the end of its turn. Without one: nothing. */
static int eng_flush(lua_State *L) {
  ec_engine *e = check_engine(L, 1);
  if (e->io) ec_io_flush(e);
  return 0;
}

static int eng_pending(lua_State *L) {
  ec_engine *e = check_engine(L, 1);
  lua_pushinteger(L, (lua_Integer)e->live);
  return 1;
}

/* Seconds until libcurl wants poll called again, for foreign event loops:
 * 0 when completions wait for delivery, nil when nothing is scheduled. */
static int eng_timeout(lua_State *L) {
  ec_engine *e = check_engine(L, 1);
  double t = e->io ? ec_io_timeout(e) : ec_loop_timeout(e);
  if (e->wdone > 0) t = 0;                 /* Redis replies wait for poll */
  if (t < 0) lua_pushnil(L);
  else lua_pushnumber(L, t);
  return 1;
}

/* A descriptor that turns readable when libcurl has socket work, for
 * foreign event loops (with timeout() for the timers); nil if none. */
static int eng_fd(lua_State *L) {
  ec_engine *e = check_engine(L, 1);
  int fd = e->io ? ec_io_fd(e) : ec_loop_fd(e);
  if (fd < 0) lua_pushnil(L);
  else lua_pushinteger(L, fd);
  return 1;
}

/* ---- core.new ----------------------------------------------------------- */

static const char *const ENGINE_OPTIONS[] = {
  "max_connections", "max_host_connections", "user_agent", "timeout",
  "connect_timeout", "max_body", "verify_tls", "ca_file", "follow_redirects",
  "max_redirects", "json_decode", "json_max_depth", "timings", "io_thread", NULL
};

static long int_option(lua_State *L, int idx, const char *name, long dflt, long lo, long hi) {
  lua_getfield(L, idx, name);
  long v = dflt;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "core.new: '%s' must be a number", name);
    lua_Number n = lua_tonumber(L, -1);
    if (!(n >= lo && n <= hi)) luaL_error(L, "core.new: '%s' must be between %d and %d", name, (int)lo, (int)hi);
    v = (long)n;
  }
  lua_pop(L, 1);
  return v;
}

/* Leaves the value on the stack, where it stays alive until it is copied
 * (an options table with an __index need not hold what it returns). */
static const char *string_option(lua_State *L, int idx, const char *name) {
  lua_getfield(L, idx, name);
  const char *s = NULL;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "core.new: '%s' must be a string", name);
    s = lua_tostring(L, -1);
  }
  return s;
}

static int bool_option(lua_State *L, int idx, const char *name, int dflt) {
  lua_getfield(L, idx, name);
  int v = dflt;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TBOOLEAN) luaL_error(L, "core.new: '%s' must be a boolean", name);
    v = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* Pushes the JSON decoder for a new engine: the user's, or the decode of a
 * private cjson instance (cjson.new), so depth settings stay per engine. */
static void push_decoder(lua_State *L, int opts, int depth) {
  lua_getfield(L, opts, "json_decode");
  if (!lua_isnil(L, -1)) {
    if (!lua_isfunction(L, -1)) luaL_error(L, "core.new: 'json_decode' must be a function");
    return;
  }
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  if (lua_pcall(L, 1, 1, 0) != 0)
    luaL_error(L, "enrich.core needs lua-cjson: %s", lua_tostring(L, -1));
  lua_getfield(L, -1, "new");
  lua_call(L, 0, 1);                       /* a private instance */
  lua_remove(L, -2);
  lua_getfield(L, -1, "decode_max_depth");
  lua_pushinteger(L, depth);
  lua_call(L, 1, 0);
  /* NaN, Infinity, hex and leading zeros are not JSON (RFC 8259 6), and
   * cjson takes them by default: a count read as NaN poisons arithmetic. */
  lua_getfield(L, -1, "decode_invalid_numbers");
  if (lua_isfunction(L, -1)) { lua_pushboolean(L, 0); lua_call(L, 1, 0); }
  else lua_pop(L, 1);
  /* OpenResty's cjson can tag decoded arrays, so [] stays distinguishable. */
  lua_getfield(L, -1, "decode_array_with_array_mt");
  if (lua_isfunction(L, -1)) { lua_pushboolean(L, 1); lua_call(L, 1, 0); }
  else lua_pop(L, 1);
  lua_getfield(L, -1, "decode");
  lua_remove(L, -2);
}

static char *dup_or_null(const char *s) {
  if (s == NULL) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static int core_new(lua_State *L) {
  int has_opts = !lua_isnoneornil(L, 1);
  if (has_opts) luaL_checktype(L, 1, LUA_TTABLE);
  else { lua_settop(L, 0); lua_newtable(L); }
  lua_settop(L, 1);
  ec_check_fields(L, 1, ENGINE_OPTIONS, "core.new");

  ec_settings s;
  memset(&s, 0, sizeof s);
  long max_conn = int_option(L, 1, "max_connections", 64, 1, 100000);
  long max_host = int_option(L, 1, "max_host_connections", 32, 0, 100000);
  s.timeout_ms = ec_seconds_field(L, 1, "timeout", 30000);
  s.connect_timeout_ms = ec_seconds_field(L, 1, "connect_timeout", 10000);
  s.max_body = ec_size_field(L, 1, "max_body", EC_DEFAULT_MAX_BODY);
  s.verify_tls = bool_option(L, 1, "verify_tls", 1);
  s.follow_redirects = bool_option(L, 1, "follow_redirects", 0);
  s.max_redirects = int_option(L, 1, "max_redirects", 5, 0, 50);
  s.timings = bool_option(L, 1, "timings", 1);
  int io_thread = bool_option(L, 1, "io_thread", 0);
  int depth = (int)int_option(L, 1, "json_max_depth", EC_DEFAULT_JSON_DEPTH, 1, 10000);
  const char *ua = string_option(L, 1, "user_agent");
  const char *ca = string_option(L, 1, "ca_file");

  /* The engine's private table, then the decoder, before any resource. */
  lua_newtable(L);
  push_decoder(L, 1, depth);
  lua_setfield(L, -2, "decode");

  /* The userdata starts empty and safe to collect, then gets resources. */
  ec_engine *e = lua_newuserdata(L, sizeof *e);
  memset(e, 0, sizeof *e);
  e->ref = LUA_NOREF;
  e->epfd = -1;
  e->pid = getpid();
  luaL_getmetatable(L, EC_ENGINE_MT);
  lua_setmetatable(L, -2);

  e->set = s;
  e->set.user_agent = dup_or_null(ua ? ua : "lua-enrich/" EC_VERSION);
  e->set.ca_file = dup_or_null(ca);
  e->multi = curl_multi_init();
  /* With an I/O thread, that thread drives libcurl: no sockets to watch here. */
  if (e->multi && !io_thread && ec_loop_open(e) != 0) { curl_multi_cleanup(e->multi); e->multi = NULL; }
  if (e->multi == NULL || e->set.user_agent == NULL || (ca && e->set.ca_file == NULL)) {
    free(e->set.user_agent); free(e->set.ca_file);
    e->set.user_agent = e->set.ca_file = NULL;
    if (e->multi) { curl_multi_cleanup(e->multi); e->multi = NULL; ec_loop_close(e); }
    lua_pushnil(L);
    lua_pushliteral(L, "enrich.core: could not create a libcurl multi handle");
    return 2;
  }
  curl_multi_setopt(e->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, max_conn);
  curl_multi_setopt(e->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host);
  curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, max_conn);
  curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  if (io_thread) {                         /* after every multi option: it reads them */
    const char *why = ec_io_start(e);
    if (why) {
      lua_pushnil(L);
      lua_pushfstring(L, "enrich.core: %s", why);
      return 2;                            /* the engine is collected and closed */
    }
  }
  lua_pushvalue(L, -2);
  e->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

/* ---- module ------------------------------------------------------------- */

static int core_versions(lua_State *L) {
  const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
  lua_createtable(L, 0, 4);
  lua_pushliteral(L, EC_VERSION);
  lua_setfield(L, -2, "core");
  lua_pushstring(L, v->version);
  lua_setfield(L, -2, "curl");
  lua_pushstring(L, v->ssl_version ? v->ssl_version : "none");
  lua_setfield(L, -2, "ssl");
  lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0);
  lua_setfield(L, -2, "http2");
  return 1;
}

static const luaL_Reg ENGINE_META[] = {
  { "__gc", eng_close },
  { "__close", eng_close },
  { "__tostring", eng_tostring },
  { NULL, NULL }
};

static const luaL_Reg ENGINE_METHODS[] = {
  { "submit", eng_submit },
  { "poll", eng_poll },
  { "cancel", eng_cancel },
  { "flush", eng_flush },
  { "pending", eng_pending },
  { "timeout", eng_timeout },
  { "fd", eng_fd },
  { "redis", ec_redis_connect },
  { "close", eng_close },
  { NULL, NULL }
};

/* Monotonic seconds: the engine's clock for timers and deadlines. */
static int core_now(lua_State *L) {
  lua_pushnumber(L, ec_now());
  return 1;
}

/* The calling process's id: the Lua side compares it with the one it made
 * its loop in, to make a new loop after a fork (nginx's workers). */
static int core_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

static const luaL_Reg CORE_FUNCS[] = {
  { "new", core_new },
  { "now", core_now },
  { "getpid", core_getpid },
  { "versions", core_versions },
  { "sha256", ec_sha256 },
  { NULL, NULL }
};

#if defined(__GNUC__)
__attribute__((visibility("default")))
#endif
int luaopen_enrich_core(lua_State *L) {
  /* Reference-counted by libcurl: safe per Lua state (one per nginx worker). */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return luaL_error(L, "enrich.core: curl_global_init failed");
  if (luaL_newmetatable(L, EC_ENGINE_MT)) {
    ec_setfuncs(L, ENGINE_META);
    lua_newtable(L);
    ec_setfuncs(L, ENGINE_METHODS);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  ec_redis_open(L);

  lua_newtable(L);
  ec_setfuncs(L, CORE_FUNCS);
  ec_csv_open(L);
  ec_cli_open(L);
  lua_pushliteral(L, EC_NAME);
  lua_setfield(L, -2, "_NAME");
  lua_pushliteral(L, EC_VERSION);
  lua_setfield(L, -2, "_VERSION");
  ec_sqlite_open(L);                       /* core.sqlite: the durable store's binding */
  /* JSON null as decoded (cjson.null), so callers can compare against it. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  if (lua_pcall(L, 1, 1, 0) == 0) {
    lua_getfield(L, -1, "null");
    lua_setfield(L, -3, "null");
  }
  lua_pop(L, 1);
  return 1;
}
