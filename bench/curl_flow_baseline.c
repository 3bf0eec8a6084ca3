/* Baseline for the engine's end-to-end figure: the same HTTP requests the
 * engine makes for JOBS one-person tamtam jobs, from C with libcurl's multi
 * interface and nothing else. Each job: POST /v2/people/enrich on a fresh
 * connection (as the engine sends every non-idempotent submit), then GET
 * /v2/people/enrich/{id} every INTERVAL seconds until COMPLETED; at most CONC
 * requests in flight. The JSON is read with strstr, not decoded.
 * usage: curl_flow_baseline BASE_URL JOBS CONC INTERVAL KEY */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>

typedef struct job { int n; char id[64]; double ready_at; } job;
typedef struct slot { CURL *easy; job *j; char *buf; size_t len, cap; int polling; } slot;

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  slot *s = ud;
  size_t len = size * n;
  if (s->len + len + 1 > s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4096;
    while (cap < s->len + len + 1) cap *= 2;
    char *b = realloc(s->buf, cap);
    if (!b) return 0;
    s->buf = b; s->cap = cap;
  }
  memcpy(s->buf + s->len, p, len);
  s->len += len;
  s->buf[s->len] = '\0';
  return len;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 6) { fprintf(stderr, "usage: %s BASE_URL JOBS CONC INTERVAL KEY\n", argv[0]); return 2; }
  const char *base = argv[1];
  int total = atoi(argv[2]), conc = atoi(argv[3]);
  double interval = atof(argv[4]);
  if (total <= 0 || conc <= 0) return 2;
  char auth[256];
  snprintf(auth, sizeof auth, "Authorization: %s", argv[5]);
  struct curl_slist *get_h = curl_slist_append(NULL, auth);
  get_h = curl_slist_append(get_h, "Accept: application/json");
  struct curl_slist *post_h = curl_slist_append(NULL, auth);
  post_h = curl_slist_append(post_h, "Accept: application/json");
  post_h = curl_slist_append(post_h, "Content-Type: application/json");
  post_h = curl_slist_append(post_h, "Expect:");

  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURLM *multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)conc);
  job *jobs = calloc((size_t)total, sizeof *jobs);
  slot *slots = calloc((size_t)conc, sizeof *slots);
  job **queue = calloc((size_t)total, sizeof *queue);   /* FIFO: equal delays keep it ordered */
  int qh = 0, qt = 0, next_submit = 0, done = 0, failed = 0, in_flight = 0;
  long requests = 0;
  for (int i = 0; i < total; i++) jobs[i].n = i + 1;
  for (int i = 0; i < conc; i++) slots[i].easy = curl_easy_init();

  double t0 = now(), limit = t0 + 300;
  while (done < total && now() < limit) {
    /* Fill free slots: due polls first, then new submits. */
    for (int i = 0; i < conc; i++) {
      slot *s = &slots[i];
      if (s->j) continue;
      CURL *e = s->easy;
      char url[512], body[256];
      if (qh < qt && queue[qh % total]->ready_at <= now()) {
        s->j = queue[qh++ % total];
        s->polling = 1;
        snprintf(url, sizeof url, "%s/v2/people/enrich/%s", base, s->j->id);
        curl_easy_reset(e);
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, get_h);
      } else if (next_submit < total) {
        s->j = &jobs[next_submit++];
        s->polling = 0;
        snprintf(url, sizeof url, "%s/v2/people/enrich", base);
        snprintf(body, sizeof body, "{\"requests\":[{\"enrichment_type\":\"email\",\"first_name\":\"P%d\","
                 "\"last_name\":\"Flow\",\"custom\":{\"row\":\"1\"}}]}", s->j->n);
        curl_easy_reset(e);
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, post_h);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
      } else {
        break;
      }
      curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
      curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
      curl_easy_setopt(e, CURLOPT_PRIVATE, s);
      curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
      s->len = 0;
      curl_multi_add_handle(multi, e);
      in_flight++;
      requests++;
    }
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
      curl_multi_remove_handle(multi, s->easy);
      in_flight--;
      job *j = s->j;
      s->j = NULL;
      const char *b = s->len ? s->buf : "";
      int ok = m->data.result == CURLE_OK;
      if (!s->polling) {
        const char *p = ok && code == 202 ? strstr(b, "\"request_id\":\"") : NULL;
        if (p && sscanf(p + 14, "%63[^\"]", j->id) == 1) {
          j->ready_at = now() + interval;
          queue[qt++ % total] = j;
        } else { failed++; done++; }
      } else if (ok && code == 200 && strstr(b, "\"status\":\"PROCESSING\"")) {
        j->ready_at = now() + interval;
        queue[qt++ % total] = j;
      } else {
        if (!(ok && code == 200 && strstr(b, "\"status\":\"COMPLETED\""))) failed++;
        done++;
      }
    }
    /* Wait for I/O, or until the next poll is due. */
    int wait_ms = 100;
    if (qh < qt) {
      double d = queue[qh % total]->ready_at - now();
      wait_ms = d <= 0 ? 0 : (int)(d * 1000) + 1;
    }
    if (in_flight > 0 || wait_ms > 0) curl_multi_poll(multi, NULL, 0, wait_ms > 100 ? 100 : wait_ms, NULL);
  }
  double secs = now() - t0;
  printf("jobs=%d failed=%d requests=%ld seconds=%.3f rps=%.0f\n", done, failed, requests, secs, requests / secs);
  for (int i = 0; i < conc; i++) { curl_easy_cleanup(slots[i].easy); free(slots[i].buf); }
  free(slots); free(jobs); free(queue);
  curl_slist_free_all(get_h); curl_slist_free_all(post_h);
  curl_multi_cleanup(multi);
  curl_global_cleanup();
  return failed == 0 && done == total ? 0 : 1;
}
