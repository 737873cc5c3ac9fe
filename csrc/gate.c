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
#include "connecting.h"

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
#include <sys/syscall.h>
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

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif
#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
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
#define PIDFDS 64             /* pidfds kept open, one per thread of the sandbox */
#define KINDS 64              /* sockets whose kind is remembered, by cookie */

/* The result of trying to answer: answered (or nothing left to answer), or hand over. */
enum { DONE = 0, HAND_OVER = 1 };

struct key {
    uint8_t addr[16];
    uint16_t port;
    uint8_t domain, type, protocol, used;
    uint8_t pad[4];
};

/* A socket's cookie -> its domain, type and protocol; see sock_kind_cached. */
struct sock_kind {
    uint64_t cookie;
    int domain, type, protocol;
};

/* tid -> pidfd; see getfd. */
struct pidfd_slot {
    int tid;
    int fd;
    uint64_t used; /* the worker's clock at its last use; 0: empty */
};

/* What the gate's thread owns: its pidfds and its scratch memory (what it copies out of
 * the child: names and iovec arrays in meta, the data in data; ranges to read). */
struct worker {
    struct sandlock_gate *g;
    struct pidfd_slot pidfds[PIDFDS];
    uint64_t clock;
    struct sock_kind kinds[KINDS];
    struct iovec ranges[UIO_MAXIOV];
    uint64_t vec[MMSG_BATCH * MMSGHDR_SIZE / 8];
    uint8_t meta[MMSG_BATCH * (MAX_NAME + MAX_IOV * 16)];
    uint8_t data[MAX_DATA + MAX_NAME];
};

struct sandlock_gate {
    int listener;
    int wake;      /* eventfd: written by sandlock_gate_stop */
    int out;       /* our end of the handoff socket */
    int in_recv;   /* the thread waits in RECV itself, not in poll (see wait_in_recv) */
    _Atomic int stopping;
    _Atomic unsigned int flags;
    pthread_t thread;
    pthread_mutex_t lock;   /* guards slots and used */
    struct key slots[SLOTS];
    unsigned int used;
    _Atomic uint64_t n_connects, n_sends, n_opens, n_handoffs;
    struct connecting *connecting; /* blocking connects in progress (NULL: Python's) */
    struct worker worker;
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

/* ---- the thread's own state: pidfds and scratch memory -------------------------------- */

/* A pidfd names one struct pid, never a number. Once its thread is gone, pidfd_getfd
 * through it fails (ESRCH), even if the tid has been given to a new thread (which gets
 * a new struct pid): so a cached pidfd can only ever reach its own thread's table, and
 * any failure through one is retried once on a pidfd opened afresh. */
static int pidfd_open_thread(int tid)
{
    /* A thread's own pidfd (kernel >= 6.9) reaches its own descriptor table even when it
     * was cloned without CLONE_FILES; older kernels want the leader (as sandlock_getfd). */
    long fd = syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (fd < 0 && errno == EINVAL)
        fd = syscall(SYS_pidfd_open, tid, 0);
    return (int)fd;
}

/* The slot holding tid's pidfd, opened into the least recently used slot if need be;
 * *fresh says it was just opened. NULL if it cannot be opened. */
static struct pidfd_slot *pidfd_of(struct worker *w, int tid, int *fresh)
{
    struct pidfd_slot *victim = &w->pidfds[0];
    w->clock++;
    for (int i = 0; i < PIDFDS; i++) {
        struct pidfd_slot *s = &w->pidfds[i];
        if (s->used && s->tid == tid) {
            s->used = w->clock;
            *fresh = 0;
            return s;
        }
        if (s->used < victim->used)
            victim = s; /* an empty slot (used 0) first */
    }
    int fd = pidfd_open_thread(tid);
    if (fd < 0)
        return NULL;
    if (victim->used)
        close(victim->fd);
    *victim = (struct pidfd_slot){.tid = tid, .fd = fd, .used = w->clock};
    *fresh = 1;
    return victim;
}

static void pidfd_drop(struct pidfd_slot *s)
{
    close(s->fd);
    *s = (struct pidfd_slot){0};
}

/* Our duplicate of descriptor fd of thread tid, or -1. *proven says it came through a
 * pidfd opened before the notification was received: then the success itself proves that
 * tid was that thread's all along (a tid is given again only once its struct pid is
 * released, and a pidfd then fails with ESRCH), so what was read through tid before this
 * call was read from the right process (see confirmed). */
static int getfd(struct worker *w, int tid, int fd, int *proven)
{
    for (;;) {
        int fresh;
        struct pidfd_slot *s = pidfd_of(w, tid, &fresh);
        if (s == NULL)
            return -1;
        long dup = syscall(SYS_pidfd_getfd, s->fd, fd, 0);
        *proven = !fresh;
        if (dup >= 0)
            return (int)dup;
        if (fresh)
            return -1; /* the thread's own answer (EBADF, ESRCH...): Python gives it */
        pidfd_drop(s); /* perhaps a thread gone, its tid reused: once more, afresh */
    }
}

/* Read the child's ranges r[0..n) one after another into buf (total bytes in all): the
 * bytes read, a prefix that ends at the first fault (0 if none could be read). */
static size_t read_ranges(int tid, void *buf, size_t total, const struct iovec *r,
                          unsigned long n)
{
    if (total == 0)
        return 0;
    struct iovec local = {.iov_base = buf, .iov_len = total};
    ssize_t got = process_vm_readv(tid, &local, 1, r, n, 0);
    if (got >= 0)
        return (size_t)got;
    if (errno != ENOSYS && errno != EPERM)
        return 0;
    size_t off = 0; /* no process_vm_readv here: sandlock_read_mem falls back to /proc */
    for (unsigned long i = 0; i < n; i++) {
        int64_t one = sandlock_read_mem(tid, (uint64_t)(uintptr_t)r[i].iov_base,
                                        (uint8_t *)buf + off, r[i].iov_len);
        if (one > 0)
            off += (size_t)one;
        if (one != (int64_t)r[i].iov_len)
            break;
    }
    return off;
}

static int read_exact(int tid, uint64_t addr, void *buf, size_t len)
{
    struct iovec r = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};
    return read_ranges(tid, buf, len, &r, 1) == len;
}

