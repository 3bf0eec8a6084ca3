/* CSV for the `enrich` command, through libcsv (a maintained RFC 4180
 * parser): a streaming parser fed chunks that hands back rows as arrays of
 * strings with the line each row starts on, and a formatter that quotes a
 * field the way csv_write does, only where a field needs it.
 *
 * libcsv calls our callbacks from inside csv_parse; they only copy bytes
 * into C-owned buffers (a Lua error there would longjmp through libcsv and
 * leave its state torn). The Lua tables are made after csv_parse returns.
 *
 * Also here, because only the command needs them: a UTF-8 check and a
 * 64-bit FNV-1a digest (the run's fingerprint of its input file). */
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <csv.h>
#include "enrich_core.h"

#define EC_CSV_MT "enrich.core.csv_parser"

typedef struct { size_t off, len; } csv_span;
typedef struct { size_t first, n; long line; } csv_row;

typedef struct ec_csv {
  struct csv_parser p;
  int open;                 /* csv_init done, csv_free not yet */
  int failed;               /* a parse error was returned: the parser is spent */
  int check_utf8;
  int bom_done;             /* the stream's first bytes were looked at */
  unsigned char bom[3];
  size_t bom_n;
  long line;                /* physical line being fed, from 1 */
  long rec_lf;              /* line feeds inside the current record's fields */
  long rec_start;           /* line where the open record began (for faults) */
  int rec_bad;              /* the current record has invalid UTF-8 */
  long bad_line;            /* first row with invalid UTF-8, or 0 */
  int oom;
  ec_buf text;              /* field bytes of the rows parsed in this call */
  csv_span *spans; size_t nspans, capspans;
  csv_row *rows; size_t nrows, caprows;
  size_t rec_first;         /* first span of the current record */
} ec_csv;

/* ---- UTF-8 -------------------------------------------------------------- */

/* Length of the valid UTF-8 prefix of s (RFC 3629: no overlongs, no
 * surrogates, nothing past U+10FFFF); NUL counts as invalid, since a text
 * file of records has none. */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c >= 0x01 && c < 0x80) { i++; continue; }
    size_t need; unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) { need = 2; lo = 0xA0; }
    else if (c == 0xED) { need = 2; hi = 0x9F; }
    else if (c >= 0xE1 && c <= 0xEF) need = 2;
    else if (c == 0xF0) { need = 3; lo = 0x90; }
    else if (c == 0xF4) { need = 3; hi = 0x8F; }
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else return i;
    if (i + need >= n) return i;                 /* truncated */
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k <= need; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    i += need + 1;
  }
  return n;
}

/* ---- libcsv callbacks: bytes into C buffers only ------------------------ */

static int grow(void **arr, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return 0;
  size_t c = *cap ? *cap * 2 : 64;
  void *a = realloc(*arr, c * size);
  if (a == NULL) return -1;
  *arr = a;
  *cap = c;
  return 0;
}

static void on_field(void *s, size_t len, void *data) {
  ec_csv *c = data;
  if (c->oom) return;
  if (grow((void **)&c->spans, &c->capspans, c->nspans, sizeof(csv_span)) != 0) { c->oom = 1; return; }
  csv_span *sp = &c->spans[c->nspans++];
  sp->off = c->text.len;
  sp->len = len;
  if (len > 0 && ec_buf_append(&c->text, s, len) != 0) { c->oom = 1; return; }
  for (const char *q = s, *end = (const char *)s + len; q && q < end; q++) {
    q = memchr(q, '\n', (size_t)(end - q));
    if (q == NULL) break;
    c->rec_lf++;
  }
  if (c->check_utf8 && !c->rec_bad && utf8_valid_prefix(s, len) != len) c->rec_bad = 1;
}

static void on_row(int term, void *data) {
  ec_csv *c = data;
  (void)term;
  if (c->oom) return;
  if (grow((void **)&c->rows, &c->caprows, c->nrows, sizeof(csv_row)) != 0) { c->oom = 1; return; }
  csv_row *r = &c->rows[c->nrows++];
  r->first = c->rec_first;
  r->n = c->nspans - c->rec_first;
  r->line = c->line - c->rec_lf;
  if (c->rec_bad && c->bad_line == 0) c->bad_line = r->line;
  c->rec_first = c->nspans;
  c->rec_lf = 0;
  c->rec_bad = 0;
}

