/* enrich.core.sqlite: a thin binding of libsqlite3 for the durable store.
 *
 *   core.sqlite.open(path [, opts]) -> db          a connection (Lua thread)
 *     db:exec(sql), db:prepare(sql) -> stmt, db:busy_timeout(seconds),
 *     db:changes(), db:last_insert_rowid(), db:close()
 *     stmt:bind(i, v), stmt:bind_blob(i, s), stmt:step() -> true (row) | false (done),
 *     stmt:row() -> { v1, v2, ... }, stmt:reset(), stmt:finalize()
 *   core.sqlite.writer(path, opts) -> w            writes on a thread of its own
 *     w:add(k, ...) queues statement k with its parameters into the open batch,
 *     w:commit([kill]) hands the batch over (BEGIN; every statement; COMMIT)
 *     and returns its sequence number; w:done() -> last finished sequence,
 *     failures; w:wait(seq); w:fd() (readable once a batch finished); w:close().
 *
 * Integers are bound and read as 64-bit (Lua integers on 5.3+; doubles on
 * 5.1/LuaJIT, exact up to 2^53). Strings are bound as TEXT with their length
 * (embedded zeros kept), bind_blob binds a BLOB; both read back as strings.
 * Runtime failures return nil, message, code (a stable word: "full",
 * "ioerr", "busy", "readonly", "notadb", "corrupt", "cantopen",
 * "constraint", "locked", "error", ...). Misuse raises.
 *
 * open's `lock` takes an exclusive flock() on a lock file beside the
 * database: one process per store. The writer owns a second connection;
 * Lua values are copied into C-owned batches; its thread never touches Lua. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "enrich_core.h"

#define DB_MT     "enrich.core.sqlite.db"
#define STMT_MT   "enrich.core.sqlite.stmt"
#define WRITER_MT "enrich.core.sqlite.writer"

/* ---- errors ---------------------------------------------------------------- */

static const struct { int rc; const char *code; } CODES[] = {
  { SQLITE_FULL, "full" }, { SQLITE_IOERR, "ioerr" }, { SQLITE_BUSY, "busy" },
  { SQLITE_LOCKED, "locked" }, { SQLITE_READONLY, "readonly" }, { SQLITE_NOTADB, "notadb" },
  { SQLITE_CORRUPT, "corrupt" }, { SQLITE_CANTOPEN, "cantopen" },
  { SQLITE_CONSTRAINT, "constraint" }, { SQLITE_NOMEM, "nomem" }, { SQLITE_PERM, "perm" },
  { SQLITE_MISUSE, "misuse" }, { SQLITE_TOOBIG, "toobig" }, { SQLITE_RANGE, "range" },
  { 0, NULL }
};

/* A write that hit the end of the disk (or of a file-size limit, or a
 * quota) is "full" whatever SQLite calls it (it says IOERR for EFBIG). */
static int is_full_errno(int e) {
  return e == ENOSPC || e == EFBIG
#ifdef EDQUOT
    || e == EDQUOT
#endif
    ;
}

static const char *code_word(int rc) {
  for (int i = 0; CODES[i].code; i++)
    if ((rc & 0xff) == CODES[i].rc) return CODES[i].code;
  return "error";
}

/* SQLite's message, with the system's reason for an I/O failure. Call it
 * right after the failing call, on the thread that made it. */
static void format_error(sqlite3 *db, int rc, char *out, size_t n, const char **code) {
  int last = errno;                    /* SQLite does not always keep it (EFBIG, say) */
  int e = db ? sqlite3_system_errno(db) : 0;
  if (e == 0 && (rc & 0xff) == SQLITE_IOERR) e = last;
  int io = (rc & 0xff) == SQLITE_IOERR || (rc & 0xff) == SQLITE_FULL || (rc & 0xff) == SQLITE_CANTOPEN;
  const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if (io && e != 0) snprintf(out, n, "%s (%s)", msg, strerror(e));
  else snprintf(out, n, "%s", msg);
  *code = io && is_full_errno(e) ? "full" : code_word(rc);
}

