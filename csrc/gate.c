/*
 * The gate's thread, its waiting and its handoff. See gate.h for what it is and why;
 * fastpath.c gives the answers, this file receives the notifications and hands over
 * what the fast path does not answer.
 */
#define _GNU_SOURCE
#include "gate.h"
#include "fastpath.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/seccomp.h>

#include "sandlock.h"

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

struct sandlock_gate {
    int listener;
    int wake;      /* eventfd: written by sandlock_gate_stop */
    int out;       /* our end of the handoff socket */
    int in_recv;   /* the thread waits in RECV itself, not in poll (see wait_in_recv) */
    _Atomic int stopping;
    pthread_t thread;
    _Atomic uint64_t n_handoffs;
    struct fastpath fp; /* the answers, and what they need: flags, destinations, names */
};

/* ---- the thread ------------------------------------------------------------------------- */

/* Waiting in RECV itself saves the poll() before each RECV (~1 us a call, bench/RESULTS.md).
 * It needs a kernel whose RECV waits on the same queue as poll (6.6, the series that
 * brought SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: so the flag's acceptance is the test): the
 * sync wake-up then reaches it, and RECV returns once the last task of the filter is gone.
 * A thread blocked in RECV is stopped by a signal of its own (GATE_SIGNAL, a no-op
 * handler without SA_RESTART: RECV returns EINTR). If another part of the process
 * already handles that signal, the gate leaves it alone and waits in poll(). */
#define GATE_SIGNAL (SIGRTMAX - 6)

static void gate_signal_handler(int sig)
{
    (void)sig; /* only there to interrupt RECV */
}

static pthread_mutex_t signal_lock = PTHREAD_MUTEX_INITIALIZER;

static int ours(const struct sigaction *a)
{
    return !(a->sa_flags & SA_SIGINFO) && a->sa_handler == gate_signal_handler;
}

/* 1 if GATE_SIGNAL is (now) ours to send. */
static int own_gate_signal(void)
{
    struct sigaction cur, mine = {.sa_handler = gate_signal_handler}; /* no SA_RESTART */
    sigemptyset(&mine.sa_mask);
    pthread_mutex_lock(&signal_lock);
    int ok = sigaction(GATE_SIGNAL, NULL, &cur) == 0;
    if (ok && cur.sa_handler == SIG_DFL && !(cur.sa_flags & SA_SIGINFO))
        ok = sigaction(GATE_SIGNAL, &mine, NULL) == 0;
    else if (ok)
        ok = ours(&cur);
    pthread_mutex_unlock(&signal_lock);
    return ok;
}

/* Stop a thread that may be waiting in RECV: GATE_SIGNAL until it has ended. The signal
 * may land just before the thread enters RECV (it checks stopping first, but not
 * atomically with entering), hence again every 2 ms. Should the application have taken
 * the signal over since the gate started, its handler is set aside until then (with
 * SIG_IGN the kernel would drop the signal, and with a handler of its own the
 * application would see signals it never sent). */
static void interrupt_and_join(pthread_t thread)
{
    struct sigaction theirs, mine = {.sa_handler = gate_signal_handler};
    sigemptyset(&mine.sa_mask);
    pthread_mutex_lock(&signal_lock);
    int set_aside = sigaction(GATE_SIGNAL, &mine, &theirs) == 0 && !ours(&theirs);
    struct timespec t;
    do {
        pthread_kill(thread, GATE_SIGNAL);
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 2000000;
        if (t.tv_nsec >= 1000000000) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000;
        }
    } while (pthread_timedjoin_np(thread, NULL, &t) == ETIMEDOUT);
    if (set_aside)
        sigaction(GATE_SIGNAL, &theirs, NULL);
    pthread_mutex_unlock(&signal_lock);
}

/* Ask the kernel to hand the CPU straight between child and gate on each notification
 * and answer (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, kernel >= 6.6; older kernels go
 * without), whichever way the thread waits: a UDP sendto round trip 84 -> 61 us when it
 * came in (bench/RESULTS.md). Then decide how to wait. */