/* ---- the parser handle -------------------------------------------------- */

static ec_csv *check_csv(lua_State *L, int i) {
  ec_csv *c = luaL_checkudata(L, i, EC_CSV_MT);
  if (!c->open) luaL_error(L, "enrich.core: csv parser is closed");
  return c;
}

static int csv_close(lua_State *L) {
  ec_csv *c = luaL_checkudata(L, 1, EC_CSV_MT);
  if (c->open) { csv_free(&c->p); c->open = 0; }
  ec_buf_free(&c->text);
  free(c->spans); c->spans = NULL; c->nspans = c->capspans = 0;
  free(c->rows); c->rows = NULL; c->nrows = c->caprows = 0;
  return 0;
}

/* Records with no bytes between separators are plain empty fields; spaces
 * are data (libcsv trims them by default, which would alter the columns we
 * promise to carry through untouched). */
static int never_space(unsigned char ch) { (void)ch; return 0; }

/* core.csv_parser{ strict = true, utf8 = true } -> parser */
static int csv_new(lua_State *L) {
  int strict = 1, utf8 = 1;
  if (!lua_isnoneornil(L, 1)) {
    static const char *const names[] = { "strict", "utf8", NULL };
    luaL_checktype(L, 1, LUA_TTABLE);
    ec_check_fields(L, 1, names, "csv_parser");
    lua_getfield(L, 1, "strict");
    if (!lua_isnil(L, -1)) strict = lua_toboolean(L, -1);
    lua_getfield(L, 1, "utf8");
    if (!lua_isnil(L, -1)) utf8 = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  ec_csv *c = lua_newuserdata(L, sizeof *c);      /* safe empty state first */
  memset(c, 0, sizeof *c);
  luaL_getmetatable(L, EC_CSV_MT);
  lua_setmetatable(L, -2);
  if (csv_init(&c->p, strict ? (CSV_STRICT | CSV_STRICT_FINI) : 0) != 0)
    return luaL_error(L, "enrich.core: csv_init failed (no memory)");
  c->open = 1;
  csv_set_space_func(&c->p, never_space);
  c->check_utf8 = utf8;
  c->line = c->rec_start = 1;
  return 1;
}

/* Pushes the rows collected so far as { {fields...}, ... }, { line, ... }
 * and empties the buffers (the open record's spans are kept). */
static void push_rows(lua_State *L, ec_csv *c) {
  lua_createtable(L, (int)c->nrows, 0);
  lua_createtable(L, (int)c->nrows, 0);
  for (size_t i = 0; i < c->nrows; i++) {
    csv_row *r = &c->rows[i];
    lua_createtable(L, (int)r->n, 0);
    for (size_t k = 0; k < r->n; k++) {
      csv_span *sp = &c->spans[r->first + k];
      lua_pushlstring(L, c->text.data ? c->text.data + sp->off : "", sp->len);
      lua_rawseti(L, -2, (int)k + 1);
    }
    lua_rawseti(L, -3, (int)i + 1);
    lua_pushinteger(L, r->line);
    lua_rawseti(L, -2, (int)i + 1);
  }
  /* Keep the fields of a record still open (a quoted newline across chunks). */
  size_t keep_from = c->rec_first, keep_n = c->nspans - c->rec_first;
  if (keep_n > 0) {
    size_t off0 = c->spans[keep_from].off;
    memmove(c->text.data, c->text.data + off0, c->text.len - off0);
    c->text.len -= off0;
    for (size_t k = 0; k < keep_n; k++) {
      c->spans[k] = c->spans[keep_from + k];
      c->spans[k].off -= off0;
    }
  } else {
    c->text.len = 0;
  }
  c->nspans = keep_n;
  c->rec_first = 0;
  c->nrows = 0;
}

/* nil, message, line: the parser is spent after a fault. */
static int csv_fail(lua_State *L, ec_csv *c, const char *msg, long line) {
  c->failed = 1;
  c->nrows = 0;
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushinteger(L, line);
  return 3;
}

static int after_parse(lua_State *L, ec_csv *c) {
  if (c->oom) return luaL_error(L, "enrich.core: csv parser out of memory");
  if (c->bad_line) return csv_fail(L, c, "invalid UTF-8 (or a NUL byte)", c->bad_line);
  return 0;
}

/* Feeds bytes one line at a time so each row knows its line. */
static int feed_bytes(lua_State *L, ec_csv *c, const char *s, size_t n) {
  while (n > 0) {
    const char *lf = memchr(s, '\n', n);
    size_t seg = lf ? (size_t)(lf - s) + 1 : n;
    if (csv_parse(&c->p, s, seg, on_field, on_row, c) != seg) {
      int e = csv_error(&c->p);
      if (e == CSV_EPARSE)
        return csv_fail(L, c, "malformed CSV: a quote inside an unquoted field, or text after a closing quote",
                        c->line);
      return luaL_error(L, "enrich.core: csv: %s", csv_strerror(e));
    }
    int r = after_parse(L, c);
    if (r) return r;
    if (lf) c->line++;
    /* pstate 0 is libcsv's "row not begun": the next record starts later. */
    if (c->p.pstate == 0) c->rec_start = c->line;
    s += seg;
    n -= seg;
  }
  return 0;
}

/* parser:feed(chunk) -> rows, lines | nil, message, line */
static int csv_feed(lua_State *L) {
  ec_csv *c = check_csv(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (c->failed) luaL_error(L, "enrich.core: csv parser already failed");
  /* A UTF-8 byte order mark opens the stream at most once; it may be split
   * across chunks. */
  while (!c->bom_done && n > 0) {
    static const unsigned char BOM[3] = { 0xEF, 0xBB, 0xBF };
    if ((unsigned char)*s != BOM[c->bom_n]) {
      c->bom_done = 1;
      size_t held = c->bom_n;
      c->bom_n = 0;
      int r = feed_bytes(L, c, (const char *)c->bom, held);
      if (r) return r;
      break;
    }
    c->bom[c->bom_n++] = (unsigned char)*s++;
    n--;
    if (c->bom_n == 3) { c->bom_done = 1; c->bom_n = 0; }
  }
  int r = feed_bytes(L, c, s, n);
  if (r) return r;
  push_rows(L, c);
  return 2;
}

/* parser:finish() -> rows, lines | nil, message, line (the last row may
 * have no line break after it). */
static int csv_finish(lua_State *L) {
  ec_csv *c = check_csv(L, 1);
  if (c->failed) luaL_error(L, "enrich.core: csv parser already failed");
  if (!c->bom_done && c->bom_n > 0) {
    size_t held = c->bom_n;
    c->bom_done = 1;
    c->bom_n = 0;
    int r = feed_bytes(L, c, (const char *)c->bom, held);
    if (r) return r;
  }
  if (csv_fini(&c->p, on_field, on_row, c) != 0) {
    if (csv_error(&c->p) == CSV_EPARSE)
      return csv_fail(L, c, "malformed CSV: a quoted field is never closed", c->rec_start);
    return luaL_error(L, "enrich.core: csv: %s", csv_strerror(csv_error(&c->p)));
  }
  int r = after_parse(L, c);
  if (r) return r;
  push_rows(L, c);
  return 2;
}

static int csv_tostring(lua_State *L) {
  ec_csv *c = luaL_checkudata(L, 1, EC_CSV_MT);
  lua_pushfstring(L, "enrich.core.csv_parser (%p%s)", (void *)c, c->open ? "" : ", closed");
  return 1;
}

/* ---- formatting --------------------------------------------------------- */

static int needs_quotes(const char *s, size_t n) {
  if (n == 0) return 0;
  if (s[0] == ' ' || s[0] == '\t' || s[n - 1] == ' ' || s[n - 1] == '\t') return 1;
  for (size_t i = 0; i < n; i++)
    if (s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n') return 1;
  return 0;
}

/* core.csv_format(fields, eol) -> one record: fields joined by commas, a
 * field quoted (as csv_write does: in quotes, quotes doubled) only when it
 * holds a comma, quote, CR, LF or edge space; then eol ("\r\n" default). */
static int csv_format(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t eoln;
  const char *eol = luaL_optlstring(L, 2, "\r\n", &eoln);
  int n = (int)ec_rawlen(L, 1);
  ec_buf out = { NULL, 0, 0 };
  char *tmp = NULL;
  size_t tmpcap = 0;
  int oom = 0;
  for (int i = 1; i <= n && !oom; i++) {
    lua_rawgeti(L, 1, i);
    size_t len = 0;
    const char *s = (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
                    ? lua_tolstring(L, -1, &len) : NULL;
    if (s == NULL && !lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN) {
      ec_buf_free(&out);
      free(tmp);
      return luaL_error(L, "csv_format: field %d is a %s", i, luaL_typename(L, -1));
    }
    if (s == NULL) { s = ""; len = 0; }
    if (i > 1 && ec_buf_append(&out, ",", 1) != 0) oom = 1;
    if (!oom && needs_quotes(s, len)) {
      size_t need = 2 * len + 2;
      if (need > tmpcap) {
        char *t = realloc(tmp, need);
        if (t == NULL) oom = 1; else { tmp = t; tmpcap = need; }
      }
      if (!oom) {
        size_t w = csv_write(tmp, tmpcap, s, len);
        if (ec_buf_append(&out, tmp, w) != 0) oom = 1;
      }
    } else if (!oom && ec_buf_append(&out, s, len) != 0) {
      oom = 1;
    }
    lua_pop(L, 1);
  }
  if (!oom && ec_buf_append(&out, eol, eoln) != 0) oom = 1;
  free(tmp);
  if (oom) { ec_buf_free(&out); return luaL_error(L, "csv_format: out of memory"); }
  lua_pushlstring(L, out.data ? out.data : "", out.len);
  ec_buf_free(&out);
  return 1;
}

/* core.utf8_check(s) -> true | nil, position of the first bad byte */
static int utf8_check(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  size_t ok = utf8_valid_prefix((const unsigned char *)s, n);
  if (ok == n) { lua_pushboolean(L, 1); return 1; }
  lua_pushnil(L);
  lua_pushinteger(L, (lua_Integer)ok + 1);
  return 2;
}

/* core.digest(s [, previous]) -> 16 hex digits: FNV-1a 64 over s, chained
 * from a previous digest so a file can be hashed chunk by chunk. Not
 * cryptographic: it tells a changed input file from the same one. */
static int digest(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  uint64_t h = 0xcbf29ce484222325ULL;
  if (!lua_isnoneornil(L, 2)) {
    const char *prev = luaL_checkstring(L, 2);
    char *end;
    luaL_argcheck(L, strlen(prev) == 16, 2, "a digest of 16 hex digits");
    h = (uint64_t)strtoull(prev, &end, 16);
    luaL_argcheck(L, *end == '\0', 2, "a digest of 16 hex digits");
  }
  for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ULL; }
  char hex[17];
  static const char *const D = "0123456789abcdef";
  for (int i = 15; i >= 0; i--) { hex[i] = D[h & 0xf]; h >>= 4; }
  lua_pushlstring(L, hex, 16);
  return 1;
}

static const luaL_Reg CSV_META[] = {
  { "__gc", csv_close },
  { "__close", csv_close },
  { "__tostring", csv_tostring },
  { NULL, NULL }
};

static const luaL_Reg CSV_METHODS[] = {
  { "feed", csv_feed },
  { "finish", csv_finish },
  { "close", csv_close },
  { NULL, NULL }
};

static const luaL_Reg CSV_FUNCS[] = {
  { "csv_parser", csv_new },
  { "csv_format", csv_format },
  { "utf8_check", utf8_check },
  { "digest", digest },
  { NULL, NULL }
};

/* Adds the CSV functions to the module table on top of the stack. */
void ec_csv_open(lua_State *L) {
  if (luaL_newmetatable(L, EC_CSV_MT)) {
    ec_setfuncs(L, CSV_META);
    lua_newtable(L);
    ec_setfuncs(L, CSV_METHODS);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  ec_setfuncs(L, CSV_FUNCS);
}