/* ---- one notification ------------------------------------------------------------------- */

struct call {
    struct seccomp_notif *n;
    int dup;
    int proven; /* see getfd */
    int domain, type, protocol;
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

/* Whether what was read through the notification's tid before open_call came from the
 * thread that made the call: proven by getfd itself (a cached pidfd), else asked of the
 * kernel (ID_VALID: the thread still waits, so its tid is still its own). 0 means the
 * call is gone: nothing to do. If the thread was killed meanwhile and the gate still
 * performs its call, that is the call it made, to a destination Python allowed. */
static int confirmed(struct sandlock_gate *g, const struct call *c)
{
    return c->proven || still_waiting(g, c->n->id);
}

static int sockopt_int(int fd, int opt, int *out)
{
    socklen_t len = sizeof *out;
    return getsockopt(fd, SOL_SOCKET, opt, out, &len);
}

/* 1 if the socket's open file is non-blocking, 0 if not, -1 if that cannot be known.
 * Asked only where the answer matters: a send that found no room, a TCP connect. */
static int nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : (fl & O_NONBLOCK) != 0;
}

/* What the socket is, asked of the kernel. */
static int sock_kind(int fd, struct sock_kind *k)
{
    return sockopt_int(fd, SO_DOMAIN, &k->domain) < 0 || sockopt_int(fd, SO_TYPE, &k->type) < 0 ||
                   sockopt_int(fd, SO_PROTOCOL, &k->protocol) < 0
               ? -1
               : 0;
}

/* What the socket is, remembered by its cookie: one getsockopt instead of three for a
 * socket sent on again and again. A cookie names one socket for the whole boot (a 64-bit
 * counter, never 0, never given twice), and a socket's domain, type and protocol do not
 * change. Kept for sends only: a connect is usually a socket's first and only call. */
