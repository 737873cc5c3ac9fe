/*
 * What single kernel operations cost on this machine: the figures behind the "tried and
 * dropped" and "what limits" notes of bench/RESULTS.md. Loopback only (its own listener
 * on 127.0.0.1, port 0). Not part of bench/run.py.
 *
 *     gcc -O2 -pthread -o bench/.build/kernel_costs bench/kernel_costs.c
 *     bench/.build/kernel_costs
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SOCKET_URING_OP_GETSOCKOPT 2 /* kernel >= 6.7; older headers lack it */
#define BIG 60000

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void report(const char *what, double ns)
{
    printf("%-58s %8.0f ns\n", what, ns);
}

/* ---- reading another process's memory ---- */

static void remote_reads(void)
{
    char *buf = malloc(BIG), *dst = malloc(65536);
    memset(buf, 1, BIG);
    memset(dst, 0, 65536);
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    int n = 20000;
    double t = now();
    for (int i = 0; i < n; i++) {
        struct iovec l = {dst, BIG}, r = {buf, BIG};
        if (process_vm_readv(child, &l, 1, &r, 1, 0) != BIG)
            perror("process_vm_readv");
    }
    report("process_vm_readv of 60000 bytes", (now() - t) / n);
    t = now();
    for (int i = 0; i < n; i++) {
        memcpy(dst, buf, BIG);
        __asm__ volatile("" : : "r"(dst) : "memory");
    }
    report("memcpy of 60000 bytes", (now() - t) / n);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", child);
    int fd = open(path, O_RDONLY);
    t = now();
    for (int i = 0; i < n; i++)
        if (pread(fd, dst, BIG, (off_t)(uintptr_t)buf) != BIG)
            perror("pread");
    report("pread of 60000 bytes from /proc/PID/mem", (now() - t) / n);
    close(fd);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    free(buf);
    free(dst);
}

/* ---- a per-thread timer, as a bounded blocking connect would need ---- */

static void noop(int sig)
{
    (void)sig;
}

static void timer_cost(void)
{
    signal(SIGRTMAX - 6, noop);
    timer_t tm;
    struct sigevent ev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMAX - 6};
    ev._sigev_un._tid = gettid();
    if (timer_create(CLOCK_MONOTONIC, &ev, &tm) < 0) {
        perror("timer_create");
        return;
    }
    struct itimerspec on = {.it_value = {0, 100000}}, off = {0};
    int n = 200000;
    double t = now();
    for (int i = 0; i < n; i++) {
        timer_settime(tm, 0, &on, NULL);
        timer_settime(tm, 0, &off, NULL);
    }
    report("timer_settime arm + disarm", (now() - t) / n);
    timer_delete(tm);
}

/* ---- a minimal io_uring ---- */

