/* storm: blocking UDP sends under a storm of signals.
 *
 *   storm TARGET N [INTERVAL_US [MIN_SIGNALS]]
 *
 * The main thread sends N datagrams (payload: the 32-bit sequence number, then padding)
 * with blocking sendto to TARGET, and keeps sending (up to 20 N) until at least
 * MIN_SIGNALS signals have hit it (default 0), so a fast machine still gets its storm.  Meanwhile another thread sends it SIGUSR1 with
 * pthread_kill every INTERVAL_US microseconds (default 20); the handler is installed
 * with SA_RESTART and only counts.  A supervisor that performs a send for us and then
 * fails to deliver the result because a signal interrupted the wait makes the restarted
 * call send the same datagram twice.
 * Prints "sent=S failed=F signals=K lasterrno=E"; the receiver must count exactly S
 * datagrams, with no sequence number twice.  Exit 0 iff failed == 0. */
#include "common.c"

#include <pthread.h>
#include <signal.h>

static const char *USAGE = "storm TARGET N [INTERVAL_US [MIN_SIGNALS]]";

static volatile sig_atomic_t signals;
static volatile int done;
static pthread_t sender;
static long interval_us = 20;

static void on_usr1(int sig)
{
    (void)sig;
    signals++;
}

static void *killer(void *arg)
{
    (void)arg;
    struct timespec ts = {.tv_sec = 0, .tv_nsec = interval_us * 1000};
    while (!done) {
        pthread_kill(sender, SIGUSR1);
        if (interval_us > 0)
            nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5)
        usage_exit(USAGE);
    struct sockaddr_storage sa;
    socklen_t len = parse_target(argv[1], &sa);
    long n = parse_long(argv[2], USAGE);
    if (argc >= 4)
        interval_us = parse_long(argv[3], USAGE);
    long min_signals = argc == 5 ? parse_long(argv[4], USAGE) : 0;

    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_handler = on_usr1;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    sigaction(SIGUSR1, &act, NULL);

    sender = pthread_self();
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, NULL); /* the killer thread inherits the block */
    pthread_t t;
    pthread_create(&t, NULL, killer, NULL);
    pthread_sigmask(SIG_UNBLOCK, &block, NULL);

    int fd = socket(sa.ss_family, SOCK_DGRAM, 0);
    long sent = 0, failed = 0;
    int lasterrno = 0;
    char buf[32];
    memset(buf, 's', sizeof buf);
    for (long i = 0; i < n || (signals < min_signals && i < 20 * n); i++) {
        uint32_t seq = (uint32_t)i;
        memcpy(buf, &seq, 4);
        if (sendto(fd, buf, sizeof buf, 0, (struct sockaddr *)&sa, len) == (ssize_t)sizeof buf)
            sent++;
        else {
            failed++;
            lasterrno = errno;
        }
    }
    done = 1;
    pthread_join(t, NULL);
    printf("sent=%ld failed=%ld signals=%ld lasterrno=%d\n", sent, failed, (long)signals,
           lasterrno);
    return failed ? 1 : 0;
}
