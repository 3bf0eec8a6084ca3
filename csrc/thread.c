/* An engine made with io_thread = true runs libcurl on a thread of its own,
 * so a host's frame thread never pays for connects, sends, receives or TLS:
 * submit hands a built transfer over, poll collects the finished ones and
 * turns them into records (JSON decoding stays on the Lua thread).
 *
 * Ownership: the Lua thread builds a transfer and puts it in the inbox; the
 * I/O thread adds it to the multi handle (its `active` list, which only it
 * touches), and puts it in the outbox once it is finished; poll moves the
 * outbox to the Lua thread's `done` list. The inbox, the outbox, x->where
 * and x->cancel_req change only under `lock`. The multi handle is the I/O
 * thread's alone, except curl_multi_wakeup (thread-safe by design). A pipe
 * is readable while the outbox holds something: poll(timeout) waits on it,
 * and it is engine:fd() for foreign event loops.
 *
 * Submits and cancels wake the I/O thread only at the next poll or flush():
 * a host that ticks hands a frame's requests over in one go at its end, so
 * the thread does not preempt the frame on a busy core for each of them. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1               /* SCHED_BATCH */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include "enrich_core.h"

/* curl_multi_poll (7.66) and curl_multi_wakeup (7.68) make the thread's
 * wait interruptible. */
#if EC_CURL_AT_LEAST(0x074400)
#define EC_HAVE_IO_THREAD 1
#endif

struct ec_io {
  pthread_t thread;
  pthread_mutex_t lock;
  ec_list inbox;            /* submitted, not yet added to the multi handle */
  ec_list outbox;           /* finished, not yet collected by poll */
  int cancels;              /* transfers in `active` with cancel_req set */
  int stop;
  int signalled;            /* the pipe holds a byte (outbox not empty) */
  int unsent;               /* Lua thread only: submits or cancels not yet signalled */
  int pipe[2];
};

/* Appends every transfer of `from` to `to`. */
static void list_splice(ec_list *to, ec_list *from) {
  if (from->head == NULL) return;
  if (to->tail) { to->tail->next = from->head; from->head->prev = to->tail; }
  else to->head = from->head;
  to->tail = from->tail;
  to->n += from->n;
  from->head = from->tail = NULL;
  from->n = 0;
}

/* Under lock: finished transfers go to the outbox; the pipe says so. */
static void post_locked(ec_io *io, ec_list *finished) {
  for (ec_xfer *x = finished->head; x; x = x->next) x->where = EC_IN_OUTBOX;
  list_splice(&io->outbox, finished);
  if (io->outbox.n > 0 && !io->signalled) {
    char b = 1;
    if (write(io->pipe[1], &b, 1) == 1) io->signalled = 1;
  }
}

#ifdef EC_HAVE_IO_THREAD

/* Under lock: takes the transfers a cancel marked out of `active`. They
 * leave the multi handle after the lock is let go: removing one that is
 * still resolving waits for its DNS lookup, and the Lua thread must never
 * wait for that. */
static void take_marked_locked(ec_engine *e, ec_list *marked) {
  ec_xfer *x = e->active.head;
  while (x) {
    ec_xfer *next = x->next;
    if (x->cancel_req) {
      ec_list_remove(&e->active, x);
      ec_list_push(marked, x);
    }
    x = next;
  }
}

