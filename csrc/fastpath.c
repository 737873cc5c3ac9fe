/*
 * The gate's answers. See fastpath.h for what it answers; this file is the how.
 */
#define _GNU_SOURCE
#include "fastpath.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/in.h>

#include "owned.h"
#include "sandlock.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif
#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

#define DONE FASTPATH_DONE
#define HAND_OVER FASTPATH_HAND_OVER

/* ---- the thread's pidfds ------------------------------------------------------------------ */

/* A pidfd names one struct pid, never a number. Once its thread is gone, pidfd_getfd
 * through it fails (ESRCH), even if the tid has been given to a new thread (which gets
 * a new struct pid): so a cached pidfd can only ever reach its own thread's table, and
 * any failure through one is retried once on a pidfd opened afresh. */

/* The slot holding tid's pidfd, opened into the least recently used slot if need be;
 * *fresh says it was just opened. NULL if it cannot be opened. */
static struct pidfd_slot *pidfd_of(struct fastpath *f, int tid, int *fresh)
{
    struct pidfd_slot *victim = &f->pidfds[0];
    f->clock++;
    for (int i = 0; i < FP_PIDFDS; i++) {
        struct pidfd_slot *s = &f->pidfds[i];
        if (s->used && s->tid == tid) {
            s->used = f->clock;
            *fresh = 0;
            return s;
        }
        if (s->used < victim->used)
            victim = s; /* an empty slot (used 0) first */
    }
    int fd = sandlock_pidfd_open_thread(tid);
    if (fd < 0)
        return NULL;
    if (victim->used)
        close(victim->fd);
    *victim = (struct pidfd_slot){.tid = tid, .fd = fd, .used = f->clock};
    *fresh = 1;
    return victim;
}

static void pidfd_drop(struct pidfd_slot *s)
{
    close(s->fd);
    *s = (struct pidfd_slot){0};
}

void fastpath_drop_pidfds(struct fastpath *f)
{
    for (int i = 0; i < FP_PIDFDS; i++)
        if (f->pidfds[i].used)
            pidfd_drop(&f->pidfds[i]);
}

/* Our duplicate of descriptor fd of thread tid, or -1. *proven says it came through a
 * pidfd opened before the notification was received: then the success itself proves that
 * tid was that thread's all along (a tid is given again only once its struct pid is
 * released, and a pidfd then fails with ESRCH), so what was read through tid before this
 * call was read from the right process (see confirmed). */
static int getfd(struct fastpath *f, int tid, int fd, int *proven)
{
    if (sandlock_owned_mode()) { /* no pidfd_getfd here: our own copy (owned.h) */
        *proven = 0;
        int dup = sandlock_owned_find(tid, fd);
        return dup < 0 ? -1 : dup;
    }
    for (;;) {
        int fresh;
        struct pidfd_slot *s = pidfd_of(f, tid, &fresh);
        if (s == NULL)
            return -1;
        int dup = sandlock_pidfd_getfd(s->fd, fd);
        *proven = !fresh;
        if (dup >= 0)
            return dup;
        if (fresh)
            return -1; /* the thread's own answer (EBADF, ESRCH...): Python gives it */
        pidfd_drop(s); /* perhaps a thread gone, its tid reused: once more, afresh */
    }
}

/* ---- reading the child -------------------------------------------------------------------- */

/* The bytes of the child's ranges r[0..n) read into buf (total in all): a prefix that ends
 * at the first fault, 0 if none could be read. */
static size_t read_ranges(int tid, void *buf, size_t total, const struct iovec *r,
                          unsigned long n)
{
    int64_t got = sandlock_read_ranges(tid, buf, total, r, n);
    return got < 0 ? 0 : (size_t)got;
}

static int read_exact(int tid, uint64_t addr, void *buf, size_t len)
{
    struct iovec r = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};
    return read_ranges(tid, buf, len, &r, 1) == len;
}

/* ---- one notification --------------------------------------------------------------------- */

struct call {
    const struct seccomp_notif *n;
    int dup;
    int proven; /* see getfd */
    int domain, type, protocol;
};

static int answer(struct fastpath *f, uint64_t id, int64_t rc)
{
    /* ENOENT: the thread is gone; nothing else to do about it. */
    sandlock_notif_send(f->listener, id, rc < 0 ? 0 : rc, rc < 0 ? (int32_t)rc : 0, 0);
    return DONE;
}

static int still_waiting(struct fastpath *f, uint64_t id)
{
    return sandlock_notif_id_valid(f->listener, id) == 0;
}

