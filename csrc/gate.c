/*
 * The gate's thread. See gate.h for what it is and why; this file is the how.
 *
 * Every path either answers the notification itself, exactly as the Python handler
 * would (onbehalf.py is the reference), or hands it over before it has done anything
 * the child could observe. "Handing over" after a side effect happens in one place
 * only: a blocking connect already started, passed with its duplicate and result.
 */
#define _GNU_SOURCE
#include "gate.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <netinet/in.h>

#define NR_OPEN 2
#define NR_CONNECT 42
#define NR_SENDTO 44
#define NR_SENDMSG 46
#define NR_OPENAT 257
#define NR_SENDMMSG 307
#define NR_OPENAT2 437

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif
#ifndef SECCOMP_USER_NOTIF_FLAG_CONTINUE
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE (1UL << 0)
#endif

#define MAX_NAME 128          /* sizeof(struct sockaddr_storage) */
#define MAX_DATA 65536        /* larger sends go to Python (which caps at 64 MiB) */
#define MAX_IOV 64            /* more iovecs: Python */
#define MMSG_BATCH 64         /* sendmmsg entries read at once */
#ifndef UIO_MAXIOV
#define UIO_MAXIOV 1024
#endif
#define MSGHDR_SIZE 56        /* struct msghdr on x86_64 */
#define MMSGHDR_SIZE 64       /* struct mmsghdr on x86_64 */
#define PATH_READ 4096
#define SLOTS 1024            /* remembered destinations; emptied when 3/4 full */

/* The result of trying to answer: answered (or nothing left to answer), or hand over. */
enum { DONE = 0, HAND_OVER = 1 };

struct key {
    uint8_t addr[16];
    uint16_t port;
    uint8_t domain, type, protocol, used;
    uint8_t pad[4];
};

struct sandlock_gate {
    int listener;
    int wake;      /* eventfd: written by sandlock_gate_stop */
    int out;       /* our end of the handoff socket */
    _Atomic unsigned int flags;
    pthread_t thread;
    pthread_mutex_t lock;   /* guards slots and used */
    struct key slots[SLOTS];
    unsigned int used;
    _Atomic uint64_t n_connects, n_sends, n_opens, n_handoffs;
    uint8_t data[MAX_DATA];
};

/* ---- the remembered destinations ----------------------------------------------------- */

static int make_key(struct key *k, int domain, int type, int protocol,
                    const void *addr, uint32_t addrlen, int port)
{
    if (addrlen != (domain == AF_INET ? 4u : 16u) || (domain != AF_INET && domain != AF_INET6))
        return -EINVAL;
    if (type < 0 || type > 255 || protocol < 0 || protocol > 255 || port < 0 || port > 65535)
        return -EINVAL;
    memset(k, 0, sizeof *k);
    memcpy(k->addr, addr, addrlen);
    k->port = (uint16_t)port;
    k->domain = (uint8_t)domain;
    k->type = (uint8_t)type;
    k->protocol = (uint8_t)protocol;
    k->used = 1;
    return 0;
}

static unsigned int slot_of(const struct key *k)
{
    const uint8_t *p = (const uint8_t *)k;
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < sizeof *k; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % SLOTS;
}

/* The slot holding k, or the empty slot where it would go. Called with the lock held. */
static struct key *find(struct sandlock_gate *g, const struct key *k)
{
    unsigned int i = slot_of(k);
    for (;;) {
        struct key *s = &g->slots[i];
        if (!s->used || memcmp(s, k, sizeof *k) == 0)
            return s;
        i = (i + 1) % SLOTS;
    }
}

static int known(struct sandlock_gate *g, const struct key *k)
{
    pthread_mutex_lock(&g->lock);
    int hit = find(g, k)->used;
    pthread_mutex_unlock(&g->lock);
    return hit;
}

int sandlock_gate_allow(struct sandlock_gate *g, int domain, int type, int protocol,
                        const void *addr, uint32_t addrlen, int port)
{
    struct key k;
    int err = make_key(&k, domain, type, protocol, addr, addrlen, port);
    if (err < 0)
        return err;
    pthread_mutex_lock(&g->lock);
    struct key *s = find(g, &k);
    if (!s->used) {
        if (g->used >= SLOTS * 3 / 4) { /* full enough: start over, Python refills it */
            memset(g->slots, 0, sizeof g->slots);
            g->used = 0;
            s = find(g, &k);
        }
        *s = k;
        g->used++;
    }
    pthread_mutex_unlock(&g->lock);
    return 0;
}

