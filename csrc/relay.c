/* The relay's data path: see relay.h. */
#define _GNU_SOURCE
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "clienthello.h"
#include "gate.h"

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

/* What an epoll event names: the first member of each (the eventfd's data is NULL). */
enum { ITEM_PAIR = 1, ITEM_LISTENER = 2, ITEM_FIRST = 3 };

struct pair {
    int kind; /* ITEM_PAIR */
    int fd[2];
    struct way way[2]; /* way[i]: from fd[i] to fd[1 - i] */
    int dead;          /* closed; freed after the batch of events that may name it */
    struct pair *prev, *next;
};

/* A listener of the front. */
struct listener {
    int kind; /* ITEM_LISTENER */
    int fd;   /* -1: none */
    int64_t paused_until; /* ms (CLOCK_MONOTONIC); 0: listening */
};

/* A connection the front accepted: its first bytes being read, or its destination being
 * connected to (up), or handed to Python (on the handed queue). */
enum { FIRST_READING = 1, FIRST_CONNECTING = 2, FIRST_HANDED = 3 };

struct first {
    int kind; /* ITEM_FIRST */
    int state;
    int dead;
    int fd, up; /* the command's connection; the destination's (-1 until connecting) */
    int64_t deadline; /* ms */
    /* What goes to Python (sandlock_relay_handed): the peer, the note... */
    uint8_t local[16];
    uint16_t port;
    uint8_t noted, timed_out;
    uint32_t tid, destlen;
    uint8_t dest[SANDLOCK_RELAY_NOTE_NAME];
    /* ...and the bytes read: a buffer grown as they come (an idle connection holds
     * none), up to SANDLOCK_FIRST_MAX. */
    uint8_t *data;
    uint32_t len, cap;
    struct first *prev, *next;
};

struct sandlock_relay {
    int ep;
    int wake; /* eventfd: stop (its epoll data is NULL) */
    int started;
    _Atomic int stopping;
    _Atomic int pairs;
    _Atomic uint64_t fast;
    pthread_t thread;
    pthread_mutex_t lock; /* guards the lists, started; held by the thread while it serves */
    struct pair *head;
    /* The front (sandlock_relay_front): its gate, listeners, the connections being read
     * (firsts), those handed to Python (handed..handed_tail), how many of both, and the
     * eventfd that says some are handed. */
    struct sandlock_gate *gate;
    struct listener listeners[2];
    struct first *firsts, *handed, *handed_tail;
    int nfirst;
    int handed_fd;
    int first_ms, connect_ms; /* the time a first record, a connect may take */
    int64_t next_sweep; /* ms */
    /* Items ended while events fetched by epoll_wait may still name them: freed after the
     * batch (they are out of the epoll set already, so no later batch names them). */
    void *graveyard[2 * 64 + 1];
    int ngrave;
    void **overflow; /* (more than that in one batch: kept here, freed with the rest) */
    size_t noverflow, overflow_cap;
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

/* Free item after the batch of events being served (see graveyard). Lock held. */
static void bury(struct sandlock_relay *r, void *item)
{
    if (r->ngrave < (int)(sizeof r->graveyard / sizeof r->graveyard[0])) {
        r->graveyard[r->ngrave++] = item;
        return;
    }
    if (r->noverflow == r->overflow_cap) {
        size_t cap = r->overflow_cap ? 2 * r->overflow_cap : 64;
        void **more = realloc(r->overflow, cap * sizeof *more);
        if (more == NULL)
            return; /* (leaked rather than freed too early) */
        r->overflow = more;
        r->overflow_cap = cap;
    }
    r->overflow[r->noverflow++] = item;
}

/* Free what was buried: no event fetched from now on can name it. Lock held. */
static void free_buried(struct sandlock_relay *r)
{
    for (int i = 0; i < r->ngrave; i++)
        free(r->graveyard[i]);
    r->ngrave = 0;
    for (size_t i = 0; i < r->noverflow; i++)
        free(r->overflow[i]);
    r->noverflow = 0;
}

static const struct linger zero_linger = {.l_onoff = 1, .l_linger = 0};

/* Close fd with a reset (SO_LINGER 0): its peer gets ECONNRESET, not an end of stream. */
static void reset_fd(int fd)
{
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &zero_linger, sizeof zero_linger);
    close(fd);
}

/* Close the pair's sockets (reset: with SO_LINGER 0, so the peers get ECONNRESET) and
 * pipes; it is unlinked, counted out and buried. Lock held. */