static int sock_kind_cached(struct worker *w, int fd, struct sock_kind *out)
{
    uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) < 0 || cookie == 0)
        return sock_kind(fd, out);
    struct sock_kind *k = &w->kinds[cookie % KINDS];
    if (k->cookie != cookie) {
        if (sock_kind(fd, out) < 0)
            return -1;
        out->cookie = cookie;
        *k = *out;
    }
    *out = *k;
    return 0;
}

/* Duplicate the child's descriptor and learn what the socket is; HAND_OVER if it is not
 * an IP socket of ours to answer (Python gives the precise error or handles the family).
 * A send (dgram: only SOCK_DGRAM sockets) uses the cache of socket kinds. */
static int open_call(struct worker *w, struct call *c, struct seccomp_notif *n, int fd,
                     int dgram)
{
    struct sock_kind k;
    c->n = n;
    c->dup = getfd(w, (int)n->pid, fd, &c->proven);
    if (c->dup < 0)
        return HAND_OVER;
    if ((dgram ? sock_kind_cached(w, c->dup, &k) : sock_kind(c->dup, &k)) < 0 ||
        (k.domain != AF_INET && k.domain != AF_INET6) || (dgram && k.type != SOCK_DGRAM)) {
        close(c->dup);
        return HAND_OVER;
    }
    c->domain = k.domain;
    c->type = k.type;
    c->protocol = k.protocol;
    return DONE;
}

int sandlock_gate_park_connect(struct sandlock_gate *g, uint64_t id, int fd)
{
    if (g->connecting == NULL)
        return -1;
    int64_t timeout_us = sandlock_sock_sndtimeo(fd);
    return timeout_us < 0 ? -1 : connecting_park(g->connecting, id, fd, timeout_us);
}

/* Whether a name of len bytes may be one the gate sends to: the kernel's minimum for the
 * socket's family at least, and no longer than a sockaddr_storage. */
static int name_fits(const struct call *c, uint64_t len)
{
    uint32_t min = c->domain == AF_INET ? sizeof(struct sockaddr_in) : 24; /* RFC 2133 */
    return len >= min && len <= MAX_NAME;
}

/* Whether the gate may send to our copy of a name that fits: the family is the socket's
 * own, and Python allowed the destination. */
