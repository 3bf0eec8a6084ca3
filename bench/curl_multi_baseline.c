/* Baseline for `make bench`: N GETs at concurrency C through the libcurl
 * multi interface directly, the way a careful C program would (one easy
 * handle per slot, reused; connections kept alive). Prints requests/s.
 * usage: curl_multi_baseline URL N C ["Header: value"] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>

typedef struct slot { CURL *easy; char *buf; size_t len, cap; } slot;

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  slot *s = ud;
  size_t len = size * n;
  if (s->len + len > s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4096;
    while (cap < s->len + len) cap *= 2;
    char *b = realloc(s->buf, cap);
    if (!b) return 0;
    s->buf = b;
    s->cap = cap;
  }
  memcpy(s->buf + s->len, p, len);
  s->len += len;
  return len;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 4 && argc != 5) { fprintf(stderr, "usage: %s URL N C [HEADER]\n", argv[0]); return 2; }
  struct curl_slist *headers = argc == 5 ? curl_slist_append(NULL, argv[4]) : NULL;
  const char *url = argv[1];
  long total = atol(argv[2]), conc = atol(argv[3]);
  if (total <= 0 || conc <= 0) return 2;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURLM *multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, conc);
  slot *slots = calloc((size_t)conc, sizeof *slots);
  long started = 0, done = 0, bad = 0;
  double t0 = now();
  for (long i = 0; i < conc && started < total; i++, started++) {
    slots[i].easy = curl_easy_init();
    curl_easy_setopt(slots[i].easy, CURLOPT_URL, url);
    curl_easy_setopt(slots[i].easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(slots[i].easy, CURLOPT_WRITEDATA, &slots[i]);
    curl_easy_setopt(slots[i].easy, CURLOPT_PRIVATE, &slots[i]);
    curl_easy_setopt(slots[i].easy, CURLOPT_NOSIGNAL, 1L);
    if (headers) curl_easy_setopt(slots[i].easy, CURLOPT_HTTPHEADER, headers);
    curl_multi_add_handle(multi, slots[i].easy);
  }
  double limit = t0 + 300;                 /* bounded in time as well */
  while (done < total && now() < limit) {
    int running;
    curl_multi_perform(multi, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(multi, &left))) {
      if (m->msg != CURLMSG_DONE) continue;
      slot *s;
      long code = 0;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
      curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
      if (m->data.result != CURLE_OK || code != 200 || s->len == 0) bad++;
      done++;
      curl_multi_remove_handle(multi, s->easy);
      if (started < total) {
        s->len = 0;
        curl_multi_add_handle(multi, s->easy);
        started++;
      }
    }
    if (done < total) curl_multi_poll(multi, NULL, 0, 1000, NULL);
  }
  double secs = now() - t0;
  printf("requests=%ld failed=%ld seconds=%.3f rps=%.0f\n", done, bad, secs, done / secs);
  for (long i = 0; i < conc; i++) {
    if (slots[i].easy) curl_easy_cleanup(slots[i].easy);
    free(slots[i].buf);
  }
  free(slots);
  curl_multi_cleanup(multi);
  curl_slist_free_all(headers);
  curl_global_cleanup();
  return bad == 0 && done == total ? 0 : 1;
}
