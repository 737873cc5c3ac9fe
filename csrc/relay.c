/* The relay's data path: see relay.h. */
#define _GNU_SOURCE
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#define EVENTS 64 /* epoll_wait's batch */
#define SPLICE_FLAGS (SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
#define SOCKET_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

/* One direction of a pair: bytes from socket fd[from] through the pipe to fd[1 - from]. */
struct way {
    int r, w;     /* the pipe's ends */
    size_t cap;   /* its size (F_GETPIPE_SZ) */
    size_t held;  /* bytes in it */
    int ended;    /* the source said EOF */
    int shut;     /* and that was passed on: shutdown(SHUT_WR) of the destination */
};

struct pair {
    int fd[2];
    struct way way[2]; /* way[i]: from fd[i] to fd[1 - i] */
    int dead;          /* closed; freed after the batch of events that may name it */
    struct pair *prev, *next;
};

struct sandlock_relay {
    int ep;
    int wake; /* eventfd: stop (its epoll data is NULL) */
    int started;
    _Atomic int stopping;
    _Atomic int pairs;
    pthread_t thread;
    pthread_mutex_t lock; /* guards the list, started; held by the thread while it serves */
    struct pair *head;
};

static void unlink_pair(struct sandlock_relay *r, struct pair *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        r->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

static void close_pipes(struct pair *p)
{
    for (int i = 0; i < 2; i++) {
        if (p->way[i].r >= 0)
            close(p->way[i].r);
        if (p->way[i].w >= 0)
            close(p->way[i].w);
        p->way[i].r = p->way[i].w = -1;
    }
}

/* Close the pair's sockets (reset: with SO_LINGER 0, so the peers get ECONNRESET) and
 * pipes; it is unlinked and counted out, and freed by the caller. Lock held. */
static void end_pair(struct sandlock_relay *r, struct pair *p, int reset)
{
    static const struct linger zero = {.l_onoff = 1, .l_linger = 0};
    for (int i = 0; i < 2; i++) {
        if (reset)
            setsockopt(p->fd[i], SOL_SOCKET, SO_LINGER, &zero, sizeof zero);
        close(p->fd[i]); /* (which takes it out of the epoll set) */
        p->fd[i] = -1;
    }
    close_pipes(p);
    p->dead = 1;
    unlink_pair(r, p);
    atomic_fetch_sub(&r->pairs, 1);
}

/* Move what can move now in one direction, until neither side can go on: 0, or -errno
 * of a failed splice or shutdown. Edge-triggered: every call ends with the source read
 * to EAGAIN (or its end, or a full pipe) and the pipe written to EAGAIN (or empty), so
 * the next change of either socket brings a new event. */
static int pump(struct pair *p, int from)
{
    struct way *w = &p->way[from];
    int src = p->fd[from], dst = p->fd[1 - from];
    for (;;) {
        int moved = 0;
        if (!w->ended && w->held < w->cap) {
            ssize_t n = splice(src, NULL, w->w, NULL, w->cap - w->held, SPLICE_FLAGS);
            if (n > 0) {
                w->held += (size_t)n;
                moved = 1;
            } else if (n == 0) {
                w->ended = 1;
                moved = 1;
            } else if (errno == EINTR) {
                moved = 1; /* (try again: never leave an edge unconsumed) */
            } else if (errno != EAGAIN) {
                return -errno;
            }
        }
        if (w->held > 0) {
            ssize_t n = splice(w->r, NULL, dst, NULL, w->held, SPLICE_FLAGS);
            if (n > 0) {
                w->held -= (size_t)n;
                moved = 1;
            } else if (n < 0 && errno == EINTR) {
                moved = 1;
            } else if (n < 0 && errno != EAGAIN) {
                return -errno;
            }
        }
        if (w->ended && w->held == 0 && !w->shut) {
            if (shutdown(dst, SHUT_WR) < 0 && errno != ENOTCONN)
                return -errno;
            w->shut = 1;
        }
        if (!moved)
            return 0;
    }
}

/* Whether either socket holds an error (SO_ERROR: a reset received, say). */
static int failed(const struct pair *p)
{
    for (int i = 0; i < 2; i++) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(p->fd[i], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0)
            return 1;
    }
    return 0;
}

/* Both directions, then the pair's end if both have ended (or a reset). An error event
 * resets the pair even where no splice would meet the error: a side that already ended
 * its sending, reset while the other side is quiet, is passed on now. Lock held. */
static void serve(struct sandlock_relay *r, struct pair *p, uint32_t events)
{
    if ((events & EPOLLERR) && failed(p)) {
        end_pair(r, p, 1);
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (pump(p, i) < 0) {
            end_pair(r, p, 1);
            return;
        }
    }
    if (p->way[0].shut && p->way[1].shut)
        end_pair(r, p, 0);
}

