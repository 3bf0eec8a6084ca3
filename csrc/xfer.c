/* Transfers: validate a request table, build the easy handle, and free it
 * all again. Validation raises before anything is allocated, so misuse never
 * leaks; after that nothing here raises. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "enrich_core.h"

/* ---- the engine's transfer lists --------------------------------------- */

void ec_list_push(ec_list *l, ec_xfer *x) {
  x->next = NULL;
  x->prev = l->tail;
  if (l->tail) l->tail->next = x; else l->head = x;
  l->tail = x;
  l->n++;
}

void ec_list_remove(ec_list *l, ec_xfer *x) {
  if (x->prev) x->prev->next = x->next; else l->head = x->next;
  if (x->next) x->next->prev = x->prev; else l->tail = x->prev;
  x->prev = x->next = NULL;
  l->n--;
}

/* ---- libcurl callbacks: C buffers only, never Lua ----------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  ec_xfer *x = ud;
  size_t len = size * n;
  if (x->body.len + len > x->max_body) { x->too_large = 1; return 0; }
  return ec_buf_append(&x->body, p, len) == 0 ? len : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  ec_xfer *x = ud;
  size_t len = size * n;
  /* A new status line starts a new response (100-continue, redirects):
   * keep only the headers of the last one. */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) x->head.len = 0;
  if (x->head.len + len > EC_MAX_HEADER_BYTES) { x->too_large = 1; return 0; }
  return ec_buf_append(&x->head, p, len) == 0 ? len : 0;
}

/* ---- request validation ------------------------------------------------- */

typedef struct ec_request {
  const char *method, *url, *body;
  size_t body_len;
  long timeout_ms, connect_timeout_ms;
  size_t max_body;
  ec_decode decode;
  int fresh_connect;
  int headers_idx;              /* absolute index of the headers table, or 0 */
} ec_request;

static const char *const REQUEST_FIELDS[] = {
  "method", "url", "headers", "body", "timeout", "connect_timeout",
  "max_body", "decode", "fresh_connect", NULL
};

static const char *const METHODS[] = {
  "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", NULL
};

/* Raises on a key of the table at idx that is not in names (misuse). */
void ec_check_fields(lua_State *L, int idx, const char *const *names, const char *what) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int ok = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -1);
      for (int i = 0; names[i]; i++) if (strcmp(k, names[i]) == 0) { ok = 1; break; }
      if (!ok) luaL_error(L, "%s: unknown option '%s'", what, k);
    } else {
      luaL_error(L, "%s: option names must be strings", what);
    }
  }
}

/* Seconds (a positive number) → milliseconds, at least 1. */
long ec_seconds_field(lua_State *L, int idx, const char *name, long dflt) {
  long ms = dflt;
  lua_getfield(L, idx, name);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "'%s' must be a number of seconds", name);
    lua_Number s = lua_tonumber(L, -1);
    if (!(s > 0 && s <= 86400.0 * 365))
      luaL_error(L, "'%s' must be a positive number of seconds", name);
    ms = (long)(s * 1000.0 + 0.5);
    if (ms < 1) ms = 1;
  }
  lua_pop(L, 1);
  return ms;
}

size_t ec_size_field(lua_State *L, int idx, const char *name, size_t dflt) {
  size_t v = dflt;
  lua_getfield(L, idx, name);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "'%s' must be a number of bytes", name);
    lua_Number n = lua_tonumber(L, -1);
    if (!(n >= 1 && n <= 4.0 * 1024 * 1024 * 1024))
      luaL_error(L, "'%s' must be between 1 byte and 4 GiB", name);
    v = (size_t)n;
  }
  lua_pop(L, 1);
  return v;
}

static int is_token_char(unsigned char c) {
  return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?={}", c);
}

/* Header names must be tokens and values must not carry CR, LF or NUL: a
 * value from a provider id must never be able to inject a header. */
static void check_headers(lua_State *L, int idx) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t nlen, vlen;
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "header names must be strings");
    const char *name = lua_tolstring(L, -2, &nlen);
    if (nlen == 0) luaL_error(L, "empty header name");
    for (size_t i = 0; i < nlen; i++)
      if (!is_token_char((unsigned char)name[i]))
        luaL_error(L, "invalid header name '%s'", name);
    int t = lua_type(L, -1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      luaL_error(L, "header '%s' must be a string", name);
    const char *v = lua_tolstring(L, -1, &vlen);  /* number → string in place: it is the value, not the key */
    for (size_t i = 0; i < vlen; i++)
      if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
        luaL_error(L, "header '%s' contains a line break or NUL", name);
    lua_pop(L, 1);
  }
}

/* Reads every field once. The url, the body and the headers table stay on
 * the stack until the transfer is built: r points into them, and a
 * request table with an __index (a proxy) need not hold what it returns. */
