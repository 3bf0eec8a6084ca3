/* Redis connections on the engine's own loop (hiredis's async API), so a
 * host that never blocks (OpenResty, a frame loop) can use Redis too.
 *
 *   local conn = engine:redis { host = "127.0.0.1", port = 6379 }
 *   local id = conn:command { "SET", "k", "v" }   -- returns at once
 *   engine:poll(t)  -- also wakes when Redis answers; the reply comes back
 *                   -- as a completion record: { id, redis = true, reply }
 *                   -- or { id, redis = true, error = { code, message } }
 *
 * The connection's socket sits in the engine's wait beside libcurl's (a
 * watch, watch.c); hiredis's read and write run from poll. hiredis's
 * callbacks run no Lua: each copies its reply into a C-owned record that
 * poll converts. Every command completes exactly once: with its reply, or
 * with code "network" when the connection went first (hiredis hands every
 * pending callback a NULL reply when it lets go of a context).
 *
 * Replies as Lua values, as Redis's own Lua scripting converts them: bulk
 * and simple strings → strings (a status inside an array → { ok = s }),
 * integers → integers, nil → false, arrays → tables, an error → the
 * record's error (code "redis"), or { err = s } inside an array.
 *
 * hiredis 0.14 has no connect timeout of its own: the connect is
 * non-blocking and the caller bounds it (the Lua client times out its first
 * command). A host name is resolved by getaddrinfo inside connect. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include "enrich_core.h"

#define EC_REDIS_MT "enrich.core.redis"
#define RD_MAX_ARGS 1048576

typedef struct rd_value {  /* a reply, copied out of hiredis */
  int type;
  long long integer;
  char *str;
  size_t len;
  size_t n;
  struct rd_value *elem;
} rd_value;

typedef struct rd_cmd {    /* one command: in flight, then waiting for poll */
  lua_Integer id;
  int failed;              /* no reply: the connection went first */
  char *errmsg;
  rd_value v;
  struct rd_cmd *next;
} rd_cmd;

typedef struct rd_conn rd_conn;

struct ec_rd {
  rd_cmd *head, *tail;     /* answered, not yet delivered by poll */
  rd_conn *conns;          /* every connection still attached */
};

struct rd_conn {
  ec_watch w;              /* first: a watch is its connection */
  ec_engine *e;            /* NULL once detached (closed, or the engine is) */
  redisAsyncContext *ac;   /* NULL once hiredis let go of it */
  int connected;
  size_t inflight;
  char err[200];           /* why it closed, if it did by error */
  rd_conn *prev, *next;
};

/* ---- replies: copied in the callback, turned into Lua by poll ---------- */

static void value_free(rd_value *v) {
  for (size_t i = 0; i < v->n; i++) value_free(&v->elem[i]);
  free(v->elem);
  free(v->str);
  v->elem = NULL; v->str = NULL; v->n = 0;
}

static int value_copy(rd_value *v, const redisReply *r) {
  memset(v, 0, sizeof *v);
  v->type = r->type;
  v->integer = r->integer;
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR) {
    v->str = malloc(r->len + 1);
    if (v->str == NULL) return -1;
    if (r->len) memcpy(v->str, r->str, r->len);
    v->str[r->len] = '\0';
    v->len = r->len;
  } else if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
    v->elem = calloc(r->elements, sizeof *v->elem);
    if (v->elem == NULL) return -1;
    v->n = r->elements;       /* hiredis bounds the nesting (7 levels) */
    for (size_t i = 0; i < r->elements; i++)
      if (value_copy(&v->elem[i], r->element[i]) != 0) return -1;
  }
  return 0;
}