/* Whether what was read through the notification's tid before open_call came from the
 * thread that made the call: proven by getfd itself (a cached pidfd), else asked of the
 * kernel (ID_VALID: the thread still waits, so its tid is still its own). 0 means the
 * call is gone: nothing to do. If the thread was killed meanwhile and the gate still
 * performs its call, that is the call it made, to a destination Python allowed. */
static int confirmed(struct fastpath *f, const struct call *c)
{
    return c->proven || still_waiting(f, c->n->id);
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
    return sandlock_sock_info(fd, &k->domain, &k->type, &k->protocol, NULL) < 0 ? -1 : 0;
}

/* What the socket is, remembered by its cookie: one getsockopt instead of three for a
 * socket sent on again and again. A cookie names one socket for the whole boot (a 64-bit
 * counter, never 0, never given twice), and a socket's domain, type and protocol do not
 * change. Kept for sends only: a connect is usually a socket's first and only call. */
static int sock_kind_cached(struct fastpath *f, int fd, struct sock_kind *out)
{
    uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) < 0 || cookie == 0)
        return sock_kind(fd, out);
    struct sock_kind *k = &f->kinds[cookie % FP_KINDS];
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
static int open_call(struct fastpath *f, struct call *c, const struct seccomp_notif *n, int fd,
                     int dgram)
{
    struct sock_kind k;
    c->n = n;
    c->dup = getfd(f, (int)n->pid, fd, &c->proven);
    if (c->dup < 0)
        return HAND_OVER;
    if ((dgram ? sock_kind_cached(f, c->dup, &k) : sock_kind(c->dup, &k)) < 0 ||
        (k.domain != AF_INET && k.domain != AF_INET6) || (dgram && k.type != SOCK_DGRAM)) {
        close(c->dup);
        return HAND_OVER;
    }
    c->domain = k.domain;
    c->type = k.type;
    c->protocol = k.protocol;
    return DONE;
}

/* Whether a name of len bytes may be one the gate sends to: the kernel's minimum for the
 * socket's family at least, and no longer than a sockaddr_storage. */
static int name_fits(const struct call *c, uint64_t len)
{
    uint64_t min = c->domain == AF_INET ? SANDLOCK_SOCKADDR_IN_SIZE : SANDLOCK_SIN6_LEN_RFC2133;
    return len >= min && len <= FP_MAX_NAME;
}

/* How the gate may reach our copy of a name that fits: 0 if not at all; DESTSET_DIRECT if
 * the family is the socket's own and Python allowed the destination; DESTSET_RELAY if
 * Python sends that TCP connect to the relay. Sends go only to DESTSET_DIRECT ones. */
static int name_kind(struct fastpath *f, const struct call *c, const uint8_t *name)
{
    uint16_t family;
    memcpy(&family, name, 2);
    if (family != c->domain)
        return 0;
    const uint8_t *ip = name + (c->domain == AF_INET ? 4 : 8);
    int port = (name[2] << 8) | name[3];
    return destset_has(&f->dests, c->domain, c->type, c->protocol, ip,
                       c->domain == AF_INET ? 4 : 16, port);
}

int fastpath_park(struct fastpath *f, uint64_t id, int fd)
{
    if (f->connecting == NULL)
        return -1;
    int64_t timeout_us = sandlock_sock_sndtimeo(fd);
    return timeout_us < 0 ? -1 : connecting_park(f->connecting, id, fd, timeout_us);
}

static int name_known(struct fastpath *f, const struct call *c, const uint8_t *name)
{
    return name_kind(f, c, name) == DESTSET_DIRECT;
}