static int wait_in_recv(int listener, unsigned int flags)
{
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) < 0)
        return 0;
    return !(flags & SANDLOCK_GATE_POLL) && own_gate_signal();
}

/* 1 once the filter has no task left (RECV then fails at once, for ever). */
static int sandbox_gone(int listener)
{
    struct pollfd p = {.fd = listener, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL));
}

/* Wait for the next notification into n: 1 for one, 0 for none this time (withdrawn,
 * interrupted), -1 to stop (asked to, or the sandbox is gone). */
static int next_notification(struct sandlock_gate *g, struct pollfd p[2],
                             struct seccomp_notif *n)
{
    if (atomic_load(&g->stopping))
        return -1;
    if (!g->in_recv) {
        if (poll(p, 2, -1) < 0)
            return errno == EINTR ? 0 : -1;
        if (p[1].revents)
            return -1;
        if (!(p[0].revents & POLLIN))
            return p[0].revents & (POLLHUP | POLLERR | POLLNVAL) ? -1 : 0;
    }
    memset(n, 0, sizeof *n);
    if (ioctl(g->listener, SECCOMP_IOCTL_NOTIF_RECV, n) == 0)
        return 1;
    if (!g->in_recv || errno == EINTR)
        return 0; /* ENOENT after poll: withdrawn (the thread was killed first) */
    if (errno != ENOENT)
        return -1; /* nothing RECV may return on a listener we hold: do not spin on it */
    return sandbox_gone(g->listener) ? -1 : 0; /* ENOENT: gone, or withdrawn */
}

/* Hand n over to Python; fd >= 0: a blocking connect the fast path started on that
 * duplicate, with result rc. 0 if Python has it. */
