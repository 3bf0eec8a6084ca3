/* Small things the `enrich` command needs from the OS and plain Lua
 * cannot do: tell whether two paths name one file, know whether stderr is a terminal (to redraw a status line in
 * place) and notice Ctrl-C without dying, so it can stop new submits, leave
 * what is in flight recorded, and exit 130.
 *
 * The SIGINT handler only bumps a volatile sig_atomic_t; the command reads
 * it between turns of its loop (core.sigint_count()). No Lua runs in the
 * handler. A wait in epoll/poll is cut short by the signal (EINTR), so the
 * loop comes round to look soon. */
#define _XOPEN_SOURCE 700   /* realpath */
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "enrich_core.h"

static volatile sig_atomic_t sigint_seen = 0;

static void on_sigint(int sig) {
  (void)sig;
  if (sigint_seen < 1000) sigint_seen++;
}

/* core.sigint_catch(on) -> true | nil, message: on = true installs the
 * counting handler (process-wide: the command is the only user), false
 * restores the default action. */
static int sigint_catch(lua_State *L) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = lua_toboolean(L, 1) || lua_isnone(L, 1) ? on_sigint : SIG_DFL;
  if (sigaction(SIGINT, &sa, NULL) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "sigaction failed");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.sigint_count() -> how many SIGINTs arrived since the handler went in. */
static int sigint_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sigint_seen);
  return 1;
}

/* core.isatty(fd) -> boolean */
static int is_tty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)) == 1);
  return 1;
}

/* core.file_key(path) -> string: two paths that name the same file get the
 * same key. An existing file is known by device and inode (a symlink, a
 * hard link, "./x" and "x" alike); a file not there yet by the real path
 * of its directory and its own name. */
static int file_key(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  char dir[PATH_MAX], real[PATH_MAX];
  const char *slash, *base;
  if (stat(path, &st) == 0) {
    lua_pushfstring(L, "inode:%f:%f", (lua_Number)st.st_dev, (lua_Number)st.st_ino);
    return 1;
  }
  slash = strrchr(path, '/');
  if (slash && (size_t)(slash - path) < sizeof dir) {
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
    if (dir[0] == '\0') strcpy(dir, "/");
    base = slash + 1;
  } else {
    strcpy(dir, ".");
    base = path;
  }
  if (realpath(dir, real) == NULL) {
    lua_pushfstring(L, "path:%s", path);
    return 1;
  }
  lua_pushfstring(L, "path:%s%s%s", real, strcmp(real, "/") == 0 ? "" : "/", base);
  return 1;
}

static const luaL_Reg CLI_FUNCS[] = {
  { "file_key", file_key },
  { "sigint_catch", sigint_catch },
  { "sigint_count", sigint_count },
  { "isatty", is_tty },
  { NULL, NULL }
};

/* Adds the functions to the module table on top of the stack. */
void ec_cli_open(lua_State *L) {
  ec_setfuncs(L, CLI_FUNCS);
}
