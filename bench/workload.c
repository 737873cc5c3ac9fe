/* The benchmark workloads, timed inside the process so that sandbox start-up is excluded,
 * and the loopback sinks they talk to.
 *
 *   workload sink                          bind 127.0.0.1:0 for TCP and UDP, print
 *                                          "tcp=PORT udp=PORT", accept-and-close and
 *                                          drain until stdin closes; a line on stdin
 *                                          gets "drops=N" back (see sink())
 *   workload NAME HOST PORT COUNT [THREADS]
 *
 * NAME is one of
 *   tcp       socket + connect + close, COUNT times (blocking sockets)
 *   udp64     sendto of 64 bytes, COUNT times
 *   udp60k    sendto of 60000 bytes, COUNT times
 *   sendmsg   sendmsg with a destination and two iovecs (32 + 32 bytes), COUNT times
 *   sendmmsg  sendmmsg of 16 messages of 64 bytes each with a destination, COUNT calls
 *   send      send() of 64 bytes on a connected UDP socket, COUNT times
 *   threads   THREADS threads (default 16) doing "tcp" concurrently, COUNT in total
 *
 * Output is one line of key=value pairs on stdout:
 *   ops=N fail=F elapsed_ns=T ns_per_op=T/N [calls=C ns_per_call=T/C]
 * A failed call is counted in fail and its first errno reported on stderr; the exit
 * status is 1 when any call failed.
 *
 * TCP sockets are closed with SO_LINGER {1, 0} (a reset, no TIME_WAIT): the harness makes
 * a few hundred thousand loopback connections in a few minutes, which would otherwise
 * exhaust the ephemeral port range. connect() is the call under test either way.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/sock_diag.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MMSG_BATCH 16
#define DGRAM_SMALL 64
#define DGRAM_LARGE 60000

static struct sockaddr_in dest;
static int first_errno;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void note_error(const char *what)
{
    if (__atomic_exchange_n(&first_errno, errno, __ATOMIC_RELAXED) == 0)
        fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
}

static int udp_socket(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("workload: socket");
        exit(2);
    }
    return fd;
}

/* One connection: returns 0 on success, -1 on failure. */
static int tcp_once(void)
{
    static const struct linger reset = {1, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        note_error("socket");
        return -1;
    }
    int rc = connect(fd, (struct sockaddr *)&dest, sizeof dest);
    if (rc < 0)
        note_error("connect");
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    close(fd);
    return rc;
}

static long run_tcp(long count)
{
    long fail = 0;
    for (long i = 0; i < count; i++)
        fail += tcp_once() < 0;
    return fail;
}

static long run_sendto(long count, size_t size)
{
    int fd = udp_socket();
    char *buf = calloc(1, size);
    long fail = 0;
    for (long i = 0; i < count; i++) {
        if (sendto(fd, buf, size, 0, (struct sockaddr *)&dest, sizeof dest) < 0) {
            note_error("sendto");
            fail++;
        }
    }
    free(buf);
    close(fd);
    return fail;
}

static long run_sendmsg(long count)
{
    int fd = udp_socket();
    char a[DGRAM_SMALL / 2] = {0}, b[DGRAM_SMALL / 2] = {0};
    struct iovec iov[2] = {{a, sizeof a}, {b, sizeof b}};
    struct msghdr msg = {
        .msg_name = &dest, .msg_namelen = sizeof dest, .msg_iov = iov, .msg_iovlen = 2};
    long fail = 0;
    for (long i = 0; i < count; i++) {
        if (sendmsg(fd, &msg, 0) < 0) {
            note_error("sendmsg");
            fail++;
        }
    }
    close(fd);
    return fail;
}

static long run_sendmmsg(long count)
{
    int fd = udp_socket();
    static char buf[MMSG_BATCH][DGRAM_SMALL];
    struct iovec iov[MMSG_BATCH];
    struct mmsghdr msgs[MMSG_BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int j = 0; j < MMSG_BATCH; j++) {
        iov[j] = (struct iovec){buf[j], sizeof buf[j]};
        msgs[j].msg_hdr = (struct msghdr){
            .msg_name = &dest, .msg_namelen = sizeof dest, .msg_iov = &iov[j], .msg_iovlen = 1};
    }
    long fail = 0;
    for (long i = 0; i < count; i++) {
        int sent = sendmmsg(fd, msgs, MMSG_BATCH, 0);
        if (sent < 0) {
            note_error("sendmmsg");
            fail += MMSG_BATCH;
        } else if (sent < MMSG_BATCH) {
            errno = EAGAIN;
            note_error("sendmmsg (short)");
            fail += MMSG_BATCH - sent;
        }
    }
    close(fd);
    return fail;
}

