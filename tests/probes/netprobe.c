/* netprobe: one kind of egress call to each target, one result line per call.
 *
 *   netprobe [-c COUNT] [-s SIZE] [-n] [-6] [-U] [-C TARGET] OP PROTO TARGET...
 *
 *   OP     connect | sendto | sendmsg | sendmmsg
 *   PROTO  tcp | udp
 *   TARGET 127.0.0.1:PORT or [::1]:PORT (the family of the socket follows the target)
 *
 * tcp: COUNT fresh sockets per target.  connect then writes SIZE bytes; sendto, sendmsg
 *      and sendmmsg carry the address with MSG_FASTOPEN (a connect in disguise).
 * udp: one socket per target.  connect then send()s COUNT datagrams on the connected
 *      socket (NULL address); sendto and sendmsg send COUNT datagrams; sendmmsg sends one
 *      batch of COUNT entries.  sendmsg splits the payload over two iovecs.
 * Each payload starts with its 32-bit sequence number.
 *
 *   -n  non-blocking socket: an EINPROGRESS connect is then polled to completion and
 *       reported again as "<i> established"
 *   -6  make an AF_INET6 socket even for an IPv4 target (the sockaddr stays AF_INET)
 *   -U  write AF_UNSPEC into the sockaddr's family field (IPv4 layout kept)
 *   -C  udp only: connect the socket to TARGET first (reported as "<i> preconnect")
 *
 * Lines: "<target index> <op> ok ret=N" / "<target index> <op> errno=N"; sendmmsg also
 * prints "<i> msg_len L0,L1,...".  Exit 0 iff every call succeeded. */
#include "common.c"

#include <fcntl.h>
#include <poll.h>
#include <netinet/tcp.h>

static const char *USAGE =
    "netprobe [-c COUNT] [-s SIZE] [-n] [-6] [-U] [-C TARGET] "
    "connect|sendto|sendmsg|sendmmsg tcp|udp TARGET...";

static long count = 1;
static long size = 16;
static int nonblock, force6, unspec;
static const char *preconnect;
static int failures;

static char *payload(unsigned seq)
{
    char *buf = malloc((size_t)size + 4);
    for (long i = 0; i < size; i++)
        buf[i] = (char)('a' + i % 26);
    if (size >= 4)
        memcpy(buf, &seq, 4);
    return buf;
}

static void result(int idx, const char *op, long ret, int err)
{
    char label[64];
    snprintf(label, sizeof label, "%d %s", idx, op);
    report(label, ret, err);
    if (ret < 0 && !(nonblock && err == EINPROGRESS))
        failures++;
}

static int make_socket(int family, int type)
{
    int fd = socket(force6 ? AF_INET6 : family, type | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) {
        perror("socket");
        exit(2);
    }
    return fd;
}

static void fill_msg(struct msghdr *m, struct iovec iov[2], char *buf,
                     struct sockaddr_storage *sa, socklen_t len)
{
    iov[0].iov_base = buf;
    iov[0].iov_len = (size_t)size / 2;
    iov[1].iov_base = buf + size / 2;
    iov[1].iov_len = (size_t)(size - size / 2);
    memset(m, 0, sizeof *m);
    m->msg_name = sa;
    m->msg_namelen = len;
    m->msg_iov = iov;
    m->msg_iovlen = 2;
}

/* After a non-blocking connect reported EINPROGRESS: wait for the outcome (0 or -1). */
static int established(int idx, int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t elen = sizeof err;
    if (poll(&p, 1, 20000) != 1)
        err = ETIMEDOUT;
    else
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    result(idx, "established", err ? -1 : 0, err);
    return err ? -1 : 0;
}

static void tcp_target(int idx, const char *op, int family, struct sockaddr_storage *sa,
                       socklen_t len)
{
    for (long c = 0; c < count; c++) {
        int fd = make_socket(family, SOCK_STREAM);
        char *buf = payload((unsigned)c);
        long r;
        int e;
        if (strcmp(op, "connect") == 0) {
            r = connect(fd, (struct sockaddr *)sa, len);
            e = errno;
            result(idx, op, r, e);
            if (r < 0 && nonblock && e == EINPROGRESS)
                r = established(idx, fd);
            if (r == 0 && send(fd, buf, (size_t)size, MSG_NOSIGNAL) < 0)
                perror("send after connect");
        } else if (strcmp(op, "sendto") == 0) {
            r = sendto(fd, buf, (size_t)size, MSG_FASTOPEN | MSG_NOSIGNAL,
                       (struct sockaddr *)sa, len);
            result(idx, op, r, errno);
        } else if (strcmp(op, "sendmsg") == 0) {
            struct msghdr m;
            struct iovec iov[2];
            fill_msg(&m, iov, buf, sa, len);
            r = sendmsg(fd, &m, MSG_FASTOPEN | MSG_NOSIGNAL);
            result(idx, op, r, errno);
        } else {
            struct mmsghdr v;
            struct iovec iov[2];
            fill_msg(&v.msg_hdr, iov, buf, sa, len);
            v.msg_len = 777777;
            r = sendmmsg(fd, &v, 1, MSG_FASTOPEN | MSG_NOSIGNAL);
            result(idx, op, r, errno);
            printf("%d msg_len %u\n", idx, v.msg_len);
        }
        free(buf);
        close(fd);
    }
}