static int hand_over(struct sandlock_gate *g, const struct seccomp_notif *n, int fd, int rc)
{
    struct sandlock_handoff h = {
        .id = n->id, .pid = n->pid, .nr = n->data.nr, .arch = n->data.arch, .fd = fd, .rc = rc,
    };
    memcpy(h.args, n->data.args, sizeof h.args);
    if (send(g->out, &h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h)
        return -1;
    atomic_fetch_add(&g->n_handoffs, 1);
    return 0;
}

static void *gate_main(void *arg)
{
    struct sandlock_gate *g = arg;
    struct pollfd p[2] = {{.fd = g->listener, .events = POLLIN}, {.fd = g->wake, .events = POLLIN}};
    struct seccomp_notif n;
    for (;;) {
        int got = next_notification(g, p, &n);
        if (got < 0)
            break;
        int fd, rc;
        if (got == 0 || fastpath_answer(&g->fp, &n, &fd, &rc) == FASTPATH_DONE)
            continue;
        if (hand_over(g, &n, fd, rc) == 0)
            continue;
        /* Python is gone: fail closed, as the kernel would. */
        if (fd < 0) {
            sandlock_notif_send(g->listener, n.id, 0, -ENOSYS, 0);
            break;
        }
        close(fd); /* a connect the fast path started: refused, as it goes no further */
        atomic_fetch_add(&g->fp.connects, 1);
        sandlock_notif_send(g->listener, n.id, 0, -ECONNREFUSED, 0);
    }
    fastpath_drop_pidfds(&g->fp);
    close(g->out); /* Python reads end-of-file */
    return NULL;
}

struct sandlock_gate *sandlock_gate_start(int listener, unsigned int flags,
                                          const char *open_names, size_t names_len,
                                          int *handoff, int *err)
{
    int sv[2] = {-1, -1};
    struct sandlock_gate *g = calloc(1, sizeof *g);
    if (g == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    g->listener = listener;
    fastpath_init(&g->fp, listener, flags, open_names, names_len);
    g->wake = eventfd(0, EFD_CLOEXEC);
    if (g->wake < 0 || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        *err = -errno;
        goto fail;
    }
    if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0) {
        *err = -errno;
        goto fail;
    }
    g->out = sv[1];
    g->in_recv = wait_in_recv(listener, flags);
    /* Every signal blocked in the thread: they are the main thread's (Python's) to take;
     * all but GATE_SIGNAL, which only sandlock_gate_stop sends, when it waits in RECV. */
    sigset_t mask, old;
    sigfillset(&mask);
    if (g->in_recv)
        sigdelset(&mask, GATE_SIGNAL);
    pthread_sigmask(SIG_SETMASK, &mask, &old);
    int rc = pthread_create(&g->thread, NULL, gate_main, g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        *err = -rc;
        goto fail;
    }
    *handoff = sv[0];
    return g;
fail:
    fastpath_release(&g->fp);
    if (sv[0] >= 0) {
        close(sv[0]);
        close(sv[1]);
    }
    if (g->wake >= 0)
        close(g->wake);
    free(g);
    return NULL;
}

void sandlock_gate_set_flags(struct sandlock_gate *g, unsigned int flags)
{
    atomic_store(&g->fp.flags, flags);
}

int sandlock_gate_set_open_names(struct sandlock_gate *g, const char *names, size_t len)
{
    return fastpath_set_open_names(&g->fp, names, len);
}

int sandlock_gate_allow(struct sandlock_gate *g, int domain, int type, int protocol,
                        const void *addr, uint32_t addrlen, int port, int relay)
{
    return destset_add(&g->fp.dests, domain, type, protocol, addr, addrlen, port,
                       relay ? DESTSET_RELAY : DESTSET_DIRECT);
}

int sandlock_gate_set_relay(struct sandlock_gate *g, int domain, const void *addr, uint32_t len)
{
    return relaynotes_set_target(&g->fp.relay, domain, addr, len);
}

int sandlock_gate_take_note(struct sandlock_gate *g, const uint8_t *local, int port,
                            uint8_t *name, uint32_t *namelen, uint32_t *tid)
{
    return relaynotes_take(&g->fp.relay, local, port, name, namelen, tid);
}

void sandlock_gate_clear(struct sandlock_gate *g)
{
    destset_clear(&g->fp.dests);
    approved_clear(&g->fp.approved);
}

int sandlock_gate_approve(struct sandlock_gate *g, const char *name, size_t namelen,
                          const uint8_t *addr, uint32_t addrlen, int port)
{
    return approved_add(&g->fp.approved, name, namelen, addr, addrlen, port);
}

int sandlock_gate_approved(struct sandlock_gate *g, const char *name, size_t namelen,
                           const uint8_t *dest, uint32_t destlen)
{
    return approved_has(&g->fp.approved, name, namelen, dest, destlen);
}

int sandlock_gate_park_connect(struct sandlock_gate *g, uint64_t id, int fd)
{
    return fastpath_park(&g->fp, id, fd);
}

void sandlock_gate_stats(struct sandlock_gate *g, struct sandlock_gate_stats *out)
{
    out->connects = atomic_load(&g->fp.connects);
    out->sends = atomic_load(&g->fp.sends);
    out->opens = atomic_load(&g->fp.opens);
    out->handoffs = atomic_load(&g->n_handoffs);
}

void sandlock_gate_stop(struct sandlock_gate *g, struct sandlock_gate_stats *final)
{
    atomic_store(&g->stopping, 1);
    uint64_t one = 1;
    if (write(g->wake, &one, sizeof one) < 0) {
        /* an eventfd write of 1 cannot fail short of a full counter; join regardless */
    }
    if (g->in_recv)
        interrupt_and_join(g->thread);
    else
        pthread_join(g->thread, NULL);
    fastpath_release(&g->fp); /* after the thread: nothing is parked any more */
    sandlock_gate_stats(g, final);
    close(g->wake);
    free(g);
}