static int name_known(struct sandlock_gate *g, const struct call *c, const uint8_t *name)
{
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

/* A blocking connect, started non-blocking: O_NONBLOCK lives on the open file the child
 * shares, so it is set only for the call and the file's flags (fl) put back at once. */
static int connect_started(int fd, const void *name, uint32_t len, int fl)
{
    if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    int rc = connect(fd, (const struct sockaddr *)name, len) < 0 ? -errno : 0;
    fcntl(fd, F_SETFL, fl);
    return rc;
}

static int do_connect(struct worker *w, struct seccomp_notif *n)
{
    struct sandlock_gate *g = w->g;
    struct call c;
    uint8_t name[MAX_NAME];
    uint32_t len = (uint32_t)n->data.args[2];
    /* The name first, the socket after: see confirmed. */
    if (len < sizeof(struct sockaddr_in) || len > MAX_NAME ||
        !read_exact((int)n->pid, n->data.args[1], name, len))
        return HAND_OVER;
    if (open_call(w, &c, n, (int)n->data.args[0], 0) != DONE)
        return HAND_OVER;
    if (!name_fits(&c, len) || !name_known(g, &c, name)) {
        close(c.dup);
        return HAND_OVER;
    }
    if (!confirmed(g, &c)) {
        close(c.dup);
        return DONE;
    }
    /* Only a TCP connect can wait, and only on a blocking socket: only then do the
     * flags matter (a UDP connect returns at once either way). */
    int fl = c.type == SOCK_STREAM ? fcntl(c.dup, F_GETFL) : O_NONBLOCK;
    if (fl < 0) {
        close(c.dup);
        return HAND_OVER;
    }
    int blocking_stream = !(fl & O_NONBLOCK);
    int rc = blocking_stream ? connect_started(c.dup, name, len, fl)
                             : sandlock_connect(c.dup, name, len, 0);
    if (blocking_stream && rc == -EINPROGRESS) {
        /* Finished already (loopback usually is)? POLLOUT alone means connected, SO_ERROR
         * would read 0: it is asked only when poll reports an error or a hang-up. */
        struct pollfd p = {.fd = c.dup, .events = POLLOUT};
        int ready = poll(&p, 1, 0);
        if (ready < 0 || (ready > 0 && p.revents & (POLLERR | POLLHUP))) {
            int so_error = sandlock_sock_error(c.dup); /* SO_ERROR (positive), or -errno */
            rc = so_error > 0 ? -so_error : so_error;
        } else if (ready > 0) {
            rc = 0;
        }
    }
    if (blocking_stream && rc == -EINPROGRESS) {
        if (sandlock_gate_park_connect(g, n->id, c.dup) == 0)
            return DONE; /* its second thread answers when the handshake ends */
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
    /* Our duplicate closed first, so that the child's own close stays the last one and
     * tears the connection down itself, as without us: answered first, the child would
     * often close before us, leave the teardown (FIN, the peer's wake-up) to this thread
     * and wait on it at its next call. Measured: 2 us a TCP connect+close (RESULTS.md).
     * Sends are the other way round: their sockets live on, and answering first is 3 us
     * faster there. */
    close(c.dup);
    atomic_fetch_add(&g->n_connects, 1);
    return answer(g, n->id, rc);
}

/* Turn a copied iovec array (n entries, as the child laid them out) into ranges at out:
 * their total length, or -1 if it is more than room. */
static int64_t parse_iovecs(const uint8_t *raw, uint64_t n, struct iovec *out, size_t room)
{
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v[2];
        memcpy(v, raw + 16 * i, sizeof v);
        if (v[1] > room - total)
            return -1;
        out[i].iov_base = (void *)(uintptr_t)v[0];
        out[i].iov_len = v[1];
        total += v[1];
    }
    return (int64_t)total;
}

/* Send one datagram; HAND_OVER only if a blocking socket would have waited (nothing was
 * sent: Python starts the call over and waits). */
static int send_one(struct sandlock_gate *g, const struct call *c, const uint8_t *name,
                    uint32_t namelen, const uint8_t *data, size_t len, int flags, int64_t *rc)
{
    *rc = sandlock_sendmsg(c->dup, name, namelen, data, len, NULL, 0, flags | MSG_DONTWAIT);
    if (*rc == -EAGAIN && !(flags & MSG_DONTWAIT) && nonblocking(c->dup) != 1)
        return HAND_OVER;
    atomic_fetch_add(&g->n_sends, 1);
    return DONE;
}

static int do_sendto(struct worker *w, struct seccomp_notif *n)
{
    struct sandlock_gate *g = w->g;
    struct call c;
    uint64_t len = n->data.args[2];
    int flags = (int)n->data.args[3];
    uint32_t namelen = (uint32_t)n->data.args[5];
    if (len > MAX_DATA || flags & MSG_FASTOPEN || namelen < sizeof(struct sockaddr_in) ||
        namelen > MAX_NAME)
        return HAND_OVER;
    /* The data and the name in one read (the data first, the name right after it), then
     * the socket: see confirmed. */
    struct iovec ranges[2] = {
        {.iov_base = (void *)(uintptr_t)n->data.args[1], .iov_len = len},
        {.iov_base = (void *)(uintptr_t)n->data.args[4], .iov_len = namelen},
    };
    const uint8_t *name = w->data + len;
    if (read_ranges((int)n->pid, w->data, len + namelen, ranges, 2) != len + namelen)
        return HAND_OVER;
    if (open_call(w, &c, n, (int)n->data.args[0], 1) != DONE)
        return HAND_OVER;
    int64_t rc;
    int r = HAND_OVER;
    if (name_fits(&c, namelen) && name_known(g, &c, name)) {
        if (!confirmed(g, &c))
            r = DONE;
        else if ((r = send_one(g, &c, name, namelen, w->data, len, flags, &rc)) == DONE)
            answer(g, n->id, rc);
    }
    close(c.dup);
    return r;
}

/* The parts of a msghdr (raw, 56 bytes) the gate looks at; 0 if the gate cannot send it
 * (control messages are checked in Python: source routes, rights). */
struct hdr {
    uint64_t name_p, iov_p, iovlen;
    uint32_t namelen; /* 0 when name_p is NULL */
};

static int hdr_usable(const struct call *c, const uint64_t *raw, int flags, struct hdr *h)
{
    h->name_p = raw[0];
    h->namelen = (uint32_t)raw[1];
    h->iov_p = raw[2];
    h->iovlen = raw[3];
    if (raw[5] != 0 || flags & MSG_FASTOPEN || h->iovlen > MAX_IOV)
        return 0;
    return h->name_p ? name_fits(c, h->namelen) : h->namelen == 0;
}

static int do_sendmsg(struct worker *w, struct seccomp_notif *n)
{
    struct sandlock_gate *g = w->g;
    struct call c;
    struct hdr h;
    uint64_t raw[MSGHDR_SIZE / 8];
    int flags = (int)n->data.args[2];
    int tid = (int)n->pid;
    if (open_call(w, &c, n, (int)n->data.args[0], 1) != DONE)
        return HAND_OVER;
    int64_t rc;
    int r = HAND_OVER;
    if (!read_exact(tid, n->data.args[1], raw, sizeof raw) || !hdr_usable(&c, raw, flags, &h))
        goto out;
    /* The name and the iovec array in one read, into meta; then the data into data. */
    struct iovec ranges[2] = {
        {.iov_base = (void *)(uintptr_t)h.name_p, .iov_len = h.namelen},
        {.iov_base = (void *)(uintptr_t)h.iov_p, .iov_len = h.iovlen * 16},
    };
    size_t meta = h.namelen + h.iovlen * 16;
    if (read_ranges(tid, w->meta, meta, ranges, 2) != meta ||
        (h.name_p && !name_known(g, &c, w->meta)))
        goto out;
    int64_t len = parse_iovecs(w->meta + h.namelen, h.iovlen, w->ranges, MAX_DATA);
    if (len < 0 || read_ranges(tid, w->data, (size_t)len, w->ranges, h.iovlen) != (size_t)len)
        goto out;
    if (!still_waiting(g, n->id))
        r = DONE;
    else if ((r = send_one(g, &c, h.name_p ? w->meta : NULL, h.namelen, w->data, (size_t)len,
                           flags, &rc)) == DONE)
        answer(g, n->id, rc);
out:
    close(c.dup);
    return r;
}

/* Send up to count entries of a sendmmsg vector, already copied into w->vec (from the
 * child's base), with one sendmmsg of our own, in three reads: the names and iovec arrays
 * of all, then the data of all. Stops before the first entry the gate cannot answer.
 * The entries sent (their msg_len written back); *rc is the error when none was. */
static unsigned int send_batch(struct worker *w, const struct call *c, uint64_t base,
                               unsigned int count, int flags, int64_t *rc)
{
    struct sandlock_gate *g = w->g;
    int tid = (int)c->n->pid;
    struct hdr h[MMSG_BATCH];
    size_t meta_at[MMSG_BATCH + 1], data_at[MMSG_BATCH + 1];
    unsigned int k, nr;

    *rc = 0;
    /* What each entry points at: its name and its iovec array. */
    meta_at[0] = 0;
    for (k = 0; k < count; k++) {
        if (!hdr_usable(c, w->vec + k * (MMSGHDR_SIZE / 8), flags, &h[k]))
            break;
        w->ranges[2 * k] = (struct iovec){(void *)(uintptr_t)h[k].name_p, h[k].namelen};
        w->ranges[2 * k + 1] = (struct iovec){(void *)(uintptr_t)h[k].iov_p, h[k].iovlen * 16};
        meta_at[k + 1] = meta_at[k] + h[k].namelen + h[k].iovlen * 16;
    }
    size_t got = read_ranges(tid, w->meta, meta_at[k], w->ranges, 2 * k);
    while (k > 0 && meta_at[k] > got)
        k--;
    /* Each destination decided, each entry's data ranges laid end to end. */
    data_at[0] = 0;
    nr = 0;
    for (unsigned int i = 0; i < k; i++) {
        const uint8_t *name = w->meta + meta_at[i];
        int64_t len;
        if ((h[i].name_p && !name_known(g, c, name)) || nr + h[i].iovlen > UIO_MAXIOV ||
            (len = parse_iovecs(name + h[i].namelen, h[i].iovlen, w->ranges + nr,
                                MAX_DATA - data_at[i])) < 0) {
            k = i;
            break;
        }
        nr += (unsigned int)h[i].iovlen;
        data_at[i + 1] = data_at[i] + (size_t)len;
    }
    got = read_ranges(tid, w->data, data_at[k], w->ranges, nr);
    while (k > 0 && data_at[k] > got)
        k--;
    if (k == 0)
        return 0;
    if (!still_waiting(g, c->n->id)) {
        *rc = -ENOENT;
        return 0;
    }
    struct mmsghdr msgs[MMSG_BATCH];
    struct iovec iov[MMSG_BATCH];
    for (unsigned int i = 0; i < k; i++) {
        iov[i] = (struct iovec){w->data + data_at[i], data_at[i + 1] - data_at[i]};
        msgs[i] = (struct mmsghdr){.msg_hdr = {
            .msg_name = h[i].name_p ? w->meta + meta_at[i] : NULL,
            .msg_namelen = h[i].namelen,
            .msg_iov = &iov[i],
            .msg_iovlen = 1,
        }};
    }
    /* The kernel stops at the first entry that fails and, if some were sent, says how
     * many and drops the error: exactly the answer owed to the child. */
    int sent = sendmmsg(c->dup, msgs, k, flags | MSG_DONTWAIT);
    if (sent <= 0) {
        *rc = sent < 0 ? -errno : 0;
        return 0;
    }
    uint32_t lens[MMSG_BATCH];
    for (int i = 0; i < sent; i++) {
        lens[i] = msgs[i].msg_len;
        w->ranges[i] = (struct iovec){(void *)(uintptr_t)(base + (uint64_t)i * MMSGHDR_SIZE +
                                                         MSGHDR_SIZE), sizeof lens[i]};
    }
    struct iovec local = {.iov_base = lens, .iov_len = sent * sizeof lens[0]};
    if (process_vm_writev(tid, &local, 1, w->ranges, (unsigned long)sent, 0) < 0 &&
        (errno == ENOSYS || errno == EPERM)) {
        for (int i = 0; i < sent; i++)
            sandlock_write_mem(tid, (uint64_t)(uintptr_t)w->ranges[i].iov_base, &lens[i],
                               sizeof lens[i]);
    }
    atomic_fetch_add(&g->n_sends, (uint64_t)sent);
    return (unsigned int)sent;
}

/* Entries are sent in order, MMSG_BATCH at a time, until one the gate cannot answer:
 * the first one is then handed over whole; after some were sent, the count so far is
 * the answer, as the kernel's own sendmmsg answers when a later entry fails. */
static int do_sendmmsg(struct worker *w, struct seccomp_notif *n)
{
    struct sandlock_gate *g = w->g;
    struct call c;
    uint64_t vec_p = n->data.args[1];
    unsigned int vlen = (unsigned int)n->data.args[2];
    int flags = (int)n->data.args[3];
    if (vlen == 0 || flags & MSG_FASTOPEN)
        return HAND_OVER;
    if (vlen > UIO_MAXIOV)
        vlen = UIO_MAXIOV; /* the kernel clamps it too */
    if (open_call(w, &c, n, (int)n->data.args[0], 1) != DONE)
        return HAND_OVER;
    unsigned int sent = 0;
    int64_t rc = 0;
    while (sent < vlen) {
        unsigned int batch = vlen - sent < MMSG_BATCH ? vlen - sent : MMSG_BATCH;
        uint64_t base = vec_p + (uint64_t)sent * MMSGHDR_SIZE;
        if (!read_exact((int)n->pid, base, w->vec, (size_t)batch * MMSGHDR_SIZE))
            break;
        unsigned int done = send_batch(w, &c, base, batch, flags, &rc);
        sent += done;
        if (done < batch)
            break;
    }
    /* A blocking socket that found no room for the first entry would wait: Python. */
    int would_wait = sent == 0 && rc == -EAGAIN && !(flags & MSG_DONTWAIT) &&
                     nonblocking(c.dup) != 1;
    close(c.dup);
    if (sent > 0)
        return answer(g, n->id, sent);
    if (rc == -ENOENT)
        return DONE; /* the thread is gone */
    if (rc < 0 && !would_wait)
        return answer(g, n->id, rc);
    return HAND_OVER; /* nothing sent: Python answers it, waiting if it must */
}

/* open/openat/openat2: CONTINUE unless the last component could name a virtual file. */
static int do_open(struct worker *w, struct seccomp_notif *n)
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
    ioctl(w->g->listener, SECCOMP_IOCTL_NOTIF_SEND, &r);
    atomic_fetch_add(&w->g->n_opens, 1);
    return DONE;
}

