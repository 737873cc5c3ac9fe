/* Helpers shared by the probes, #included by each one (the directory holds .c files only;
 * this one has no main() and is not a probe by itself).
 *
 * Every probe reports one line per call on stdout:
 *     <label> ok ret=<value>
 *     <label> errno=<n>
 * and exits 0 when every call it counts as "expected to work" worked, 1 otherwise, 2 on
 * bad usage.  tests/conftest.py parses these lines (parse_probe). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

__attribute__((unused)) static void usage_exit(const char *usage)
{
    fprintf(stderr, "usage: %s\n", usage);
    exit(2);
}

/* "127.0.0.1:80" or "[::1]:80" (also "[::ffff:127.0.0.2]:80") into a sockaddr; returns its
 * length (sizeof sockaddr_in or sockaddr_in6); exits 2 on a malformed target. */
__attribute__((unused)) static socklen_t parse_target(const char *s, struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *colon;
    const char *start = s;
    size_t hlen;
    char *end;
    long port;

    memset(ss, 0, sizeof *ss);
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':')
            goto bad;
        start = s + 1;
        hlen = (size_t)(rb - start);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            goto bad;
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= sizeof host)
        goto bad;
    memcpy(host, start, hlen);
    host[hlen] = '\0';
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port < 0 || port > 65535)
        goto bad;

    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        return sizeof *v4;
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        return sizeof *v6;
    }
bad:
    fprintf(stderr, "bad target: %s (want A.B.C.D:PORT or [V6]:PORT)\n", s);
    exit(2);
}

/* One result line; err is the errno captured right after the call.  Never write
 * report(x, call(), errno): the order in which arguments are evaluated is unspecified. */
__attribute__((unused)) static void report(const char *label, long ret, int err)
{
    if (ret < 0)
        printf("%s errno=%d\n", label, err);
    else
        printf("%s ok ret=%ld\n", label, ret);
    fflush(stdout);
}

__attribute__((unused)) static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The address of a page that is certainly not mapped (mapped, then unmapped). */
__attribute__((unused)) static void *unmapped_page(void)
{
    void *p = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    munmap(p, 4096);
    return p;
}

__attribute__((unused)) static long parse_long(const char *s, const char *usage)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (*s == '\0' || *end != '\0' || errno != 0)
        usage_exit(usage);
    return v;
}
