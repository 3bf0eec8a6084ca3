/* Private declarations shared by the files of enrich.core. Nothing here is
 * exported from the shared object except luaopen_enrich_core. */
#ifndef ENRICH_CORE_H
#define ENRICH_CORE_H

#include <stddef.h>
#include <sys/types.h>
#include <curl/curl.h>
#include "lua.h"
#include "lauxlib.h"
#include "compat.h"

#define EC_NAME      "enrich.core"
#define EC_VERSION   "0.1.0"
#define EC_ENGINE_MT "enrich.core.engine"

/* libcurl features we use past our floor (7.61) are gated on one macro. */
#define EC_CURL_AT_LEAST(v) (LIBCURL_VERSION_NUM >= (v))

#define EC_DEFAULT_MAX_BODY     (16u * 1024u * 1024u)
#define EC_MAX_HEADER_BYTES     (256u * 1024u)
#define EC_DEFAULT_JSON_DEPTH   128
#define EC_EASY_POOL_MAX        64

/* A growable byte buffer that outlives one Lua call (luaL_Buffer cannot). */
typedef struct ec_buf {
  char *data;
  size_t len, cap;
} ec_buf;

int  ec_buf_append(ec_buf *b, const char *p, size_t n);  /* 0, or -1: no memory */
void ec_buf_free(ec_buf *b);

typedef struct ec_engine ec_engine;
typedef struct ec_xfer ec_xfer;
typedef struct ec_io ec_io;

/* Where a transfer of an engine with an I/O thread is (thread.c): who may
 * touch its list links (EC_AT_LUA, 0: being built, or delivered). Written
 * by either thread, always under the engine's io lock. */
enum { EC_AT_LUA, EC_IN_INBOX, EC_IN_ACTIVE, EC_IN_OUTBOX };

typedef enum { EC_DECODE_AUTO, EC_DECODE_ALWAYS, EC_DECODE_NEVER } ec_decode;

/* One transfer, owned by C from submit until poll has delivered it. */
struct ec_xfer {
  CURL *easy;
  ec_engine *eng;
  lua_Integer id;
  struct curl_slist *headers;
  ec_buf body, head;
  size_t max_body;
  int too_large;           /* body or headers passed the cap */
  int cancelled;
  int finished;            /* in the done list, waiting for delivery */
  int in_multi;            /* added to the multi handle, not yet removed */
  int where;               /* EC_AT_LUA..EC_IN_OUTBOX (with an I/O thread) */
  int cancel_req;          /* cancel asked, the I/O thread has yet to act */
  int is_head;             /* HEAD: no body, nothing to decode */
  ec_decode decode;
  CURLcode result;
  ec_xfer *prev, *next;    /* in the engine's active or done list */
  char errbuf[CURL_ERROR_SIZE];
};

typedef struct ec_list {
  ec_xfer *head, *tail;
  size_t n;
} ec_list;

/* A descriptor the engine's wait watches besides libcurl's (redis.c: a
 * Redis connection), so poll wakes when it is ready. `ready` is C only and
 * never runs Lua: it fills C-owned records that poll hands over later. */
enum { EC_WATCH_READ = 1, EC_WATCH_WRITE = 2 };
typedef struct ec_watch {
  int fd;
  int events;               /* EC_WATCH_*: what is wanted now */
  int in_set;               /* registered in the epoll set */
  void (*ready)(struct ec_watch *w, int events);
  struct ec_watch *prev, *next;
} ec_watch;
typedef struct ec_rd ec_rd;  /* redis.c's per-engine state */

/* Per-engine settings: never global, so engines side by side stay apart. */
typedef struct ec_settings {
  long timeout_ms, connect_timeout_ms;
  size_t max_body;
  char *user_agent;
  char *ca_file;
  int verify_tls;
  int follow_redirects;
  long max_redirects;
  int timings;              /* completions carry a `time` table */
} ec_settings;

struct ec_engine {
  CURLM *multi;             /* NULL once closed */
  int ref;                  /* registry ref: { [id] = xfer, decode = fn } */
  lua_Integer next_id;
  ec_list active, done;     /* with an I/O thread, active is that thread's */
  size_t live;              /* submitted and not yet delivered */
  ec_io *io;                /* the I/O thread, or NULL: poll drives libcurl */
  CURL *pool[EC_EASY_POOL_MAX];  /* idle easy handles, reset before reuse */
  int pool_n;
  int epfd;                 /* epoll set of libcurl's sockets, or -1 */
  double timer_at;          /* when libcurl wants its timeout action, or -1 */
  pid_t pid;                /* the process that made it: elsewhere (a fork's
                               child) it refuses work and never calls libcurl */
  int busy;                 /* inside its own JSON decoder: methods refuse */
  ec_settings set;
  ec_watch *watches;        /* extra descriptors (redis.c), or NULL */
  size_t wdone;             /* their records waiting for poll */
  ec_rd *rd;                /* redis.c's state, or NULL */
};