static int push_error(lua_State *L, sqlite3 *db, int rc) {
  char msg[512];
  const char *code;
  format_error(db, rc, msg, sizeof msg, &code);
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

/* ---- the lock file ------------------------------------------------------------ */

/* Takes an exclusive flock on `path` (made if missing) and writes our pid
 * into it. Returns the fd, or -1 with a message pushed. */
static int take_lock(lua_State *L, const char *path) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    lua_pushfstring(L, "cannot open the lock file %s: %s", path, strerror(errno));
    lua_pushstring(L, errno == EACCES || errno == EROFS ? "readonly" : "cantopen");
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    char buf[32] = { 0 };
    ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
    long pid = r > 0 ? strtol(buf, NULL, 10) : 0;
    close(fd);
    if (e == EWOULDBLOCK) {
      if (pid > 0) lua_pushfstring(L, "the store is in use by another process (pid %d; lock file %s)", (int)pid, path);
      else lua_pushfstring(L, "the store is in use by another process (lock file %s)", path);
      lua_pushliteral(L, "busy");
    } else {
      lua_pushfstring(L, "cannot lock %s: %s", path, strerror(e));
      lua_pushliteral(L, "error");
    }
    return -1;
  }
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) { /* the lock holds anyway */ }
  return fd;
}

/* ---- connections ------------------------------------------------------------ */

typedef struct sq_stmt sq_stmt;

typedef struct sq_db {
  sqlite3 *db;              /* NULL once closed */
  pid_t pid;                /* the process that opened it */
  int lockfd;               /* -1: no lock file held */
  sq_stmt *stmts;           /* live statements, finalized by close */
} sq_db;

struct sq_stmt {
  sqlite3_stmt *st;         /* NULL once finalized (or its db closed) */
  sq_db *owner;
  int owner_ref;            /* keeps the db userdata alive while we live */
  sq_stmt *prev, *next;
};

static sq_db *check_db(lua_State *L, int i) {
  sq_db *d = luaL_checkudata(L, i, DB_MT);
  if (d->db == NULL) luaL_error(L, "enrich.core.sqlite: the database is closed");
  if (d->pid != getpid())
    luaL_error(L, "enrich.core.sqlite: this connection was opened before a fork; open it in this process");
  return d;
}

static void stmt_unlink(sq_stmt *s) {
  if (s->owner == NULL) return;
  if (s->prev) s->prev->next = s->next; else s->owner->stmts = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
}

static int db_close(lua_State *L) {
  sq_db *d = luaL_checkudata(L, 1, DB_MT);
  if (d->db == NULL) return 0;
  for (sq_stmt *s = d->stmts; s; s = s->next) {   /* their handles die with the db */
    sqlite3_finalize(s->st);
    s->st = NULL;
  }
  /* A forked child must not close the parent's file locks: let it go. */
  if (d->pid == getpid()) {
    sqlite3_close_v2(d->db);
    if (d->lockfd >= 0) close(d->lockfd);   /* releases the flock */
  }
  d->db = NULL;
  d->lockfd = -1;
  return 0;
}

static int db_tostring(lua_State *L) {
  sq_db *d = luaL_checkudata(L, 1, DB_MT);
  lua_pushfstring(L, "enrich.core.sqlite.db (%p%s)", (void *)d, d->db ? "" : ", closed");
  return 1;
}

static const char *const OPEN_OPTIONS[] = { "readonly", "create", "busy_timeout", "lock", NULL };

/* core.sqlite.open(path [, { readonly, create = true, busy_timeout = s,
 * lock = path }]): with `lock`, an exclusive flock() on that file is taken
 * first (and held until close): a second process gets nil, message, "busy". */

static int sq_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int readonly = 0, create = 1;
  int busy = 5000;
  const char *lock = NULL;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    ec_check_fields(L, 2, OPEN_OPTIONS, "sqlite.open");
    lua_getfield(L, 2, "readonly"); readonly = lua_toboolean(L, -1); lua_pop(L, 1);
    lua_getfield(L, 2, "create"); if (!lua_isnil(L, -1)) create = lua_toboolean(L, -1); lua_pop(L, 1);
    busy = (int)ec_seconds_field(L, 2, "busy_timeout", busy);
    lua_getfield(L, 2, "lock");
    lock = lua_tostring(L, -1);          /* the options table keeps it alive */
    lua_pop(L, 1);
  }
  sq_db *d = lua_newuserdata(L, sizeof *d);
  memset(d, 0, sizeof *d);
  d->lockfd = -1;
  luaL_getmetatable(L, DB_MT);
  lua_setmetatable(L, -2);
  if (lock && (d->lockfd = take_lock(L, lock)) < 0) {
    lua_pushnil(L);
    lua_insert(L, -3);
    return 3;
  }
  int flags = readonly ? SQLITE_OPEN_READONLY
                       : SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    int n = push_error(L, db, rc);
    sqlite3_close_v2(db);
    if (d->lockfd >= 0) { close(d->lockfd); d->lockfd = -1; }
    return n;
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, busy);
  d->db = db;
  d->pid = getpid();
  return 1;
}