static void *io_main(void *arg) {
  ec_engine *e = arg;
  ec_io *io = e->io;
#ifdef SCHED_BATCH
  /* A background worker: on a core it shares with the thread that ticks,
   * its wakeups do not preempt that thread (no wakeup preemption); it gets
   * the core when the frame sleeps or its time slice ends. (Linux; allowed
   * without privileges; best effort.) */
  struct sched_param sp = { 0 };
  pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#endif
  for (;;) {
    ec_list fresh = { NULL, NULL, 0 }, finished = { NULL, NULL, 0 };
    pthread_mutex_lock(&io->lock);
    int stop = io->stop;
    list_splice(&fresh, &io->inbox);
    for (ec_xfer *x = fresh.head; x; x = x->next) x->where = EC_IN_ACTIVE;
    pthread_mutex_unlock(&io->lock);
    if (stop) { list_splice(&e->active, &fresh); break; }

    while (fresh.head) {
      ec_xfer *x = fresh.head;
      ec_list_remove(&fresh, x);
      if (curl_multi_add_handle(e->multi, x->easy) == CURLM_OK) {
        x->in_multi = 1;
        ec_list_push(&e->active, x);
      } else {
        x->result = CURLE_OUT_OF_MEMORY;
        ec_list_push(&finished, x);
      }
    }

    int running;
    curl_multi_perform(e->multi, &running);
    ec_loop_drain(e, &finished);

    /* Cancels come after the adds: one asked for a transfer that was in
     * `fresh` a moment ago finds it in `active` now. */
    ec_list marked = { NULL, NULL, 0 };
    pthread_mutex_lock(&io->lock);
    if (io->cancels > 0) {
      io->cancels = 0;
      take_marked_locked(e, &marked);
    }
    pthread_mutex_unlock(&io->lock);
    while (marked.head) {
      ec_xfer *x = marked.head;
      ec_list_remove(&marked, x);
      ec_xfer_unplug(e, x);
      ec_list_push(&finished, x);
    }
    if (finished.n > 0) {
      pthread_mutex_lock(&io->lock);
      post_locked(io, &finished);
      pthread_mutex_unlock(&io->lock);
    }

    /* Returns on socket activity, libcurl's next timeout, or a wakeup from
     * submit, cancel or stop (a wakeup sent meanwhile is not lost). */
    curl_multi_poll(e->multi, NULL, 0, 1000, NULL);
  }
  return NULL;
}

const char *ec_io_start(ec_engine *e) {
  ec_io *io = calloc(1, sizeof *io);
  if (io == NULL) return "out of memory";
  io->pipe[0] = io->pipe[1] = -1;
#ifdef __linux__
  int piped = pipe2(io->pipe, O_CLOEXEC | O_NONBLOCK) == 0;
#else
  int piped = pipe(io->pipe) == 0;
  for (int i = 0; piped && i < 2; i++)
    piped = fcntl(io->pipe[i], F_SETFD, FD_CLOEXEC) == 0 && fcntl(io->pipe[i], F_SETFL, O_NONBLOCK) == 0;
  if (!piped && io->pipe[0] >= 0) { close(io->pipe[0]); close(io->pipe[1]); }
#endif
  if (!piped) { free(io); return "could not create a pipe"; }
  if (pthread_mutex_init(&io->lock, NULL) != 0) {
    close(io->pipe[0]); close(io->pipe[1]); free(io);
    return "could not create a mutex";
  }
  e->io = io;
  /* Every signal stays with the host's threads (nginx expects its own to
   * interrupt its event loop): the new thread starts with all blocked. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int started = pthread_create(&io->thread, NULL, io_main, e) == 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (!started) {
    e->io = NULL;
    pthread_mutex_destroy(&io->lock);
    close(io->pipe[0]); close(io->pipe[1]); free(io);
    return "could not start the I/O thread";
  }
  return NULL;
}

void ec_io_stop(ec_engine *e) {
  ec_io *io = e->io;
  if (io == NULL) return;
  pthread_mutex_lock(&io->lock);
  io->stop = 1;
  pthread_mutex_unlock(&io->lock);
  curl_multi_wakeup(e->multi);
  pthread_join(io->thread, NULL);
  /* Alone now: whatever the thread held is freed with the engine. */
  list_splice(&e->done, &io->inbox);
  list_splice(&e->done, &io->outbox);
  pthread_mutex_destroy(&io->lock);
  close(io->pipe[0]);
  close(io->pipe[1]);
  free(io);
  e->io = NULL;
}

void ec_io_submit(ec_engine *e, ec_xfer *x) {
  ec_io *io = e->io;
  pthread_mutex_lock(&io->lock);
  x->where = EC_IN_INBOX;
  ec_list_push(&io->inbox, x);
  pthread_mutex_unlock(&io->lock);
  io->unsent = 1;
}