static void end_pair(struct sandlock_relay *r, struct pair *p, int reset)
{
    for (int i = 0; i < 2; i++) {
        if (reset)
            setsockopt(p->fd[i], SOL_SOCKET, SO_LINGER, &zero_linger, sizeof zero_linger);
        close(p->fd[i]); /* (which takes it out of the epoll set) */
        p->fd[i] = -1;
    }
    close_pipes(p);
    p->dead = 1;
    unlink_pair(r, p);
    atomic_fetch_sub(&r->pairs, 1);
    bury(r, p);
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

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void serve_listener(struct sandlock_relay *r, struct listener *l);
static void serve_first(struct sandlock_relay *r, struct first *f);
static void sweep(struct sandlock_relay *r);

static void *relay_main(void *arg)
{
    struct sandlock_relay *r = arg;
    struct epoll_event ev[EVENTS];
    while (!atomic_load(&r->stopping)) {
        /* Connections awaiting their first bytes, or a paused listener: wake to check
         * their time now and then; else sleep until something happens. */
        int timeout = r->firsts != NULL || r->listeners[0].paused_until ||
                              r->listeners[1].paused_until
                          ? SANDLOCK_RELAY_PAUSE_MS
                          : -1;
        int n = epoll_wait(r->ep, ev, EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* cannot happen on our own epoll fd: never spin on it */
        }
        pthread_mutex_lock(&r->lock);
        for (int i = 0; i < n; i++) {
            int *kind = ev[i].data.ptr;
            if (kind == NULL)
                continue; /* (the eventfd: stopping is checked by the loop) */
            if (*kind == ITEM_PAIR) {
                struct pair *p = (struct pair *)kind;
                if (!p->dead)
                    serve(r, p, ev[i].events);
            } else if (*kind == ITEM_LISTENER) {
                serve_listener(r, (struct listener *)kind);
            } else {
                struct first *f = (struct first *)kind;
                if (!f->dead && f->state != FIRST_HANDED)
                    serve_first(r, f);
            }
        }
        free_buried(r);
        if ((r->firsts != NULL || r->listeners[0].paused_until || r->listeners[1].paused_until) &&
            now_ms() >= r->next_sweep) {
            sweep(r);
            free_buried(r);
            r->next_sweep = now_ms() + SANDLOCK_RELAY_PAUSE_MS;
        }
        pthread_mutex_unlock(&r->lock);
    }
    return NULL;
}

/* ---- the front -------------------------------------------------------------------------- */

static void link_first(struct first **head, struct first *f)
{
    f->prev = NULL;
    f->next = *head;
    if (*head)
        (*head)->prev = f;
    *head = f;
}

static void unlink_first(struct first **head, struct first *f)
{
    if (f->prev)
        f->prev->next = f->next;
    else
        *head = f->next;
    if (f->next)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
}

/* End f with a reset of its sockets (refused, failed, or the relay stopping). Lock held. */
static void drop_first(struct sandlock_relay *r, struct first *f)
{
    free(f->data);
    f->data = NULL;
    if (f->fd >= 0)
        reset_fd(f->fd); /* (which takes it out of the epoll set) */
    if (f->up >= 0)
        reset_fd(f->up);
    f->fd = f->up = -1;
    f->dead = 1;
    unlink_first(&r->firsts, f);
    r->nfirst--;
    bury(r, f);
}

/* Hand f to Python with what was read: out of the epoll set, onto the handed queue, the
 * eventfd told. Lock held. */
static void hand(struct sandlock_relay *r, struct first *f)
{
    epoll_ctl(r->ep, EPOLL_CTL_DEL, f->fd, NULL);
    unlink_first(&r->firsts, f);
    f->state = FIRST_HANDED;
    f->next = NULL;
    f->prev = r->handed_tail;
    if (r->handed_tail)
        r->handed_tail->next = f;
    else
        r->handed = f;
    r->handed_tail = f;
    uint64_t one = 1;
    if (write(r->handed_fd, &one, sizeof one) < 0) {
        /* only a counter at its maximum refuses: Python is told already */
    }
}

static int add_pair(struct sandlock_relay *r, struct pair *p);
static struct pair *new_pair(int a, int b, int *err);

/* f's destination is connected: the bytes read go to it, then the pair is spliced.
 * Lock held. */
static void connected(struct sandlock_relay *r, struct first *f)
{
    ssize_t n = send(f->up, f->data, f->len, MSG_NOSIGNAL | MSG_DONTWAIT);
    int err = 0;
    struct pair *p = NULL;
    if (n != (ssize_t)f->len) /* (a fresh socket takes SANDLOCK_RELAY_FAST_MAX at once) */
        err = -EIO;
    if (!err) {
        epoll_ctl(r->ep, EPOLL_CTL_DEL, f->fd, NULL);
        epoll_ctl(r->ep, EPOLL_CTL_DEL, f->up, NULL);
        p = new_pair(f->fd, f->up, &err);
    }
    if (!err && (err = add_pair(r, p)) < 0)
        free(p); /* (never in the epoll set: add_pair adds both or neither) */
    if (err) {
        drop_first(r, f);
        return;
    }
    f->fd = f->up = -1; /* the pair's now */
    free(f->data);
    f->data = NULL;
    f->dead = 1;
    unlink_first(&r->firsts, f);
    r->nfirst--;
    bury(r, f);
    atomic_fetch_add(&r->fast, 1);
}

/* Connect to f's destination as relay.py's _connect does: an IPv4-mapped address over
 * IPv4, an IPv6 one with neither flow label nor scope. Lock held. */
static void start_upstream(struct sandlock_relay *r, struct first *f)
{
    struct sockaddr_storage ss;
    socklen_t len;
    uint16_t family;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(&family, f->dest, 2);
    memset(&ss, 0, sizeof ss);
    if (family == AF_INET6 && memcmp(f->dest + 8, mapped, 12) == 0) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_port, f->dest + 2, 2);
        memcpy(&in->sin_addr, f->dest + 20, 4);
        len = sizeof *in;
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_port, f->dest + 2, 2);
        memcpy(&in6->sin6_addr, f->dest + 8, 16);
        len = sizeof *in6;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_port, f->dest + 2, 2);
        memcpy(&in->sin_addr, f->dest + 4, 4);
        len = sizeof *in;
    }
    f->up = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (f->up < 0) {
        drop_first(r, f);
        return;
    }
    int rc = connect(f->up, (struct sockaddr *)&ss, len) == 0 ? 0 : -errno;
    if (rc == -EINPROGRESS) { /* finished already (loopback usually is)? */
        struct pollfd p = {.fd = f->up, .events = POLLOUT};
        int err = 0;
        socklen_t elen = sizeof err;
        if (poll(&p, 1, 0) > 0)
            rc = getsockopt(f->up, SOL_SOCKET, SO_ERROR, &err, &elen) < 0 ? -errno : -err;
    }
    if (rc == 0) {
        connected(r, f);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.ptr = f};
    if (rc != -EINPROGRESS || epoll_ctl(r->ep, EPOLL_CTL_ADD, f->up, &ev) < 0) {
        drop_first(r, f); /* (refused: reset, as relay.py does when it cannot connect) */
        return;
    }
    f->state = FIRST_CONNECTING;
    f->deadline = now_ms() + r->connect_ms;
}

