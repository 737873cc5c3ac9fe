/* A TCP server for tests/test_inbound.py: it listens on 127.0.0.1 (or [::], dual stack)
 * port 0, prints "port=N", then accepts, greets each connection it accepted with
 * "greeting\n" and describes it:
 *     peer=<address> port=<n> addrlen=<n> nonblock=<0|1> cloexec=<0|1>
 * until it has accepted one from 127.0.0.1 (the allowed client); then it exits 0.
 *
 * usage: acceptsrv MODE FLAGS FAMILY START
 *   MODE   accept   blocking accept(fd, addr, &len) with len = sizeof(struct sockaddr_storage)
 *          accept4  blocking accept4(fd, addr, &len, FLAGS)
 *          epoll    non-blocking listener: epoll_wait, then accept4(FLAGS) until EAGAIN
 *                   (each EAGAIN prints "eagain")
 *          short    blocking accept with len = 4: prints "short addrlen=<n> head=<0|1>
 *                   tail=<0|1>" (head: the 4 bytes copied; tail: the rest left alone)
 *          null     blocking accept(fd, NULL, NULL): the peer from getpeername
 *          int80    blocking accept4(fd, NULL, NULL, 0) through int 0x80 (i386 number 364)
 *   FLAGS  0, nonblock, cloexec or both (accept4 and epoll)
 *   FAMILY 4 (127.0.0.1) or 6 ([::], dual stack: IPv4 peers are ::ffff:a.b.c.d)
 *   START  now, stdin (read a line before the first accept: connections queue up), or
 *          rcvtimeo (first, before printing the port, a blocking accept with SO_RCVTIMEO
 *          0.3 s: "rcvtimeo errno=N") */
#include "common.c"

#include <fcntl.h>
#include <sys/epoll.h>

static const char *USAGE = "acceptsrv accept|accept4|epoll|short|null|int80 "
                           "0|nonblock|cloexec|both 4|6 now|stdin|rcvtimeo";

static int parse_flags(const char *s)
{
    if (strcmp(s, "0") == 0)
        return 0;
    if (strcmp(s, "nonblock") == 0)
        return SOCK_NONBLOCK;
    if (strcmp(s, "cloexec") == 0)
        return SOCK_CLOEXEC;
    if (strcmp(s, "both") == 0)
        return SOCK_NONBLOCK | SOCK_CLOEXEC;
    usage_exit(USAGE);
    return 0;
}

/* Describe and greet one accepted connection; 1 if its peer is 127.0.0.1. */
static int served(int fd, const struct sockaddr_storage *ss, socklen_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = -1, loopback = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        port = ntohs(v4->sin_port);
        loopback = strcmp(host, "127.0.0.1") == 0;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
        port = ntohs(v6->sin6_port);
        loopback = strcmp(host, "::ffff:127.0.0.1") == 0;
    }
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    printf("peer=%s port=%d addrlen=%u nonblock=%d cloexec=%d\n", host, port, (unsigned)len,
           !!(fl & O_NONBLOCK), !!(fdfl & FD_CLOEXEC));
    fflush(stdout);
    const char greeting[] = "greeting\n";
    if (send(fd, greeting, sizeof greeting - 1, MSG_NOSIGNAL) < 0)
        report("send", -1, errno);
    close(fd);
    return loopback;
}

/* The IA-32 accept4 from this 64-bit process: eax = 364, ebx = fd, the rest NULL/0. */
static long int80_accept4(int fd)
{
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(364L), "b"((long)fd), "c"(0L), "d"(0L), "S"(0L)
                     : "memory", "cc", "r8", "r9", "r10", "r11");
    return ret;
}

static int blocking_accept(int lfd, const char *mode, int flags)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len = sizeof ss;
    if (strcmp(mode, "accept") == 0) {
        int fd = accept(lfd, (struct sockaddr *)&ss, &len);
        return fd < 0 ? -1 : served(fd, &ss, len);
    }
    if (strcmp(mode, "accept4") == 0) {
        int fd = accept4(lfd, (struct sockaddr *)&ss, &len, flags);
        return fd < 0 ? -1 : served(fd, &ss, len);
    }
    if (strcmp(mode, "null") == 0 || strcmp(mode, "int80") == 0) {
        int fd;
        if (mode[0] == 'n') {
            fd = accept(lfd, NULL, NULL);
        } else {
            long r = int80_accept4(lfd);
            fd = r < 0 && r > -4096 ? -1 : (int)r;
            errno = fd < 0 ? (int)-r : 0;
        }
        if (fd < 0)
            return -1;
        getpeername(fd, (struct sockaddr *)&ss, &len);
        return served(fd, &ss, len);
    }
    /* short: a 4-byte buffer inside a larger one filled with 0xAA */
    unsigned char buf[sizeof ss];
    memset(buf, 0xAA, sizeof buf);
    len = 4;
    int fd = accept(lfd, (struct sockaddr *)buf, &len);
    if (fd < 0)
        return -1;
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    getpeername(fd, (struct sockaddr *)&peer, &plen);
    int tail = 1;
    for (size_t i = 4; i < sizeof buf; i++)
        tail &= buf[i] == 0xAA;
    printf("short addrlen=%u head=%d tail=%d\n", (unsigned)len, memcmp(buf, &peer, 4) == 0, tail);
    return served(fd, &peer, plen);
}

static int epoll_accepts(int lfd, int flags)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        perror("epoll");
        exit(2);
    }
    for (;;) {
        if (epoll_wait(ep, &ev, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            exit(2);
        }
        for (;;) {
            struct sockaddr_storage ss;
            socklen_t len = sizeof ss;
            int fd = accept4(lfd, (struct sockaddr *)&ss, &len, flags);
            if (fd < 0) {
                if (errno != EAGAIN)
                    return -1;
                printf("eagain\n");
                fflush(stdout);
                break;
            }
            if (served(fd, &ss, len))
                return 1;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 5)
        usage_exit(USAGE);
    const char *mode = argv[1], *start = argv[4];
    int flags = parse_flags(argv[2]);
    int v6 = strcmp(argv[3], "6") == 0;
    int epoll = strcmp(mode, "epoll") == 0;
    int lfd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | (epoll ? SOCK_NONBLOCK : 0), 0);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (v6) {
        int off = 0;
        setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        ((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
        len = sizeof(struct sockaddr_in6);
    } else {
        struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
        v4->sin_family = AF_INET;
        v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *v4;
    }
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&ss, len) < 0 || listen(lfd, 256) < 0 ||
        getsockname(lfd, (struct sockaddr *)&ss, &len) < 0) {
        perror("listen");
        return 2;
    }
    if (strcmp(start, "rcvtimeo") == 0) { /* (before the port is known: nobody connects) */
        struct timeval tv = {.tv_sec = 0, .tv_usec = 300000};
        setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        int fd = accept(lfd, NULL, NULL);
        report("rcvtimeo", fd, errno);
        if (fd >= 0)
            close(fd);
        tv.tv_usec = 0;
        setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    printf("port=%d\n", ntohs(((struct sockaddr_in *)&ss)->sin_port)); /* same offset in v6 */
    fflush(stdout);
    if (strcmp(start, "stdin") == 0) {
        char line[16];
        if (fgets(line, sizeof line, stdin) == NULL)
            return 2;
    }
    for (;;) {
        int rc = epoll ? epoll_accepts(lfd, flags) : blocking_accept(lfd, mode, flags);
        if (rc < 0) {
            report("accept", -1, errno);
            return 1;
        }
        if (rc == 1)
            return 0;
    }
}