static int db_exec(lua_State *L) {
  sq_db *d = check_db(L, 1);
  const char *sql = luaL_checkstring(L, 2);
  int rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
  if (rc != SQLITE_OK) return push_error(L, d->db, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* db:busy_timeout(seconds): how long a statement waits for another
 * connection's lock before it fails with "busy" (as open's option). */
static int db_busy_timeout(lua_State *L) {
  sq_db *d = check_db(L, 1);
  lua_Number s = luaL_checknumber(L, 2);
  luaL_argcheck(L, s >= 0 && s <= 86400, 2, "seconds from 0 to 86400");
  sqlite3_busy_timeout(d->db, (int)(s * 1000 + 0.5));
  return 0;
}

static int db_changes(lua_State *L) {
  sq_db *d = check_db(L, 1);
  lua_pushinteger(L, sqlite3_changes(d->db));
  return 1;
}

static int db_last_insert_rowid(lua_State *L) {
  sq_db *d = check_db(L, 1);
  lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(d->db));
  return 1;
}

/* ---- statements ------------------------------------------------------------- */

static sq_stmt *check_stmt(lua_State *L, int i) {
  sq_stmt *s = luaL_checkudata(L, i, STMT_MT);
  if (s->st == NULL) luaL_error(L, "enrich.core.sqlite: the statement is finalized (or its database closed)");
  if (s->owner->pid != getpid())
    luaL_error(L, "enrich.core.sqlite: this statement was prepared before a fork");
  return s;
}

static int stmt_finalize(lua_State *L) {
  sq_stmt *s = luaL_checkudata(L, 1, STMT_MT);
  if (s->owner == NULL) return 0;
  if (s->st) sqlite3_finalize(s->st);
  s->st = NULL;
  stmt_unlink(s);
  s->owner = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, s->owner_ref);
  s->owner_ref = LUA_NOREF;
  return 0;
}

static int db_prepare(lua_State *L) {
  sq_db *d = check_db(L, 1);
  size_t n;
  const char *sql = luaL_checklstring(L, 2, &n);
  sq_stmt *s = lua_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  s->owner_ref = LUA_NOREF;
  luaL_getmetatable(L, STMT_MT);
  lua_setmetatable(L, -2);
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(d->db, sql, (int)n, &st, NULL);
  if (rc != SQLITE_OK) return push_error(L, d->db, rc);
  if (st == NULL) luaL_argerror(L, 2, "no SQL statement");
  s->st = st;
  s->owner = d;
  lua_pushvalue(L, 1);
  s->owner_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  s->next = d->stmts;
  if (d->stmts) d->stmts->prev = s;
  d->stmts = s;
  return 1;
}

/* An integer-valued Lua number, as SQLite's 64-bit integer when it is one. */
static int to_int64(lua_State *L, int i, sqlite3_int64 *out) {
#if LUA_VERSION_NUM >= 503
  if (lua_isinteger(L, i)) { *out = (sqlite3_int64)lua_tointeger(L, i); return 1; }
  return 0;
#else
  lua_Number x = lua_tonumber(L, i);
  if (x >= -9223372036854775808.0 && x < 9223372036854775808.0 && x == (lua_Number)(sqlite3_int64)x) {
    *out = (sqlite3_int64)x;
    return 1;
  }
  return 0;
#endif
}