/* list.c-free helpers live in xfer.c */
void ec_list_push(ec_list *l, ec_xfer *x);
void ec_list_remove(ec_list *l, ec_xfer *x);

/* xfer.c: option helpers shared with core.c (they raise on misuse) */
void ec_check_fields(lua_State *L, int idx, const char *const *names, const char *what);
long ec_seconds_field(lua_State *L, int idx, const char *name, long dflt);
size_t ec_size_field(lua_State *L, int idx, const char *name, size_t dflt);

/* xfer.c: building and freeing transfers; ec_xfer_new does not start it */
ec_xfer *ec_xfer_new(lua_State *L, ec_engine *e, int req_idx);
void ec_xfer_unplug(ec_engine *e, ec_xfer *x);  /* out of the multi handle, if in */
void ec_xfer_free(ec_engine *e, ec_xfer *x);

/* loop.c: waiting on libcurl and driving it */
double ec_now(void);
int  ec_to_ms(double seconds);              /* rounded up, capped at INT_MAX */
int  ec_loop_open(ec_engine *e);            /* 0, or -1 */
void ec_loop_drain(ec_engine *e, ec_list *to); /* libcurl's finished transfers → to */
void ec_loop_close(ec_engine *e);
/* Until a completion or the deadline, handling at most max_events ready
 * sockets per wait (0: the default, 64). */
void ec_loop_run(ec_engine *e, double deadline, int max_events, double work);
double ec_loop_timeout(ec_engine *e);       /* seconds, or -1: nothing scheduled */
int  ec_loop_fd(const ec_engine *e);        /* pollable fd, or -1 */

/* watch.c: extra descriptors in the engine's wait (see ec_watch). */
void ec_watch_add(ec_engine *e, ec_watch *w);
void ec_watch_set(ec_engine *e, ec_watch *w, int events);  /* EC_WATCH_* wanted */
void ec_watch_remove(ec_engine *e, ec_watch *w);
int  ec_watch_fire(ec_engine *e, int fd, int events);  /* 0: not a watched fd */
/* Polls the watches (and `extra`, if >= 0: a descriptor to read) for at
 * most `ms`, fires the ready ones; returns 1 if `extra` turned readable. */
int  ec_watch_poll(ec_engine *e, int extra, int ms);

/* redis.c: Redis connections on the engine's loop. */
void ec_redis_open(lua_State *L);           /* the connection type's metatable */
int  ec_redis_connect(lua_State *L);        /* engine:redis(opts) */
void ec_redis_detach(ec_engine *e);         /* at engine close: every connection closes */
int  ec_redis_deliver(lua_State *L, ec_engine *e, int arr, int n, lua_Integer max);

/* sha256.c: core.sha256(s) -> hex */
int  ec_sha256(lua_State *L);

/* thread.c: an engine whose transfers run on their own thread (io_thread):
 * submit hands a built transfer over, poll collects finished ones. */
const char *ec_io_start(ec_engine *e);      /* NULL, or why it could not start */
void ec_io_stop(ec_engine *e);              /* joins; every transfer it held goes to e->done */
void ec_io_submit(ec_engine *e, ec_xfer *x); /* queued until ec_io_flush */
void ec_io_flush(ec_engine *e);             /* wakes the thread for what was queued */
int  ec_io_cancel(ec_engine *e, ec_xfer *x); /* 1: will be delivered as cancelled */
void ec_io_collect(ec_engine *e, double timeout); /* finished transfers → e->done */
double ec_io_timeout(ec_engine *e);         /* 0 when finished ones wait, else -1 */
int  ec_io_fd(const ec_engine *e);          /* readable while finished ones wait */
void ec_io_forget(ec_engine *e);            /* in a fork's child: our descriptors only */

/* result.c: turning a finished transfer into a Lua completion record */
void ec_push_completion(lua_State *L, ec_engine *e, ec_xfer *x, int decode_idx);

/* sqlite.c: sets module.sqlite on the module table at the top of the stack */
void ec_sqlite_open(lua_State *L);

/* csv.c, cli.c: what the `enrich` command needs (CSV through libcsv, UTF-8,
 * a digest; SIGINT and isatty); each adds functions to the table on top. */
void ec_csv_open(lua_State *L);
void ec_cli_open(lua_State *L);

#endif