static void check_request(lua_State *L, ec_engine *e, int idx, ec_request *r) {
  luaL_checktype(L, idx, LUA_TTABLE);
  ec_check_fields(L, idx, REQUEST_FIELDS, "submit");

  lua_getfield(L, idx, "url");
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "submit: 'url' (a string) is required");
  r->url = lua_tostring(L, -1);
  if (strncmp(r->url, "http://", 7) != 0 && strncmp(r->url, "https://", 8) != 0)
    luaL_error(L, "submit: 'url' must start with http:// or https://");
  /* kept on the stack */

  r->method = "GET";
  lua_getfield(L, idx, "method");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "submit: 'method' must be a string");
    const char *m = lua_tostring(L, -1);
    int ok = 0;
    for (int i = 0; METHODS[i]; i++) if (strcmp(m, METHODS[i]) == 0) { r->method = METHODS[i]; ok = 1; }
    if (!ok) luaL_error(L, "submit: unknown method '%s'", m);
  }
  lua_pop(L, 1);

  r->body = NULL;
  r->body_len = 0;
  lua_getfield(L, idx, "body");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "submit: 'body' must be a string");
    r->body = lua_tolstring(L, -1, &r->body_len);
    if (strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0)
      luaL_error(L, "submit: a %s request has no body", r->method);
  }
  /* kept on the stack (nil or the body) */

  r->headers_idx = 0;
  lua_getfield(L, idx, "headers");
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1)) luaL_error(L, "submit: 'headers' must be a table");
    check_headers(L, lua_gettop(L));
    r->headers_idx = lua_gettop(L);
  }
  /* kept on the stack (nil or the headers) */

  r->timeout_ms = ec_seconds_field(L, idx, "timeout", e->set.timeout_ms);
  r->connect_timeout_ms = ec_seconds_field(L, idx, "connect_timeout", e->set.connect_timeout_ms);
  r->max_body = ec_size_field(L, idx, "max_body", e->set.max_body);

  r->decode = EC_DECODE_AUTO;
  lua_getfield(L, idx, "decode");
  if (lua_type(L, -1) == LUA_TBOOLEAN)
    r->decode = lua_toboolean(L, -1) ? EC_DECODE_ALWAYS : EC_DECODE_NEVER;
  else if (!lua_isnil(L, -1) && !(lua_type(L, -1) == LUA_TSTRING &&
                                  strcmp(lua_tostring(L, -1), "auto") == 0))
    luaL_error(L, "submit: 'decode' must be true, false or \"auto\"");
  lua_pop(L, 1);

  lua_getfield(L, idx, "fresh_connect");
  r->fresh_connect = lua_toboolean(L, -1);
  lua_pop(L, 1);
}

/* ---- building the easy handle ------------------------------------------ */

/* Options that never change for an engine are set once per easy handle;
 * a pooled handle keeps them, and set_options() sets every per-request one
 * (no curl_easy_reset per request: it frees and rebuilds the handle). */
static int init_easy(ec_engine *e, CURL *c) {
  const ec_settings *s = &e->set;
  CURLcode rc = CURLE_OK;
#define SET(opt, val) if (rc == CURLE_OK) rc = curl_easy_setopt(c, opt, val)
#if EC_CURL_AT_LEAST(0x075500)
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
  SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
  SET(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  SET(CURLOPT_WRITEFUNCTION, on_body);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  SET(CURLOPT_PIPEWAIT, 1L);
  SET(CURLOPT_ACCEPT_ENCODING, "");
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
  SET(CURLOPT_SSL_VERIFYPEER, s->verify_tls ? 1L : 0L);
  SET(CURLOPT_SSL_VERIFYHOST, s->verify_tls ? 2L : 0L);
  if (s->ca_file) SET(CURLOPT_CAINFO, s->ca_file);
  SET(CURLOPT_FOLLOWLOCATION, s->follow_redirects ? 1L : 0L);
  SET(CURLOPT_MAXREDIRS, s->max_redirects);
  if (s->user_agent) SET(CURLOPT_USERAGENT, s->user_agent);
#undef SET
  return rc == CURLE_OK ? 0 : -1;
}

static CURL *take_easy(ec_engine *e) {
  if (e->pool_n > 0) return e->pool[--e->pool_n];
  CURL *c = curl_easy_init();
  if (c && init_easy(e, c) != 0) { curl_easy_cleanup(c); c = NULL; }
  return c;
}

static void give_easy(ec_engine *e, CURL *c) {
  if (e->pool_n < EC_EASY_POOL_MAX) e->pool[e->pool_n++] = c;
  else curl_easy_cleanup(c);
}

/* The headers table was checked by check_headers; a name or value that is
 * not a string now (only a finalizer could have changed it meanwhile)
 * fails the build instead of reaching memcpy. */
static struct curl_slist *build_headers(lua_State *L, int hidx) {
  /* "Expect:" stops libcurl's 100-continue dance on larger POST bodies. */
  struct curl_slist *list = curl_slist_append(NULL, "Expect:");
  if (list == NULL || hidx == 0) return list;
  lua_pushnil(L);
  while (lua_next(L, hidx)) {
    size_t nlen, vlen;
    const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nlen) : NULL;
    const char *value = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER
                        ? lua_tolstring(L, -1, &vlen) : NULL;
    char *line = name && value ? malloc(nlen + vlen + 3) : NULL;
    struct curl_slist *grown = NULL;
    if (line) {
      memcpy(line, name, nlen);
      /* "Name;" is libcurl's way to send a header with an empty value. */
      if (vlen == 0) { line[nlen] = ';'; line[nlen + 1] = '\0'; }
      else {
        line[nlen] = ':'; line[nlen + 1] = ' ';
        memcpy(line + nlen + 2, value, vlen);
        line[nlen + 2 + vlen] = '\0';
      }
      grown = curl_slist_append(list, line);
      free(line);
    }
    if (grown == NULL) { curl_slist_free_all(list); lua_pop(L, 2); return NULL; }
    list = grown;
    lua_pop(L, 1);
  }
  return list;
}