static int stmt_bind(lua_State *L) {
  sq_stmt *s = check_stmt(L, 1);
  int i = (int)luaL_checkinteger(L, 2);
  int rc;
  switch (lua_type(L, 3)) {
    case LUA_TNIL: case LUA_TNONE: rc = sqlite3_bind_null(s->st, i); break;
    case LUA_TBOOLEAN: rc = sqlite3_bind_int(s->st, i, lua_toboolean(L, 3)); break;
    case LUA_TNUMBER: {
      sqlite3_int64 v;
      if (to_int64(L, 3, &v)) rc = sqlite3_bind_int64(s->st, i, v);
      else rc = sqlite3_bind_double(s->st, i, (double)lua_tonumber(L, 3));
      break;
    }
    case LUA_TSTRING: {
      size_t n;
      const char *p = lua_tolstring(L, 3, &n);
      rc = sqlite3_bind_text(s->st, i, p, (int)n, SQLITE_TRANSIENT);
      break;
    }
    default:
      return luaL_argerror(L, 3, "nil, boolean, number or string expected");
  }
  if (rc == SQLITE_RANGE) return luaL_argerror(L, 2, "no such parameter");
  if (rc != SQLITE_OK) return push_error(L, s->owner->db, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int stmt_bind_blob(lua_State *L) {
  sq_stmt *s = check_stmt(L, 1);
  int i = (int)luaL_checkinteger(L, 2);
  size_t n;
  const char *p = luaL_checklstring(L, 3, &n);
  int rc = sqlite3_bind_blob(s->st, i, p, (int)n, SQLITE_TRANSIENT);
  if (rc == SQLITE_RANGE) return luaL_argerror(L, 2, "no such parameter");
  if (rc != SQLITE_OK) return push_error(L, s->owner->db, rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int stmt_step(lua_State *L) {
  sq_stmt *s = check_stmt(L, 1);
  int rc = sqlite3_step(s->st);
  if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
    lua_pushboolean(L, rc == SQLITE_ROW);
    return 1;
  }
  int n = push_error(L, s->owner->db, rc);
  sqlite3_reset(s->st);                /* ready for another go */
  return n;
}

static void push_column(lua_State *L, sqlite3_stmt *st, int c) {
  switch (sqlite3_column_type(st, c)) {
    case SQLITE_INTEGER: lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, c)); break;
    case SQLITE_FLOAT: lua_pushnumber(L, sqlite3_column_double(st, c)); break;
    case SQLITE_TEXT: {
      const unsigned char *p = sqlite3_column_text(st, c);
      lua_pushlstring(L, (const char *)p, (size_t)sqlite3_column_bytes(st, c));
      break;
    }
    case SQLITE_BLOB: {
      const void *p = sqlite3_column_blob(st, c);
      lua_pushlstring(L, p ? p : "", (size_t)sqlite3_column_bytes(st, c));
      break;
    }
    default: lua_pushnil(L);
  }
}

/* The current row as an array (NULLs leave holes: read by index). */
static int stmt_row(lua_State *L) {
  sq_stmt *s = check_stmt(L, 1);
  int n = sqlite3_data_count(s->st);
  lua_createtable(L, n, 0);
  for (int c = 0; c < n; c++) {
    push_column(L, s->st, c);
    lua_rawseti(L, -2, c + 1);
  }
  return 1;
}

static int stmt_reset(lua_State *L) {
  sq_stmt *s = check_stmt(L, 1);
  sqlite3_reset(s->st);
  sqlite3_clear_bindings(s->st);
  return 0;
}

static int stmt_tostring(lua_State *L) {
  sq_stmt *s = luaL_checkudata(L, 1, STMT_MT);
  lua_pushfstring(L, "enrich.core.sqlite.stmt (%p%s)", (void *)s, s->st ? "" : ", finalized");
  return 1;
}

/* ---- the writer ---------------------------------------------------------------- */

enum { V_NULL, V_INT, V_FLOAT, V_TEXT };

typedef struct sq_val {
  int type;
  sqlite3_int64 i;
  double d;
  char *p;                  /* V_TEXT: owned copy */
  size_t n;
} sq_val;

typedef struct sq_op {
  struct sq_op *next;
  int stmt, nvals;
  sq_val vals[];
} sq_op;

typedef struct sq_batch {
  struct sq_batch *next;
  unsigned long seq;
  int kill;                 /* a test's crash point: SIGKILL between the statements and COMMIT */
  sq_op *head, *tail;
  int rc;                   /* after the commit: SQLITE_OK or why it was rolled back */
  char *err;
  const char *code;         /* a static word */
} sq_batch;

typedef struct sq_writer {
  sqlite3 *db;              /* NULL once closed */
  sqlite3_stmt **stmts;
  int nstmts;
  pid_t pid;
  int threaded, started, stop, closed;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;        /* the thread waits for work; wait() for progress */
  sq_batch *open;           /* Lua thread only: being filled */
  sq_batch *q_head, *q_tail;      /* handed over, not yet committed */
  sq_batch *f_head, *f_tail;      /* finished, not yet collected by done() */
  unsigned long next_seq, done_seq;
  int pipe[2];              /* a byte in it: batches finished since done() */
  int signalled;
} sq_writer;

static void free_batch(sq_batch *b) {
  if (b == NULL) return;
  sq_op *o = b->head;
  while (o) {
    sq_op *next = o->next;
    for (int i = 0; i < o->nvals; i++) free(o->vals[i].p);
    free(o);
    o = next;
  }
  free(b->err);
  free(b);
}

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* Runs one batch in one transaction; on any failure rolls it all back. */
static void run_batch(sq_writer *w, sq_batch *b) {
  sqlite3 *db = w->db;
  char msg[512];
  msg[0] = 0;
  int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  for (sq_op *o = b->head; o && rc == SQLITE_OK; o = o->next) {
    sqlite3_stmt *st = w->stmts[o->stmt];
    for (int i = 0; i < o->nvals && rc == SQLITE_OK; i++) {
      sq_val *v = &o->vals[i];
      switch (v->type) {
        case V_INT: rc = sqlite3_bind_int64(st, i + 1, v->i); break;
        case V_FLOAT: rc = sqlite3_bind_double(st, i + 1, v->d); break;
        case V_TEXT: rc = sqlite3_bind_text(st, i + 1, v->p, (int)v->n, SQLITE_STATIC); break;
        default: rc = sqlite3_bind_null(st, i + 1);
      }
    }
    if (rc == SQLITE_OK) {
      int s = sqlite3_step(st);
      if (s != SQLITE_DONE && s != SQLITE_ROW) {
        rc = s;                        /* read the reason now: reset forgets it */
        format_error(db, rc, msg, sizeof msg, &b->code);
      }
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  if (rc == SQLITE_OK && b->kill) kill(getpid(), SIGKILL);
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    if (msg[0] == 0) format_error(db, rc, msg, sizeof msg, &b->code);
    b->err = dup_str(msg);
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  }
  b->rc = rc;
}

/* A batch is over: counted, queued for done(), signalled. Under mu. The
 * Lua thread frees it (in done()): memory malloc'd on one thread and freed
 * on another takes the allocator's lock of the first, and a host's malloc
 * must never wait for a background thread that holds it. */
static void batch_done(sq_writer *w, sq_batch *b) {
  w->done_seq = b->seq;
  b->next = NULL;
  if (w->f_tail) w->f_tail->next = b; else w->f_head = b;
  w->f_tail = b;
  if (!w->signalled && w->pipe[1] >= 0) {
    char c = 1;
    ssize_t r;
    do r = write(w->pipe[1], &c, 1); while (r < 0 && errno == EINTR);
    w->signalled = 1;
  }
  pthread_cond_broadcast(&w->cv);
}

static void *writer_main(void *arg) {
  sq_writer *w = arg;
#ifdef SCHED_BATCH
  /* As the core's I/O thread: a background worker whose wakeups do not
   * preempt the host's thread on a shared core (Linux; best effort). */
  struct sched_param sp = { 0 };
  pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#endif
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (w->q_head == NULL && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
    if (w->q_head == NULL) break;      /* stop, and nothing left to commit */
    sq_batch *b = w->q_head;
    w->q_head = b->next;
    if (w->q_head == NULL) w->q_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    run_batch(w, b);
    pthread_mutex_lock(&w->mu);
    batch_done(w, b);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static sq_writer *check_writer(lua_State *L, int i) {
  sq_writer *w = luaL_checkudata(L, i, WRITER_MT);
  if (w->closed || w->db == NULL) luaL_error(L, "enrich.core.sqlite: the writer is closed");
  if (w->pid != getpid())
    luaL_error(L, "enrich.core.sqlite: this writer was made before a fork; open the store in this process");
  return w;
}

static int writer_close(lua_State *L) {
  sq_writer *w = luaL_checkudata(L, 1, WRITER_MT);
  if (w->closed) return 0;
  w->closed = 1;
  if (w->pid != getpid()) {            /* a forked child: the thread and locks are the parent's */
    w->db = NULL;
    return 0;
  }
  if (w->started) {                    /* commits what was handed over, then stops */
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    w->started = 0;
  }
  free_batch(w->open);
  w->open = NULL;
  while (w->f_head) { sq_batch *b = w->f_head; w->f_head = b->next; free_batch(b); }
  w->f_tail = NULL;
  for (int i = 0; i < w->nstmts; i++) sqlite3_finalize(w->stmts[i]);
  free(w->stmts);
  w->stmts = NULL;
  w->nstmts = 0;
  if (w->db) sqlite3_close_v2(w->db);
  w->db = NULL;
  for (int i = 0; i < 2; i++) if (w->pipe[i] >= 0) { close(w->pipe[i]); w->pipe[i] = -1; }
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
  return 0;
}

/* w:add(k, ...): statement k (1-based, as given to writer()) with its
 * parameters, into the open batch. Values are copied. */
static int writer_add(lua_State *L) {
  sq_writer *w = check_writer(L, 1);
  int k = (int)luaL_checkinteger(L, 2);
  luaL_argcheck(L, k >= 1 && k <= w->nstmts, 2, "no such statement");
  int n = lua_gettop(L) - 2;
  luaL_argcheck(L, n == sqlite3_bind_parameter_count(w->stmts[k - 1]), 3,
                "wrong number of parameters for this statement");
  for (int i = 0; i < n; i++) {        /* check before allocating anything */
    int t = lua_type(L, 3 + i);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN && t != LUA_TNUMBER && t != LUA_TSTRING)
      luaL_argerror(L, 3 + i, "nil, boolean, number or string expected");
  }
  if (w->open == NULL) {
    w->open = calloc(1, sizeof *w->open);
    if (w->open == NULL) return luaL_error(L, "enrich.core.sqlite: out of memory");
  }
  sq_op *o = calloc(1, sizeof *o + (size_t)n * sizeof(sq_val));
  if (o == NULL) return luaL_error(L, "enrich.core.sqlite: out of memory");
  o->stmt = k - 1;
  o->nvals = n;
  /* Linked first, so an out-of-memory below leaves nothing unowned. */
  if (w->open->tail) w->open->tail->next = o; else w->open->head = o;
  w->open->tail = o;
  for (int i = 0; i < n; i++) {
    sq_val *v = &o->vals[i];
    int idx = 3 + i;
    switch (lua_type(L, idx)) {
      case LUA_TBOOLEAN: v->type = V_INT; v->i = lua_toboolean(L, idx); break;
      case LUA_TNUMBER:
        if (to_int64(L, idx, &v->i)) v->type = V_INT;
        else { v->type = V_FLOAT; v->d = (double)lua_tonumber(L, idx); }
        break;
      case LUA_TSTRING: {
        size_t len;
        const char *p = lua_tolstring(L, idx, &len);
        v->p = malloc(len ? len : 1);
        if (v->p == NULL) return luaL_error(L, "enrich.core.sqlite: out of memory");
        memcpy(v->p, p, len);
        v->n = len;
        v->type = V_TEXT;
        break;
      }
      default: v->type = V_NULL;
    }
  }
  return 0;
}

/* w:commit([kill]) -> seq: hands the open batch over (an empty one too: its
 * sequence number still tells when everything before it is durable). */
static int writer_commit(lua_State *L) {
  sq_writer *w = check_writer(L, 1);
  sq_batch *b = w->open;
  if (b == NULL && (b = calloc(1, sizeof *b)) == NULL)
    return luaL_error(L, "enrich.core.sqlite: out of memory");
  w->open = NULL;
  b->kill = lua_toboolean(L, 2);
  unsigned long seq = b->seq = ++w->next_seq;     /* b may be freed once done */
  if (!w->threaded) {
    run_batch(w, b);
    pthread_mutex_lock(&w->mu);
    batch_done(w, b);
    pthread_mutex_unlock(&w->mu);
  } else {
    pthread_mutex_lock(&w->mu);
    if (w->q_tail) w->q_tail->next = b; else w->q_head = b;
    w->q_tail = b;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
  }
  lua_pushinteger(L, (lua_Integer)seq);
  return 1;
}

/* Under mu: takes what finished since the last look (the caller frees it,
 * after unlocking, with push_done). */
static sq_batch *take_done(sq_writer *w, unsigned long *done) {
  if (w->signalled) {
    char buf[16];
    ssize_t r;
    do r = read(w->pipe[0], buf, sizeof buf); while (r < 0 && errno == EINTR);
    w->signalled = 0;
  }
  *done = w->done_seq;
  sq_batch *fin = w->f_head;
  w->f_head = w->f_tail = NULL;
  return fin;
}

/* Pushes done and the failures among `fin` (or nil), and frees `fin`. */
static int push_done(lua_State *L, unsigned long done, sq_batch *fin) {
  lua_pushinteger(L, (lua_Integer)done);
  int n = 0;
  while (fin) {
    sq_batch *b = fin;
    fin = b->next;
    if (b->rc != SQLITE_OK) {
      if (n == 0) lua_newtable(L);
      lua_createtable(L, 0, 3);
      lua_pushinteger(L, (lua_Integer)b->seq);
      lua_setfield(L, -2, "seq");
      lua_pushstring(L, b->err ? b->err : sqlite3_errstr(b->rc));
      lua_setfield(L, -2, "message");
      lua_pushstring(L, b->code ? b->code : code_word(b->rc));
      lua_setfield(L, -2, "code");
      lua_rawseti(L, -2, ++n);
    }
    free_batch(b);
  }
  if (n == 0) lua_pushnil(L);
  return 2;
}

/* w:done() -> seq, failures: the last batch finished (every one before it
 * is finished too), and { {seq, message, code}, ... } for batches rolled
 * back since the last call, or nil. Never waits. */
static int writer_done(lua_State *L) {
  sq_writer *w = check_writer(L, 1);
  unsigned long done;
  pthread_mutex_lock(&w->mu);
  sq_batch *fin = take_done(w, &done);
  pthread_mutex_unlock(&w->mu);
  return push_done(L, done, fin);
}

/* w:wait([seq]) -> as done(), once batch `seq` (default: the last handed
 * over) has finished. Blocks: for close and for hosts that may wait. */
static int writer_wait(lua_State *L) {
  sq_writer *w = check_writer(L, 1);
  unsigned long seq = (unsigned long)luaL_optinteger(L, 2, (lua_Integer)w->next_seq), done;
  pthread_mutex_lock(&w->mu);
  while (w->done_seq < seq && w->started) pthread_cond_wait(&w->cv, &w->mu);
  sq_batch *fin = take_done(w, &done);
  pthread_mutex_unlock(&w->mu);
  return push_done(L, done, fin);
}

static int writer_fd(lua_State *L) {
  sq_writer *w = check_writer(L, 1);
  if (w->pipe[0] < 0) lua_pushnil(L); else lua_pushinteger(L, w->pipe[0]);
  return 1;
}

static int writer_tostring(lua_State *L) {
  sq_writer *w = luaL_checkudata(L, 1, WRITER_MT);
  lua_pushfstring(L, "enrich.core.sqlite.writer (%p%s)", (void *)w, w->closed ? ", closed" : "");
  return 1;
}

static const char *const WRITER_OPTIONS[] = { "statements", "setup", "thread", "busy_timeout", NULL };

/* core.sqlite.writer(path, { statements = { sql, ... }, setup = { sql, ... },
 *                            thread = true, busy_timeout = s }): the
 * database must exist (the store makes it and its tables first). */
static int sq_writer_new(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  ec_check_fields(L, 2, WRITER_OPTIONS, "sqlite.writer");
  lua_settop(L, 2);
  lua_getfield(L, 2, "statements");
  luaL_argcheck(L, lua_istable(L, 3), 2, "'statements' must be a table of SQL strings");
  int nst = (int)ec_rawlen(L, 3);
  lua_getfield(L, 2, "setup");
  luaL_argcheck(L, lua_isnil(L, 4) || lua_istable(L, 4), 2, "'setup' must be a table of SQL strings");
  lua_getfield(L, 2, "thread");
  int threaded = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_pop(L, 1);
  int busy = (int)ec_seconds_field(L, 2, "busy_timeout", 5000);
  const int st_idx = 3, setup_idx = 4;

  /* Empty and safe to collect first, then the resources. */
  sq_writer *w = lua_newuserdata(L, sizeof *w);
  memset(w, 0, sizeof *w);
  w->pipe[0] = w->pipe[1] = -1;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  w->pid = getpid();
  luaL_getmetatable(L, WRITER_MT);
  lua_setmetatable(L, -2);
  int ud = lua_gettop(L);

  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    int n = push_error(L, db, rc);
    sqlite3_close_v2(db);
    return n;
  }
  w->db = db;                          /* from here on, close() frees what we hold */
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, busy);
  if (lua_istable(L, setup_idx)) {
    int n = (int)ec_rawlen(L, setup_idx);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, setup_idx, i);
      const char *sql = lua_tostring(L, -1);
      if (sql == NULL) return luaL_error(L, "sqlite.writer: setup[%d] must be a string", i);
      rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
      lua_pop(L, 1);
      if (rc != SQLITE_OK) return push_error(L, db, rc);
    }
  }
  w->stmts = calloc((size_t)(nst > 0 ? nst : 1), sizeof *w->stmts);
  if (w->stmts == NULL) return luaL_error(L, "enrich.core.sqlite: out of memory");
  for (int i = 1; i <= nst; i++) {
    lua_rawgeti(L, st_idx, i);
    size_t len;
    const char *sql = lua_tolstring(L, -1, &len);
    if (sql == NULL) return luaL_error(L, "sqlite.writer: statements[%d] must be a string", i);
    rc = sqlite3_prepare_v3(db, sql, (int)len, SQLITE_PREPARE_PERSISTENT, &w->stmts[i - 1], NULL);
    lua_pop(L, 1);
    if (rc != SQLITE_OK) return push_error(L, db, rc);
    w->nstmts = i;
  }
  if (pipe2(w->pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot make a pipe: %s", strerror(errno));
    lua_pushliteral(L, "error");
    return 3;
  }
  w->threaded = threaded;
  if (threaded) {
    /* Every signal blocked on the thread: they stay with the host's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&w->thread, NULL, writer_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "cannot start the writer thread: %s", strerror(e));
      lua_pushliteral(L, "error");
      return 3;
    }
    w->started = 1;
  }
  lua_pushvalue(L, ud);
  return 1;
}

/* ---- module -------------------------------------------------------------------- */

static const luaL_Reg DB_META[] = {
  { "__gc", db_close }, { "__close", db_close }, { "__tostring", db_tostring }, { NULL, NULL }
};
static const luaL_Reg DB_METHODS[] = {
  { "exec", db_exec }, { "prepare", db_prepare }, { "busy_timeout", db_busy_timeout },
  { "changes", db_changes }, { "last_insert_rowid", db_last_insert_rowid },
  { "close", db_close }, { NULL, NULL }
};
static const luaL_Reg STMT_META[] = {
  { "__gc", stmt_finalize }, { "__close", stmt_finalize }, { "__tostring", stmt_tostring }, { NULL, NULL }
};
static const luaL_Reg STMT_METHODS[] = {
  { "bind", stmt_bind }, { "bind_blob", stmt_bind_blob }, { "step", stmt_step },
  { "row", stmt_row }, { "reset", stmt_reset }, { "finalize", stmt_finalize }, { NULL, NULL }
};
static const luaL_Reg WRITER_META[] = {
  { "__gc", writer_close }, { "__close", writer_close }, { "__tostring", writer_tostring }, { NULL, NULL }
};
static const luaL_Reg WRITER_METHODS[] = {
  { "add", writer_add }, { "commit", writer_commit }, { "done", writer_done },
  { "wait", writer_wait }, { "fd", writer_fd }, { "close", writer_close }, { NULL, NULL }
};

static void new_type(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods) {
  if (luaL_newmetatable(L, name)) {
    ec_setfuncs(L, meta);
    lua_newtable(L);
    ec_setfuncs(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* CPU seconds the calling thread has used: what the store's benchmark
 * charges to the host's thread (the writer's own time is not in it). */
static int sq_thread_cpu(lua_State *L) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static const luaL_Reg SQLITE_FUNCS[] = {
  { "open", sq_open }, { "writer", sq_writer_new }, { "thread_cpu", sq_thread_cpu }, { NULL, NULL }
};

/* Sets module.sqlite (the module table is on top of the stack). */
void ec_sqlite_open(lua_State *L) {
  new_type(L, DB_MT, DB_META, DB_METHODS);
  new_type(L, STMT_MT, STMT_META, STMT_METHODS);
  new_type(L, WRITER_MT, WRITER_META, WRITER_METHODS);
  lua_newtable(L);
  ec_setfuncs(L, SQLITE_FUNCS);
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "version");
  lua_setfield(L, -2, "sqlite");
}
