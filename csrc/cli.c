/* Two small things the `enrich` command needs from the OS and plain Lua
 * cannot do: know whether stderr is a terminal (to redraw a status line in
 * place) and notice Ctrl-C without dying, so it can stop new submits, leave
 * what is in flight recorded, and exit 130.
 *
 * The SIGINT handler only bumps a volatile sig_atomic_t; the command reads
 * it between turns of its loop (core.sigint_count()). No Lua runs in the
 * handler. A wait in epoll/poll is cut short by the signal (EINTR), so the
 * loop comes round to look soon. */
#include <signal.h>
#include <string.h>
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

static const luaL_Reg CLI_FUNCS[] = {
  { "sigint_catch", sigint_catch },
  { "sigint_count", sigint_count },
  { "isatty", is_tty },
  { NULL, NULL }
};

/* Adds the functions to the module table on top of the stack. */
void ec_cli_open(lua_State *L) {
  ec_setfuncs(L, CLI_FUNCS);
}
