/* Blocking TCP connects in progress: see connecting.h. */
#define _GNU_SOURCE
#include "connecting.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include "sandlock.h"

#define PARKED 256                      /* more at once: the caller keeps them (Python) */
#define WATCHDOG_NS 1000000000LL        /* "is the child still waiting?" every second */

struct parked {
    uint64_t id;
    int fd;
    int64_t deadline; /* CLOCK_MONOTONIC ns at which SO_SNDTIMEO expires; 0: never */
};

struct connecting {
    int listener;
    _Atomic uint64_t *answered;
    int wake; /* eventfd: a new park, or stop */
    int started;
    _Atomic int stopping;
    pthread_t thread;
    pthread_mutex_t lock; /* guards p, n, started */
    struct parked p[PARKED];
    int n;
};

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Drop entry i (its duplicate closed): the last one takes its place. Lock held. */
static void drop(struct connecting *c, int i)
{
    close(c->p[i].fd);
    c->p[i] = c->p[--c->n];
}

/* Answer entry i with rc and drop it. Our duplicate is closed first, as the gate does for
 * a connect: the child's own close then stays the last one. Lock held. */
static void finish(struct connecting *c, int i, int64_t rc)
{
    uint64_t id = c->p[i].id;
    drop(c, i);
    sandlock_notif_send(c->listener, id, rc < 0 ? 0 : rc, rc < 0 ? (int32_t)rc : 0, 0);
    atomic_fetch_add(c->answered, 1);
}

static void *connecting_main(void *arg)
{
    struct connecting *c = arg;
    struct pollfd fds[PARKED + 1];
    int64_t next_check = now_ns() + WATCHDOG_NS;
    while (!atomic_load(&c->stopping)) {
        /* The poll set: the eventfd, then each parked duplicate, in the array's order. */
        pthread_mutex_lock(&c->lock);
        int n = c->n;
        int64_t wake_at = next_check;
        fds[0] = (struct pollfd){.fd = c->wake, .events = POLLIN};
        for (int i = 0; i < n; i++) {
            fds[i + 1] = (struct pollfd){.fd = c->p[i].fd, .events = POLLOUT};
            if (c->p[i].deadline && c->p[i].deadline < wake_at)
                wake_at = c->p[i].deadline;
        }
        pthread_mutex_unlock(&c->lock);
        int64_t left = wake_at - now_ns();
        int timeout_ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
        int ready = poll(fds, (nfds_t)n + 1, n ? timeout_ms : -1);
        if (ready < 0 && errno != EINTR)
            break; /* cannot happen on our own descriptors: never spin on it */
        if (fds[0].revents) {
            uint64_t count;
            if (read(c->wake, &count, sizeof count) < 0) {
                /* EAGAIN-free eventfd read after POLLIN; nothing to do either way */
            }
        }
        int64_t now = now_ns();
        int check = now >= next_check;
        if (check)
            next_check = now + WATCHDOG_NS;
        pthread_mutex_lock(&c->lock);
        /* Walk the first n entries from the end: finish() moves the last entry into the
         * freed place, and entries parked since the poll sit beyond n, untouched. */
        for (int i = n - 1; i >= 0; i--) {
            if (ready > 0 && fds[i + 1].revents) {
                int err = sandlock_sock_error(c->p[i].fd); /* SO_ERROR, or -errno */
                finish(c, i, err > 0 ? -err : err);
            } else if (c->p[i].deadline && now >= c->p[i].deadline) {
                finish(c, i, -EINPROGRESS); /* SO_SNDTIMEO: what a blocking connect says */
            } else if (check && sandlock_notif_id_valid(c->listener, c->p[i].id) < 0) {
                drop(c, i); /* the child stopped waiting (killed, or interrupted) */
            }
        }
        pthread_mutex_unlock(&c->lock);
    }
    return NULL;
}

struct connecting *connecting_new(int listener, _Atomic uint64_t *answered)
{
    struct connecting *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->listener = listener;
    c->answered = answered;
    c->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wake < 0) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

/* Start the thread with every signal blocked (they are Python's). Lock held. */
static int start_thread(struct connecting *c)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&c->thread, NULL, connecting_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    c->started = rc == 0;
    return c->started ? 0 : -1;
}

int connecting_park(struct connecting *c, uint64_t id, int fd, int64_t timeout_us)
{
    pthread_mutex_lock(&c->lock);
    int ok = c->n < PARKED && !atomic_load(&c->stopping) && (c->started || start_thread(c) == 0);
    if (ok) {
        int64_t deadline = timeout_us > 0 ? now_ns() + timeout_us * 1000 : 0;
        c->p[c->n++] = (struct parked){.id = id, .fd = fd, .deadline = deadline};
    }
    pthread_mutex_unlock(&c->lock);
    if (!ok)
        return -1;
    uint64_t one = 1;
    if (write(c->wake, &one, sizeof one) < 0) {
        /* only a counter at its maximum refuses: the thread is awake already */
    }
    return 0;
}

void connecting_free(struct connecting *c)
{
    atomic_store(&c->stopping, 1);
    uint64_t one = 1;
    if (write(c->wake, &one, sizeof one) < 0) {
        /* as in connecting_park */
    }
    if (c->started)
        pthread_join(c->thread, NULL);
    while (c->n > 0)
        drop(c, c->n - 1);
    close(c->wake);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