/* Read what f's command sent until its first record decides (see relay.h). Lock held. */
static void read_first(struct sandlock_relay *r, struct first *f)
{
    for (;;) {
        if (f->len >= SANDLOCK_FIRST_MAX) {
            hand(r, f);
            return;
        }
        if (f->len == f->cap) {
            uint32_t cap = f->cap ? 2 * f->cap : 2048;
            cap = cap < SANDLOCK_FIRST_MAX ? cap : SANDLOCK_FIRST_MAX;
            uint8_t *more = realloc(f->data, cap);
            if (more == NULL) {
                hand(r, f); /* (Python reads on) */
                return;
            }
            f->data = more;
            f->cap = cap;
        }
        ssize_t n = recv(f->fd, f->data + f->len, f->cap - f->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return; /* (edge-triggered: the next bytes bring an event) */
        if (n <= 0) {
            hand(r, f); /* the end, or an error: Python meets it again and decides */
            return;
        }
        f->len += (uint32_t)n;
        char name[SANDLOCK_FIRST_NAME_MAX];
        size_t namelen = 0;
        int verdict = sandlock_first_tls(f->data, f->len, name, &namelen);
        if (verdict == SANDLOCK_FIRST_NEED_MORE)
            continue;
        if (verdict == SANDLOCK_FIRST_NAMED && f->len <= SANDLOCK_RELAY_FAST_MAX &&
            sandlock_gate_approved(r->gate, name, namelen, f->dest, f->destlen))
            start_upstream(r, f);
        else
            hand(r, f);
        return;
    }
}

static void serve_first(struct sandlock_relay *r, struct first *f)
{
    if (f->state == FIRST_READING) {
        read_first(r, f);
        return;
    }
    /* FIRST_CONNECTING: an event of either socket; only the destination's counts. */
    struct pollfd p = {.fd = f->up, .events = POLLOUT};
    if (poll(&p, 1, 0) <= 0)
        return;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(f->up, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0)
        drop_first(r, f);
    else
        connected(r, f);
}

/* A connection accepted: Python's if the gate noted nothing for it, else read here. */
static void accepted(struct sandlock_relay *r, int fd, const struct sockaddr_storage *peer)
{
    struct first *f = NULL;
    if (r->nfirst >= SANDLOCK_RELAY_MAX_PAIRS || (f = calloc(1, sizeof *f)) == NULL) {
        reset_fd(fd);
        return;
    }
    f->kind = ITEM_FIRST;
    f->state = FIRST_READING;
    f->fd = fd;
    f->up = -1;
    f->deadline = now_ms() + r->first_ms;
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)peer;
        f->local[10] = f->local[11] = 0xff;
        memcpy(f->local + 12, &in->sin_addr, 4);
        f->port = ntohs(in->sin_port);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
        memcpy(f->local, &in6->sin6_addr, 16);
        f->port = ntohs(in6->sin6_port);
    }
    r->nfirst++;
    link_first(&r->firsts, f);
    f->noted = (uint8_t)sandlock_gate_take_note(r->gate, f->local, f->port, f->dest,
                                                  &f->destlen, &f->tid);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = f};
    if (!f->noted || epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        hand(r, f);
        return;
    }
    read_first(r, f);
}