/* fd is already connected: main() connects it (the one trapped call) before the clock. */
static long run_send(int fd, long count)
{
    char buf[DGRAM_SMALL] = {0};
    long fail = 0;
    for (long i = 0; i < count; i++) {
        if (send(fd, buf, sizeof buf, 0) < 0) {
            note_error("send");
            fail++;
        }
    }
    return fail;
}

struct worker {
    pthread_t thread;
    long count;
    long fail;
    pthread_barrier_t *start;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pthread_barrier_wait(w->start);
    w->fail = run_tcp(w->count);
    return NULL;
}

/* Returns failures; *elapsed is from the barrier's release to the last join. */
static long run_threads(long count, int nthreads, long long *elapsed)
{
    pthread_barrier_t start;
    struct worker *workers = calloc((size_t)nthreads, sizeof *workers);
    pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1);
    for (int t = 0; t < nthreads; t++) {
        workers[t].count = count / nthreads + (t < count % nthreads);
        workers[t].start = &start;
        if (pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]) != 0) {
            fprintf(stderr, "workload: pthread_create failed\n");
            exit(2);
        }
    }
    pthread_barrier_wait(&start);
    long long t0 = now_ns();
    long fail = 0;
    for (int t = 0; t < nthreads; t++) {
        pthread_join(workers[t].thread, NULL);
        fail += workers[t].fail;
    }
    *elapsed = now_ns() - t0;
    free(workers);
    return fail;
}

static void *accept_loop(void *arg)
{
    int lfd = *(int *)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd >= 0)
            close(fd);
        else if (errno != EINTR && errno != ECONNABORTED && errno != EMFILE && errno != ENFILE)
            return NULL;
    }
}

static void *drain_loop(void *arg)
{
    int fd = *(int *)arg;
    static char buf[65536];
    for (;;) {
        if (recv(fd, buf, sizeof buf, 0) < 0 && errno != EINTR)
            return NULL;
    }
}

/* The TCP side is SINK_LISTENERS SO_REUSEPORT listeners on one port (the kernel spreads
 * connections over them), each with SINK_ACCEPTORS threads: with 32 busy clients on two
 * cores, one listener's 4096-deep accept queue overflows, and a dropped SYN is retried
 * after a whole second. The sink also asks for a higher priority (nice -5), best effort. */
#define SINK_LISTENERS 4
#define SINK_ACCEPTORS 2