static void push_value(lua_State *L, const rd_value *v) {
  luaL_checkstack(L, 4, "enrich.core: reply nested too deep");
  switch (v->type) {
    case REDIS_REPLY_STRING: lua_pushlstring(L, v->str, v->len); break;
    case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)v->integer); break;
    case REDIS_REPLY_ARRAY:
      lua_createtable(L, (int)v->n, 0);
      for (size_t i = 0; i < v->n; i++) {
        push_value(L, &v->elem[i]);
        lua_rawseti(L, -2, (int)i + 1);
      }
      break;
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      lua_createtable(L, 0, 1);
      lua_pushlstring(L, v->str, v->len);
      lua_setfield(L, -2, v->type == REDIS_REPLY_STATUS ? "ok" : "err");
      break;
    default: lua_pushboolean(L, 0); break;   /* nil */
  }
}

static void push_error(lua_State *L, const char *code, const char *msg, size_t len) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, code);
  lua_setfield(L, -2, "code");
  lua_pushlstring(L, msg, len);
  lua_setfield(L, -2, "message");
}

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static void conn_note_error(rd_conn *c, const char *why) {
  if (c->err[0] == '\0' && why && why[0]) snprintf(c->err, sizeof c->err, "%s", why);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
  rd_cmd *cmd = priv;
  rd_conn *c = ac->data;
  if (reply == NULL) {
    cmd->failed = 1;
    conn_note_error(c, ac->err ? ac->errstr : NULL);
    cmd->errmsg = dup_str(c->err[0] ? c->err : "connection closed");
  } else if (value_copy(&cmd->v, reply) != 0) {
    value_free(&cmd->v);
    cmd->failed = 1;
  }
  c->inflight--;
  ec_rd *rd = c->e->rd;          /* attached: detach frees after these run */
  if (rd->tail) rd->tail->next = cmd; else rd->head = cmd;
  rd->tail = cmd;
  c->e->wdone++;
}

/* ---- hiredis's event hooks: the watch's interest ------------------------ */

static void ev_set(rd_conn *c, int on, int what) {
  if (c->e == NULL) return;
  int ev = on ? (c->w.events | what) : (c->w.events & ~what);
  ec_watch_set(c->e, &c->w, ev);
}
static void ev_add_read(void *p) { ev_set(p, 1, EC_WATCH_READ); }
static void ev_del_read(void *p) { ev_set(p, 0, EC_WATCH_READ); }
static void ev_add_write(void *p) { ev_set(p, 1, EC_WATCH_WRITE); }
static void ev_del_write(void *p) { ev_set(p, 0, EC_WATCH_WRITE); }

