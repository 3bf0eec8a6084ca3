/* Completion records: what poll hands to Lua for one finished transfer. */
#include <ctype.h>
#include <string.h>
#include "enrich_core.h"

/* libcurl's codes → our stable ones. Callers compare these strings; the
 * numeric curl code and libcurl's own message ride along for humans. */
static const struct { CURLcode code; const char *name; } ERRORS[] = {
  { CURLE_OPERATION_TIMEDOUT,       "timeout" },
  { CURLE_COULDNT_CONNECT,          "connect" },
  { CURLE_COULDNT_RESOLVE_HOST,     "dns" },
  { CURLE_COULDNT_RESOLVE_PROXY,    "dns" },
  { CURLE_SSL_CONNECT_ERROR,        "tls" },
  { CURLE_PEER_FAILED_VERIFICATION, "tls" },
  { CURLE_SSL_CERTPROBLEM,          "tls" },
  { CURLE_SSL_CIPHER,               "tls" },
  { CURLE_SSL_CACERT_BADFILE,       "tls" },
  { CURLE_SSL_ISSUER_ERROR,         "tls" },
  { CURLE_SSL_PINNEDPUBKEYNOTMATCH, "tls" },
  { CURLE_SSL_INVALIDCERTSTATUS,    "tls" },
  { CURLE_USE_SSL_FAILED,           "tls" },
  { CURLE_FILESIZE_EXCEEDED,        "too_large" },
  { CURLE_GOT_NOTHING,              "network" },
  { CURLE_SEND_ERROR,               "network" },
  { CURLE_RECV_ERROR,               "network" },
  { CURLE_PARTIAL_FILE,             "network" },
  { CURLE_HTTP2,                    "network" },
  { CURLE_HTTP2_STREAM,             "network" },
  { CURLE_WEIRD_SERVER_REPLY,       "protocol" },
  { CURLE_BAD_CONTENT_ENCODING,     "protocol" },
  { CURLE_TOO_MANY_REDIRECTS,       "protocol" },
  { CURLE_URL_MALFORMAT,            "url" },
  { CURLE_UNSUPPORTED_PROTOCOL,     "url" },
  { CURLE_OUT_OF_MEMORY,            "memory" },
  { CURLE_OK, NULL }
};

static const char *error_name(const ec_xfer *x) {
  if (x->cancelled) return "cancelled";
  if (x->too_large) return "too_large";
  for (int i = 0; ERRORS[i].name; i++)
    if (ERRORS[i].code == x->result) return ERRORS[i].name;
  return "transfer";
}

static void set_number(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static void push_error(lua_State *L, const ec_xfer *x) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, error_name(x));
  lua_setfield(L, -2, "code");
  if (x->cancelled) lua_pushliteral(L, "transfer cancelled");
  else if (x->too_large || x->result == CURLE_FILESIZE_EXCEEDED)
    lua_pushliteral(L, "response larger than max_body");
  else lua_pushstring(L, x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->result));
  lua_setfield(L, -2, "message");
  lua_pushinteger(L, (lua_Integer)x->result);
  lua_setfield(L, -2, "curl_code");
}

/* Header lines → { name = value }, names lower-cased; a repeated header
 * becomes an array of its values in arrival order. */
static void push_headers(lua_State *L, const ec_buf *h) {
  lua_newtable(L);
  const char *p = h->data, *end = h->data + h->len;
  char name[256];
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = eol ? eol : end;
    const char *colon = memchr(p, ':', (size_t)(line_end - p));
    if (colon && colon > p && (size_t)(colon - p) < sizeof name &&
        strncmp(p, "HTTP/", 5) != 0) {
      size_t nlen = (size_t)(colon - p);
      for (size_t i = 0; i < nlen; i++) name[i] = (char)tolower((unsigned char)p[i]);
      name[nlen] = '\0';
      const char *v = colon + 1, *ve = line_end;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_getfield(L, -1, name);
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_setfield(L, -2, name);
      } else {
        if (lua_type(L, -1) == LUA_TSTRING) {   /* second value: make an array */
          lua_createtable(L, 2, 0);
          lua_insert(L, -2);
          lua_rawseti(L, -2, 1);
          lua_pushvalue(L, -1);
          lua_setfield(L, -3, name);
        }
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_rawseti(L, -2, (int)ec_rawlen(L, -2) + 1);
        lua_pop(L, 1);
      }
    }
    p = eol ? eol + 1 : end;
  }
}

