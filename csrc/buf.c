/* The owned byte buffer: response bodies and headers grow across polls. */
#include <stdlib.h>
#include <string.h>
#include "enrich_core.h"

int ec_buf_append(ec_buf *b, const char *p, size_t n) {
  if (n == 0) return 0;
  if (b->len + n < b->len) return -1;            /* size_t overflow */
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n) {
      if (cap > ((size_t)-1) / 2) { cap = b->len + n; break; }
      cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (data == NULL) return -1;
    b->data = data;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void ec_buf_free(ec_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}