/* hiredis is letting go of the context (it closes the socket next). */
static void ev_cleanup(void *p) {
  rd_conn *c = p;
  if (c->ac && c->ac->err) conn_note_error(c, c->ac->errstr);
  if (c->e) ec_watch_set(c->e, &c->w, 0);
  c->w.fd = -1;
  c->ac = NULL;
  c->connected = 0;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  rd_conn *c = ac->data;
  if (status == REDIS_OK) c->connected = 1;
  else conn_note_error(c, ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  if (status != REDIS_OK) conn_note_error(ac->data, ac->errstr);
}

static void on_ready(ec_watch *w, int events) {
  rd_conn *c = (rd_conn *)w;
  if ((events & EC_WATCH_READ) && c->ac) redisAsyncHandleRead(c->ac);
  if ((events & EC_WATCH_WRITE) && c->ac) redisAsyncHandleWrite(c->ac);  /* may be gone now */
}

/* ---- the connection handle ---------------------------------------------- */

static rd_conn *check_conn(lua_State *L, int i) {
  return luaL_checkudata(L, i, EC_REDIS_MT);
}

/* Pending commands fail (their records come with the next poll); the
 * connection leaves the engine. Idempotent. */
static void conn_close(rd_conn *c) {
  if (c->ac) {
    conn_note_error(c, "connection closed");
    redisAsyncFree(c->ac);          /* runs the callbacks, then ev_cleanup */
    c->ac = NULL;
  }
  if (c->e) {
    ec_rd *rd = c->e->rd;
    ec_watch_remove(c->e, &c->w);
    if (c->prev) c->prev->next = c->next; else rd->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->e = NULL;
  }
}

static int conn_gc(lua_State *L) {
  conn_close(check_conn(L, 1));
  return 0;
}

/* conn:command(argv) -> id | nil, err: sends one command (an array of
 * strings and numbers, binary-safe); its reply comes from engine:poll. */
static int conn_command(lua_State *L) {
  rd_conn *c = check_conn(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  size_t argc = ec_rawlen(L, 2);
  luaL_argcheck(L, argc >= 1 && argc <= RD_MAX_ARGS, 2, "a command is a non-empty array of strings");
  if (c->ac == NULL || c->e == NULL) {
    const char *why = c->err[0] ? c->err : "connection closed";
    lua_pushnil(L);
    push_error(L, "network", why, strlen(why));
    return 2;
  }
  luaL_checkstack(L, (int)(argc > 1000000 ? 1000000 : argc) + 4, "enrich.core: too many arguments");
  const char **argv = malloc(argc * sizeof *argv);
  size_t *lens = malloc(argc * sizeof *lens);
  rd_cmd *cmd = calloc(1, sizeof *cmd);
  if (!argv || !lens || !cmd) {
    free(argv); free(lens); free(cmd);
    return luaL_error(L, "enrich.core: out of memory");
  }
  int base = lua_gettop(L);
  for (size_t i = 0; i < argc; i++) {
    lua_rawgeti(L, 2, (int)i + 1);   /* kept on the stack: a number's string lives there */
    int t = lua_type(L, -1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER) {
      free(argv); free(lens); free(cmd);
      return luaL_error(L, "redis command: argument %d must be a string or a number", (int)i + 1);
    }
    argv[i] = lua_tolstring(L, -1, &lens[i]);
  }
  ec_engine *e = c->e;
  cmd->id = ++e->next_id;
  /* hiredis copies the arguments into its output buffer here. */
  int rc = redisAsyncCommandArgv(c->ac, on_reply, cmd, (int)argc, argv, lens);
  free(argv); free(lens);
  lua_settop(L, base);
  if (rc != REDIS_OK) {
    free(cmd);
    const char *why = c->err[0] ? c->err : "connection closing";
    lua_pushnil(L);
    push_error(L, "network", why, strlen(why));
    return 2;
  }
  c->inflight++;
  e->live++;
  lua_pushinteger(L, cmd->id);
  return 1;
}

/* conn:status() -> "connecting" | "connected" | "closed" [, why] */
static int conn_status(lua_State *L) {
  rd_conn *c = check_conn(L, 1);
  if (c->ac && c->e) {
    lua_pushstring(L, c->connected ? "connected" : "connecting");
    return 1;
  }
  lua_pushliteral(L, "closed");
  if (c->err[0]) { lua_pushstring(L, c->err); return 2; }
  return 1;
}

static int conn_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_conn(L, 1)->inflight);
  return 1;
}

static int conn_tostring(lua_State *L) {
  rd_conn *c = check_conn(L, 1);
  lua_pushfstring(L, "enrich.core.redis (%p, %s)", (void *)c,
                  c->ac ? (c->connected ? "connected" : "connecting") : "closed");
  return 1;
}

static const luaL_Reg CONN_META[] = {
  { "__gc", conn_gc },
  { "__close", conn_gc },
  { "__tostring", conn_tostring },
  { NULL, NULL }
};

static const luaL_Reg CONN_METHODS[] = {
  { "command", conn_command },
  { "status", conn_status },
  { "pending", conn_pending },
  { "close", conn_gc },
  { NULL, NULL }
};

