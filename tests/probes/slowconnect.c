/* slowconnect: one connect that hangs must not hold up the others.
 *
 *   slowconnect SLOW_TARGET FAST_TARGET NFAST SLOW_TIMEOUT_MS
 *
 * A thread connects to SLOW_TARGET (a listener whose accept queue is full, so the SYN is
 * dropped and the connect waits for retransmissions), bounded by SO_SNDTIMEO =
 * SLOW_TIMEOUT_MS: the kernel then gives up with EINPROGRESS.  200 ms later the main
 * thread makes NFAST connects to FAST_TARGET and prints
 *     "fast_ok=N fast_ms=T slow_pending=0|1"
 * (slow_pending: the slow connect was still waiting when the fast ones were all done).
 * Then it waits for the slow thread, at most SLOW_TIMEOUT_MS + 6 s, and prints
 *     "slow_ms=S slow_errno=E"        or "slow_ms=-1 slow_errno=-1" if it gave up waiting
 * (the process then exits with the slow connect still pending).
 * Exit 0 iff fast_ok == NFAST, slow_pending == 1 and the slow connect ended in time. */
#include "common.c"

#include <pthread.h>

static const char *USAGE = "slowconnect SLOW_TARGET FAST_TARGET NFAST SLOW_TIMEOUT_MS";

static struct sockaddr_storage slow_sa;
static socklen_t slow_len;
static long slow_timeout_ms;
static volatile int slow_done;
static double slow_ms;
static int slow_errno;

static void *slow(void *arg)
{
    (void)arg;
    int fd = socket(slow_sa.ss_family, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = slow_timeout_ms / 1000,
                         .tv_usec = (slow_timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    double t0 = now_ms();
    int r = connect(fd, (struct sockaddr *)&slow_sa, slow_len);
    slow_errno = r < 0 ? errno : 0;
    slow_ms = now_ms() - t0;
    __atomic_store_n(&slow_done, 1, __ATOMIC_SEQ_CST);
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5)
        usage_exit(USAGE);
    slow_len = parse_target(argv[1], &slow_sa);
    struct sockaddr_storage fast_sa;
    socklen_t fast_len = parse_target(argv[2], &fast_sa);
    long nfast = parse_long(argv[3], USAGE);
    slow_timeout_ms = parse_long(argv[4], USAGE);

    pthread_t t;
    pthread_create(&t, NULL, slow, NULL);
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 200 * 1000 * 1000};
    nanosleep(&pause, NULL);

    double t0 = now_ms();
    long ok = 0;
    for (long i = 0; i < nfast; i++) {
        int fd = socket(fast_sa.ss_family, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&fast_sa, fast_len) == 0)
            ok++;
        close(fd);
    }
    double fast_ms = now_ms() - t0;
    int pending = !__atomic_load_n(&slow_done, __ATOMIC_SEQ_CST);
    printf("fast_ok=%ld fast_ms=%.0f slow_pending=%d\n", ok, fast_ms, pending);
    fflush(stdout);

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += slow_timeout_ms / 1000 + 6;
    if (pthread_timedjoin_np(t, NULL, &deadline) != 0) {
        printf("slow_ms=-1 slow_errno=-1\n");
        fflush(stdout);
        _exit(1);
    }
    printf("slow_ms=%.0f slow_errno=%d\n", slow_ms, slow_errno);
    return ok == nfast && pending ? 0 : 1;
}