static void serve_listener(struct sandlock_relay *r, struct listener *l)
{
    for (int k = 0; k < EVENTS; k++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            accepted(r, fd, &peer);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
            continue;
        if (errno != EAGAIN) { /* EMFILE, ENFILE, ENOBUFS, ENOMEM: pause, never spin */
            struct epoll_event ev = {.events = 0, .data.ptr = l};
            epoll_ctl(r->ep, EPOLL_CTL_MOD, l->fd, &ev);
            l->paused_until = now_ms() + SANDLOCK_RELAY_PAUSE_MS;
        }
        return;
    }
}

/* Time: first records not whole in time go to Python (which refuses them), connects
 * that do not finish are reset, paused listeners listen again. Lock held. */
static void sweep(struct sandlock_relay *r)
{
    int64_t now = now_ms();
    struct first *next;
    for (struct first *f = r->firsts; f != NULL; f = next) {
        next = f->next;
        if (now < f->deadline)
            continue;
        if (f->state == FIRST_READING) {
            f->timed_out = 1;
            hand(r, f);
        } else {
            drop_first(r, f);
        }
    }
    for (int i = 0; i < 2; i++) {
        struct listener *l = &r->listeners[i];
        if (l->paused_until && now >= l->paused_until) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
            epoll_ctl(r->ep, EPOLL_CTL_MOD, l->fd, &ev);
            l->paused_until = 0;
        }
    }
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
    r->listeners[0].fd = r->listeners[1].fd = r->handed_fd = -1;
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

/* A pair for the connected sockets a and b (made non-blocking), its pipes open; NULL and
 * *err = -errno if it cannot be. */
static struct pair *new_pair(int a, int b, int *err)
{
    int rc = set_nonblocking(a);
    if (rc == 0)
        rc = set_nonblocking(b);
    struct pair *p = rc == 0 ? calloc(1, sizeof *p) : NULL;
    if (p == NULL) {
        *err = rc ? rc : -ENOMEM;
        return NULL;
    }
    p->kind = ITEM_PAIR;
    p->fd[0] = a;
    p->fd[1] = b;
    p->way[0].r = p->way[0].w = p->way[1].r = p->way[1].w = -1;
    rc = open_way(&p->way[0]);
    if (rc == 0)
        rc = open_way(&p->way[1]);
    if (rc < 0) {
        close_pipes(p);
        free(p);
        *err = rc;
        return NULL;
    }
    *err = 0;
    return p;
}

/* Serve p from now on: 0, or -errno and p is in no list nor the epoll set (its pipes
 * still open: the caller closes them and frees it... only once no fetched event can
 * name it: see below). Lock held, thread started. */
static int add_pair(struct sandlock_relay *r, struct pair *p)
{
    if (atomic_load(&r->pairs) >= SANDLOCK_RELAY_MAX_PAIRS)
        return -EMFILE;
    struct epoll_event ev = {.events = SOCKET_EVENTS, .data.ptr = p};
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, p->fd[0], &ev) < 0)
        return -errno;
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, p->fd[1], &ev) < 0) {
        int err = -errno;
        epoll_ctl(r->ep, EPOLL_CTL_DEL, p->fd[0], NULL);
        return err;
    }
    p->next = r->head;
    if (r->head)
        r->head->prev = p;
    r->head = p;
    atomic_fetch_add(&r->pairs, 1);
    return 0;
}

