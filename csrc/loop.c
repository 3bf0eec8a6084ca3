/* Driving libcurl. On Linux: libcurl's socket interface with one epoll set
 * per engine, so each wake-up touches only the sockets that are ready (no
 * pass over every transfer, which matters with thousands in flight), and
 * the epoll descriptor is one fd a foreign event loop can wait on.
 * Elsewhere (or with -DEC_NO_EPOLL): curl_multi_perform + curl_multi_poll. */
#include <limits.h>
#include <math.h>
#include <time.h>
#include <unistd.h>
#include "enrich_core.h"

#if defined(__linux__) && !defined(EC_NO_EPOLL)
#define EC_EPOLL 1
#include <sys/epoll.h>
#endif

double ec_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int ec_to_ms(double seconds) {
  if (seconds <= 0) return 0;
  if (seconds > INT_MAX / 1000) return INT_MAX;
  return (int)(seconds * 1000.0 + 0.999);
}

/* Moves every transfer libcurl reports finished from `active` to `to`
 * (the done list; with an I/O thread, that thread's own list). */
void ec_loop_drain(ec_engine *e, ec_list *to) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(e->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    ec_xfer *x = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    if (x == NULL) continue;
    x->result = m->data.result;
    x->finished = 1;
    ec_xfer_unplug(e, x);
    ec_list_remove(&e->active, x);
    ec_list_push(to, x);
  }
}

#ifdef EC_EPOLL

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
  ec_engine *e = userp;
  (void)easy;
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, s, NULL);
    return 0;
  }
  struct epoll_event ev = { 0, { 0 } };
  ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
  ev.data.fd = s;
  if (socketp == NULL) {
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, s, &ev) != 0) epoll_ctl(e->epfd, EPOLL_CTL_MOD, s, &ev);
    curl_multi_assign(e->multi, s, (void *)e);   /* mark: known to the set */
  } else {
    epoll_ctl(e->epfd, EPOLL_CTL_MOD, s, &ev);
  }
  return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
  ec_engine *e = userp;
  (void)multi;
  e->timer_at = timeout_ms < 0 ? -1 : ec_now() + (double)timeout_ms / 1000.0;
  return 0;
}

int ec_loop_open(ec_engine *e) {
  e->timer_at = -1;
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (e->epfd < 0) return -1;
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, (void *)e);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, (void *)e);
  return 0;
}

void ec_loop_close(ec_engine *e) {
  if (e->epfd >= 0) close(e->epfd);
  e->epfd = -1;
}

int ec_loop_fd(const ec_engine *e) { return e->epfd; }

/* Every call makes at least one non-blocking pass over ready sockets, so
 * poll(0) from a host's frame loop always makes progress; it waits only
 * while no completion is ready. Once `work`
 * seconds (< 0: no bound) have passed since the wait ended, the sockets
 * still ready wait for the next call (epoll reports them again): one
 * servicing, at least, per call. */
void ec_loop_run(ec_engine *e, double deadline, int max_events, double work) {
  struct epoll_event evs[64];
  if (max_events <= 0 || max_events > 64) max_events = 64;
  int running;
  for (;;) {
    double now = ec_now();
    if (e->timer_at >= 0 && e->timer_at <= now) {
      e->timer_at = -1;
      curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
      ec_loop_drain(e, &e->done);
      if (e->done.n > 0 || e->wdone > 0) return;
    }
    /* Completions already waiting (a bounded poll or a cancel left them):
     * one non-blocking pass, then hand them over. */
    double wait = e->done.n > 0 ? 0 : deadline - now;
    if (e->timer_at >= 0 && e->timer_at - now < wait) wait = e->timer_at - now;
    int n = epoll_wait(e->epfd, evs, max_events, ec_to_ms(wait));
    double work_until = work >= 0 ? ec_now() + work : HUGE_VAL;
    for (int i = 0; i < n; i++) {
      if (i > 0 && ec_now() >= work_until) break;
      int flags = 0;
      if (evs[i].events & EPOLLIN) flags |= CURL_CSELECT_IN;
      if (evs[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
      if (evs[i].events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
      /* A watch (a Redis connection, watch.c) shares the set. */
      if (e->watches && ec_watch_fire(e, evs[i].data.fd,
            ((flags & (CURL_CSELECT_IN | CURL_CSELECT_ERR)) ? EC_WATCH_READ : 0) |
            ((flags & CURL_CSELECT_OUT) ? EC_WATCH_WRITE : 0))) continue;
      curl_multi_socket_action(e->multi, evs[i].data.fd, flags, &running);
    }
    ec_loop_drain(e, &e->done);
    if (e->done.n > 0 || e->wdone > 0 || ec_now() >= deadline) return;
  }
}

double ec_loop_timeout(ec_engine *e) {
  if (e->done.n > 0) return 0;
  if (e->timer_at < 0) return -1;
  double left = e->timer_at - ec_now();
  return left > 0 ? left : 0;
}

#else  /* portable: perform + poll */

int ec_loop_open(ec_engine *e) { e->epfd = -1; e->timer_at = -1; return 0; }
void ec_loop_close(ec_engine *e) { (void)e; }
int ec_loop_fd(const ec_engine *e) { (void)e; return -1; }

static void wait_for(ec_engine *e, int ms) {
  /* The watches (watch.c: Redis connections) wait with libcurl's sockets. */
  struct curl_waitfd extra[16];
  unsigned nx = 0;
  for (ec_watch *w = e->watches; w && nx < 16; w = w->next) {
    if (!w->events || w->fd < 0) continue;
    extra[nx].fd = w->fd;
    extra[nx].events = (short)(((w->events & EC_WATCH_READ) ? CURL_WAIT_POLLIN : 0) |
                               ((w->events & EC_WATCH_WRITE) ? CURL_WAIT_POLLOUT : 0));
    extra[nx++].revents = 0;
  }
#if EC_CURL_AT_LEAST(0x074200)
  curl_multi_poll(e->multi, extra, nx, ms, NULL);
#else
  int fds = 0;
  curl_multi_wait(e->multi, extra, nx, ms, &fds);
  if (fds == 0 && nx == 0) {  /* old curl_multi_wait returns at once with nothing to watch */
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
  }
#endif
  for (unsigned i = 0; i < nx; i++)
    if (extra[i].revents)
      ec_watch_fire(e, extra[i].fd,
                    ((extra[i].revents & (CURL_WAIT_POLLIN | CURL_WAIT_POLLPRI)) ? EC_WATCH_READ : 0) |
                    ((extra[i].revents & CURL_WAIT_POLLOUT) ? EC_WATCH_WRITE : 0));
}

void ec_loop_run(ec_engine *e, double deadline, int max_events, double work) {
  (void)max_events; (void)work;     /* perform() has no such bounds */
  for (;;) {
    int running;
    curl_multi_perform(e->multi, &running);
    ec_loop_drain(e, &e->done);
    if (e->done.n > 0 || e->wdone > 0) return;
    double left = deadline - ec_now();
    if (left <= 0) {
      if (e->watches) wait_for(e, 0);   /* poll(0) still services a watch */
      return;
    }
    wait_for(e, ec_to_ms(left));
  }
}

double ec_loop_timeout(ec_engine *e) {
  long ms = -1;
  if (e->done.n > 0) return 0;
  curl_multi_timeout(e->multi, &ms);
  return ms < 0 ? -1 : (double)ms / 1000.0;
}

#endif
