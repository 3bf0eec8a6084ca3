/* Extra descriptors in the engine's wait, besides libcurl's sockets: a
 * Redis connection (redis.c) is one. With the epoll loop a watch sits in
 * the same epoll set, so one epoll_wait covers both; the portable loop and
 * the I/O thread's poll pass them to poll(2) (or curl_multi_poll). A watch
 * fires its owner's `ready`, which is C only and never calls Lua. */
#include <poll.h>
#include "enrich_core.h"

#if defined(__linux__) && !defined(EC_NO_EPOLL)
#define EC_EPOLL 1
#include <sys/epoll.h>
#endif

void ec_watch_add(ec_engine *e, ec_watch *w) {
  w->events = 0;
  w->in_set = 0;
  w->prev = NULL;
  w->next = e->watches;
  if (e->watches) e->watches->prev = w;
  e->watches = w;
}

void ec_watch_set(ec_engine *e, ec_watch *w, int events) {
  if (w->events == events && (events == 0 || w->in_set || e->epfd < 0)) return;
  w->events = events;
#ifdef EC_EPOLL
  if (e->epfd < 0 || w->fd < 0) return;
  struct epoll_event ev = { 0, { 0 } };
  ev.events = ((events & EC_WATCH_READ) ? EPOLLIN : 0) | ((events & EC_WATCH_WRITE) ? EPOLLOUT : 0);
  ev.data.fd = w->fd;
  if (events == 0) {
    if (w->in_set) epoll_ctl(e->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    w->in_set = 0;
  } else if (w->in_set) {
    epoll_ctl(e->epfd, EPOLL_CTL_MOD, w->fd, &ev);
  } else if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, w->fd, &ev) == 0) {
    w->in_set = 1;
  }
#else
  (void)e;
#endif
}

void ec_watch_remove(ec_engine *e, ec_watch *w) {
  ec_watch_set(e, w, 0);
  if (w->prev) w->prev->next = w->next;
  else if (e->watches == w) e->watches = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
}

int ec_watch_fire(ec_engine *e, int fd, int events) {
  for (ec_watch *w = e->watches; w; w = w->next)
    if (w->fd == fd && w->events) {
      w->ready(w, events);          /* may remove w: touch nothing after */
      return 1;
    }
  return 0;
}

#define EC_WATCH_MAX 16

int ec_watch_poll(ec_engine *e, int extra, int ms) {
  struct pollfd p[EC_WATCH_MAX + 1];
  int n = 0, got = 0;
  if (extra >= 0) { p[n].fd = extra; p[n].events = POLLIN; p[n].revents = 0; n++; }
  for (ec_watch *w = e->watches; w && n <= EC_WATCH_MAX; w = w->next) {
    if (!w->events || w->fd < 0) continue;
    p[n].fd = w->fd;
    p[n].events = (short)(((w->events & EC_WATCH_READ) ? POLLIN : 0) | ((w->events & EC_WATCH_WRITE) ? POLLOUT : 0));
    p[n].revents = 0;
    n++;
  }
  if (n == 0) return 0;
  if (poll(p, (nfds_t)n, ms) <= 0) return 0;
  for (int i = 0; i < n; i++) {
    if (!p[i].revents) continue;
    if (extra >= 0 && i == 0) { got = 1; continue; }
    int ev = ((p[i].revents & (POLLIN | POLLHUP | POLLERR)) ? EC_WATCH_READ : 0)
           | ((p[i].revents & (POLLOUT | POLLERR)) ? EC_WATCH_WRITE : 0);
    ec_watch_fire(e, p[i].fd, ev);
  }
  return got;
}
