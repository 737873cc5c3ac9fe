/* flip: time-of-check/time-of-use race on the connect address.
 *
 *   flip ALLOWED_TARGET DENIED_TARGET N
 *
 * One thread rewrites a shared sockaddr between the two targets in a tight loop while the
 * main thread does N blocking TCP connects with a pointer to it.  A supervisor that
 * decides on one read of the address and lets the kernel read it again (CONTINUE) loses
 * the race and lets some connects reach the denied target.
 * Prints "ok=K refused=R other=O" (O counts any other errno, the last one in lasterrno). */
#include "common.c"

#include <pthread.h>

static const char *USAGE = "flip ALLOWED_TARGET DENIED_TARGET N";

static struct sockaddr_storage shared;
static struct sockaddr_storage allowed, denied;
static socklen_t addrlen;
static volatile int done;

static void *flipper(void *arg)
{
    (void)arg;
    volatile char *dst = (volatile char *)&shared;
    while (!done) {
        for (socklen_t i = 0; i < addrlen; i++)
            dst[i] = ((char *)&denied)[i];
        for (socklen_t i = 0; i < addrlen; i++)
            dst[i] = ((char *)&allowed)[i];
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        usage_exit(USAGE);
    addrlen = parse_target(argv[1], &allowed);
    if (parse_target(argv[2], &denied) != addrlen)
        usage_exit("flip: both targets must have the same family");
    long n = parse_long(argv[3], USAGE);
    memcpy(&shared, &allowed, sizeof shared);

    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    long ok = 0, refused = 0, other = 0;
    int lasterrno = 0;
    for (long i = 0; i < n; i++) {
        int fd = socket(allowed.ss_family, SOCK_STREAM, 0);
        if (fd < 0) {
            perror("socket");
            return 2;
        }
        if (connect(fd, (struct sockaddr *)&shared, addrlen) == 0)
            ok++;
        else if (errno == ECONNREFUSED)
            refused++;
        else {
            other++;
            lasterrno = errno;
        }
        close(fd);
    }
    done = 1;
    pthread_join(t, NULL);
    printf("ok=%ld refused=%ld other=%ld lasterrno=%d\n", ok, refused, other, lasterrno);
    return 0;
}