static int set_options(ec_xfer *x, const ec_request *r) {
  CURL *c = x->easy;
  CURLcode rc = CURLE_OK;
#define SET(opt, val) if (rc == CURLE_OK) rc = curl_easy_setopt(c, opt, val)
  SET(CURLOPT_URL, r->url);
  SET(CURLOPT_PRIVATE, (void *)x);
  SET(CURLOPT_WRITEDATA, (void *)x);
  SET(CURLOPT_HEADERDATA, (void *)x);
  SET(CURLOPT_ERRORBUFFER, x->errbuf);
  SET(CURLOPT_TIMEOUT_MS, r->timeout_ms);
  SET(CURLOPT_CONNECTTIMEOUT_MS, r->connect_timeout_ms);
  /* Refuses a declared Content-Length over the cap before any byte. */
  SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body);
  /* A request that is not safe to repeat must not ride on a reused
   * connection: libcurl silently re-sends when one turns out dead. */
  SET(CURLOPT_FRESH_CONNECT, r->fresh_connect ? 1L : 0L);
  SET(CURLOPT_HTTPHEADER, x->headers);

  /* Every method option is set, so nothing lingers from the handle's last
   * request: HTTPGET clears a POST, CUSTOMREQUEST NULL clears a verb. */
  SET(CURLOPT_CUSTOMREQUEST, (char *)NULL);
  SET(CURLOPT_NOBODY, 0L);
  if (strcmp(r->method, "HEAD") == 0) {
    SET(CURLOPT_NOBODY, 1L);
  } else if (strcmp(r->method, "POST") == 0 || r->body) {
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    SET(CURLOPT_COPYPOSTFIELDS, r->body ? r->body : "");
    if (strcmp(r->method, "POST") != 0) SET(CURLOPT_CUSTOMREQUEST, r->method);
  } else {
    SET(CURLOPT_HTTPGET, 1L);
    if (strcmp(r->method, "GET") != 0) SET(CURLOPT_CUSTOMREQUEST, r->method);
  }
#undef SET
  return rc == CURLE_OK ? 0 : -1;
}

/* Returns the new transfer, ready to be added to the multi handle, or NULL
 * (no memory, or libcurl refused an option): nothing is left allocated then. */
ec_xfer *ec_xfer_new(lua_State *L, ec_engine *e, int req_idx) {
  ec_request r;
  check_request(L, e, req_idx, &r);

  ec_xfer *x = calloc(1, sizeof *x);
  if (x == NULL) return NULL;
  x->eng = e;
  x->max_body = r.max_body;
  x->decode = r.decode;
  x->is_head = strcmp(r.method, "HEAD") == 0;
  x->headers = build_headers(L, r.headers_idx);
  x->easy = take_easy(e);
  if (x->headers == NULL || x->easy == NULL || set_options(x, &r) != 0) {
    if (x->easy) { curl_easy_cleanup(x->easy); x->easy = NULL; }
    ec_xfer_free(e, x);
    return NULL;
  }
  x->id = ++e->next_id;
  return x;
}

/* Takes x's easy handle out of the multi handle, if it is in. */
void ec_xfer_unplug(ec_engine *e, ec_xfer *x) {
  if (!x->in_multi) return;
  curl_multi_remove_handle(e->multi, x->easy);
  x->in_multi = 0;
}

/* The caller has unlinked x from its list; the easy handle may still be in
 * the multi handle (close) and is removed here. */
void ec_xfer_free(ec_engine *e, ec_xfer *x) {
  if (x->easy) {
    if (e->multi) ec_xfer_unplug(e, x);
    give_easy(e, x->easy);
  }
  curl_slist_free_all(x->headers);
  ec_buf_free(&x->body);
  ec_buf_free(&x->head);
  free(x);
}