void ec_io_flush(ec_engine *e) {
  if (!e->io->unsent) return;
  e->io->unsent = 0;
  curl_multi_wakeup(e->multi);
}

#else  /* libcurl older than 7.68: no interruptible wait */

const char *ec_io_start(ec_engine *e) { (void)e; return "io_thread needs libcurl 7.68 or later"; }
void ec_io_stop(ec_engine *e) { (void)e; }
void ec_io_submit(ec_engine *e, ec_xfer *x) { (void)e; (void)x; }
void ec_io_flush(ec_engine *e) { (void)e; }

#endif

/* Not yet handed to libcurl: finished here and now. Being added or in
 * flight: marked, and the I/O thread lets go of it; it is delivered as
 * cancelled whatever happens to it meanwhile. Finished already: 0. */
int ec_io_cancel(ec_engine *e, ec_xfer *x) {
  ec_io *io = e->io;
  int found = 0;
  pthread_mutex_lock(&io->lock);
  if (x->where == EC_IN_INBOX) {
    ec_list one = { NULL, NULL, 0 };
    ec_list_remove(&io->inbox, x);
    x->cancelled = 1;
    ec_list_push(&one, x);
    post_locked(io, &one);
    found = 1;
  } else if (x->where == EC_IN_ACTIVE && !x->cancel_req) {
    x->cancelled = x->cancel_req = 1;
    io->cancels++;
    io->unsent = found = 1;
  }
  pthread_mutex_unlock(&io->lock);
  return found;
}

/* Hands over what was submitted, waits up to `timeout` seconds for a
 * finished transfer unless one is ready, then moves every finished one to
 * the Lua thread's done list. */
void ec_io_collect(ec_engine *e, double timeout) {
  ec_io *io = e->io;
  ec_io_flush(e);
  if (e->watches) {                 /* a Redis connection waits with the pipe */
    double until = ec_now() + timeout;
    int ms = 0;
    for (int i = 0; i < 64; i++) {
      pthread_mutex_lock(&io->lock);
      int empty = io->outbox.n == 0;
      pthread_mutex_unlock(&io->lock);
      ms = (empty && e->done.n == 0 && e->wdone == 0) ? ec_to_ms(until - ec_now()) : 0;
      if (ec_watch_poll(e, io->pipe[0], ms) || ms == 0 || e->wdone > 0) break;
    }
  } else if (timeout > 0 && e->done.n == 0) {
    pthread_mutex_lock(&io->lock);
    int empty = io->outbox.n == 0;
    pthread_mutex_unlock(&io->lock);
    if (empty) {                    /* a post meanwhile leaves the pipe readable */
      struct pollfd p = { io->pipe[0], POLLIN, 0 };
      double until = ec_now() + timeout;
      for (int i = 0; i < 8 && poll(&p, 1, ec_to_ms(until - ec_now())) < 0 && errno == EINTR; i++) {}
    }
  }
  pthread_mutex_lock(&io->lock);
  if (io->outbox.n > 0) list_splice(&e->done, &io->outbox);
  if (io->signalled) {
    char b[16];
    while (read(io->pipe[0], b, sizeof b) > 0) {}
    io->signalled = 0;
  }
  pthread_mutex_unlock(&io->lock);
}

/* 0 also while submits wait for a flush: a foreign loop then polls, and
 * poll hands them over. */
double ec_io_timeout(ec_engine *e) {
  if (e->done.n > 0 || e->io->unsent) return 0;
  pthread_mutex_lock(&e->io->lock);
  int ready = e->io->outbox.n > 0;
  pthread_mutex_unlock(&e->io->lock);
  return ready ? 0 : -1;
}

int ec_io_fd(const ec_engine *e) { return e->io->pipe[0]; }

/* In a fork's child, which has the engine's memory but not its thread:
 * the lock may have been held at the fork and the lists are the thread's,
 * so only the child's copies of the pipe's descriptors are closed (the
 * pipe itself stays the parent's). The rest is left as copied. */
void ec_io_forget(ec_engine *e) {
  if (e->io == NULL) return;
  close(e->io->pipe[0]);
  close(e->io->pipe[1]);
  e->io = NULL;
}