static int sink(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    static int tfds[SINK_LISTENERS];
    static int ufd;
    int one = 1, rcvbuf = 4 << 20;
    (void)setpriority(PRIO_PROCESS, 0, -5); /* best effort; the threads inherit it */
    for (int i = 0; i < SINK_LISTENERS; i++) {
        tfds[i] = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(tfds[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(tfds[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(tfds[i], (struct sockaddr *)&addr, sizeof addr) < 0 || listen(tfds[i], 4096) < 0) {
            perror("workload sink: tcp bind/listen");
            return 2;
        }
        getsockname(tfds[i], (struct sockaddr *)&addr, &len); /* the others join this port */
    }
    int tport = ntohs(addr.sin_port);
    addr.sin_port = 0;
    ufd = socket(AF_INET, SOCK_DGRAM, 0);
    setsockopt(ufd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind(ufd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("workload sink: udp bind");
        return 2;
    }
    len = sizeof addr;
    getsockname(ufd, (struct sockaddr *)&addr, &len);
    printf("tcp=%d udp=%d\n", tport, ntohs(addr.sin_port));
    fflush(stdout);
    pthread_t thread;
    for (int i = 0; i < SINK_LISTENERS * SINK_ACCEPTORS; i++)
        pthread_create(&thread, NULL, accept_loop, &tfds[i % SINK_LISTENERS]);
    pthread_create(&thread, NULL, drain_loop, &ufd);
    /* Each line on stdin asks how many SYNs the listeners dropped for a full accept queue
     * (SK_MEMINFO_DROPS counts exactly those on a listener); EOF ends the sink. */
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL) {
        unsigned long long drops = 0;
        for (int i = 0; i < SINK_LISTENERS; i++) {
            unsigned int mem[SK_MEMINFO_VARS] = {0};
            socklen_t mlen = sizeof mem;
            if (getsockopt(tfds[i], SOL_SOCKET, SO_MEMINFO, mem, &mlen) == 0)
                drops += mem[SK_MEMINFO_DROPS];
        }
        printf("drops=%llu\n", drops);
        fflush(stdout);
    }
    return 0;
}

/* socket() + close(): what making a socket costs (trapped and made on behalf where
 * pidfd_getfd is refused, as in a container; not trapped otherwise). */
static long run_socket(long count)
{
    long fail = 0;
    for (long i = 0; i < count; i++) {
        int fd = udp_socket();
        if (fd < 0)
            fail++;
        else
            close(fd);
    }
    return fail;
}

/* A few untimed operations of the same kind first: a supervisor may start its
 * machinery on the first trapped call (ours imports trio then), and start-up is not what
 * the per-operation rows measure. ("send" is warmed by its own untimed connect.) */
static void warm_up(const char *name)
{
    const long n = 20;
    if (strcmp(name, "tcp") == 0 || strcmp(name, "threads") == 0)
        run_tcp(n);
    else if (strcmp(name, "udp64") == 0 || strcmp(name, "udp60k") == 0)
        run_sendto(n, DGRAM_SMALL);
    else if (strcmp(name, "sendmsg") == 0)
        run_sendmsg(n);
    else if (strcmp(name, "sendmmsg") == 0)
        run_sendmmsg(2);
    else if (strcmp(name, "socket") == 0)
        run_socket(n);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "sink") == 0)
        return sink();
    if (argc < 5) {
        fprintf(stderr, "usage: workload sink | workload NAME HOST PORT COUNT [THREADS]\n");
        return 2;
    }
    const char *name = argv[1];
    long count = atol(argv[4]);
    int nthreads = argc > 5 ? atoi(argv[5]) : 16;
    dest.sin_family = AF_INET;
    dest.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &dest.sin_addr) != 1 || count <= 0 || nthreads <= 0) {
        fprintf(stderr, "workload: bad host, count or thread count\n");
        return 2;
    }

    long fail = 0, ops = count, calls = 0;
    long long t0, elapsed;
    warm_up(name);
    if (strcmp(name, "threads") == 0) {
        fail = run_threads(count, nthreads, &elapsed);
    } else if (strcmp(name, "send") == 0) {
        int fd = udp_socket();
        if (connect(fd, (struct sockaddr *)&dest, sizeof dest) < 0) {
            perror("workload: connect (udp)");
            return 1;
        }
        t0 = now_ns();
        fail = run_send(fd, count);
        elapsed = now_ns() - t0;
        close(fd);
    } else {
        t0 = now_ns();
        if (strcmp(name, "tcp") == 0) {
            fail = run_tcp(count);
        } else if (strcmp(name, "udp64") == 0) {
            fail = run_sendto(count, DGRAM_SMALL);
        } else if (strcmp(name, "udp60k") == 0) {
            fail = run_sendto(count, DGRAM_LARGE);
        } else if (strcmp(name, "sendmsg") == 0) {
            fail = run_sendmsg(count);
        } else if (strcmp(name, "socket") == 0) {
            fail = run_socket(count);
        } else if (strcmp(name, "sendmmsg") == 0) {
            calls = count;
            ops = count * MMSG_BATCH;
            fail = run_sendmmsg(count);
        } else {
            fprintf(stderr, "workload: unknown workload %s\n", name);
            return 2;
        }
        elapsed = now_ns() - t0;
    }
    printf("ops=%ld fail=%ld elapsed_ns=%lld ns_per_op=%.1f", ops, fail, elapsed,
           (double)elapsed / (double)ops);
    if (calls)
        printf(" calls=%ld ns_per_call=%.1f", calls, (double)elapsed / (double)calls);
    printf("\n");
    return fail ? 1 : 0;
}