void ec_redis_open(lua_State *L) {
  if (luaL_newmetatable(L, EC_REDIS_MT)) {
    ec_setfuncs(L, CONN_META);
    lua_newtable(L);
    ec_setfuncs(L, CONN_METHODS);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

static const char *const CONNECT_OPTIONS[] = { "host", "port", NULL };

/* engine:redis { host = "127.0.0.1", port = 6379 } -> conn | nil, err.
 * Returns at once; the connection completes on the engine's loop. */
int ec_redis_connect(lua_State *L) {
  ec_engine *e = luaL_checkudata(L, 1, EC_ENGINE_MT);
  if (e->multi == NULL) return luaL_error(L, "enrich.core: engine is closed");
  if (lua_isnoneornil(L, 2)) { lua_settop(L, 1); lua_newtable(L); }
  luaL_checktype(L, 2, LUA_TTABLE);
  ec_check_fields(L, 2, CONNECT_OPTIONS, "engine:redis");
  lua_getfield(L, 2, "host");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    return luaL_error(L, "engine:redis: 'host' must be a string");
  const char *host = lua_isnil(L, -1) ? "127.0.0.1" : lua_tostring(L, -1);
  lua_getfield(L, 2, "port");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TNUMBER)
    return luaL_error(L, "engine:redis: 'port' must be a number");
  lua_Number port = lua_isnil(L, -1) ? 6379 : lua_tonumber(L, -1);
  if (!(port >= 1 && port <= 65535) || port != (lua_Number)(int)port)
    return luaL_error(L, "engine:redis: 'port' must be a whole number from 1 to 65535");

  if (e->rd == NULL && (e->rd = calloc(1, sizeof *e->rd)) == NULL)
    return luaL_error(L, "enrich.core: out of memory");
  rd_conn *c = lua_newuserdata(L, sizeof *c);   /* safe empty state first */
  memset(c, 0, sizeof *c);
  c->w.fd = -1;
  luaL_getmetatable(L, EC_REDIS_MT);
  lua_setmetatable(L, -2);

  redisAsyncContext *ac = redisAsyncConnect(host, (int)port);
  if (ac == NULL || ac->err) {
    const char *why = ac ? ac->errstr : "out of memory";
    lua_pushnil(L);
    push_error(L, "network", why, strlen(why));
    if (ac) redisAsyncFree(ac);
    return 2;
  }
  ac->data = c;
  c->ac = ac;
  c->e = e;
  c->w.fd = ac->c.fd;
  c->w.ready = on_ready;
  ec_watch_add(e, &c->w);
  c->next = e->rd->conns;
  if (c->next) c->next->prev = c;
  e->rd->conns = c;
  ac->ev.data = c;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  redisAsyncSetConnectCallback(ac, on_connect);   /* asks for writability: the connect's end */
  lua_pushvalue(L, -1);
  return 1;
}

/* poll: the answered commands, after the transfers, up to `max` in all. */
int ec_redis_deliver(lua_State *L, ec_engine *e, int arr, int n, lua_Integer max) {
  ec_rd *rd = e->rd;
  while (rd && rd->head && (max == 0 || n < max)) {
    rd_cmd *cmd = rd->head;
    rd->head = cmd->next;
    if (rd->head == NULL) rd->tail = NULL;
    e->wdone--;
    e->live--;
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, cmd->id);
    lua_setfield(L, -2, "id");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "redis");
    if (cmd->failed) {
      const char *m = cmd->errmsg ? cmd->errmsg : "out of memory";
      push_error(L, cmd->errmsg ? "network" : "memory", m, strlen(m));
      lua_setfield(L, -2, "error");
    } else if (cmd->v.type == REDIS_REPLY_ERROR) {
      push_error(L, "redis", cmd->v.str, cmd->v.len);
      lua_setfield(L, -2, "error");
    } else {
      push_value(L, &cmd->v);
      lua_setfield(L, -2, "reply");
    }
    lua_rawseti(L, arr, ++n);
    value_free(&cmd->v);
    free(cmd->errmsg);
    free(cmd);
  }
  return n;
}

/* At engine close: every connection closes (its pending commands fail),
 * then every record still waiting goes. */
void ec_redis_detach(ec_engine *e) {
  ec_rd *rd = e->rd;
  if (rd == NULL) return;
  while (rd->conns) conn_close(rd->conns);
  while (rd->head) {
    rd_cmd *cmd = rd->head;
    rd->head = cmd->next;
    value_free(&cmd->v);
    free(cmd->errmsg);
    free(cmd);
  }
  free(rd);
  e->rd = NULL;
  e->wdone = 0;
}
