/* threads: many threads making egress calls at once.
 *
 *   threads tcp|udp TARGET NTHREADS PER
 *
 * tcp: each thread makes PER connects, each on a fresh socket (closed right after).
 * udp: each thread sends PER datagrams with sendto on its own socket.
 * Prints "ok=K fail=F lasterrno=E".  Exit 0 iff fail == 0. */
#include "common.c"

#include <pthread.h>

static const char *USAGE = "threads tcp|udp TARGET NTHREADS PER";

static struct sockaddr_storage sa;
static socklen_t len;
static int tcp;
static long per;
static long ok_total, fail_total;
static int lasterrno;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg)
{
    (void)arg;
    long ok = 0, fail = 0;
    int err = 0;
    int ufd = tcp ? -1 : socket(sa.ss_family, SOCK_DGRAM, 0);
    for (long i = 0; i < per; i++) {
        int r;
        if (tcp) {
            int fd = socket(sa.ss_family, SOCK_STREAM, 0);
            r = connect(fd, (struct sockaddr *)&sa, len);
            if (r < 0)
                err = errno;
            close(fd);
        } else {
            r = (int)sendto(ufd, "0123456789abcdef", 16, 0, (struct sockaddr *)&sa, len);
            if (r < 0)
                err = errno;
        }
        if (r < 0)
            fail++;
        else
            ok++;
    }
    if (ufd >= 0)
        close(ufd);
    pthread_mutex_lock(&lock);
    ok_total += ok;
    fail_total += fail;
    if (err)
        lasterrno = err;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[1], "tcp") && strcmp(argv[1], "udp")))
        usage_exit(USAGE);
    tcp = argv[1][0] == 't';
    len = parse_target(argv[2], &sa);
    long nthreads = parse_long(argv[3], USAGE);
    per = parse_long(argv[4], USAGE);
    if (nthreads < 1 || nthreads > 1024)
        usage_exit(USAGE);
    pthread_t *t = calloc((size_t)nthreads, sizeof *t);
    for (long i = 0; i < nthreads; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    for (long i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    printf("ok=%ld fail=%ld lasterrno=%d\n", ok_total, fail_total, lasterrno);
    return fail_total ? 1 : 0;
}
