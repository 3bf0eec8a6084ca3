/* A host that ticks: a C program that embeds Lua 5.4 the way a game or a
 * desktop tool does, loads enrich, lets a script (game.lua) submit jobs, and
 * calls enrich.tick() once per frame at 60 frames a second until no job is
 * live. It times every tick() call and prints the frame count, the median,
 * the 99th percentile and the worst tick, then one machine-readable line:
 *
 *   jobs=500 succeeded=500 ... frames=93 median_ms=0.041 p99_ms=0.412 worst_ms=0.733
 *
 * usage: enrich-host SIM_URL JOBS [PER_FRAME [MAX_SECONDS]]
 *   PER_FRAME    jobs the script submits per frame (0: all in the first frame)
 *   MAX_SECONDS  stop after this long even if jobs are still live (60)
 * environment: ENRICH_ROOT (the repository, default "."), ENRICH_HOST_SCRIPT
 *   (default $ENRICH_ROOT/examples/host/game.lua), ENRICH_HOST_GC=idle (run
 *   the collector in the idle rest of each frame instead of inside tick).
 *
 * Build: make -C examples/host   (or: cc -O2 -Wall -Wextra -Werror
 *   $(pkg-config --cflags lua5.4) -o enrich-host host.c $(pkg-config --libs lua5.4))
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define FPS 60
#define FRAME_NS (1000000000L / FPS)
#define MAX_JOBS 1000000

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of this thread: a tick's own work, without the time the kernel
 * gave to other processes meanwhile (a loopback server on the same cores). */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The message handler for every call into Lua: the error with a traceback. */
static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the function below nargs arguments with a traceback handler; on error
 * prints what failed and returns 0, leaving the stack as before the call. */