static int do_connect(struct fastpath *f, const struct seccomp_notif *n, int *fd, int *rc_out)
{
    struct call c;
    uint8_t name[FP_MAX_NAME];
    uint32_t len = (uint32_t)n->data.args[2];
    /* The name first, the socket after: see confirmed. */
    if (len < SANDLOCK_SOCKADDR_IN_SIZE || len > FP_MAX_NAME ||
        !read_exact((int)n->pid, n->data.args[1], name, len))
        return HAND_OVER;
    if (open_call(f, &c, n, (int)n->data.args[0], 0) != DONE)
        return HAND_OVER;
    int kind = name_fits(&c, len) ? name_kind(f, &c, name) : 0;
    if (kind == 0 || (kind == DESTSET_RELAY && c.type != SOCK_STREAM)) {
        close(c.dup);
        return HAND_OVER;
    }
    if (!confirmed(f, &c)) {
        close(c.dup);
        return DONE;
    }
    /* To the relay: its listener is what we connect to, under the notes' lock until the
     * destination is noted (an accept that races us waits for it: relaynotes.h). */
    const uint8_t *to = name;
    uint32_t tolen = len;
    if (kind == DESTSET_RELAY) {
        pthread_mutex_lock(&f->relay.lock);
        to = relaynotes_target_locked(&f->relay, c.domain, &tolen);
        if (to == NULL) { /* (the relay is not running: Python refuses it) */
            pthread_mutex_unlock(&f->relay.lock);
            close(c.dup);
            return HAND_OVER;
        }
    }
    /* Only a TCP connect can wait, and only on a blocking socket: only then do the
     * flags matter (a UDP connect returns at once either way). */
    int fl = c.type == SOCK_STREAM ? fcntl(c.dup, F_GETFL) : O_NONBLOCK;
    if (fl < 0) {
        if (kind == DESTSET_RELAY)
            pthread_mutex_unlock(&f->relay.lock);
        close(c.dup);
        return HAND_OVER;
    }
    /* A blocking connect is started non-blocking: O_NONBLOCK lives on the open file the
     * child shares, so it is set only for the call and the file's flags put back at once. */
    int blocking_stream = !(fl & O_NONBLOCK);
    int rc = blocking_stream ? sandlock_connect_nonblock(c.dup, to, tolen, fl)
                             : sandlock_connect(c.dup, to, tolen, 0);
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
    if (kind == DESTSET_RELAY) {
        /* Started or made: the relay will accept it, and must know where it goes. A note
         * that cannot be made refuses the call (the relay resets what it cannot place). */
        if ((rc == 0 || rc == -EINPROGRESS) &&
            relaynotes_note_locked(&f->relay, c.dup, name, len, n->pid) < 0)
            rc = -ECONNREFUSED;
        pthread_mutex_unlock(&f->relay.lock);
    }
    if (blocking_stream && rc == -EINPROGRESS) {
        if (fastpath_park(f, n->id, c.dup) == 0)
            return DONE; /* the second thread answers when the handshake ends */
        *fd = c.dup;     /* else Python finishes it (gate.c hands it over) */
        *rc_out = rc;
        return HAND_OVER;
    }
    /* Our duplicate closed first, so that the child's own close stays the last one and
     * tears the connection down itself, as without us: answered first, the child would
     * often close before us, leave the teardown (FIN, the peer's wake-up) to this thread
     * and wait on it at its next call. Measured: 2 us a TCP connect+close (RESULTS.md).
     * Sends are the other way round: their sockets live on, and answering first is 3 us
     * faster there. */
    close(c.dup);
    atomic_fetch_add(&f->connects, 1);
    return answer(f, n->id, rc);
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
static int send_one(struct fastpath *f, const struct call *c, const uint8_t *name,
                    uint32_t namelen, const uint8_t *data, size_t len, int flags, int64_t *rc)
{
    *rc = sandlock_sendmsg(c->dup, name, namelen, data, len, NULL, 0, flags | MSG_DONTWAIT);
    if (*rc == -EAGAIN && !(flags & MSG_DONTWAIT) && nonblocking(c->dup) != 1)
        return HAND_OVER;
    atomic_fetch_add(&f->sends, 1);
    return DONE;
}

static int do_sendto(struct fastpath *f, const struct seccomp_notif *n)
{
    struct call c;
    uint64_t len = n->data.args[2];
    int flags = (int)n->data.args[3];
    uint32_t namelen = (uint32_t)n->data.args[5];
    if (len > FP_MAX_DATA || flags & MSG_FASTOPEN ||
        namelen < SANDLOCK_SOCKADDR_IN_SIZE || namelen > FP_MAX_NAME)
        return HAND_OVER;
    /* The data and the name in one read (the data first, the name right after it), then
     * the socket: see confirmed. */
    struct iovec ranges[2] = {
        {.iov_base = (void *)(uintptr_t)n->data.args[1], .iov_len = len},
        {.iov_base = (void *)(uintptr_t)n->data.args[4], .iov_len = namelen},
    };
    const uint8_t *name = f->data + len;
    if (read_ranges((int)n->pid, f->data, len + namelen, ranges, 2) != len + namelen)
        return HAND_OVER;
    if (open_call(f, &c, n, (int)n->data.args[0], 1) != DONE)
        return HAND_OVER;
    int64_t rc;
    int r = HAND_OVER;
    if (name_fits(&c, namelen) && name_known(f, &c, name)) {
        if (!confirmed(f, &c))
            r = DONE;
        else if ((r = send_one(f, &c, name, namelen, f->data, len, flags, &rc)) == DONE)
            answer(f, n->id, rc);
    }
    close(c.dup);
    return r;
}

/* The parts of a msghdr the gate looks at; 0 if the gate cannot send it (control messages
 * are checked in Python: source routes, rights). raw: as copied out of the child. */
struct hdr {
    uint64_t name_p, iov_p, iovlen;
    uint32_t namelen; /* 0 when name_p is NULL */
};

static int hdr_usable(const struct call *c, const uint8_t *raw, int flags, struct hdr *h)
{
    struct sandlock_msghdr m;
    memcpy(&m, raw, sizeof m);
    h->name_p = m.name;
    h->namelen = m.namelen;
    h->iov_p = m.iov;
    h->iovlen = m.iovlen;
    if (m.controllen != 0 || flags & MSG_FASTOPEN || h->iovlen > FP_MAX_IOV)
        return 0;
    return h->name_p ? name_fits(c, h->namelen) : h->namelen == 0;
}

static int do_sendmsg(struct fastpath *f, const struct seccomp_notif *n)
{
    struct call c;
    struct hdr h;
    uint8_t raw[sizeof(struct sandlock_msghdr)];
    int flags = (int)n->data.args[2];
    int tid = (int)n->pid;
    if (open_call(f, &c, n, (int)n->data.args[0], 1) != DONE)
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
    if (read_ranges(tid, f->meta, meta, ranges, 2) != meta ||
        (h.name_p && !name_known(f, &c, f->meta)))
        goto out;
    int64_t len = parse_iovecs(f->meta + h.namelen, h.iovlen, f->ranges, FP_MAX_DATA);
    if (len < 0 || read_ranges(tid, f->data, (size_t)len, f->ranges, h.iovlen) != (size_t)len)
        goto out;
    if (!still_waiting(f, n->id))
        r = DONE;
    else if ((r = send_one(f, &c, h.name_p ? f->meta : NULL, h.namelen, f->data, (size_t)len,
                           flags, &rc)) == DONE)
        answer(f, n->id, rc);
out:
    close(c.dup);
    return r;
}

/* Send up to count entries of a sendmmsg vector, already copied into f->vec (from the
 * child's base), with one sendmmsg of our own, in three reads: the names and iovec arrays
 * of all, then the data of all. Stops before the first entry the gate cannot answer.
 * The entries sent (their msg_len written back); *rc is the error when none was. */
static unsigned int send_batch(struct fastpath *f, const struct call *c, uint64_t base,
                               unsigned int count, int flags, int64_t *rc)
{
    int tid = (int)c->n->pid;
    struct hdr h[FP_MMSG_BATCH];
    size_t meta_at[FP_MMSG_BATCH + 1], data_at[FP_MMSG_BATCH + 1];
    unsigned int k, nr;

    *rc = 0;
    /* What each entry points at: its name and its iovec array. */
    meta_at[0] = 0;
    for (k = 0; k < count; k++) {
        if (!hdr_usable(c, f->vec + k * SANDLOCK_MMSGHDR_SIZE, flags, &h[k]))
            break;
        f->ranges[2 * k] = (struct iovec){(void *)(uintptr_t)h[k].name_p, h[k].namelen};
        f->ranges[2 * k + 1] = (struct iovec){(void *)(uintptr_t)h[k].iov_p, h[k].iovlen * 16};
        meta_at[k + 1] = meta_at[k] + h[k].namelen + h[k].iovlen * 16;
    }
    size_t got = read_ranges(tid, f->meta, meta_at[k], f->ranges, 2 * k);
    while (k > 0 && meta_at[k] > got)
        k--;
    /* Each destination decided, each entry's data ranges laid end to end. */
    data_at[0] = 0;
    nr = 0;
    for (unsigned int i = 0; i < k; i++) {
        const uint8_t *name = f->meta + meta_at[i];
        int64_t len;
        if ((h[i].name_p && !name_known(f, c, name)) || nr + h[i].iovlen > SANDLOCK_UIO_MAXIOV ||
            (len = parse_iovecs(name + h[i].namelen, h[i].iovlen, f->ranges + nr,
                                FP_MAX_DATA - data_at[i])) < 0) {
            k = i;
            break;
        }
        nr += (unsigned int)h[i].iovlen;
        data_at[i + 1] = data_at[i] + (size_t)len;
    }
    got = read_ranges(tid, f->data, data_at[k], f->ranges, nr);
    while (k > 0 && data_at[k] > got)
        k--;
    if (k == 0)
        return 0;
    if (!still_waiting(f, c->n->id)) {
        *rc = -ENOENT;
        return 0;
    }
    struct mmsghdr msgs[FP_MMSG_BATCH];
    struct iovec iov[FP_MMSG_BATCH];
    for (unsigned int i = 0; i < k; i++) {
        iov[i] = (struct iovec){f->data + data_at[i], data_at[i + 1] - data_at[i]};
        msgs[i] = (struct mmsghdr){.msg_hdr = {
            .msg_name = h[i].name_p ? f->meta + meta_at[i] : NULL,
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
    uint32_t lens[FP_MMSG_BATCH];
    for (int i = 0; i < sent; i++) {
        lens[i] = msgs[i].msg_len;
        f->ranges[i] = (struct iovec){
            (void *)(uintptr_t)(base + (uint64_t)i * SANDLOCK_MMSGHDR_SIZE +
                                SANDLOCK_MSG_LEN_OFFSET),
            sizeof lens[i]};
    }
    sandlock_write_ranges(tid, lens, (size_t)sent * sizeof lens[0], f->ranges,
                          (unsigned long)sent);
    atomic_fetch_add(&f->sends, (uint64_t)sent);
    return (unsigned int)sent;
}

/* Entries are sent in order, FP_MMSG_BATCH at a time, until one the gate cannot answer:
 * the first one is then handed over whole; after some were sent, the count so far is
 * the answer, as the kernel's own sendmmsg answers when a later entry fails. */
static int do_sendmmsg(struct fastpath *f, const struct seccomp_notif *n)
{
    struct call c;
    uint64_t vec_p = n->data.args[1];
    unsigned int vlen = (unsigned int)n->data.args[2];
    int flags = (int)n->data.args[3];
    if (vlen == 0 || flags & MSG_FASTOPEN)
        return HAND_OVER;
    if (vlen > SANDLOCK_UIO_MAXIOV)
        vlen = SANDLOCK_UIO_MAXIOV; /* the kernel clamps it too */
    if (open_call(f, &c, n, (int)n->data.args[0], 1) != DONE)
        return HAND_OVER;
    unsigned int sent = 0;
    int64_t rc = 0;
    while (sent < vlen) {
        unsigned int batch = vlen - sent < FP_MMSG_BATCH ? vlen - sent : FP_MMSG_BATCH;
        uint64_t base = vec_p + (uint64_t)sent * SANDLOCK_MMSGHDR_SIZE;
        if (!read_exact((int)n->pid, base, f->vec, (size_t)batch * SANDLOCK_MMSGHDR_SIZE))
            break;
        unsigned int done = send_batch(f, &c, base, batch, flags, &rc);
        sent += done;
        if (done < batch)
            break;
    }
    /* A blocking socket that found no room for the first entry would wait: Python. */
    int would_wait = sent == 0 && rc == -EAGAIN && !(flags & MSG_DONTWAIT) &&
                     nonblocking(c.dup) != 1;
    close(c.dup);
    if (sent > 0)
        return answer(f, n->id, sent);
    if (rc == -ENOENT)
        return DONE; /* the thread is gone */
    if (rc < 0 && !would_wait)
        return answer(f, n->id, rc);
    return HAND_OVER; /* nothing sent: Python answers it, waiting if it must */
}

/* ---- opens -------------------------------------------------------------------------------- */

/*
 * Why the names make the open filter exact. The gate must be a cache of Python's decision:
 * with SANDLOCK_GATE_OPEN on, every open gets the answer vfiles.py would give it alone.
 * Python serves an open only if the last component of the path as given is one of
 * VirtualFiles.names (maybe_virtual: the last components of the virtual paths and of
 * their realpaths, taken when the files were set); only such paths are resolved
 * (symlinks and all) and looked up, and every other open is CONTINUEd. So a symlink
 * /tmp/x/alias -> /etc/hosts reads the real file with or without the gate, while
 * /run/systemd/resolve/stub-resolv.conf, the realpath of a virtual /etc/resolv.conf, is
 * served: its name is among them. The gate applies that very test, to the very names
 * (Python passes them whenever they change, sandlock_gate_set_open_names), and CONTINUEs
 * only what fails it: cheap (no /proc, no realpath here) and exact. Until it is told the
 * names, or if they do not fit, it hands over every open. Should Python ever resolve the
 * symlinks of every open, any name could be virtual: it must then tell the gate nothing.
 *
 * The path is read as vfiles.read_path reads it: page by page (a path may end just before
 * an unmapped page), SANDLOCK_PATH_MAX bytes at most, its NUL included; what cannot be read
 * that way Python CONTINUEs too, and the kernel then gives the error itself.
 */
static int may_be_virtual(struct open_names *o, const char *last)
{
    pthread_mutex_lock(&o->lock);
    int hit = !o->known;
    for (size_t at = 0; !hit && at < o->len; at += strlen(o->names + at) + 1)
        hit = strcmp(o->names + at, last) == 0;
    pthread_mutex_unlock(&o->lock);
    return hit;
}

int fastpath_set_open_names(struct fastpath *f, const char *names, size_t len)
{
    struct open_names *o = &f->open;
    int err = 0;
    if (names != NULL && len > sizeof o->names)
        err = -E2BIG;
    else if (names != NULL && len > 0 && names[len - 1] != '\0')
        err = -EINVAL;
    pthread_mutex_lock(&o->lock);
    o->known = names != NULL && err == 0;
    o->len = o->known ? len : 0;
    if (o->len)
        memcpy(o->names, names, o->len);
    pthread_mutex_unlock(&o->lock);
    return err;
}

static int do_open(struct fastpath *f, const struct seccomp_notif *n)
{
    char path[SANDLOCK_PATH_MAX + 1];
    uint64_t p = n->data.nr == SANDLOCK_NR_OPEN ? n->data.args[0] : n->data.args[1];
    size_t got = 0;
    char *end = NULL;
    while (got < SANDLOCK_PATH_MAX && end == NULL) {
        size_t chunk = 4096 - ((p + got) & 4095);
        if (chunk > SANDLOCK_PATH_MAX - got)
            chunk = SANDLOCK_PATH_MAX - got;
        if (sandlock_read_mem((int)n->pid, p + got, path + got, chunk) != (int64_t)chunk)
            break;
        end = memchr(path + got, 0, chunk);
        got += chunk;
    }
    if (end != NULL) {
        char *slash = strrchr(path, '/');
        if (may_be_virtual(&f->open, slash ? slash + 1 : path))
            return HAND_OVER;
    }
    sandlock_notif_send(f->listener, n->id, 0, 0, SANDLOCK_NOTIF_FLAG_CONTINUE);
    atomic_fetch_add(&f->opens, 1);
    return DONE;
}

/* ---- the entry points --------------------------------------------------------------------- */

int fastpath_answer(struct fastpath *f, const struct seccomp_notif *n, int *fd, int *rc)
{
    unsigned int flags = atomic_load(&f->flags);
    *fd = -1;
    *rc = 0;
    if (n->data.arch != SANDLOCK_AUDIT_ARCH)
        return HAND_OVER;
    switch (n->data.nr) {
    case SANDLOCK_NR_OPEN:
    case SANDLOCK_NR_OPENAT:
    case SANDLOCK_NR_OPENAT2:
        return flags & SANDLOCK_GATE_OPEN ? do_open(f, n) : HAND_OVER;
    }
    if (!(flags & SANDLOCK_GATE_CACHE))
        return HAND_OVER;
    switch (n->data.nr) {
    case SANDLOCK_NR_CONNECT:
        return do_connect(f, n, fd, rc);
    case SANDLOCK_NR_SENDTO:
        return do_sendto(f, n);
    case SANDLOCK_NR_SENDMSG:
        return do_sendmsg(f, n);
    case SANDLOCK_NR_SENDMMSG:
        return do_sendmmsg(f, n);
    }
    return HAND_OVER;
}

void fastpath_init(struct fastpath *f, int listener, unsigned int flags, const char *open_names,
                   size_t len)
{
    f->listener = listener;
    f->flags = flags;
    destset_init(&f->dests);
    relaynotes_init(&f->relay);
    approved_init(&f->approved);
    pthread_mutex_init(&f->open.lock, NULL);
    fastpath_set_open_names(f, open_names, len);
    f->connecting = connecting_new(listener, &f->connects); /* NULL: Python finishes */
}

void fastpath_release(struct fastpath *f)
{
    if (f->connecting != NULL)
        connecting_free(f->connecting);
    destset_destroy(&f->dests);
    relaynotes_destroy(&f->relay);
    approved_destroy(&f->approved);
    pthread_mutex_destroy(&f->open.lock);
}