static int try_answer(struct worker *w, struct seccomp_notif *n)
{
    unsigned int flags = atomic_load(&w->g->flags);
    if (n->data.arch != AUDIT_ARCH_X86_64)
        return HAND_OVER;
    switch (n->data.nr) {
    case NR_OPEN:
    case NR_OPENAT:
    case NR_OPENAT2:
        return flags & SANDLOCK_GATE_OPEN ? do_open(w, n) : HAND_OVER;
    }
    if (!(flags & SANDLOCK_GATE_CACHE))
        return HAND_OVER;
    switch (n->data.nr) {
    case NR_CONNECT:
        return do_connect(w, n);
    case NR_SENDTO:
        return do_sendto(w, n);
    case NR_SENDMSG:
        return do_sendmsg(w, n);
    case NR_SENDMMSG:
        return do_sendmmsg(w, n);
    }
    return HAND_OVER;
}

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

static void *gate_main(void *arg)
{
    struct worker *w = arg;
    struct sandlock_gate *g = w->g;
    struct pollfd p[2] = {{.fd = g->listener, .events = POLLIN}, {.fd = g->wake, .events = POLLIN}};
    struct seccomp_notif n;
    for (;;) {
        int got = next_notification(g, p, &n);
        if (got < 0)
            break;
        if (got == 0 || try_answer(w, &n) == DONE)
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
    for (int i = 0; i < PIDFDS; i++)
        if (w->pidfds[i].used)
            pidfd_drop(&w->pidfds[i]);
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
    g->connecting = connecting_new(listener, &g->n_connects); /* NULL: Python finishes */
    g->in_recv = wait_in_recv(listener, flags);
    /* Every signal blocked in the thread: they are the main thread's (Python's) to take;
     * all but GATE_SIGNAL, which only sandlock_gate_stop sends, when it waits in RECV. */
    sigset_t mask, old;
    sigfillset(&mask);
    if (g->in_recv)
        sigdelset(&mask, GATE_SIGNAL);
    pthread_sigmask(SIG_SETMASK, &mask, &old);
    g->worker.g = g;
    int rc = pthread_create(&g->thread, NULL, gate_main, &g->worker);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        *err = -rc;
        goto fail;
    }
    *handoff = sv[0];
    return g;
fail:
    if (g->connecting != NULL)
        connecting_free(g->connecting);
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
    if (g->connecting != NULL)
        connecting_free(g->connecting); /* after the thread: it parks no more */
    sandlock_gate_stats(g, final);
    close(g->wake);
    pthread_mutex_destroy(&g->lock);
    free(g);
}