/* The JSON text of a body: without a leading UTF-8 byte-order mark, which
 * RFC 8259 8.1 lets a reader ignore (a provider that sends one has still
 * answered). Only that one, only there: anything else stays for the
 * decoder to refuse. */
static const char *json_text(const ec_buf *b, size_t *len) {
  if (b->len >= 3 && memcmp(b->data, "\xEF\xBB\xBF", 3) == 0) {
    *len = b->len - 3;
    return b->data + 3;
  }
  *len = b->len;
  return b->data;
}

static int looks_like_json(lua_State *L, const ec_xfer *x) {
  if (x->decode == EC_DECODE_NEVER || x->is_head || x->body.len == 0) return 0;
  if (x->decode == EC_DECODE_ALWAYS) return 1;
  lua_getfield(L, -1, "content-type");      /* headers table is on top */
  const char *ct = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  int yes;
  if (ct) {
    char low[128];
    size_t i;
    for (i = 0; ct[i] && i < sizeof low - 1; i++) low[i] = (char)tolower((unsigned char)ct[i]);
    low[i] = '\0';
    yes = strstr(low, "json") != NULL;
  } else {  /* no content type: trust the first byte */
    size_t n, i = 0;
    const char *p = json_text(&x->body, &n);
    while (i < n && isspace((unsigned char)p[i])) i++;
    yes = i < n && (p[i] == '{' || p[i] == '[');
  }
  lua_pop(L, 1);
  return yes;
}

void ec_push_completion(lua_State *L, ec_engine *e, ec_xfer *x, int decode_idx) {
  luaL_checkstack(L, 12, "enrich.core: completion");
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, x->id);
  lua_setfield(L, -2, "id");

  long status = 0;
  if (x->easy) curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  lua_pushinteger(L, (lua_Integer)status);
  lua_setfield(L, -2, "status");

  push_headers(L, &x->head);
  int failed = x->cancelled || x->too_large || x->result != CURLE_OK;
  if (failed) {
    lua_setfield(L, -2, "headers");
    push_error(L, x);
    lua_setfield(L, -2, "error");
  } else {
    int decode = looks_like_json(L, x);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, x->body.data ? x->body.data : "", x->body.len);
    lua_setfield(L, -2, "body");
    if (decode) {
      size_t n;
      const char *text = json_text(&x->body, &n);
      lua_pushvalue(L, decode_idx);
      lua_pushlstring(L, text, n);
      /* The decoder may be the caller's: while it runs, the engine's
       * methods refuse (x is being handed over). pcall never raises, so
       * busy is always cleared. */
      e->busy = 1;
      int rc = lua_pcall(L, 1, 1, 0);
      e->busy = 0;
      if (rc == 0) {
        lua_setfield(L, -2, "json");
      } else {
        if (!lua_isstring(L, -1)) { lua_pop(L, 1); lua_pushliteral(L, "invalid JSON"); }
        lua_setfield(L, -2, "json_error");
      }
    }
  }

  if (x->easy && !x->cancelled && e->set.timings) {
    double t;
    lua_createtable(L, 0, 5);
    if (curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &t) == CURLE_OK) set_number(L, "total", t);
    if (curl_easy_getinfo(x->easy, CURLINFO_NAMELOOKUP_TIME, &t) == CURLE_OK) set_number(L, "dns", t);
    if (curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME, &t) == CURLE_OK) set_number(L, "connect", t);
    if (curl_easy_getinfo(x->easy, CURLINFO_APPCONNECT_TIME, &t) == CURLE_OK) set_number(L, "tls", t);
    if (curl_easy_getinfo(x->easy, CURLINFO_STARTTRANSFER_TIME, &t) == CURLE_OK) set_number(L, "first_byte", t);
    lua_setfield(L, -2, "time");
  }
  if (x->easy && !x->cancelled) {
    long connects = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK) {
      lua_pushinteger(L, (lua_Integer)connects);    /* 0: a reused connection */
      lua_setfield(L, -2, "connects");
    }
    long version = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &version) == CURLE_OK && status > 0) {
      lua_pushstring(L, version == CURL_HTTP_VERSION_2_0 ? "2" :
                        version == CURL_HTTP_VERSION_1_0 ? "1.0" : "1.1");
      lua_setfield(L, -2, "http_version");
    }
  }
}