struct ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static int ring_setup(struct ring *r)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    r->fd = (int)syscall(__NR_io_uring_setup, 8, &p);
    if (r->fd < 0)
        return -1;
    size_t sqsz = p.sq_off.array + p.sq_entries * 4;
    size_t cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t sz = sqsz > cqsz ? sqsz : cqsz; /* IORING_FEAT_SINGLE_MMAP: one mapping */
    char *m = mmap(0, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   IORING_OFF_SQ_RING);
    if (m == MAP_FAILED || !(p.features & IORING_FEAT_SINGLE_MMAP))
        return -1;
    r->sq_tail = (unsigned *)(m + p.sq_off.tail);
    r->sq_mask = (unsigned *)(m + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(m + p.sq_off.array);
    r->cq_head = (unsigned *)(m + p.cq_off.head);
    r->cq_mask = (unsigned *)(m + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(m + p.cq_off.cqes);
    r->sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    return r->sqes == MAP_FAILED ? -1 : 0;
}

static struct io_uring_sqe *ring_sqe(struct ring *r)
{
    unsigned t = *r->sq_tail, i = t & *r->sq_mask;
    r->sq_array[i] = i;
    memset(&r->sqes[i], 0, sizeof r->sqes[i]);
    __atomic_store_n(r->sq_tail, t + 1, __ATOMIC_RELEASE);
    return &r->sqes[i];
}

static void ring_run(struct ring *r, unsigned n, int *res)
{
    if (syscall(__NR_io_uring_enter, r->fd, n, n, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        perror("io_uring_enter");
    for (unsigned k = 0; k < n; k++) {
        unsigned h = *r->cq_head;
        res[k] = r->cqes[h & *r->cq_mask].res;
        __atomic_store_n(r->cq_head, h + 1, __ATOMIC_RELEASE);
    }
}

static void ring_getsockopt(struct io_uring_sqe *q, int fd, int opt, int *out)
{
    char *b = (char *)q; /* level, optname, optlen, optval: offsets of the 6.7 layout */
    q->opcode = IORING_OP_URING_CMD;
    q->fd = fd;
    *(uint32_t *)(b + 8) = SOCKET_URING_OP_GETSOCKOPT;
    *(uint32_t *)(b + 16) = SOL_SOCKET;
    *(uint32_t *)(b + 20) = (uint32_t)opt;
    *(uint32_t *)(b + 44) = sizeof *out;
    *(uint64_t *)(b + 48) = (uint64_t)(uintptr_t)out;
}

/* ---- what the gate asks of a socket, and connecting it ---- */

static void *acceptor(void *arg)
{
    int lfd = *(int *)arg;
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c >= 0)
            close(c);
    }
    return NULL;
}

static void socket_costs(struct ring *r)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), v[3], res[3], n = 20000;
    int opts[3] = {SO_DOMAIN, SO_TYPE, SO_PROTOCOL};
    double t = now();
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 3; k++) {
            socklen_t l = sizeof v[k];
            getsockopt(s, SOL_SOCKET, opts[k], &v[k], &l);
        }
    report("SO_DOMAIN, SO_TYPE, SO_PROTOCOL: three getsockopt calls", (now() - t) / n);
    if (r != NULL) {
        t = now();
        for (int i = 0; i < n; i++) {
            for (int k = 0; k < 3; k++)
                ring_getsockopt(ring_sqe(r), s, opts[k], &v[k]);
            ring_run(r, 3, res);
        }
        report("the same as one io_uring_enter of three commands", (now() - t) / n);
        if (res[0] < 0)
            printf("  (io_uring getsockopt failed: %s)\n", strerror(-res[0]));
    }
    close(s);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    socklen_t al = sizeof a;
    if (bind(lfd, (void *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (void *)&a, &al) < 0) {
        perror("listener");
        return;
    }
    pthread_t th;
    pthread_create(&th, NULL, acceptor, &lfd);
    int m = 3000;
    double dance = 0, blocking = 0, uring = 0;
    for (int i = 0; i < m; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        double t0 = now();
        int fl = fcntl(c, F_GETFL);
        fcntl(c, F_SETFL, fl | O_NONBLOCK);
        connect(c, (void *)&a, sizeof a);
        fcntl(c, F_SETFL, fl);
        struct pollfd p = {c, POLLOUT, 0};
        poll(&p, 1, 0);
        dance += now() - t0;
        close(c);

        c = socket(AF_INET, SOCK_STREAM, 0);
        t0 = now();
        if (connect(c, (void *)&a, sizeof a) < 0)
            perror("connect");
        blocking += now() - t0;
        close(c);

        if (r != NULL) {
            c = socket(AF_INET, SOCK_STREAM, 0);
            t0 = now();
            struct io_uring_sqe *q = ring_sqe(r);
            q->opcode = IORING_OP_CONNECT;
            q->fd = c;
            q->addr = (uint64_t)(uintptr_t)&a;
            q->off = sizeof a;
            ring_run(r, 1, res);
            uring += now() - t0;
            close(c);
        }
    }
    report("loopback connect: F_GETFL, F_SETFL, connect, F_SETFL, poll", dance / m);
    report("loopback connect: blocking", blocking / m);
    if (r != NULL)
        report("loopback connect: IORING_OP_CONNECT", uring / m);
}

int main(void)
{
    struct ring r;
    int have_ring = ring_setup(&r) == 0;
    if (!have_ring)
        printf("(no io_uring here: its rows are skipped)\n");
    remote_reads();
    timer_cost();
    socket_costs(have_ring ? &r : NULL);
    return 0;
}