int sandlock_relay_join(struct sandlock_relay *r, int a, int b)
{
    if (atomic_load(&r->pairs) >= SANDLOCK_RELAY_MAX_PAIRS)
        return -EMFILE;
    int rc;
    struct pair *p = new_pair(a, b, &rc);
    if (p == NULL)
        return rc;
    pthread_mutex_lock(&r->lock);
    if (atomic_load(&r->stopping))
        rc = -ESHUTDOWN;
    else if (!r->started)
        rc = start_thread(r);
    if (rc == 0)
        rc = add_pair(r, p);
    if (rc < 0) {
        /* (its first socket may have been in the epoll set for a moment, and an event
         * fetched then may still name it: buried, freed by the thread after that batch;
         * the sockets stay the caller's) */
        close_pipes(p);
        p->dead = 1;
        if (r->started)
            bury(r, p);
        else
            free(p);
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int sandlock_relay_front(struct sandlock_relay *r, struct sandlock_gate *g, int l4, int l6,
                         int first_ms, int connect_ms)
{
    int rc = 0;
    if (first_ms < 0 || connect_ms < 0)
        return -EINVAL;
    pthread_mutex_lock(&r->lock);
    r->first_ms = first_ms;
    r->connect_ms = connect_ms;
    if (r->gate != NULL || atomic_load(&r->stopping)) {
        pthread_mutex_unlock(&r->lock);
        return -EINVAL;
    }
    r->handed_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (r->handed_fd < 0)
        rc = -errno;
    int fds[2] = {l4, l6};
    for (int i = 0; i < 2 && rc == 0; i++) {
        struct listener *l = &r->listeners[i];
        l->kind = ITEM_LISTENER;
        l->fd = fds[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
        if (l->fd >= 0 && epoll_ctl(r->ep, EPOLL_CTL_ADD, l->fd, &ev) < 0)
            rc = -errno;
    }
    if (rc == 0 && !r->started)
        rc = start_thread(r);
    if (rc < 0) {
        for (int i = 0; i < 2; i++)
            if (r->listeners[i].fd >= 0)
                epoll_ctl(r->ep, EPOLL_CTL_DEL, r->listeners[i].fd, NULL);
        if (r->handed_fd >= 0)
            close(r->handed_fd);
        r->handed_fd = -1;
        r->listeners[0].fd = r->listeners[1].fd = -1;
    } else {
        r->gate = g;
        rc = r->handed_fd;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int sandlock_relay_next(struct sandlock_relay *r, struct sandlock_relay_handed *out)
{
    pthread_mutex_lock(&r->lock);
    struct first *f = r->handed;
    if (f != NULL) {
        r->handed = f->next;
        if (r->handed)
            r->handed->prev = NULL;
        else
            r->handed_tail = NULL;
        r->nfirst--;
    }
    pthread_mutex_unlock(&r->lock);
    if (f == NULL)
        return 0;
    /* (out of every list and the epoll set since hand, and the batch that handed it is
     * over: the thread holds the lock through a batch, so no event can name it now) */
    out->fd = f->fd;
    out->tid = f->tid;
    out->port = f->port;
    out->noted = f->noted;
    out->timed_out = f->timed_out;
    memcpy(out->local, f->local, sizeof out->local);
    out->destlen = f->destlen;
    memcpy(out->dest, f->dest, sizeof out->dest);
    out->len = f->len;
    if (f->len)
        memcpy(out->data, f->data, f->len);
    free(f->data);
    free(f);
    return 1;
}

uint64_t sandlock_relay_fast(struct sandlock_relay *r)
{
    return atomic_load(&r->fast);
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
    while (r->head != NULL)
        end_pair(r, r->head, 1);
    while (r->firsts != NULL)
        drop_first(r, r->firsts);
    for (struct first *f = r->handed, *next; f != NULL; f = next) {
        next = f->next;
        reset_fd(f->fd);
        free(f->data);
        free(f);
    }
    r->handed = r->handed_tail = NULL;
    free_buried(r);
    free(r->overflow);
    if (r->handed_fd >= 0)
        close(r->handed_fd);
    close(r->wake);
    close(r->ep);
    pthread_mutex_destroy(&r->lock);
    free(r);
}