static void udp_target(int idx, const char *op, int family, struct sockaddr_storage *sa,
                       socklen_t len)
{
    int fd = make_socket(family, SOCK_DGRAM);
    if (preconnect != NULL) {
        struct sockaddr_storage pre;
        socklen_t plen = parse_target(preconnect, &pre);
        int pr = connect(fd, (struct sockaddr *)&pre, plen);
        result(idx, "preconnect", pr, errno);
    }
    if (strcmp(op, "connect") == 0) {
        long r = connect(fd, (struct sockaddr *)sa, len);
        result(idx, op, r, errno);
        for (long c = 0; r == 0 && c < count; c++) {
            char *buf = payload((unsigned)c);
            long sr = send(fd, buf, (size_t)size, 0);
            result(idx, "send", sr, errno);
            free(buf);
        }
    } else if (strcmp(op, "sendto") == 0 || strcmp(op, "sendmsg") == 0) {
        for (long c = 0; c < count; c++) {
            char *buf = payload((unsigned)c);
            long r;
            if (op[4] == 't') {
                r = sendto(fd, buf, (size_t)size, 0, (struct sockaddr *)sa, len);
            } else {
                struct msghdr m;
                struct iovec iov[2];
                fill_msg(&m, iov, buf, sa, len);
                r = sendmsg(fd, &m, 0);
            }
            result(idx, op, r, errno);
            free(buf);
        }
    } else {
        struct mmsghdr *v = calloc((size_t)count, sizeof *v);
        struct iovec *iov = calloc((size_t)count * 2, sizeof *iov);
        char **bufs = calloc((size_t)count, sizeof *bufs);
        for (long c = 0; c < count; c++) {
            bufs[c] = payload((unsigned)c);
            fill_msg(&v[c].msg_hdr, &iov[2 * c], bufs[c], sa, len);
            v[c].msg_len = 777777;
        }
        long r = sendmmsg(fd, v, (unsigned)count, 0);
        result(idx, op, r, errno);
        printf("%d msg_len", idx);
        for (long c = 0; c < count; c++) {
            printf("%s%u", c ? "," : " ", v[c].msg_len);
            free(bufs[c]);
        }
        printf("\n");
        free(v);
        free(iov);
        free(bufs);
    }
    close(fd);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "c:s:n6UC:")) != -1) {
        switch (opt) {
        case 'c': count = parse_long(optarg, USAGE); break;
        case 's': size = parse_long(optarg, USAGE); break;
        case 'n': nonblock = 1; break;
        case '6': force6 = 1; break;
        case 'U': unspec = 1; break;
        case 'C': preconnect = optarg; break;
        default: usage_exit(USAGE);
        }
    }
    if (argc - optind < 3 || count < 1 || size < 0 || size > 65000)
        usage_exit(USAGE);
    const char *op = argv[optind];
    const char *proto = argv[optind + 1];
    if (strcmp(op, "connect") && strcmp(op, "sendto") && strcmp(op, "sendmsg") &&
        strcmp(op, "sendmmsg"))
        usage_exit(USAGE);
    if (strcmp(proto, "tcp") && strcmp(proto, "udp"))
        usage_exit(USAGE);

    for (int i = optind + 2; i < argc; i++) {
        struct sockaddr_storage sa;
        socklen_t len = parse_target(argv[i], &sa);
        int family = sa.ss_family;
        if (unspec)
            sa.ss_family = AF_UNSPEC;
        if (proto[0] == 't')
            tcp_target(i - optind - 2, op, family, &sa, len);
        else
            udp_target(i - optind - 2, op, family, &sa, len);
    }
    fflush(stdout);
    return failures ? 1 : 0;
}
