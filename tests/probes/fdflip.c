/* fdflip: time-of-check/time-of-use race on the descriptor, not the address.
 *
 *   fdflip DENIED_TARGET N
 *
 * One thread dup2()s, in a tight loop, an AF_UNIX socket and an AF_INET socket onto the
 * same descriptor number while the main thread connects that number N times to
 * DENIED_TARGET. A supervisor that looks at the descriptor, sees AF_UNIX ("not egress")
 * and lets the kernel continue the call loses the race: the kernel then finds the INET
 * socket there and connects it to the denied address. Every connect must fail.
 * Prints "connected=K" and exits 0 only when K is 0. */
#include "common.c"

#include <pthread.h>

static const char *USAGE = "fdflip DENIED_TARGET N";

static int unix_fd, slot;
static volatile int done;

static void *flipper(void *arg)
{
    (void)arg;
    while (!done) {
        int inet = socket(AF_INET, SOCK_STREAM, 0);
        dup2(unix_fd, slot);
        dup2(inet, slot);
        close(inet);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    struct sockaddr_storage ss;
    if (argc != 3)
        usage_exit(USAGE);
    socklen_t len = parse_target(argv[1], &ss);
    long n = strtol(argv[2], NULL, 10);
    unix_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    slot = socket(AF_INET, SOCK_STREAM, 0);
    if (unix_fd < 0 || slot < 0) {
        perror("socket");
        return 2;
    }
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    long connected = 0;
    for (long i = 0; i < n; i++)
        if (connect(slot, (struct sockaddr *)&ss, len) == 0)
            connected++;
    done = 1;
    pthread_join(t, NULL);
    printf("connected=%ld\n", connected);
    return connected == 0 ? 0 : 1;
}