static void *relay_main(void *arg)
{
    struct sandlock_relay *r = arg;
    struct epoll_event ev[EVENTS];
    struct pair *dead[EVENTS];
    while (!atomic_load(&r->stopping)) {
        int n = epoll_wait(r->ep, ev, EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* cannot happen on our own epoll fd: never spin on it */
        }
        int ndead = 0;
        pthread_mutex_lock(&r->lock);
        for (int i = 0; i < n; i++) {
            struct pair *p = ev[i].data.ptr;
            if (p == NULL || p->dead)
                continue; /* (the eventfd: stopping is checked by the loop) */
            serve(r, p, ev[i].events);
            if (p->dead)
                dead[ndead++] = p;
        }
        pthread_mutex_unlock(&r->lock);
        for (int i = 0; i < ndead; i++)
            free(dead[i]);
    }
    return NULL;
}

struct sandlock_relay *sandlock_relay_new(int *err)
{
    struct sandlock_relay *r = calloc(1, sizeof *r);
    if (r == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    r->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (r->ep < 0 || r->wake < 0 || epoll_ctl(r->ep, EPOLL_CTL_ADD, r->wake, &ev) < 0) {
        *err = -errno;
        if (r->ep >= 0)
            close(r->ep);
        if (r->wake >= 0)
            close(r->wake);
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    return r;
}

/* Start the thread with every signal blocked (they are Python's). Lock held. */
static int start_thread(struct sandlock_relay *r)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&r->thread, NULL, relay_main, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    r->started = rc == 0;
    return rc == 0 ? 0 : -rc;
}

static int open_way(struct way *w)
{
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    w->r = fds[0];
    w->w = fds[1];
    fcntl(w->w, F_SETPIPE_SZ, SANDLOCK_RELAY_PIPE_SIZE); /* refused: the default size */
    int size = fcntl(w->w, F_GETPIPE_SZ);
    w->cap = size > 0 ? (size_t)size : 4096;
    return 0;
}

static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int sandlock_relay_join(struct sandlock_relay *r, int a, int b)
{
    if (atomic_load(&r->pairs) >= SANDLOCK_RELAY_MAX_PAIRS)
        return -EMFILE;
    int rc = set_nonblocking(a);
    if (rc == 0)
        rc = set_nonblocking(b);
    if (rc < 0)
        return rc;
    struct pair *p = calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->fd[0] = a;
    p->fd[1] = b;
    p->way[0].r = p->way[0].w = p->way[1].r = p->way[1].w = -1;
    rc = open_way(&p->way[0]);
    if (rc == 0)
        rc = open_way(&p->way[1]);
    if (rc < 0) {
        close_pipes(p);
        free(p);
        return rc;
    }
    pthread_mutex_lock(&r->lock);
    if (atomic_load(&r->stopping))
        rc = -ESHUTDOWN;
    else if (!r->started)
        rc = start_thread(r);
    struct epoll_event ev = {.events = SOCKET_EVENTS, .data.ptr = p};
    if (rc == 0 && epoll_ctl(r->ep, EPOLL_CTL_ADD, a, &ev) < 0)
        rc = -errno;
    if (rc == 0 && epoll_ctl(r->ep, EPOLL_CTL_ADD, b, &ev) < 0) {
        rc = -errno;
        epoll_ctl(r->ep, EPOLL_CTL_DEL, a, NULL);
    }
    if (rc == 0) {
        p->next = r->head;
        if (r->head)
            r->head->prev = p;
        r->head = p;
        atomic_fetch_add(&r->pairs, 1);
    }
    pthread_mutex_unlock(&r->lock);
    if (rc < 0) {
        close_pipes(p);
        free(p);
    }
    return rc;
}

int sandlock_relay_pairs(struct sandlock_relay *r)
{
    return atomic_load(&r->pairs);
}

void sandlock_relay_free(struct sandlock_relay *r)
{
    pthread_mutex_lock(&r->lock);
    atomic_store(&r->stopping, 1);
    int started = r->started;
    pthread_mutex_unlock(&r->lock);
    uint64_t one = 1;
    if (write(r->wake, &one, sizeof one) < 0) {
        /* only a counter at its maximum refuses: the thread is awake already */
    }
    if (started)
        pthread_join(r->thread, NULL);
    while (r->head != NULL) {
        struct pair *p = r->head;
        end_pair(r, p, 1);
        free(p);
    }
    close(r->wake);
    close(r->ep);
    pthread_mutex_destroy(&r->lock);
    free(r);
}