static int call(lua_State *L, int nargs, int nresults, const char *what) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (rc != LUA_OK) {
    fprintf(stderr, "enrich-host: %s: %s\n", what, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* package.path and package.cpath: the repository's lua/ and build/5.4/ first. */
static int set_paths(lua_State *L, const char *root) {
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) { lua_pop(L, 1); return 0; }
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", root, root, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  lua_getfield(L, -1, "cpath");
  lua_pushfstring(L, "%s/build/5.4/?.so;%s", root, lua_tostring(L, -1));
  lua_setfield(L, -3, "cpath");
  lua_pop(L, 2);
  return 1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The q-quantile of sorted values (nearest rank). */
static double quantile(const double *v, int n, double q) {
  int i = (int)(q * n + 0.999999) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return v[i];
}

static void sleep_until(const struct timespec *t) {
  for (int i = 0; i < 100; i++)         /* bounded: a signal storm cannot spin us */
    if (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) != EINTR) return;
}

static void add_ns(struct timespec *t, long ns) {
  t->tv_nsec += ns;
  while (t->tv_nsec >= 1000000000L) { t->tv_nsec -= 1000000000L; t->tv_sec++; }
}

static int before(const struct timespec *a, const struct timespec *b) {
  return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static int usage(void) {
  fprintf(stderr, "usage: enrich-host SIM_URL JOBS [PER_FRAME [MAX_SECONDS]]\n");
  return 2;
}

/* Everything that holds the Lua state; returns the exit status. */
/* Per-frame measurements, in seconds. */
typedef struct {
  double *tick;       /* wall time inside enrich.tick() */
  double *cpu;        /* this thread's CPU time inside enrich.tick() */
  double *update;     /* wall time inside game.update() */
} samples;

static void report(const char *name, double *v, int n, int last) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  double sum = 0;
  for (int i = 0; i < n; i++) sum += v[i];
  printf("%s_median_ms=%.3f %s_p99_ms=%.3f %s_worst_ms=%.3f %s_mean_ms=%.3f%s", name, 1e3 * quantile(v, n, 0.5),
         name, 1e3 * quantile(v, n, 0.99), name, 1e3 * v[n - 1], name, 1e3 * sum / n, last ? "\n" : " ");
}

static int run(lua_State *L, samples *sm, int max_frames,
               const char *url, int jobs, int per_frame, int gc_idle) {
  const char *root = getenv("ENRICH_ROOT");
  if (root == NULL || *root == '\0') root = ".";
  luaL_openlibs(L);
  if (!set_paths(L, root)) { fprintf(stderr, "enrich-host: no package library\n"); return 1; }

  /* enrich.tick, kept on the stack: no lookup per frame. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "enrich");
  if (!call(L, 1, 1, "require 'enrich'")) return 1;
  lua_getfield(L, -1, "tick");
  if (!lua_isfunction(L, -1)) { fprintf(stderr, "enrich-host: enrich.tick is not a function\n"); return 1; }
  int tick = lua_gettop(L);

  /* The script returns the game: { update = fn(frame) -> jobs left to submit,
   * summary = fn() -> line, ok }. */
  const char *script = getenv("ENRICH_HOST_SCRIPT");
  lua_pushfstring(L, "%s/examples/host/game.lua", root);
  if (script == NULL || *script == '\0') script = lua_tostring(L, -1);
  if (luaL_loadfile(L, script) != LUA_OK) {
    fprintf(stderr, "enrich-host: %s\n", lua_tostring(L, -1));
    return 1;
  }
  lua_pushstring(L, url);
  lua_pushinteger(L, jobs);
  lua_pushinteger(L, per_frame);
  if (!call(L, 3, 1, script)) return 1;
  if (!lua_istable(L, -1)) { fprintf(stderr, "enrich-host: %s must return a table\n", script); return 1; }
  int game = lua_gettop(L);

  if (gc_idle) lua_gc(L, LUA_GCSTOP);   /* collected in the idle rest of each frame */
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next);
  double t_start = now_s();
  int frames = 0;
  lua_Integer left = 1, live = 1;
  while (frames < max_frames && (left > 0 || live > 0)) {
    double t0 = now_s();
    lua_getfield(L, game, "update");
    lua_pushinteger(L, frames + 1);
    if (!call(L, 1, 1, "game.update")) return 1;
    left = lua_tointeger(L, -1);
    lua_pop(L, 1);

    double t1 = now_s(), c1 = cpu_s();
    lua_pushvalue(L, tick);
    if (!call(L, 0, 1, "enrich.tick")) return 1;
    double t2 = now_s(), c2 = cpu_s();
    live = lua_tointeger(L, -1);
    lua_pop(L, 1);
    sm->update[frames] = t1 - t0;
    sm->tick[frames] = t2 - t1;
    sm->cpu[frames] = c2 - c1;
    frames++;

    add_ns(&next, FRAME_NS);
    if (gc_idle) {
      /* Small steps while the frame has time left (bounded). */
      for (int i = 0; i < 64; i++) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        add_ns(&t, 2000000L);           /* keep 2 ms of slack before the frame */
        if (!before(&t, &next)) break;
        if (lua_gc(L, LUA_GCSTEP, 0)) break;
      }
    }
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (before(&next, &t)) next = t;     /* late: start the next frame now, no catch-up burst */
    else sleep_until(&next);
  }
  double seconds = now_s() - t_start;

  lua_getfield(L, game, "summary");
  if (!call(L, 0, 2, "game.summary")) return 1;
  int ok = lua_toboolean(L, -1);
  const char *line = lua_tostring(L, -2);

  /* Human first, then one machine-readable line; median_ms, p99_ms and
   * worst_ms are the wall time inside tick(). */
  qsort(sm->tick, (size_t)frames, sizeof *sm->tick, cmp_double);
  printf("%d frames at %d fps in %.2f s; wall time in enrich.tick(): median %.3f ms, p99 %.3f ms, worst %.3f ms\n",
         frames, FPS, seconds, 1e3 * quantile(sm->tick, frames, 0.5), 1e3 * quantile(sm->tick, frames, 0.99),
         1e3 * sm->tick[frames - 1]);
  printf("%s frames=%d live=%lld seconds=%.3f median_ms=%.3f p99_ms=%.3f worst_ms=%.3f ", line ? line : "?",
         frames, (long long)live, seconds, 1e3 * quantile(sm->tick, frames, 0.5),
         1e3 * quantile(sm->tick, frames, 0.99), 1e3 * sm->tick[frames - 1]);
  report("cpu", sm->cpu, frames, 0);
  report("update", sm->update, frames, 1);
  if (live > 0) fprintf(stderr, "enrich-host: %lld jobs still live after %d frames\n", (long long)live, frames);
  return (ok && live == 0) ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc < 3 || argc > 5) return usage();
  char *end;
  long jobs = strtol(argv[2], &end, 10);
  if (*end || jobs < 1 || jobs > MAX_JOBS) return usage();
  long per_frame = argc > 3 ? strtol(argv[3], &end, 10) : 0;
  if (argc > 3 && (*end || per_frame < 0 || per_frame > MAX_JOBS)) return usage();
  double max_seconds = argc > 4 ? strtod(argv[4], &end) : 60;
  if (argc > 4 && (*end || !(max_seconds > 0 && max_seconds <= 3600))) return usage();
  const char *gc = getenv("ENRICH_HOST_GC");
  int gc_idle = gc != NULL && strcmp(gc, "idle") == 0;

  int max_frames = (int)(max_seconds * FPS) + 1;
  samples sm;
  sm.tick = malloc((size_t)max_frames * sizeof *sm.tick);
  sm.cpu = malloc((size_t)max_frames * sizeof *sm.cpu);
  sm.update = malloc((size_t)max_frames * sizeof *sm.update);
  lua_State *L = luaL_newstate();
  int status = 1;
  if (sm.tick == NULL || sm.cpu == NULL || sm.update == NULL || L == NULL)
    fprintf(stderr, "enrich-host: out of memory\n");
  else
    status = run(L, &sm, max_frames, argv[1], (int)jobs, (int)per_frame, gc_idle);
  if (L) lua_close(L);
  free(sm.tick);
  free(sm.cpu);
  free(sm.update);
  return status;
}