void sandlock_gate_clear(struct sandlock_gate *g)
{
    pthread_mutex_lock(&g->lock);
    memset(g->slots, 0, sizeof g->slots);
    g->used = 0;
    pthread_mutex_unlock(&g->lock);
}

/* ---- one notification ------------------------------------------------------------------- */

struct call {
    struct seccomp_notif *n;
    int dup;
    int domain, type, protocol, nonblocking;
};

static int answer(struct sandlock_gate *g, uint64_t id, int64_t rc)
{
    struct seccomp_notif_resp r = {.id = id};
    if (rc < 0)
        r.error = (int32_t)rc;
    else
        r.val = rc;
    ioctl(g->listener, SECCOMP_IOCTL_NOTIF_SEND, &r); /* ENOENT: the thread is gone */
    return DONE;
}

static int still_waiting(struct sandlock_gate *g, uint64_t id)
{
    return ioctl(g->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

/* Duplicate the child's descriptor and learn what the socket is; HAND_OVER if it is not
 * an IP socket of ours to answer (Python gives the precise error or handles the family). */
static int open_call(struct call *c, struct seccomp_notif *n, int fd, int need_dgram)
{
    c->n = n;
    c->dup = sandlock_getfd((int)n->pid, fd);
    if (c->dup < 0)
        return HAND_OVER;
    int flags;
    if (sandlock_sock_info(c->dup, &c->domain, &c->type, &c->protocol, &flags) < 0 ||
        (c->domain != AF_INET && c->domain != AF_INET6) ||
        (need_dgram && c->type != SOCK_DGRAM)) {
        close(c->dup);
        return HAND_OVER;
    }
    c->nonblocking = (flags & O_NONBLOCK) != 0;
    return DONE;
}

static int read_exact(int tid, uint64_t addr, void *buf, size_t len)
{
    return sandlock_read_mem(tid, addr, buf, len) == (int64_t)len;
}

/* Copy the name at addr and say whether the gate may send to it: the family is the
 * socket's own, the length the kernel's minimum at least, and Python allowed it. */
static int name_known(struct sandlock_gate *g, const struct call *c, uint64_t addr,
                      uint32_t len, uint8_t *name)
{
    uint32_t min = c->domain == AF_INET ? sizeof(struct sockaddr_in) : 24; /* RFC 2133 */
    if (len < min || len > MAX_NAME || !read_exact((int)c->n->pid, addr, name, len))
        return 0;
    uint16_t family;
    memcpy(&family, name, 2);
    if (family != c->domain)
        return 0;
    struct key k;
    const uint8_t *ip = name + (c->domain == AF_INET ? 4 : 8);
    int port = (name[2] << 8) | name[3];
    make_key(&k, c->domain, c->type, c->protocol, ip, c->domain == AF_INET ? 4 : 16, port);
    return known(g, &k);
}

static int do_connect(struct sandlock_gate *g, struct seccomp_notif *n)
{
    struct call c;
    uint8_t name[MAX_NAME];
    uint32_t len = (uint32_t)n->data.args[2];
    if (open_call(&c, n, (int)n->data.args[0], 0) != DONE)
        return HAND_OVER;
    if (!name_known(g, &c, n->data.args[1], len, name)) {
        close(c.dup);
        return HAND_OVER;
    }
    if (!still_waiting(g, n->id)) {
        close(c.dup);
        return DONE;
    }
    int blocking_stream = !c.nonblocking && c.type == SOCK_STREAM;
    int rc = sandlock_connect(c.dup, name, len, blocking_stream);
    if (blocking_stream && rc == -EINPROGRESS && sandlock_poll1(c.dup, POLLOUT, 0) != 0) {
        int so_error = sandlock_sock_error(c.dup); /* SO_ERROR (positive), or -errno */
        rc = so_error > 0 ? -so_error : so_error;
    }
    if (blocking_stream && rc == -EINPROGRESS) {
        struct sandlock_handoff h = {
            .id = n->id, .pid = n->pid, .nr = n->data.nr, .arch = n->data.arch,
            .kind = SANDLOCK_HANDOFF_CONNECTING, .fd = c.dup, .rc = rc,
        };
        memcpy(h.args, n->data.args, sizeof h.args);
        if (send(g->out, &h, sizeof h, MSG_NOSIGNAL) == (ssize_t)sizeof h) {
            atomic_fetch_add(&g->n_handoffs, 1);
            return DONE;
        }
        rc = -ECONNREFUSED; /* Python is gone: fail closed */
    }
    close(c.dup);
    atomic_fetch_add(&g->n_connects, 1);
    return answer(g, n->id, rc);
}

/* Read the data of a msghdr's iovecs into g->data; its length, or -1 to hand over. */
static int64_t read_iovecs(struct sandlock_gate *g, int tid, uint64_t iov_p, uint64_t iovlen)
{
    struct iovec remote[MAX_IOV];
    uint64_t raw[MAX_IOV * 2];
    size_t total = 0;
    if (iovlen > MAX_IOV || (iovlen && !read_exact(tid, iov_p, raw, iovlen * 16)))
        return -1;
    for (uint64_t i = 0; i < iovlen; i++) {
        if (raw[2 * i + 1] > MAX_DATA - total)
            return -1;
        remote[i].iov_base = (void *)(uintptr_t)raw[2 * i];
        remote[i].iov_len = raw[2 * i + 1];
        total += raw[2 * i + 1];
    }
    if (total == 0)
        return 0;
    struct iovec local = {.iov_base = g->data, .iov_len = total};
    ssize_t got = process_vm_readv(tid, &local, 1, remote, (unsigned long)iovlen, 0);
    return got == (ssize_t)total ? (int64_t)total : -1;
}

/* Send one datagram whose data is in g->data; HAND_OVER only if a blocking socket would
 * have waited (nothing was sent: Python starts the call over and waits). */
static int send_one(struct sandlock_gate *g, const struct call *c, const uint8_t *name,
                    uint32_t namelen, size_t len, int flags, int64_t *rc)
{
    *rc = sandlock_sendmsg(c->dup, name, namelen, g->data, len, NULL, 0, flags | MSG_DONTWAIT);
    if (*rc == -EAGAIN && !c->nonblocking && !(flags & MSG_DONTWAIT))
        return HAND_OVER;
    atomic_fetch_add(&g->n_sends, 1);
    return DONE;
}

static int do_sendto(struct sandlock_gate *g, struct seccomp_notif *n)
{
    struct call c;
    uint8_t name[MAX_NAME];
    uint64_t len = n->data.args[2];
    int flags = (int)n->data.args[3];
    uint32_t namelen = (uint32_t)n->data.args[5];
    if (len > MAX_DATA || flags & MSG_FASTOPEN)
        return HAND_OVER;
    if (open_call(&c, n, (int)n->data.args[0], 1) != DONE)
        return HAND_OVER;
    int64_t rc;
    int r = HAND_OVER;
    if (name_known(g, &c, n->data.args[4], namelen, name) &&
        (len == 0 || read_exact((int)n->pid, n->data.args[1], g->data, len))) {
        if (!still_waiting(g, n->id))
            r = DONE;
        else if ((r = send_one(g, &c, name, namelen, len, flags, &rc)) == DONE)
            answer(g, n->id, rc);
    }
    close(c.dup);
    return r;
}

/* One msghdr (raw, 56 bytes) of a sendmsg or sendmmsg: read, check, send. */
static int send_msghdr(struct sandlock_gate *g, const struct call *c, const uint64_t *hdr,
                       int flags, int64_t *rc)
{
    uint8_t name[MAX_NAME];
    uint64_t name_p = hdr[0], namelen = hdr[1] & 0xffffffffu, iov_p = hdr[2], iovlen = hdr[3];
    uint64_t controllen = hdr[5];
    if (controllen != 0 || flags & MSG_FASTOPEN)
        return HAND_OVER; /* control messages are checked in Python (source routes, rights) */
    int named = name_p != 0;
    if (named ? !name_known(g, c, name_p, (uint32_t)namelen, name) : namelen != 0)
        return HAND_OVER;
    int64_t len = read_iovecs(g, (int)c->n->pid, iov_p, iovlen);
    if (len < 0)
        return HAND_OVER;
    if (!still_waiting(g, c->n->id)) {
        *rc = -ENOENT;
        return DONE;
    }
    return send_one(g, c, named ? name : NULL, (uint32_t)namelen, (size_t)len, flags, rc);
}

static int do_sendmsg(struct sandlock_gate *g, struct seccomp_notif *n)
{
    struct call c;
    uint64_t hdr[MSGHDR_SIZE / 8];
    int flags = (int)n->data.args[2];
    if (open_call(&c, n, (int)n->data.args[0], 1) != DONE)
        return HAND_OVER;
    int64_t rc;
    int r = HAND_OVER;
    if (read_exact((int)n->pid, n->data.args[1], hdr, sizeof hdr) &&
        (r = send_msghdr(g, &c, hdr, flags, &rc)) == DONE && rc != -ENOENT)
        answer(g, n->id, rc);
    close(c.dup);
    return r;
}

/* Entries are sent in order, read MMSG_BATCH at a time, until one the gate cannot
 * answer: the first one is then handed over whole; after some were sent, the count so
 * far is the answer, as the kernel's own sendmmsg answers when a later entry fails. */
static int do_sendmmsg(struct sandlock_gate *g, struct seccomp_notif *n)
{
    struct call c;
    uint64_t vec[MMSG_BATCH * MMSGHDR_SIZE / 8];
    uint64_t vec_p = n->data.args[1];
    unsigned int vlen = (unsigned int)n->data.args[2];
    int flags = (int)n->data.args[3];
    if (vlen == 0)
        return HAND_OVER;
    if (vlen > UIO_MAXIOV)
        vlen = UIO_MAXIOV; /* the kernel clamps it too */
    if (open_call(&c, n, (int)n->data.args[0], 1) != DONE)
        return HAND_OVER;
    unsigned int sent = 0;
    int64_t rc = 0;
    int stop = 0;
    while (sent < vlen && !stop) {
        unsigned int batch = vlen - sent < MMSG_BATCH ? vlen - sent : MMSG_BATCH;
        uint64_t base = vec_p + (uint64_t)sent * MMSGHDR_SIZE;
        if (!read_exact((int)n->pid, base, vec, (size_t)batch * MMSGHDR_SIZE))
            break;
        for (unsigned int i = 0; i < batch; i++, sent++) {
            if (send_msghdr(g, &c, vec + i * (MMSGHDR_SIZE / 8), flags, &rc) != DONE || rc < 0) {
                stop = 1;
                break;
            }
            uint32_t len32 = (uint32_t)rc;
            sandlock_write_mem((int)n->pid, base + i * MMSGHDR_SIZE + MSGHDR_SIZE,
                               &len32, sizeof len32);
        }
    }
    close(c.dup);
    if (sent > 0)
        return answer(g, n->id, sent);
    if (rc == -ENOENT)
        return DONE; /* the thread is gone */
    if (rc < 0 && (rc != -EAGAIN || c.nonblocking || flags & MSG_DONTWAIT))
        return answer(g, n->id, rc);
    return HAND_OVER; /* nothing sent: Python answers it, waiting if it must */
}

/* open/openat/openat2: CONTINUE unless the last component could name a virtual file. */
static int do_open(struct sandlock_gate *g, struct seccomp_notif *n)
{
    char path[PATH_READ + 1];
    uint64_t p = n->data.nr == NR_OPEN ? n->data.args[0] : n->data.args[1];
    size_t got = 0;
    char *end = NULL;
    while (got < PATH_READ && end == NULL) {
        /* page by page: a path may end just before an unmapped page */
        size_t chunk = 4096 - ((p + got) & 4095);
        if (chunk > PATH_READ - got)
            chunk = PATH_READ - got;
        if (sandlock_read_mem((int)n->pid, p + got, path + got, chunk) != (int64_t)chunk)
            break;
        end = memchr(path + got, 0, chunk);
        got += chunk;
    }
    if (end != NULL) {
        char *slash = strrchr(path, '/');
        const char *last = slash ? slash + 1 : path;
        if (strcmp(last, "hosts") == 0 || strcmp(last, "resolv.conf") == 0)
            return HAND_OVER;
    }
    /* Unreadable or too long: the kernel reads it again and gives the error itself. */
    struct seccomp_notif_resp r = {.id = n->id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    ioctl(g->listener, SECCOMP_IOCTL_NOTIF_SEND, &r);
    atomic_fetch_add(&g->n_opens, 1);
    return DONE;
}

static int try_answer(struct sandlock_gate *g, struct seccomp_notif *n)
{
    unsigned int flags = atomic_load(&g->flags);
    if (n->data.arch != AUDIT_ARCH_X86_64)
        return HAND_OVER;
    switch (n->data.nr) {
    case NR_OPEN:
    case NR_OPENAT:
    case NR_OPENAT2:
        return flags & SANDLOCK_GATE_OPEN ? do_open(g, n) : HAND_OVER;
    }
    if (!(flags & SANDLOCK_GATE_CACHE))
        return HAND_OVER;
    switch (n->data.nr) {
    case NR_CONNECT:
        return do_connect(g, n);
    case NR_SENDTO:
        return do_sendto(g, n);
    case NR_SENDMSG:
        return do_sendmsg(g, n);
    case NR_SENDMMSG:
        return do_sendmmsg(g, n);
    }
    return HAND_OVER;
}

/* ---- the thread ------------------------------------------------------------------------- */

static void *gate_main(void *arg)
{
    struct sandlock_gate *g = arg;
    struct pollfd p[2] = {{.fd = g->listener, .events = POLLIN}, {.fd = g->wake, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN)) {
            if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL))
                break; /* every task of the sandbox is gone */
            continue;
        }
        struct seccomp_notif n;
        memset(&n, 0, sizeof n);
        if (ioctl(g->listener, SECCOMP_IOCTL_NOTIF_RECV, &n) < 0)
            continue; /* ENOENT: withdrawn (the thread was killed before we took it) */
        if (try_answer(g, &n) == DONE)
            continue;
        struct sandlock_handoff h = {
            .id = n.id, .pid = n.pid, .nr = n.data.nr, .arch = n.data.arch,
            .kind = SANDLOCK_HANDOFF_NOTIF, .fd = -1,
        };
        memcpy(h.args, n.data.args, sizeof h.args);
        if (send(g->out, &h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h) {
            answer(g, n.id, -ENOSYS); /* Python is gone: fail closed, as the kernel would */
            break;
        }
        atomic_fetch_add(&g->n_handoffs, 1);
    }
    close(g->out); /* Python reads end-of-file */
    return NULL;
}

struct sandlock_gate *sandlock_gate_start(int listener, unsigned int flags, int *handoff,
                                          int *err)
{
    int sv[2] = {-1, -1};
    struct sandlock_gate *g = calloc(1, sizeof *g);
    if (g == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    g->listener = listener;
    g->flags = flags;
    pthread_mutex_init(&g->lock, NULL);
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
    /* Every signal blocked in the thread: they are the main thread's (Python's) to take. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&g->thread, NULL, gate_main, g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        *err = -rc;
        goto fail;
    }
    *handoff = sv[0];
    return g;
fail:
    if (sv[0] >= 0) {
        close(sv[0]);
        close(sv[1]);
    }
    if (g->wake >= 0)
        close(g->wake);
    pthread_mutex_destroy(&g->lock);
    free(g);
    return NULL;
}

void sandlock_gate_set_flags(struct sandlock_gate *g, unsigned int flags)
{
    atomic_store(&g->flags, flags);
}

void sandlock_gate_stats(struct sandlock_gate *g, struct sandlock_gate_stats *out)
{
    out->connects = atomic_load(&g->n_connects);
    out->sends = atomic_load(&g->n_sends);
    out->opens = atomic_load(&g->n_opens);
    out->handoffs = atomic_load(&g->n_handoffs);
}

void sandlock_gate_stop(struct sandlock_gate *g)
{
    uint64_t one = 1;
    if (write(g->wake, &one, sizeof one) < 0) {
        /* an eventfd write of 1 cannot fail short of a full counter; join regardless */
    }
    pthread_join(g->thread, NULL);
    close(g->wake);
    pthread_mutex_destroy(&g->lock);
    free(g);
}
